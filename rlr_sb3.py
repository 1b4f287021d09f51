"""LRControlVectorEnv as a stable-baselines3 VecEnv: the adapter SB3's learners train through.

A module of its own so that `import rlr_env` (which gymnasium.make needs) does not import
stable-baselines3; only code that trains or rebuilds an SB3 learner imports this.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from stable_baselines3.common.vec_env import VecEnv

import rlr_core as rc
from rlr_env import LRControlVectorEnv


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
            infos[k] = {"terminal_observation": observation[k].copy(), "TimeLimit.truncated": bool(truncated[k])}
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
