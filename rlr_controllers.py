"""The learned controllers: trained over many tasks, tuned on the study's protocol, then frozen.

A controller is a learning-rate policy trained beforehand on tasks of its own (LRControlVectorEnv over
task seeds nobody evaluates) and then run frozen: notebook 04 tunes and evaluates them, notebook 05
reloads them from results/controllers.pt and runs them on held-out tasks. Three learners: a DQN
controller (rlr_core.DQNAgent) tuned with the same budget as every method family, and stable-baselines3's
PPO and DQN, learners nobody here wrote, which train through SB3VectorEnv (the adapter below).

Read top to bottom: the controller's config and its one environment -> training a DQN controller, its
greedy policy and frozen runs -> SB3VectorEnv and the SB3 learners -> tuning on the tuning seeds ->
frozen runs of trained controllers -> their file format (save_controllers, load_controllers).

This module sits on the study's protocol (rlr_study: StudyConfig, heldout_mse) and is imported by the
notebooks, never by rlr_study or rlr_report (tests/test_architecture.py). Importing it imports
stable-baselines3; `import rlr_env` does not.
"""

from __future__ import annotations

import importlib
import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from stable_baselines3.common.vec_env import VecEnv

import rlr_core as rc
import rlr_methods as methods
import rlr_peers as peers
import rlr_stats as stats
from rlr_engine import Config, agent_method_name
from rlr_env import LRControlEnv, LRControlVectorEnv, time_limit_is_terminal, train_agent_on_vector_env
from rlr_results import RunResult, atomic_write
from rlr_study import StudyConfig, heldout_mse

# ---------------------------------------------------------------------------------------------------
# The controller: its config (schedule, tasks, training length) and its environment
# ---------------------------------------------------------------------------------------------------

CONTROLLER_GRID_SIZE = 12
"""points of the controller's lr grid between lr_range's ends (the grid places the start and clips the lr)"""


@dataclass
class ControllerConfig:
    """A learning-rate controller against short-horizon bias (issue: an RL controller done right): a DQN
    with control features (the budget left in its state), a decision every decision_interval steps and the
    telescoping log reward, trained over many tasks at once on LRControlVectorEnv."""

    decision_interval: int = 100
    """optimiser steps per decision (a 10 000-step run is 100 decisions)"""
    lr_factors: tuple = (0.5, 1.0, 2.0)
    """what an action does to the lr (clipped to the grid's range)"""
    lr_range: tuple = (1e-5, 0.3)
    """the lr's bounds, the range the tuned schedules search; the grid of 12 between them places the start"""
    start_index: int = 5
    """grid index of the first lr (about 1e-3 on the default range)"""
    n_envs: int = 16
    """tasks trained at once (the vector environment's K)"""
    training_rounds: int = 4
    """episodes per task: n_envs x training_rounds training episodes in all, each on a new task seed (16 x 4
    x 10 000 optimiser steps: what tuning one family costs, 8 configurations x 8 seeds)"""
    first_training_seed: int = 3000
    """the first round's task seeds are first_training_seed + i; later ones are drawn by the environment"""
    updates_per_step: int = 16
    """DQN updates per vector step (16 with 16 tasks: one per transition, as the original's one per step)"""
    agent_seed: int = 0
    """seed of the agent's exploration, replay sampling and Q-network"""
    validation_state: bool = False
    """the validation loss in the state too (schedule features 'validation': log V and its change)"""
    validation_reward: bool = False
    """reward the validation loss's log decrease instead of the training loss's (schedule reward
    'validation', telescoping to log V_0 - log V_T: the quantity tuning scores)"""
    validation_examples: int = 1024
    """validation polynomials per task seed that V is measured on (the study's n_heldout_examples)"""

    def __post_init__(self) -> None:
        for name, minimum in (("decision_interval", 1), ("start_index", 0), ("n_envs", 1), ("training_rounds", 1),
                              ("first_training_seed", 0), ("updates_per_step", 1), ("agent_seed", 0)):
            rc.check_int(f"controller.{name}", getattr(self, name), minimum)
        for name in ("validation_state", "validation_reward"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"controller.{name} must be a bool, got {type(getattr(self, name)).__name__}")
        rc.check_int("controller.validation_examples", self.validation_examples, 1)
        self.lr_range = rc.check_lr_range("controller.lr_range", self.lr_range)
        self.lr_factors = rc.check_sequence("controller.lr_factors", self.lr_factors)
        if len(self.lr_factors) < 2:  # an empty tuple would mean index shifts to ScheduleConfig
            raise ValueError(f"controller.lr_factors must name at least two lr multipliers, got {self.lr_factors}")
        for index, value in enumerate(self.lr_factors):
            rc.check_float(f"controller.lr_factors[{index}]", value, 0.0, math.inf, high_open=True)
        if self.start_index >= CONTROLLER_GRID_SIZE:
            raise ValueError(f"controller.start_index must be in [0, {CONTROLLER_GRID_SIZE - 1}] (on the grid of "
                             f"{CONTROLLER_GRID_SIZE}), got {self.start_index}")

    def first_round_seeds(self) -> list[int]:
        """The task seeds of the first training round (later rounds draw 63-bit seeds from the environment)."""
        return list(range(self.first_training_seed, self.first_training_seed + self.n_envs))

    def check_disjoint(self, seeds: Sequence[int], what: str = "evaluation or tuning seeds") -> None:
        """ValueError, before any training, if the controller's first-round task seeds meet the given seeds."""
        shared = sorted(set(self.first_round_seeds()) & set(rc.check_seeds("seeds", seeds)))
        if shared:
            raise ValueError(f"the controllers' training task seeds {self.first_training_seed}.."
                             f"{self.first_training_seed + self.n_envs - 1} (controller.first_training_seed) overlap "
                             f"the {what} {shared[:5]}{'...' if len(shared) > 5 else ''}: move one of them")

    def check_steps(self, steps: int) -> None:
        """ValueError naming controller.decision_interval if runs of `steps` cannot hold one decision."""
        rc.check_int("steps", steps, 1)
        if self.decision_interval > steps:
            raise ValueError(f"controller.decision_interval ({self.decision_interval}) must be at most the run's "
                             f"steps ({steps})")

    def schedule(self, steps: int) -> rc.ScheduleConfig:
        """The controller's ScheduleConfig for runs of `steps` optimiser steps (validated there)."""
        low, high = self.lr_range
        self.check_steps(steps)
        grid = tuple(float(lr) for lr in np.logspace(math.log10(low), math.log10(high), CONTROLLER_GRID_SIZE))
        return rc.ScheduleConfig(lr_grid=grid, start_index=self.start_index, steps=steps,
                                 features="validation" if self.validation_state else "control",
                                 reward="validation" if self.validation_reward else "training",
                                 validation_examples=self.validation_examples,
                                 lr_factors=tuple(self.lr_factors), decision_interval=self.decision_interval)

    def with_knobs(self, params: dict) -> "ControllerConfig":
        """This config with the search's controller.* knobs of a configuration (binary: 1.0 is yes)."""
        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict of knob -> value, got {type(params).__name__}")
        knobs = {name.removeprefix("controller."): bool(value) for name, value in params.items()
                 if name.startswith("controller.")}
        unknown = sorted(set(knobs) - {"validation_state", "validation_reward"})
        if unknown:
            raise ValueError(f"unknown controller knob(s) {unknown}: the search knows controller.validation_state "
                             "and controller.validation_reward")
        return replace(self, **knobs)


def vector_env(config: Config, n_envs: int) -> LRControlVectorEnv:
    """n_envs tasks of a run config on LRControlVectorEnv (its task, schedule, dtype and device): the one
    place a controller's environment is built, to train on (controller_env) and to run frozen (run_policy)."""
    return LRControlVectorEnv(n_envs, config.task, config.schedule, dtype=config.dtype, device=config.device)


def controller_env(config: Config, controller: ControllerConfig) -> tuple[Config, LRControlVectorEnv]:
    """What every learner trains on: the run config of the controller's policy (config with
    controller.schedule(config.schedule.steps)) and its training environment, controller.n_envs tasks at once."""
    run_config = config.with_overrides({"schedule": asdict(controller.schedule(config.schedule.steps))})
    return run_config, vector_env(run_config, controller.n_envs)


def decisions_per_episode(schedule: rc.ScheduleConfig) -> int:
    """Environment steps of one episode: ceil(steps / decision_interval)."""
    return -(-schedule.steps // schedule.decision_interval)


# ---------------------------------------------------------------------------------------------------
# The DQN controller: training, its greedy policy, and a policy's frozen runs
# ---------------------------------------------------------------------------------------------------


def train_controller(config: Config, controller: ControllerConfig) -> tuple[Config, rc.DQNAgent, pd.DataFrame]:
    """Train a controller (config.dqn's DQN on controller.schedule(config.schedule.steps)) over
    n_envs x training_rounds task episodes on LRControlVectorEnv. Returns the config its policy runs with
    (for frozen_agent_runs), the agent, and its learning curve: one row per training episode (round,
    seed, return log L_0 - log L_T, whether it diverged)."""
    run_config, env = controller_env(config, controller)
    schedule = run_config.schedule
    agent = rc.DQNAgent(schedule.state_dim, schedule.n_actions, run_config.dqn, controller.agent_seed,
                        rc.DTYPES[run_config.dtype], run_config.device)
    history = train_agent_on_vector_env(env, agent, (decisions_per_episode(schedule) + 1) * controller.training_rounds,
                                        controller.first_training_seed, controller.updates_per_step)
    return run_config, agent, training_curve(history, controller.n_envs)


def training_curve(history: dict[str, list], n_envs: int) -> pd.DataFrame:
    """One row per finished training episode of train_agent_on_vector_env's history: episode, seed, return
    (log L_0 - log L_T), length (decisions), diverged, and its round (n_envs episodes each)."""
    curve = pd.DataFrame({"episode": range(len(history["episode_returns"])), "seed": history["episode_seeds"],
                          "return": history["episode_returns"], "length": history["episode_lengths"],
                          "diverged": history["episode_terminated"]})
    curve["round"] = curve["episode"] // n_envs
    return curve


def greedy_policy(agent: rc.DQNAgent) -> Callable[[np.ndarray], np.ndarray]:
    """The agent's frozen greedy policy for many observations at once (argmax of its policy network); the
    agent, its RNG included, is left as it is."""
    def act(observations: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            states = torch.as_tensor(observations, dtype=agent.dtype, device=agent.device)
            return agent.policy_net(states).argmax(dim=-1).cpu().numpy()
    return act


def run_policy(config: Config, act: Callable[[np.ndarray], np.ndarray], seeds: Sequence[int],
               method: str = "policy") -> list[RunResult]:
    """A policy (observations [K, state_dim] -> actions [K]: greedy_policy, or a stable-baselines3 model's
    predict) steering Adam for one episode of config.schedule.steps optimiser steps on every seed at once
    (LRControlVectorEnv, the batched engine): per seed a RunResult logging the loss and lr of every
    optimiser step, as the reference loop does, and the final network (none for a run that diverged)."""
    seeds = rc.check_seeds("seeds", seeds)
    env = vector_env(config, len(seeds))
    observation, _ = env.reset(seed=seeds)
    series = [{"loss": [], "lr": []} for _ in seeds]
    finished, diverged_at = np.zeros(len(seeds), dtype=bool), [None] * len(seeds)
    started = time.perf_counter()
    while not finished.all():
        observation, _, terminated, truncated, info = env.step(np.asarray(act(observation)))
        for k in np.flatnonzero(~finished):
            losses = info["step_losses"][k, :info["steps_taken"][k]]
            if terminated[k]:  # the interval's last loss is the non-finite one: the series stop before it
                diverged_at[k], losses = len(series[k]["loss"]) + len(losses) - 1, losses[:-1]
            series[k]["loss"] += losses.tolist()
            series[k]["lr"] += [float(info["lr"][k])] * len(losses)
        finished |= terminated | truncated
    seconds = (time.perf_counter() - started) / len(seeds)
    models = env.net.to_modules(lambda: rc.MaclaurinNet(config.task))
    return [RunResult(method, config.with_seed(seed).to_dict(),
                      {name: np.asarray(values) for name, values in series[k].items()}, seconds, diverged_at[k],
                      models[k] if diverged_at[k] is None else None) for k, seed in enumerate(seeds)]


def frozen_agent_runs(config: Config, agent: rc.DQNAgent, seeds: Sequence[int]) -> list[RunResult]:
    """A DQN agent's greedy policy, frozen, on a controller's schedule (train_controller's run config and
    agent): run_policy on every seed at once, as method rl_described_frozen. The agent is left unchanged.
    (An agent on the original's schedule, a decision every step, runs frozen on the batched engine:
    rlr_study.evaluate_frozen_agent.)"""
    if config.dqn.variant != "described":
        raise ValueError("a controller's schedule runs the 'described' variant only")
    return run_policy(config, greedy_policy(agent), seeds, agent_method_name(config.dqn.variant, frozen=True))


# ---------------------------------------------------------------------------------------------------
# stable-baselines3's learners, through SB3VectorEnv
# ---------------------------------------------------------------------------------------------------


class SB3VectorEnv(VecEnv):
    """LRControlVectorEnv as a stable-baselines3 VecEnv, so that SB3's learners train on the batched tasks.

    Hand-written because SB3 (2.x) takes only its own VecEnv API, not a gymnasium.vector.VectorEnv: it
    resets a finished task within the same step (the returned observation is the new task's; the last one
    is in info["terminal_observation"], and info["TimeLimit.truncated"] marks a truncation), where
    Gymnasium 1.x resets it on the next step. Here a finished task is reset at once through
    reset(options={"reset_mask": ...}); the other tasks are untouched. Every finished episode is logged in
    `episodes` (seed, return, length, terminated): the learning curve.
    """

    def __init__(self, env: LRControlVectorEnv) -> None:
        if not isinstance(env, LRControlVectorEnv):
            raise TypeError(f"env must be an LRControlVectorEnv, got {type(env).__name__}")
        self.env, self.render_mode = env, None
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        self.episodes: list[dict] = []
        self.returns, self.lengths = np.zeros(env.num_envs), np.zeros(env.num_envs, dtype=np.int64)
        self.actions: np.ndarray | None = None
        self.time_limit_terminal = time_limit_is_terminal(env)

    def reset(self) -> np.ndarray:
        seeds = None if self._seeds[0] is None else [int(seed) for seed in self._seeds]
        observation, _ = self.env.reset(seed=seeds)
        self._reset_seeds()
        self.returns[:], self.lengths[:] = 0.0, 0
        return observation

    def step_async(self, actions: np.ndarray) -> None:
        self.actions = np.asarray(actions).reshape(self.num_envs)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        observation, rewards, terminated, truncated, info = self.env.step(self.actions)
        done = terminated | truncated
        self.returns += rewards
        self.lengths += 1
        infos: list[dict] = [{} for _ in range(self.num_envs)]
        for k in np.flatnonzero(done):
            # SB3 bootstraps a done marked TimeLimit.truncated: not where the time limit is terminal
            infos[k] = {"terminal_observation": observation[k].copy(),
                        "TimeLimit.truncated": bool(truncated[k]) and not self.time_limit_terminal}
            self.episodes.append({"seed": int(info["episode_seed"][k]), "return": float(self.returns[k]),
                                  "length": int(self.lengths[k]), "terminated": bool(terminated[k])})
        if done.any():
            fresh, _ = self.env.reset(options={"reset_mask": done})
            observation[done] = fresh[done]
            self.returns[done], self.lengths[done] = 0.0, 0
        return observation, rewards.astype(np.float32), done, infos

    def close(self) -> None:
        self.env.close()

    def seed(self, seed: int | None = None) -> Sequence[None | int]:
        """SB3's VecEnv.seed (task i on seed + i at the next reset), with the seed checked first; without a
        seed, one from the environment's own generator (SB3 would draw it from numpy's global RNG)."""
        return super().seed(self.env.draw_seeds(1)[0] if seed is None else rc.check_seed("seed", seed))

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        """Per task: its value of an attribute that differs between tasks (episode_seed, lr, lr_index, the
        running return and length), else the shared value (render_mode, the spaces, the schedule...)."""
        per_task = {"episode_seed": lambda k: int(self.env.episode_seeds[k]),
                    "lr": lambda k: float(self.env.lr[k]), "lr_index": lambda k: int(self.env.lr_index[k]),
                    "episode_return": lambda k: float(self.returns[k]),
                    "episode_length": lambda k: int(self.lengths[k])}
        if attr_name in per_task:
            return [per_task[attr_name](k) for k in self._get_indices(indices)]
        shared = getattr(self, attr_name) if hasattr(self, attr_name) else getattr(self.env, attr_name)
        return [shared for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        raise AttributeError("SB3VectorEnv's tasks have no attributes to set")

    def env_method(self, method_name: str, *method_args, indices: Any = None, **method_kwargs) -> list[Any]:
        raise AttributeError(f"SB3VectorEnv's tasks have no method {method_name!r}")

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]


@contextmanager
def quiet_sb3():
    """SB3's two expected warnings silenced: PPO's (64 does not divide a rollout of 16 x 101, so the last
    mini-batch is smaller) and DQN's (its target update follows each vector step, as sb3_dqn intends)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "You have specified a mini-batch size|The number of environments used")
        yield


# ---------------------------------------------------------------------------------------------------
# The learners' settings and labels, and a trained controller
# ---------------------------------------------------------------------------------------------------

CONTROLLER_RANGES = {"dqn.lr": (1e-5, 1e-2, "log"), "dqn.horizon": (10.0, 1000.0, "log"),
                     "dqn.undiscounted": (0, 1, "binary"), "dqn.epsilon_decay": (100.0, 10_000.0, "log"),
                     "controller.validation_state": (0, 1, "binary"), "controller.validation_reward": (0, 1, "binary")}
"""The DQN controller's search, fixed before any controller result: the Q-network's Adam lr, the discount
as a horizon in decisions (10 decisions = 1 000 optimiser steps), or no discount at all (dqn.undiscounted:
gamma = 1, the telescoping return log L_0 - log L_T itself, valid because the run's end is terminal in the
controller's state; half of the pool), and the exploration time constant in acts (a training of 4 rounds on
16 tasks acts about 6 500 times); whether the state holds the validation loss and whether the reward is its
decrease (ControllerConfig.validation_state, validation_reward; half of the pool each)."""

CONTROLLER_DQN = {"double_dqn": True, "replay_capacity": 100_000, "learning_starts": 256}
"""The controller DQN's fixed settings: Double DQN, a replay memory holding every transition of its training."""

DQN_CONTROLLER, SB3_PPO, SB3_DQN = "DQN controller, tuned", "PPO controller (stable-baselines3), tuned", \
    "DQN controller (stable-baselines3), tuned"
"""Labels of the learned controllers in the tables."""

BEST_CONTROLLER_RULE = ("the learned controller with the lowest validation MSE on the tuning seeds (for each "
                        "tuned learner, its chosen configuration's)")
"""How the pre-registered best RL controller is picked: on validation data, never on test data."""


SB3_RANGES = {
    "ppo": {"sb3.learning_rate": (1e-5, 1e-2, "log"), "sb3.rollout_episodes": (1.0, 4.0, "log-int"),
            "sb3.ent_coef": (1e-5, 0.1, "log"), "dqn.horizon": (10.0, 1000.0, "log"),
            "dqn.undiscounted": (0, 1, "binary")},
    "dqn-sb3": {"sb3.learning_rate": (1e-5, 1e-2, "log"), "sb3.exploration_fraction": (0.05, 0.5, "linear"),
                "sb3.tau": (1e-3, 0.2, "log"), "dqn.horizon": (10.0, 1000.0, "log"),
                "dqn.undiscounted": (0, 1, "binary")},
}
"""The SB3 learners' searches, as many configurations as the DQN controller's (the study's tuning budget),
fixed before any result. PPO: its Adam lr, the episodes per task in one rollout (n_steps = that many
episodes' decisions, made to divide the training rounds: rollout_steps), its entropy bonus, the discount
(horizon in decisions, or none). DQN: its lr, the fraction of training spent lowering epsilon, its soft
target update's tau (per vector step), the discount."""


def sb3_gamma(params: dict) -> float:
    """The discount of an SB3 configuration: 1 - 1 / horizon, or 1 where dqn.undiscounted says yes (the
    run's end is terminal in the controller's state, so SB3 does not bootstrap past it: SB3VectorEnv)."""
    return 1.0 if params.get("dqn.undiscounted") else 1.0 - 1.0 / params["dqn.horizon"]


def rollout_steps(params: dict, decisions: int, rounds: int) -> int:
    """PPO's n_steps: sb3.rollout_episodes episodes of `decisions` per task, lowered to the nearest divisor of
    the training's rounds, so that every rollout is whole and the training is a whole number of rollouts."""
    episodes = max(1, min(int(params.get("sb3.rollout_episodes", 1)), rounds))
    while rounds % episodes:
        episodes -= 1
    return episodes * decisions


def _sb3_ppo(env, seed: int, decisions: int, rounds: int, params: dict):
    """SB3's PPO at a configuration of SB3_RANGES["ppo"], its defaults otherwise."""
    from stable_baselines3 import PPO
    return PPO("MlpPolicy", env, learning_rate=params["sb3.learning_rate"], n_steps=rollout_steps(params, decisions, rounds),
               ent_coef=params["sb3.ent_coef"], gamma=sb3_gamma(params), seed=seed, device="cpu")


def _sb3_dqn(env, seed: int, decisions: int, rounds: int, params: dict):
    """SB3's DQN with the controller DQN's design (CONTROLLER_DQN, DQNConfig's defaults: batch 64, epsilon
    from 0.9 to 0.05, one update per transition) at a configuration of SB3_RANGES["dqn-sb3"]: its lr,
    exploration fraction, tau (SB3 updates the target once per vector step) and discount. SB3's DQN has no
    Double DQN."""
    from stable_baselines3 import DQN
    return DQN("MlpPolicy", env, learning_rate=params["sb3.learning_rate"], buffer_size=CONTROLLER_DQN["replay_capacity"],
               learning_starts=CONTROLLER_DQN["learning_starts"], batch_size=64, tau=params["sb3.tau"],
               gamma=sb3_gamma(params), train_freq=1, gradient_steps=env.num_envs, target_update_interval=1,
               exploration_fraction=params["sb3.exploration_fraction"], exploration_initial_eps=0.9,
               exploration_final_eps=0.05, seed=seed, device="cpu")


SB3_LEARNERS = {"ppo": ("PPO", _sb3_ppo, SB3_PPO), "dqn-sb3": ("DQN", _sb3_dqn, SB3_DQN)}
"""stable-baselines3 learners: name -> (its class in stable_baselines3, builder, label). The builders are private:
SB3 seeds torch, numpy and random globally when it builds a model and draws from them while it learns, so
building and learning happen together inside one rc.global_rng_preserved() block (train_sb3_controller)."""


def sb3_policy(learner: str, config: Config, weights: dict):
    """An SB3 learner's trained policy rebuilt from plain tensors: its algorithm's MlpPolicy at the builders'
    (default) architecture for the run's observation and action spaces, with weights loaded (strict) and in
    eval mode. SB3's own load() is not used: it unpickles the saved zip's data with cloudpickle, so a stored
    file could run code. The global random state is left as it was (building the policy draws its initial
    weights, which the loaded ones replace)."""
    if learner not in SB3_LEARNERS:
        raise ValueError(f"learner must be one of {sorted(SB3_LEARNERS)}, got {learner!r}")
    policy_class = importlib.import_module(f"stable_baselines3.{SB3_LEARNERS[learner][0].lower()}").MlpPolicy
    spaces = LRControlEnv(config.task, config.schedule, dtype=config.dtype)
    with rc.global_rng_preserved():
        policy = policy_class(spaces.observation_space, spaces.action_space, lr_schedule=lambda _: 0.0)
    policy.load_state_dict(weights)
    policy.set_training_mode(False)
    return policy


@dataclass
class TrainedController:
    """A controller trained over many tasks, then frozen: what notebook 04 evaluates and notebook 05 reloads."""

    label: str
    """its label in the tables"""
    learner: str
    """'dqn' (rlr_core.DQNAgent) or an SB3_LEARNERS name"""
    run_config: dict
    """Config.to_dict() of the runs its policy steers (the controller's schedule)"""
    policy: dict
    """the policy's weights as plain tensors: the DQN's policy_net state_dict, or the SB3 model's
    policy.state_dict() (rebuilt by sb3_policy from the learner's class and the run's spaces, never unpickled)"""
    curve: pd.DataFrame
    """one row per training episode: episode, round, seed, return (log L_0 - log L_T), diverged"""
    training_seconds: float
    """wall seconds of its training (one process, one thread)"""
    params: dict = field(default_factory=dict)
    """the configuration it was trained with (the tuned knobs)"""
    validation_mse: list = field(default_factory=list)
    """its frozen runs' validation MSE on the tuning seeds (NaN: diverged)"""

    def act(self) -> Callable[[np.ndarray], np.ndarray]:
        """The frozen greedy policy: observations [K, state_dim] -> actions [K] (for run_policy)."""
        config = Config.from_dict(self.run_config)
        if self.learner == "dqn":
            agent = rc.DQNAgent(config.schedule.state_dim, config.schedule.n_actions, config.dqn, 0,
                                rc.DTYPES[config.dtype], config.device)
            agent.policy_net.load_state_dict(self.policy)
            return greedy_policy(agent)
        policy = sb3_policy(self.learner, config, self.policy)
        return lambda observations: policy.predict(observations, deterministic=True)[0]

    def scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int,
                  loss_average: str = "last") -> rc.PolicyScheduler:
        """This controller, frozen, steering `optimizer` over a run of total_steps optimiser steps: an
        rlr_core.PolicyScheduler, advanced by step(loss) after every optimizer.step() (first with L_0).

        The decision interval is scaled to the run length as the controller was trained: a controller
        trained to decide every 100 of 10 000 steps decides every 3 of 300 (round(total_steps x 100 /
        10 000), at least 1), so it makes about as many decisions (a run shorter than its trained number of
        decisions gets one per step) and its budget-left feature runs from 1 to 0 over your run. Its lr range
        (the grid's ends) is the one it was trained on, in absolute units."""
        rc.check_int("total_steps", total_steps, 1)
        config = Config.from_dict(self.run_config)
        interval = max(1, round(total_steps * config.schedule.decision_interval / config.schedule.steps))
        return rc.PolicyScheduler(optimizer, self.act(), replace(config.schedule, steps=total_steps, decision_interval=interval),
                                  loss_average, rc.DTYPES[config.dtype])

    @property
    def training_optimiser_steps(self) -> int:
        return len(self.curve) * Config.from_dict(self.run_config).schedule.steps


# ---------------------------------------------------------------------------------------------------
# Training and tuning on the study's protocol: task seeds of their own, validation on the tuning seeds
# ---------------------------------------------------------------------------------------------------


def validate_controller(trained: TrainedController, study: StudyConfig) -> TrainedController:
    """Its frozen policy on the tuning seeds (never an evaluation seed): validation MSE per seed."""
    runs = frozen_controller_runs(trained, study.tuning_seeds)
    trained.validation_mse = [heldout_mse(run, "validation", study.n_heldout_examples) for run in runs]
    return trained


def train_dqn_controller(config: Config, study: StudyConfig, controller: ControllerConfig, params: dict
                         ) -> TrainedController:
    """One configuration of the DQN controller (CONTROLLER_RANGES' knobs), trained and validated."""
    controller = controller.with_knobs(params)
    started = time.perf_counter()
    run_config, agent, curve = train_controller(dqn_run_config(config, controller, params), controller)
    trained = TrainedController(DQN_CONTROLLER, "dqn", run_config.to_dict(), policy_weights(agent), curve,
                                time.perf_counter() - started, dict(params))
    return validate_controller(trained, study)


def dqn_run_config(config: Config, controller: ControllerConfig, params: dict) -> Config:
    """The run config of a DQN controller configuration: the controller's schedule (controller already
    carries the configuration's controller.* knobs: ControllerConfig.with_knobs) and its DQN at the
    configuration's dqn.* knobs over CONTROLLER_DQN. The schedule goes in with the DQN: gamma = 1 is valid
    only where the state sees the budget."""
    dqn_params = {name: value for name, value in params.items() if not name.startswith("controller.")}
    return config.with_overrides({"schedule": asdict(controller.schedule(config.schedule.steps)),
                                  "dqn": {**CONTROLLER_DQN, **methods.dqn_overrides(dqn_params)["dqn"]}})


def policy_weights(agent: rc.DQNAgent) -> dict:
    """A copy of the agent's policy network weights (plain tensors): a frozen policy that later training
    does not move."""
    return {name: tensor.detach().clone() for name, tensor in agent.policy_net.state_dict().items()}


def frozen_dqn(run_config: Config, agent: rc.DQNAgent, controller: ControllerConfig, history: dict[str, list],
               seconds: float, params: dict) -> TrainedController:
    """The DQN controller as it stands: its greedy policy frozen (policy_weights) with its training curve so far."""
    return TrainedController(DQN_CONTROLLER, "dqn", run_config.to_dict(), policy_weights(agent),
                             training_curve(history, controller.n_envs), seconds, dict(params))


def train_sb3_controller(config: Config, study: StudyConfig, controller: ControllerConfig, learner: str,
                         params: dict) -> TrainedController:
    """An SB3 learner at one configuration of SB3_RANGES[learner], on the controller's environment, task
    seeds, episodes and reward; validated."""
    if learner not in SB3_LEARNERS:
        raise ValueError(f"learner must be one of {sorted(SB3_LEARNERS)}, got {learner!r}")
    methods.check_ranges(learner, SB3_RANGES[learner])
    if not isinstance(params, dict) or set(params) != set(SB3_RANGES[learner]):
        raise ValueError(f"params must give {learner}'s knobs {sorted(SB3_RANGES[learner])}, got {params!r}")
    run_config, tasks = controller_env(config, controller)
    env = SB3VectorEnv(tasks)
    decisions = decisions_per_episode(run_config.schedule)
    _, build, label = SB3_LEARNERS[learner]
    started = time.perf_counter()
    with quiet_sb3(), rc.global_rng_preserved():  # SB3 seeds torch, numpy and random globally
        model = build(env, controller.agent_seed, decisions, controller.training_rounds, params)
        env.seed(controller.first_training_seed)  # after the model: SB3 seeds the env with its own seed
        model.learn(controller.n_envs * decisions * controller.training_rounds)
    seconds = time.perf_counter() - started
    curve = pd.DataFrame(env.episodes).rename(columns={"terminated": "diverged"})
    curve.insert(0, "episode", range(len(curve)))
    curve["round"] = curve["episode"] // controller.n_envs
    weights = {name: tensor.detach().cpu().clone() for name, tensor in model.policy.state_dict().items()}
    trained = TrainedController(label, learner, run_config.to_dict(), weights, curve, seconds, dict(params))
    return validate_controller(trained, study)


def submit_controllers(config: Config, study: StudyConfig, controller: ControllerConfig,
                       learners: Sequence[str] = ("dqn", *SB3_LEARNERS)) -> Callable[[], list[TrainedController]]:
    """Start training every controller of the learners named: the DQN controller ('dqn') at
    study.tuning_budget configurations of CONTROLLER_RANGES and each SB3 learner at as many of
    SB3_RANGES[learner] (scrambled Sobol, each its own draw, as every family), one Ray task per training when
    Ray is started (peers.submit_tasks: they train while this process goes on, in the order submitted).
    Returns collect(), for choose_controllers."""
    learners = list(learners)
    unknown = sorted(set(learners) - {"dqn", *SB3_LEARNERS})
    if unknown or not learners or len(set(learners)) != len(learners):
        raise ValueError(f"learners must name some of {['dqn', *SB3_LEARNERS]} once each, got {learners!r}")
    collects = []
    if "dqn" in learners:
        configurations = methods.sobol_configurations(CONTROLLER_RANGES, study.tuning_budget,
                                                      methods.family_seed("dqn_controller", study.search_seed))
        collects.append(peers.submit_tasks(train_dqn_controller, [(config, study, controller, params)
                                                                  for params in configurations]))
    collects.append(peers.submit_tasks(train_sb3_controller, [
        (config, study, controller, learner, params) for learner in SB3_LEARNERS if learner in learners
        for params in methods.sobol_configurations(SB3_RANGES[learner], study.tuning_budget,
                                                   methods.family_seed(learner, study.search_seed))]))
    return lambda: [trained for collect in collects for trained in collect()]


def choose_controllers(candidates: Sequence[TrainedController], study: StudyConfig
                       ) -> tuple[dict[str, TrainedController], pd.DataFrame]:
    """Per learner (label), the configuration with the lowest geometric-mean validation MSE on the tuning
    seeds (a diverged run scores +inf: stats.validation_score): label -> trained controller, and one row per
    controller trained ('configuration' counts within its learner). RuntimeError if any trained on an
    evaluation or tuning seed."""
    seen = {int(seed) for trained in candidates for seed in trained.curve["seed"]}
    if seen & (set(study.eval_seeds) | set(study.tuning_seeds)):
        raise RuntimeError("a controller trained on an evaluation or tuning seed: move controller.first_training_seed")
    rows, counts = [], {}
    for trained in candidates:
        counts[trained.label] = counts.get(trained.label, -1) + 1
        rows.append({"controller": trained.label, "configuration": counts[trained.label],
                     **trained.params, "validation MSE": stats.validation_score(trained.validation_mse),
                     "diverged": sum(not math.isfinite(value) for value in trained.validation_mse),
                     "training episodes": len(trained.curve), "training seconds": trained.training_seconds})
    table = pd.DataFrame(rows)
    table["chosen"] = False
    for _, part in table.groupby("controller", sort=False):  # the first of equals where every one diverged
        scores = part["validation MSE"].to_numpy()
        table.loc[part.index[int(np.argmin(scores)) if np.isfinite(scores).any() else 0], "chosen"] = True
    return {trained.label: trained for index, trained in enumerate(candidates) if table.loc[index, "chosen"]}, table


def tune_controllers(config: Config, study: StudyConfig, controller: ControllerConfig
                     ) -> tuple[dict[str, TrainedController], pd.DataFrame]:
    """submit_controllers, then choose_controllers: label -> trained controller, and the tuning table."""
    return choose_controllers(submit_controllers(config, study, controller)(), study)


def best_controller(table: pd.DataFrame) -> str:
    """The label picked by BEST_CONTROLLER_RULE from tune_controllers' table."""
    chosen = table[table["chosen"]]
    return str(chosen.loc[chosen["validation MSE"].idxmin(), "controller"])


def best_trained(trained: dict[str, TrainedController]) -> str:
    """BEST_CONTROLLER_RULE over trained controllers as they will be evaluated (label -> controller, e.g.
    with the DQN controller replaced by its agent trained to the learning curves' end): the label with the
    lowest validation score on the tuning seeds (the first of equals)."""
    if not trained:
        raise ValueError("best_trained needs at least one trained controller")
    scores = {label: stats.validation_score(controller.validation_mse) for label, controller in trained.items()}
    return min(scores, key=lambda label: scores[label])


# ---------------------------------------------------------------------------------------------------
# Frozen runs of trained controllers (notebook 04's evaluation seeds, notebook 05's held-out tasks)
# ---------------------------------------------------------------------------------------------------


def frozen_controller_runs(trained: TrainedController, seeds: Sequence[int], config: Config | None = None
                           ) -> list[RunResult]:
    """A frozen controller on the seeds (run_policy); config: another task's run config (its task and steps
    replace the controller's), e.g. notebook 05's held-out tasks."""
    run_config = Config.from_dict(trained.run_config)
    if config is not None:
        run_config = run_config.with_overrides({"task": asdict(config.task),
                                                "schedule": {"steps": config.schedule.steps}})
    return run_policy(run_config, trained.act(), seeds, trained.label)


def submit_controller_runs(controllers: dict[str, TrainedController], seeds: Sequence[int],
                           configs: dict[str, Config | None]) -> Callable[[], dict[str, dict[str, list[RunResult]]]]:
    """frozen_controller_runs of every controller under every config (label -> a task's run config, None
    for the controller's own), one Ray task each when Ray is started (peers.submit_tasks). Returns
    collect(): config label -> controller label -> runs."""
    calls = [(trained, list(seeds), config) for config in configs.values() for trained in controllers.values()]
    collect = peers.submit_tasks(frozen_controller_runs, calls)

    def gather() -> dict[str, dict[str, list[RunResult]]]:
        runs = iter(collect())
        return {name: {label: next(runs) for label in controllers} for name in configs}
    return gather


def run_controllers(controllers: dict[str, TrainedController], seeds: Sequence[int], config: Config | None = None
                    ) -> dict[str, list[RunResult]]:
    """Every frozen controller on the seeds (submit_controller_runs under one config): label -> runs."""
    return submit_controller_runs(controllers, seeds, {"runs": config})()["runs"]


# ---------------------------------------------------------------------------------------------------
# The file format: plain tensors and values, read back with torch.load(weights_only=True) and checked
# ---------------------------------------------------------------------------------------------------

CONTROLLERS_FILE_FORMAT, CONTROLLERS_FILE_VERSION = "rlr_scheduler.controllers", 2
"""save_controllers' file: version 2 holds plain tensors and values only (version 1 held SB3's pickled zips)."""

CONTROLLER_FIELDS = {"label": str, "learner": str, "run_config": dict, "policy": dict, "curve": dict,
                     "training_seconds": float, "params": dict, "validation_mse": list}
"""Every field a saved controller holds, with its type on disk (the curve as a dict of columns)."""


def save_controllers(controllers: dict[str, TrainedController], path: str | Path) -> Path:
    """The frozen controllers in one file (atomic), for notebook 05 and your own loop: plain tensors, strings,
    numbers, lists and dicts, so that torch.load(path, weights_only=True) reads it and nothing is unpickled."""
    payload = {"format": CONTROLLERS_FILE_FORMAT, "format_version": CONTROLLERS_FILE_VERSION, "controllers": {
        label: {"label": trained.label, "learner": trained.learner, "run_config": trained.run_config,
                "policy": {name: tensor.detach().cpu() for name, tensor in trained.policy.items()},
                "curve": trained.curve.to_dict(orient="list"), "training_seconds": float(trained.training_seconds),
                "params": dict(trained.params), "validation_mse": [float(value) for value in trained.validation_mse]}
        for label, trained in controllers.items()}}
    return atomic_write(path, lambda file: torch.save(payload, file))


def load_controllers(path: str | Path) -> dict[str, TrainedController]:
    """save_controllers' file back, read with weights_only=True (tensors and plain values, no code).
    FileNotFoundError for a missing file; ValueError naming the file and what is wrong for anything that is
    not such a file (random, truncated or empty bytes, another payload, missing fields, weights of the wrong
    shape for the controller's network)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run notebook 04_controllers first")
    where = f"load_controllers({str(path)!r})"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # random, truncated or empty bytes, or a pickle that is not plain data
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(f"{where}: not a file written by save_controllers (torch.load with weights_only=True "
                         f"failed: {type(error).__name__}: {first_line})") from error
    if not isinstance(payload, dict) or payload.get("format") != CONTROLLERS_FILE_FORMAT:
        raise ValueError(f"{where}: not a file written by save_controllers (no format={CONTROLLERS_FILE_FORMAT!r})")
    if payload.get("format_version") != CONTROLLERS_FILE_VERSION:
        raise ValueError(f"{where}: format_version {payload.get('format_version')!r}, this code reads "
                         f"version {CONTROLLERS_FILE_VERSION}")
    if not isinstance(payload.get("controllers"), dict) or not payload["controllers"]:
        raise ValueError(f"{where}: 'controllers' must be a non-empty dict of label -> controller")
    return {label: checked_controller(label, fields, f"{where}[{label!r}]")
            for label, fields in payload["controllers"].items()}


def load_controller(path: str | Path, label: str | None = None) -> TrainedController:
    """One frozen controller from a save_controllers file (read with weights_only=True): the one named
    label, or by default the file's best on validation (best_trained). Use it in your own loop with
    load_controller(path).scheduler(optimizer, total_steps)."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path (a save_controllers file), got {type(path).__name__}")
    if label is not None and not isinstance(label, str):
        raise TypeError(f"label must be a str (a controller's label) or None, got {type(label).__name__}")
    controllers = load_controllers(path)
    if label is None:
        return controllers[best_trained(controllers)]
    if label not in controllers:
        raise ValueError(f"label {label!r} is not in {str(path)!r}; it holds {sorted(controllers)}")
    return controllers[label]


def checked_controller(key: Any, fields: Any, where: str) -> TrainedController:
    """One saved controller (key: its key in the file, which must be its label) as a TrainedController
    whose policy loads, or ValueError saying why: exactly CONTROLLER_FIELDS of their types, a known
    learner, floating-point weights that are all finite, a curve of equally long list columns."""
    if not isinstance(fields, dict) or set(fields) != set(CONTROLLER_FIELDS):
        keys = sorted(map(str, fields)) if isinstance(fields, dict) else type(fields).__name__
        raise ValueError(f"{where}: a controller holds exactly {sorted(CONTROLLER_FIELDS)}, got {keys}")
    for name, kind in CONTROLLER_FIELDS.items():
        if not isinstance(fields[name], kind) or (kind is float and isinstance(fields[name], bool)):
            raise ValueError(f"{where}: {name} must be a {kind.__name__}, got {type(fields[name]).__name__}")
    if fields["label"] != key:
        raise ValueError(f"{where}: label {fields['label']!r} differs from its key {key!r} in the file")
    if fields["learner"] != "dqn" and fields["learner"] not in SB3_LEARNERS:
        raise ValueError(f"{where}: learner must be 'dqn' or one of {sorted(SB3_LEARNERS)}, got {fields['learner']!r}")
    for name, tensor in fields["policy"].items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{where}: policy must map names to tensors, got {type(tensor).__name__} for {name!r}")
        if not tensor.is_floating_point():
            raise ValueError(f"{where}: policy weight {name!r} must be floating-point, got {tensor.dtype}")
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{where}: policy weight {name!r} holds NaN or infinite values")
    curve = fields["curve"]
    if not {"episode", "seed", "return"} <= set(curve) or not all(isinstance(column, list) for column in curve.values()) \
            or len({len(column) for column in curve.values()}) != 1:
        raise ValueError(f"{where}: curve must hold equally long list columns episode, seed, return, ...")
    try:
        trained = TrainedController(**{**fields, "curve": pd.DataFrame(curve)})
        trained.act()  # rebuilds the network from run_config and loads the weights (strict: names and shapes)
    except (TypeError, ValueError, KeyError, RuntimeError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{where}: its run_config or policy weights do not make a controller: {first_line}") from error
    return trained
