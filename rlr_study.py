"""Runs over many seeds and methods: the layer the notebooks call for multi-seed work.

One seed runs the readable reference loop of rlr_core (the faithful single run); several seeds run the
batched engine rlr_batched in one process (the same runs, member by member: tests/test_batched.py).
"""

from __future__ import annotations

from typing import Sequence

import rlr_batched
import rlr_core as rc
from rlr_core import Config, RunResult

MODES = ("baseline", "full_batch", "agent")


def seed_range(first_seed: int, n_seeds: int) -> list[int]:
    """Seeds first_seed, ..., first_seed + n_seeds - 1, checked (notebook parameters seed, n_seeds)."""
    rc._check_int("seed", first_seed, 0)
    rc._check_int("n_seeds", n_seeds, 1)
    return list(range(first_seed, first_seed + n_seeds))


def train_seeds(mode: str, config: Config, seeds: Sequence[int], progress: bool = False,
                **options) -> list[RunResult]:
    """Train one run per seed: mode 'baseline', 'full_batch' (options lr, steps, method) or 'agent'.

    config.seed is replaced by each seed. One seed: rlr_core's loop; several: rlr_batched in one go.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    seeds = [int(seed) for seed in seeds]
    if not seeds:
        raise ValueError("seeds must not be empty")
    if len(seeds) == 1:
        single = rc.Config.from_dict({**config.to_dict(), "seed": seeds[0]})
        if mode == "baseline":
            return [rc.train_baseline(single, progress=progress)]
        if mode == "full_batch":
            return [rc.train_full_batch(single, progress=progress, **options)]
        return [rc.train_rl_scheduled(single, progress=progress)]
    if mode == "baseline":
        return rlr_batched.train_baseline(config, seeds, progress=progress)
    if mode == "full_batch":
        return rlr_batched.train_full_batch(config, seeds, progress=progress, **options)
    return rlr_batched.train_rl_scheduled(config, seeds, progress=progress)
