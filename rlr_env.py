"""The learning-rate problem as a Gymnasium environment: the same task seen from the agent's side.

LRControlEnv: each step is one full-batch Adam step on MaclaurinNet at the learning rate the action
picks on the grid; the observation and reward are the ones RLRScheduler gives its agent (loss_state,
loss_reward in rlr_core), so external agents and episodic training see exactly the original problem.
train_agent_on_env runs rlr_core.DQNAgent on any environment with a Box observation and Discrete
actions through the standard Gymnasium loop (act, step, remember, learn; reset at episode end).
The transfer study (notebook 05) is at the end: train one agent over episodes on many training tasks
(train_agent_on_tasks), freeze it and evaluate it on held-out tasks (evaluate_on_held_out_tasks).

Nothing of the RL logic is copied here: data, model, Adam, state, reward and the index move all come
from rlr_core.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Sequence

import gymnasium
import numpy as np
import pandas as pd
import torch
from gymnasium import spaces

import rlr_batched
import rlr_core as rc
import rlr_study
from rlr_core import RunResult

DIVERGENCE_PENALTY = -1.0
"""Reward of the step whose loss is non-finite (the episode terminates there). In the default task the
whole episode's return, L_0 - L_T, is below L_0 (about 0.3), so one divergence costs more than any
episode can earn."""


class LRControlEnv(gymnasium.Env):
    """Choose Adam's learning rate, one full-batch step at a time, while it trains MaclaurinNet.

    Observation: (L_t, L_t - L_{t-1}), raw, exactly RLRScheduler's state (rlr_core.loss_state); the
    difference is 0 at reset. Actions: index_shifts of the ScheduleConfig (default -1, 0, +1 along
    the grid, clipped to it). Reward: L_t - L_{t+1} (rlr_core.loss_reward), as the original agent saw.

    reset(seed=s) starts a new task: the data set and the initial weights are the ones
    rlr_core.train_rl_scheduled uses for Config(seed=s) (derive_seeds(s).data / .init), a fresh Adam, and
    the lr index back to schedule.start_index. reset() without a seed draws the next task's seed from
    the environment's np_random; the data are redrawn too only with resample_data=True, otherwise the
    data of the last seeded reset stay (a new network, the same regression problem).

    An episode is schedule.steps Adam steps long (truncated=True at the end). A non-finite loss ends it
    (terminated=True) with reward divergence_penalty; the observation returned then is the last finite
    one (s_t, not the non-finite s_{t+1}) and info["diverged"] is True. No observation is ever
    non-finite. info holds the lr and lr_index the step used and the loss after it.
    """

    metadata = {"render_modes": []}

    def __init__(self, task: rc.TaskConfig | None = None, schedule: rc.ScheduleConfig | None = None, *,
                 resample_data: bool = False, divergence_penalty: float = DIVERGENCE_PENALTY,
                 dtype: str = "float32", device: str = "cpu") -> None:
        task = rc.TaskConfig() if task is None else task
        schedule = rc.ScheduleConfig() if schedule is None else schedule
        if not isinstance(task, rc.TaskConfig):
            raise TypeError(f"task must be a TaskConfig, got {type(task).__name__}")
        if not isinstance(schedule, rc.ScheduleConfig):
            raise TypeError(f"schedule must be a ScheduleConfig, got {type(schedule).__name__}")
        if not isinstance(resample_data, bool):
            raise TypeError(f"resample_data must be a bool, got {type(resample_data).__name__}")
        if isinstance(divergence_penalty, bool) or not isinstance(divergence_penalty, (int, float)) \
                or not math.isfinite(divergence_penalty):
            raise ValueError(f"divergence_penalty must be a finite number, got {divergence_penalty!r}")
        if not isinstance(dtype, str) or dtype not in rc.DTYPES:
            raise ValueError(f"dtype must be one of {tuple(rc.DTYPES)}, got {dtype!r}")
        self.task, self.schedule = task, schedule
        self.resample_data, self.divergence_penalty = resample_data, float(divergence_penalty)
        self.dtype, self.device = rc.DTYPES[dtype], rc.check_device(device)
        # The loss is an MSE (>= 0), its change has either sign; both are finite (a non-finite loss ends
        # the episode), so the bounds are the dtype's largest finite value (as CartPole's velocities).
        # With features='log' the state is (log L, its change, lr position in [0, 1]).
        largest = np.finfo(np.float32 if dtype == "float32" else np.float64).max
        low, high = ([0.0, -largest], [largest, largest]) if schedule.features == "raw" else \
            ([-largest, -largest, 0.0], [largest, largest, 1.0])
        self.observation_space = spaces.Box(low=np.array(low, dtype=largest.dtype),
                                            high=np.array(high, dtype=largest.dtype), dtype=largest.dtype)
        self.action_space = spaces.Discrete(schedule.n_actions)
        self.data: rc.PolynomialData | None = None
        self.model: rc.MaclaurinNet | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_index = schedule.start_index
        self.lr = schedule.lr_grid[self.lr_index]
        self.episode_seed: int | None = None
        self.elapsed_steps = 0
        self._loss: torch.Tensor | None = None  # L_t with its graph: differentiated by the next step
        self._observation: np.ndarray | None = None
        self._episode_over = True

    @classmethod
    def from_config(cls, config: rc.Config, **kwargs: Any) -> "LRControlEnv":
        """The environment of a run config: its task, schedule, dtype and device."""
        return cls(config.task, config.schedule, dtype=config.dtype, device=config.device, **kwargs)

    def _info(self) -> dict:
        return {"lr": self.lr, "lr_index": self.lr_index,
                "loss": float(self._loss.item())}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if options:
            raise ValueError(f"LRControlEnv.reset takes no options, got {options!r}")
        if seed is not None:
            rc.check_int("seed", seed, 0)
            self.episode_seed = int(seed)
        else:
            self.episode_seed = int(self.np_random.integers(0, 2 ** 63 - 1))
        seeds = rc.derive_seeds(self.episode_seed)
        if self.data is None or seed is not None or self.resample_data:
            self.data = rc.make_polynomial_dataset(self.task, seeds.data, dtype=self.dtype, device=self.device)
        self.model = rc.make_model(self.task, seeds.init, self.dtype, self.device)
        self.lr_index = self.schedule.start_index
        self.lr = self.schedule.lr_grid[self.lr_index]
        self.optimizer = rc.make_adam(self.model.parameters(), self.lr)
        self.elapsed_steps = 0
        self._loss = rc.full_batch_loss(self.model, self.data)
        loss = self._loss.item()
        if not math.isfinite(loss):
            raise FloatingPointError(f"the initial loss is {loss} (data or initial weights out of float range): "
                                     "lower task.coeff_scale or use dtype='float64'")
        self._observation = self._state(loss, None)
        self._episode_over = False
        return self._observation.copy(), self._info()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._episode_over:
            raise RuntimeError("the episode is over (or never started): call reset() first")
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an int in [0, {self.action_space.n - 1}], got {action!r}")
        self.lr_index, self.lr = rc.next_lr(self.lr_index, self.lr, int(action), self.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        previous_loss = self._loss.item()
        self.optimizer.zero_grad(set_to_none=True)
        self._loss.backward()
        self.optimizer.step()
        self._loss = rc.full_batch_loss(self.model, self.data)  # L_{t+1}: differentiated next step
        loss = self._loss.item()
        self.elapsed_steps += 1
        observation = self._state(loss, previous_loss)
        info = self._info()
        if not (math.isfinite(loss) and np.isfinite(observation).all()):
            self._episode_over = True
            info["diverged"] = True
            return self._observation.copy(), self.divergence_penalty, True, False, info
        info["diverged"] = False
        self._observation = observation
        truncated = self.elapsed_steps >= self.schedule.steps
        self._episode_over = truncated
        return observation.copy(), rc.loss_reward(previous_loss, loss, self.schedule.features), False, truncated, info

    def _state(self, loss: float, previous_loss: float | None) -> np.ndarray:
        """RLRScheduler's state for this loss (rlr_core.loss_state), as a numpy observation."""
        return rc.loss_state(loss, previous_loss, self.dtype, self.schedule.features,
                             rc.lr_position(self.lr, self.schedule)).numpy()


def train_agent_on_env(env: gymnasium.Env, agent: rc.DQNAgent, total_steps: int,
                       seed: int | None = None) -> dict[str, list]:
    """Run agent on env for total_steps environment steps, the standard Gymnasium loop.

    obs -> act -> step -> remember(obs, action, next_obs, reward) -> learn, then reset at terminated or
    truncated. The first reset uses seed, later ones continue the environment's own RNG. next_obs is
    always the observation step() returned, also at truncation (the real next state). The DQN has no
    terminal states (SPEC.md): a terminated transition is stored like any other and bootstrapped from.
    For LRControlEnv's divergence that is (s_t, a, s_t, divergence_penalty): a penalised self-loop,
    which still ranks the diverging action below the others. With agent.training False (eval) nothing
    is stored or learned: an evaluation rollout with the greedy policy.

    Returns episode_returns, episode_lengths and episode_terminated (one per finished episode; an
    unfinished last episode is left out) and dqn_losses (one per DQN update).
    """
    if not isinstance(env.action_space, spaces.Discrete) or int(env.action_space.n) != agent.n_actions:
        raise ValueError(f"env.action_space must be Discrete({agent.n_actions}) for this agent, "
                         f"got {env.action_space}")
    if not isinstance(env.observation_space, spaces.Box) or env.observation_space.shape != (agent.state_dim,):
        raise ValueError(f"env.observation_space must be a Box of shape ({agent.state_dim},) for this agent, "
                         f"got {env.observation_space}")
    rc.check_int("total_steps", total_steps, 0)
    history: dict[str, list] = {"episode_returns": [], "episode_lengths": [], "episode_terminated": [],
                                "dqn_losses": []}
    observation, _ = env.reset(seed=seed)
    episode_return, episode_length = 0.0, 0
    for _ in range(total_steps):
        action = agent.act(observation)
        next_observation, reward, terminated, truncated, _ = env.step(action)
        if agent.training:
            agent.remember(observation, action, next_observation, float(reward))
            dqn_loss = agent.learn()
            if dqn_loss is not None:
                history["dqn_losses"].append(dqn_loss)
        episode_return += float(reward)
        episode_length += 1
        if terminated or truncated:
            history["episode_returns"].append(episode_return)
            history["episode_lengths"].append(episode_length)
            history["episode_terminated"].append(bool(terminated))
            observation, _ = env.reset()
            episode_return, episode_length = 0.0, 0
        else:
            observation = next_observation
    return history


ENV_ID = "rlr_env/LRControl-v0"
"""gymnasium.make(ENV_ID, task=..., schedule=..., ...) builds an LRControlEnv (keyword arguments as the
constructor's); the environment truncates its episodes itself, after schedule.steps steps."""
if ENV_ID not in gymnasium.registry:
    gymnasium.register(ENV_ID, entry_point="rlr_env:LRControlEnv")


# ---------------------------------------------------------------------------------------------------
# Transfer study (notebook 05): train one agent over many short episodes on a family of training tasks,
# freeze it, and evaluate it on held-out tasks against the tuned constant lr and cosine annealing.
# ---------------------------------------------------------------------------------------------------

HELD_OUT_TASKS: dict[str, dict] = {
    "same task, new seeds": {},
    "degree 3 polynomials": {"coeff_scale": (1.0, 0.5, 0.2, 0.1)},
    "degree 6 polynomials": {"coeff_scale": (1.0, 0.5, 0.2, 0.1, 0.05, 0.025, 0.0125)},
    "wider, deeper net (64, 32, 16)": {"hidden_sizes": (64, 32, 16)},
}
"""Held-out tasks: label -> overrides of the training TaskConfig (the first is the training task itself,
evaluated on new data seeds and initialisations)."""

TRANSFER_AGENTS: dict[str, dict] = {
    "scale-free DQN (log features, x0.5/x1/x2)": {"features": "log", "lr_factors": (0.5, 1.0, 2.0)},
    "DQN as described (raw features)": {},
}
"""The agents trained for transfer: label -> overrides of the ScheduleConfig (the DQN stays 'described')."""

TUNED_CONSTANT, COSINE = "tuned constant lr", "cosine annealing"
"""Method labels of the two references in the transfer tables."""


def held_out_tasks(task: rc.TaskConfig) -> dict[str, rc.TaskConfig]:
    """The held-out TaskConfigs of HELD_OUT_TASKS, each a copy of the training task with its overrides."""
    return {label: rc.TaskConfig(**{**asdict(task), **overrides}) for label, overrides in HELD_OUT_TASKS.items()}


def transfer_seeds(first_training_seed: int, n_training_episodes: int, first_eval_seed: int,
                   n_eval_seeds: int) -> tuple[list[int], list[int]]:
    """Training seeds (one new task per episode) and evaluation seeds; ValueError if they overlap, so no
    evaluation task is ever seen in training."""
    rc.check_int("first_training_seed", first_training_seed, 0)
    rc.check_int("n_training_episodes", n_training_episodes, 1)
    rc.check_int("first_eval_seed", first_eval_seed, 0)
    rc.check_int("n_eval_seeds", n_eval_seeds, 1)
    training = [first_training_seed + i for i in range(n_training_episodes)]
    evaluation = [first_eval_seed + i for i in range(n_eval_seeds)]
    overlap = sorted(set(training) & set(evaluation))
    if overlap:
        raise ValueError(f"training seeds overlap the evaluation seeds: {overlap[:5]}"
                         f"{'...' if len(overlap) > 5 else ''} (move first_training_seed or first_eval_seed)")
    return training, evaluation


def train_agent_on_tasks(config: rc.Config, training_seeds: Sequence[int], agent_seed: int = 0,
                         progress: bool = False) -> tuple[rc.DQNAgent, pd.DataFrame]:
    """Train one DQN agent over one episode of config.schedule.steps steps per training seed, in order.

    Episode i is LRControlEnv.reset(seed=training_seeds[i]): that seed's data set and initial weights, a
    fresh Adam, the lr back at the start. The agent (its replay memory, epsilon decay and Q-network)
    carries over from episode to episode. An episode that diverges ends early; the rest of its steps run
    on a new initialisation of the same data (the environment's own reset), so every episode costs the
    same number of steps. Returns the agent (still in training mode) and one row per episode: seed,
    return of the seeded episode (log L_0 - log L_T for log features) and whether it diverged.
    """
    rc.prepare_run(config)
    seeds = [int(seed) for seed in training_seeds]
    if not seeds:
        raise ValueError("training_seeds must not be empty")
    env = LRControlEnv.from_config(config)
    agent = rc.DQNAgent(config.schedule.state_dim, config.schedule.n_actions, config.dqn, agent_seed,
                        rc.DTYPES[config.dtype], config.device)
    rows = []
    with rc.progress_bar(len(seeds), f"training episodes ({config.schedule.features} features)", progress) as bar:
        for seed in seeds:
            history = train_agent_on_env(env, agent, config.schedule.steps, seed)
            rows.append({"episode": len(rows), "seed": seed, "return": history["episode_returns"][0],
                         "diverged": history["episode_terminated"][0],
                         "epsilon_at_end": agent.epsilon()})
            bar.update()
    return agent, pd.DataFrame(rows)


def policy_state(agent: rc.DQNAgent) -> dict:
    """A CPU copy of the agent's policy_net weights: what the batched engine's initial_policies takes."""
    return {name: tensor.detach().cpu().clone() for name, tensor in agent.policy_net.state_dict().items()}


def evaluate_frozen_agent(config: rc.Config, agent: rc.DQNAgent, seeds: Sequence[int],
                          progress: bool = False) -> list[RunResult]:
    """The agent's greedy policy, frozen (no exploration, replay or learning), steering Adam on each seed
    for config.schedule.steps steps (batched engine); the agent itself is left unchanged."""
    seeds = [int(seed) for seed in seeds]
    return rlr_batched.train_rl_scheduled(config, seeds, progress=progress,
                                          initial_policies=[policy_state(agent)] * len(seeds), frozen=True)


def evaluate_on_held_out_tasks(config: rc.Config, tasks: dict[str, rc.TaskConfig],
                               agents: dict[str, tuple[rc.Config, rc.DQNAgent]], tuned_lr: float,
                               seeds: Sequence[int], progress: bool = False) -> dict[str, dict[str, list[RunResult]]]:
    """task label -> method label -> one run per seed: the tuned constant lr, cosine annealing from it
    (T_max = the run length) and every frozen agent, all config.schedule.steps full-batch Adam steps on
    the same data and initial weights of each seed. agents: label -> (the config it was trained with, agent).
    """
    steps = config.schedule.steps
    cosine = rlr_batched.lr_schedule(rlr_study.standard_schedules(tuned_lr, steps)[COSINE][1], tuned_lr, steps)
    runs: dict[str, dict[str, list[RunResult]]] = {}
    for task_label, task in tasks.items():
        task_config = rlr_study.with_overrides(config, {"task": asdict(task)})
        runs[task_label] = {
            TUNED_CONSTANT: rlr_batched.train_full_batch(task_config, seeds, tuned_lr, steps, "tuned_constant",
                                                         progress),
            COSINE: rlr_batched.train_full_batch(task_config, seeds, cosine, steps, "cosine", progress)}
        for agent_label, (agent_config, agent) in agents.items():
            agent_task_config = rlr_study.with_overrides(agent_config, {"task": asdict(task),
                                                                        "schedule": {"steps": steps}})
            runs[task_label][agent_label] = evaluate_frozen_agent(agent_task_config, agent, seeds, progress)
    return runs


def transfer_table(runs: dict[str, dict[str, list[RunResult]]], n_test_examples: int) -> pd.DataFrame:
    """One row per task x method x seed: training MSE (final, median of last 100), test MSE on held-out
    polynomials of the same task (rlr_study.test_mse), divergence and cost."""
    setup = rlr_study.StudyConfig(n_test_examples=n_test_examples)
    tables = [rlr_study.tidy_table(methods, task, setup) for task, methods in runs.items()]
    return pd.concat(tables, ignore_index=True).rename(columns={"budget": "task"})


def transfer_summary(table: pd.DataFrame, metric: str = "test_mse") -> pd.DataFrame:
    """Per task and method: geometric mean and median over seeds with 95% bootstrap CIs, diverged runs
    (left out of the statistics) and paired win rates against the tuned constant lr and cosine annealing."""
    import rlr_report

    parts = []
    for task, part in table.groupby("task", sort=False):
        finished = part[part["diverged_at"].isna() & np.isfinite(part[metric].astype(float))]
        methods = list(part["method"].unique())  # a method whose every run diverged keeps a row (NaN)
        summary = rlr_report.summarise_over_seeds(finished, metric).reindex(methods)
        summary["seeds"] = part.groupby("method", sort=False)["seed"].count()
        summary.insert(1, "diverged", part.groupby("method", sort=False)["diverged_at"].count())
        finished_methods = set(finished["method"])
        for reference in (TUNED_CONSTANT, COSINE):
            summary[f"wins vs {reference}"] = [
                rlr_report.paired_win_rate(finished, metric, reference, method)
                if {reference, method} <= finished_methods else float("nan") for method in methods]
        parts.append(pd.concat({task: summary}, names=["task"]))
    return pd.concat(parts)


def plot_transfer_intervals(summary: pd.DataFrame, title: str, xlabel: str = "test MSE") -> "plt.Figure":
    """Dot-and-interval chart, one panel per task: geometric mean over seeds with its 95% bootstrap CI."""
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(summary.index.get_level_values("task")))
    fig, axes = plt.subplots(len(tasks), 1, figsize=(8, 1.6 + 1.3 * len(tasks)), squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        part = summary.loc[task]
        y = np.arange(len(part))
        errors = [part["geometric mean"] - part["gm CI low"], part["gm CI high"] - part["geometric mean"]]
        ax.errorbar(part["geometric mean"], y, xerr=errors, fmt="o", ms=4, capsize=3,
                    label="geometric mean over seeds, 95% bootstrap CI")
        ax.set_yticks(y, part.index, fontsize=8)
        ax.set_xscale("log")
        ax.set_title(task, fontsize=9)
        ax.grid(True, axis="x", which="major", alpha=0.3)
    axes[-1, 0].set_xlabel(f"{xlabel} (log scale)")
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_training_returns(histories: dict[str, pd.DataFrame]) -> "plt.Figure":
    """Return of each training episode (a new task each), one panel per agent: does training improve?"""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(histories), figsize=(5 * len(histories), 3.6), squeeze=False)
    for ax, (label, history) in zip(axes[0], histories.items()):
        ax.plot(history["episode"], history["return"], ".", ms=4, label="episode return")
        window = max(1, len(history) // 10)
        ax.plot(history["episode"], history["return"].rolling(window, min_periods=1).mean(),
                label=f"rolling mean ({window} episodes)")
        ax.set(xlabel="training episode (a new task each)", ylabel="return (sum of rewards)", title=label)
        ax.title.set_fontsize(9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
