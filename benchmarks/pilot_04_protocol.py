"""Where notebook 04's time goes under its current protocol (issue 22): each kind of work timed at a short
length and projected linearly to the study's length, times how often the notebook does it.

    .venv/bin/python benchmarks/pilot_04_protocol.py [--steps 500]

Times, on one thread: one schedule family's whole pool (tuning_budget configurations x n_tuning_seeds) as
one batch; one DQN-family configuration on the tuning seeds; one learning-rate-free run (Prodigy, the
reference loop, one seed). Projects the tuning and evaluation CPU seconds of notebook 04 at its default
StudyConfig from those, plus the learned controllers' training at the committed per-configuration seconds
(results/controller_tuning.csv). A projection, not a measurement of the notebook: the notebook's own
papermill duration is the measurement. Writes benchmarks/results/pilot_04_protocol.json atomically.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import rlr_engine as engine  # noqa: E402
import rlr_methods as methods  # noqa: E402
import rlr_results as results_io  # noqa: E402
import rlr_stacked as stacked  # noqa: E402
import rlr_study as study  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "pilot_04_protocol.json"


def seconds(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500, help="steps each timing runs (projected to the study's)")
    steps = parser.parse_args(argv).steps
    torch.set_num_threads(1)
    stacked.reuse_freed_memory()
    setup, config = study.StudyConfig(), engine.Config()
    scale = setup.steps / steps
    rows = []
    for key in methods.keys("schedule"):
        method = methods.get(key)
        pool = method.configurations(setup.tuning_budget, setup.search_seed)
        rows.append({"work": f"{method.label}: pool of {len(pool)} x {setup.n_tuning_seeds} seeds, one batch",
                     "times in notebook 04": 1,
                     "seconds": scale * seconds(lambda: method.run_pool(pool, config, setup.tuning_seeds, steps))})
    for key in methods.keys("agent"):
        method = methods.get(key)
        params = method.configurations(setup.tuning_budget, setup.search_seed)[0]
        agent_config = config.with_overrides({"schedule": {"steps": steps}})
        rows.append({"work": f"{method.label}: one configuration x {setup.n_tuning_seeds} seeds",
                     "times in notebook 04": setup.tuning_budget,
                     "seconds": scale * seconds(lambda: method.run(params, agent_config, setup.tuning_seeds, steps))})
    factory = methods.get("prodigy").optimizer({"d_coef": 1.0}, steps)
    per_run = scale * seconds(lambda: engine.train_full_batch(config.with_seed(setup.tuning_seeds[0]), 1.0, steps,
                                                             make_optimizer=factory))
    lr_free = len(methods.keys("lr_free"))
    rows.append({"work": "a learning-rate-free run (Prodigy, reference loop, one seed): tuning",
                 "times in notebook 04": lr_free * setup.tuning_budget * setup.n_tuning_seeds, "seconds": per_run})
    rows.append({"work": "a learning-rate-free run: evaluation (the two picks, every evaluation seed)",
                 "times in notebook 04": lr_free * 2 * setup.n_eval_seeds, "seconds": per_run})
    controller = pd.read_csv(ROOT / "results" / "controller_tuning.csv")
    dqn = controller[controller["controller"] == controller["controller"].iloc[0]]
    rows.append({"work": "one DQN-controller configuration trained (committed seconds)",
                 "times in notebook 04": setup.tuning_budget, "seconds": float(dqn["training seconds"].mean())})
    table = pd.DataFrame(rows)
    table["CPU seconds in notebook 04"] = table["times in notebook 04"] * table["seconds"]
    total = float(table["CPU seconds in notebook 04"].sum())

    def readme_markdown(measured: dict) -> str:
        shown = pd.DataFrame(measured["rows"])
        lines = ["| work | seconds each | times | CPU seconds |", "|---|---|---|---|"]
        lines += [f"| {row['work']} | {row['seconds']:.1f} | {row['times in notebook 04']} | "
                  f"{row['CPU seconds in notebook 04']:.0f} |" for _, row in shown.iterrows()]
        return "\n".join(lines + ["", f"Projected from {measured['steps']}-step timings: {measured['total']:.0f} CPU "
                                  f"seconds of tuning and these evaluations ({measured['total'] / 3600:.1f} CPU hours) "
                                  f"before the rest of the evaluation; machine {measured['machine']}."])

    results_io.save_benchmark(RESULTS, {"steps": steps, "rows": table.to_dict(orient="records"), "total": total,
                                        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
                                        "study": {"tuning_budget": setup.tuning_budget, "n_tuning_seeds":
                                                  setup.n_tuning_seeds, "n_eval_seeds": setup.n_eval_seeds}},
                              readme_markdown)
    print(json.loads(RESULTS.read_text())["readme_markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
