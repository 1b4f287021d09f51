"""Pilot of the learned controller (rlr_controllers.ControllerConfig) on tuning seeds only: does it learn, and
where does it land against notebook 04's tuned schedules? Not the verdict (no tuning of its own, few seeds).

    .venv/bin/python benchmarks/controller_pilot.py [--rounds 8] [--updates-per-step 16] [--gamma 0.99]

Trains one controller (DQN, Double DQN, control features, a decision every 100 steps) over 16 x rounds
task episodes on LRControlVectorEnv, then runs its frozen greedy policy on notebook 04's tuning seeds and
scores validation MSE, beside the tuned constant lr and the tuned ReduceLROnPlateau at the configurations
notebook 04 chose (read from results/benchmark_summary.json) on the same seeds. Evaluation seeds and test
sets are never touched. The tuned references were chosen on these very validation sets, which favours
them. Writes benchmarks/results/controller_pilot.json atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import rlr_controllers as controllers  # noqa: E402
import rlr_core as rc  # noqa: E402
import rlr_engine as engine  # noqa: E402
import rlr_results as results_io  # noqa: E402
import rlr_stats as stats  # noqa: E402
import rlr_study as study  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="training episodes per task slot (16 tasks at once)")
    parser.add_argument("--updates-per-step", type=int, default=16, help="DQN updates per vector step")
    parser.add_argument("--gamma", type=float, default=0.99, help="discount per decision")
    args = parser.parse_args()
    torch.set_num_threads(1)
    benchmark = json.loads((ROOT / "results" / "benchmark_summary.json").read_text())
    setup = study.StudyConfig(**benchmark["study"])
    controller = controllers.ControllerConfig(training_rounds=args.rounds, updates_per_step=args.updates_per_step)
    decisions = math.ceil(setup.steps / controller.decision_interval)
    acts = controller.n_envs * (decisions + 1) * args.rounds
    config = study.study_config(engine.Config(dqn=rc.DQNConfig(
        gamma=args.gamma, double_dqn=True, replay_capacity=100_000, learning_starts=256, epsilon_decay=acts / 8)), setup)
    started = time.perf_counter()
    run_config, agent, curve = controllers.train_controller(config, controller)
    training_seconds = time.perf_counter() - started
    used = set(curve["seed"])
    if used & (set(setup.eval_seeds) | set(setup.tuning_seeds)):
        raise RuntimeError("a training task seed is an evaluation or tuning seed")
    started = time.perf_counter()
    methods = {"controller (frozen)": controllers.frozen_agent_runs(run_config, agent, setup.tuning_seeds)}
    evaluation_seconds = time.perf_counter() - started
    for family in ("constant lr", "ReduceLROnPlateau"):
        methods[study.tuned_label(family)] = study.run_family(family, benchmark["chosen"][family], config,
                                                              setup.tuning_seeds, setup.steps)
    validation = {label: [study.heldout_mse(run, "validation", setup.n_heldout_examples) for run in runs]
                  for label, runs in methods.items()}
    controller_mse = np.array(validation["controller (frozen)"])
    summary = {
        "controller": {**vars(controller), "lr_factors": list(controller.lr_factors), "lr_range": list(controller.lr_range)},
        "dqn": run_config.to_dict()["dqn"], "tuning_seeds": setup.tuning_seeds, "steps": setup.steps,
        "training_episodes": len(curve), "training_optimiser_steps": len(curve) * setup.steps,
        "training_seconds": training_seconds, "evaluation_seconds": evaluation_seconds,
        "mean_return_per_round": curve.groupby("round")["return"].mean().tolist(),
        "frozen_returns": [float(np.log(run.series["loss"][0]) - np.log(run.series["loss"][-1]))
                           for run in methods["controller (frozen)"]],
        "final_lr": [float(run.series["lr"][-1]) for run in methods["controller (frozen)"]],
        "validation_mse": validation,
        "geometric_mean_ratio": {label: stats.geometric_mean(np.array(values) / controller_mse)
                                 for label, values in validation.items() if label != "controller (frozen)"},
        "args": vars(args), "versions": results_io.package_versions()}
    results_io.atomic_write_text(ROOT / "benchmarks" / "results" / "controller_pilot.json",
                                 json.dumps(results_io.json_ready(summary), indent=1))
    print(json.dumps({key: summary[key] for key in ("mean_return_per_round", "geometric_mean_ratio",
                                                     "training_seconds", "final_lr")}, indent=1))


if __name__ == "__main__":
    main()
