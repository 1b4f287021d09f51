"""The registry of methods: one declarative entry per method family, keyed by a stable key.

An entry (Method) says what a reader and the protocol need to know about a family: its kind, the ranges
its tuning searches, how to run one configuration of it on some seeds, and the one line of usage a reader
copies. The protocol (rlr_study) dispatches on the entry, never on a label; display labels are the
entries' own. Adding a family is one register() call, e.g. from a test file or a notebook:

    register(schedule_method("polynomial", "polynomial decay", {"lr": LR_RANGE, "power": (0.5, 3.0, "linear")},
                             lambda optimizer, params, steps: PolynomialLR(optimizer, steps, params["power"]),
                             "`PolynomialLR(optimizer, total_iters=steps, power={power:.2g})` on Adam at lr {lr:.2g}"))

A range is (low, high, scale), scale 'linear', 'log' or 'log-int' (log-spaced, rounded to an integer);
sobol_configurations spreads a budget of configurations over them (one scrambled Sobol sequence per call).

Read top to bottom: ranges and the Sobol sampler -> Method and the registry -> the builders of each kind
-> the study's entries.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

import rlr_batched
import rlr_core as rc
import rlr_peers as peers
from rlr_engine import AdamHD, Config
from rlr_results import RunResult

KINDS = ("schedule", "lr_free", "agent", "controller")
"""schedule: full-batch Adam under a learning-rate rule (batched engine); lr_free: a learning-rate-free
optimiser of another package, one instance per run; agent: a DQN scheduler learning within the run (batched
engine); controller: a controller trained beforehand on other tasks and frozen (rlr_controllers)."""

SCALES = ("linear", "log", "log-int", "binary")
"""How a unit coordinate maps onto a range (from_unit); 'binary' is a yes/no knob, range (0, 1): 1.0 when the
coordinate is >= 0.5, so half of a Sobol pool says yes."""


# ---------------------------------------------------------------------------------------------------
# Ranges and the one Sobol sampler
# ---------------------------------------------------------------------------------------------------


def check_ranges(name: str, ranges: Any) -> dict[str, tuple[float, float, str]]:
    """ranges: hyperparameter -> (low, high, scale), low < high, both > 0 on a log scale."""
    if not isinstance(ranges, dict) or not ranges:
        raise TypeError(f"{name}.ranges must be a non-empty dict of hyperparameter -> (low, high, scale), got {ranges!r}")
    for knob, spec in ranges.items():
        if not isinstance(spec, tuple) or len(spec) != 3 or spec[2] not in SCALES:
            raise ValueError(f"{name}.ranges[{knob!r}] must be (low, high, scale) with scale in {SCALES}, got {spec!r}")
        low, high, scale = spec
        rc.check_float(f"{name}.ranges[{knob!r}] low", low, -math.inf, math.inf)
        rc.check_float(f"{name}.ranges[{knob!r}] high", high, low, math.inf)
        if scale == "binary" and (low, high) != (0, 1):
            raise ValueError(f"{name}.ranges[{knob!r}] is binary: its range must be (0, 1), got {(low, high)!r}")
        if scale in ("log", "log-int") and low <= 0:
            raise ValueError(f"{name}.ranges[{knob!r}] is on a log scale: low must be > 0, got {low!r}")
    return ranges


def from_unit(u: float, low: float, high: float, scale: str) -> float:
    """A point u of [0, 1) mapped onto a range: linearly, log-uniformly (rounded for 'log-int'), or to
    1.0 / 0.0 ('binary': u >= 0.5)."""
    if scale == "binary":
        return 1.0 if u >= 0.5 else 0.0
    if scale == "linear":
        return float(low + u * (high - low))
    value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    return float(round(value)) if scale == "log-int" else float(value)


def sobol_configurations(ranges: dict[str, tuple[float, float, str]], budget: int, seed: int
                         ) -> list[dict[str, float]]:
    """budget configurations spread over the ranges by a scrambled Sobol sequence (scipy.stats.qmc): the
    same number for every family, placed the same unbiased way. Sobol's balance holds for powers of 2."""
    from scipy.stats import qmc

    rc.check_int("budget", budget, 1)
    rc.check_seed("seed", seed)
    names = list(check_ranges("sobol_configurations", ranges))
    points = qmc.Sobol(len(names), scramble=True, seed=seed).random(budget)
    return [{name: from_unit(float(u), *ranges[name]) for name, u in zip(names, point)} for point in points]


def family_seed(key: str, search_seed: int) -> int:
    """The seed of one family's Sobol draw: the study's search seed and the family's key, hashed (crc32,
    the same on every machine) into one integer by numpy's SeedSequence, so each family's draw is
    independent of every other's and a new family changes none of the others."""
    rc.check_seed("search_seed", search_seed)
    return int(np.random.SeedSequence([search_seed, zlib.crc32(key.encode("utf-8"))]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------------
# Method and the registry
# ---------------------------------------------------------------------------------------------------

Runner = Callable[..., list[RunResult]]
"""run(params, config, seeds, steps, progress) -> one RunResult per seed."""


@dataclass(frozen=True)
class Method:
    """One method family: the registry's entry."""

    key: str
    """stable identifier: what results, tables and dispatch use"""
    label: str
    """what a reader sees in tables and figures"""
    kind: str
    """one of KINDS"""
    ranges: dict
    """hyperparameter -> (low, high, scale): what tuning searches"""
    run: Runner
    """run(params, config, seeds, steps, progress=False) -> list[RunResult], one per seed"""
    usage: str
    """one line a reader copies, a format string of the chosen values (dots in names become underscores)"""
    tuned: str = ""
    """the label of its tuned runs (default: f"{label}, tuned")"""
    submit: Callable[..., Callable[[], list[RunResult]]] | None = None
    """optional: submit(params, config, seeds, steps) -> collect(), for runs that go out to Ray workers"""
    options: dict = field(default_factory=dict)
    """kind-specific settings (an agent's schedule options; a schedule family's knob domains)"""
    optimizer: Callable[[dict, int], Callable] | None = None
    """lr_free: optimizer(params, steps) -> make_optimizer(parameters, lr), for rlr_engine.train_full_batch"""
    make_scheduler: Callable | None = None
    """schedule: make_scheduler(optimizer, params, steps) -> the torch.optim.lr_scheduler the family follows
    (None: the lr stays at params['lr'], or a rule moves it)"""
    rule: Callable[[dict], dict] | None = None
    """schedule: rule(params) -> the engines' options of a rule that watches the run (plateau,
    hypergradient_lr); None: the lr follows a fixed schedule (lr_schedule)"""
    run_many: Callable[..., list[list[RunResult]]] | None = None
    """optional: run_many(pool, config, seeds, steps, progress) -> per configuration, one RunResult per seed,
    in one batch (the same runs as run, configuration by configuration, up to float rounding)"""

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key.replace("_", "").isalnum() or not self.key.islower():
            raise ValueError(f"key must be lower-case letters, digits and '_', got {self.key!r}")
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(f"{self.key}: label must be a non-empty string, got {self.label!r}")
        if self.kind not in KINDS:
            raise ValueError(f"{self.key}: kind must be one of {KINDS}, got {self.kind!r}")
        check_ranges(self.key, self.ranges)
        if not callable(self.run):
            raise TypeError(f"{self.key}: run must be callable(params, config, seeds, steps, progress)")
        if not isinstance(self.usage, str) or not self.usage:
            raise ValueError(f"{self.key}: usage must be a non-empty format string")
        for name in ("submit", "optimizer", "run_many", "make_scheduler", "rule"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise TypeError(f"{self.key}: {name} must be callable or None, got {type(getattr(self, name)).__name__}")
        if self.kind != "schedule" and (self.make_scheduler is not None or self.rule is not None):
            raise ValueError(f"{self.key}: make_scheduler and rule belong to schedule families, not to kind {self.kind!r}")

    @property
    def tuned_label(self) -> str:
        return self.tuned or f"{self.label}, tuned"

    def configurations(self, budget: int, seed: int) -> list[dict[str, float]]:
        """This family's pool of budget configurations: sobol_configurations over its ranges, its own
        scrambled draw (family_seed), so no two families share a coordinate (the lr) of one sequence."""
        return sobol_configurations(self.ranges, budget, family_seed(self.key, seed))

    def usage_line(self, params: dict) -> str:
        """How to use the family in one's own loop, with the values given (e.g. the tuned ones)."""
        return self.usage.format_map({key.replace(".", "_"): value for key, value in params.items()})

    def lr_schedule(self, params: dict, steps: int) -> np.ndarray:
        """A fixed-schedule family's learning rates [steps] for one configuration: its torch scheduler read out
        by rlr_batched.lr_schedule (the lr it sets before each step), or params['lr'] throughout."""
        if self.kind != "schedule" or self.rule is not None:
            raise ValueError(f"{self.key} has no fixed schedule: its lr moves with the run")
        rc.check_int("steps", steps, 1)
        self.check_params(params)
        if self.make_scheduler is None:
            return np.full(steps, float(params["lr"]))
        return rlr_batched.lr_schedule(lambda optimizer: self.make_scheduler(optimizer, params, steps),
                                       params["lr"], steps)

    def check_params(self, params: Any) -> dict:
        """A schedule family's configuration, checked before any work: every knob of its ranges, none other,
        each inside its domain (a finite number > 0 unless the entry says otherwise)."""
        return check_knobs(self.label, self.ranges, params, {}, self.options.get("domains", {}))

    def run_pool(self, pool: Sequence[dict], config: Any, seeds: Sequence[int], steps: int,
                 progress: bool = False) -> list[list[RunResult]]:
        """Every configuration of a pool on the same seeds: per configuration, one RunResult per seed; one
        batch where the family has run_many (a schedule family's whole pool x seeds; a learning-rate-free
        family's on a task object), else one by one.
        config: a polynomial Config (the original's task with its settings) or a task object (as_task)."""
        if self.run_many is not None:
            return self.run_many(list(pool), config, seeds, steps, progress)
        return [self.run(params, config, seeds, steps, progress) for params in pool]

    def start(self, params: dict, config: Config, seeds: Sequence[int], steps: int, progress: bool = False
              ) -> Callable[[], list[RunResult]]:
        """collect() of this configuration's runs: submitted now where the family has submit (Ray workers
        run them while the caller goes on), else run when collected."""
        if self.submit is not None:
            return self.submit(params, config, seeds, steps)
        return lambda: self.run(params, config, seeds, steps, progress)


REGISTRY: dict[str, Method] = {}
"""key -> Method: every family the study knows (the entries below; register adds more)."""


def register(method: Method, replace: bool = False) -> Method:
    """Add a family to the registry (replace=True to overwrite an entry of the same key)."""
    if not isinstance(method, Method):
        raise TypeError(f"register takes a Method, got {type(method).__name__}")
    if method.key in REGISTRY and not replace:
        raise ValueError(f"a method with key {method.key!r} is registered already (replace=True to overwrite)")
    labels = {other.label: key for key, other in REGISTRY.items() if key != method.key}
    if method.label in labels:
        raise ValueError(f"label {method.label!r} is taken by {labels[method.label]!r}: labels must be unique")
    REGISTRY[method.key] = method
    return method


def unregister(key: str) -> Method:
    """Remove a family (e.g. one a test registered) and return it."""
    return REGISTRY.pop(get(key).key)


def get(key: str) -> Method:
    """The entry of a key (ValueError listing the keys there are)."""
    if key not in REGISTRY:
        raise ValueError(f"no method with key {key!r}; registered: {list(REGISTRY)}")
    return REGISTRY[key]


def keys(kind: str | None = None) -> list[str]:
    """The registered keys, in registration order, of one kind or all."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    return [key for key, method in REGISTRY.items() if kind is None or method.kind == kind]


def tuned_labels() -> dict[str, str]:
    """tuned label -> key, for reading tables back."""
    return {method.tuned_label: key for key, method in REGISTRY.items()}


# ---------------------------------------------------------------------------------------------------
# Builders: one per kind, so that an entry is data plus at most a small function
# ---------------------------------------------------------------------------------------------------


def as_task(config: Any) -> Any:
    """The task a family runs on: a polynomial Config is the original's task with its settings
    (rlr_batched.PolynomialTask), a task object (rlr_batched.PolynomialTask, rlr_tasks.MNIST1DTask) is itself."""
    if isinstance(config, Config):
        return rlr_batched.PolynomialTask(config)
    if not all(callable(getattr(config, name, None)) for name in ("train", "train_own_optimizers")):
        raise TypeError(f"config must be a Config or a task (rlr_batched.PolynomialTask, rlr_tasks.MNIST1DTask), "
                        f"got {type(config).__name__}")
    return config


def split_by_configuration(runs: list[RunResult], n_configurations: int) -> list[list[RunResult]]:
    """Configuration-major runs (seeds within) as one list of runs per configuration."""
    per = len(runs) // n_configurations
    return [runs[index * per:(index + 1) * per] for index in range(n_configurations)]


def schedule_method(key: str, label: str, ranges: dict, make_scheduler: Callable | None, usage: str, *,
                    tuned: str = "", options: Callable[[dict], dict] | None = None,
                    domains: dict | None = None) -> Method:
    """A schedule family: Adam (the task's batched engine, task.train) from params['lr'] under
    make_scheduler(optimizer, params, steps), a torch.optim.lr_scheduler (None: the lr stays), or under a
    rule that watches the run, given as options(params) -> the engine's keyword options (plateau,
    hypergradient_lr; rlr_batched.train_full_batch). domains: where a knob is valid (check_knobs; default
    a finite number > 0)."""
    def run_many(pool: list[dict], config: Any, seeds: Sequence[int], steps: int, progress: bool = False
                 ) -> list[list[RunResult]]:
        seeds, task = rc.check_seeds("seeds", seeds), as_task(config)
        rc.check_int("steps", steps, 1)
        if not pool:
            raise ValueError(f"{key}: the pool of configurations is empty")
        for params in pool:
            method.check_params(params)
        per_run = [params for params in pool for _ in seeds]  # configuration-major, seeds within
        if options is None:
            lr = np.repeat(np.stack([method.lr_schedule(params, steps) for params in pool]), len(seeds), axis=0)
        else:
            lr = np.array([params["lr"] for params in per_run])
        rule = [options(params) for params in per_run] if options is not None else []
        extra = {name: [item[name] for item in rule] for name in (rule[0] if rule else {})}
        runs = task.train([seed for _ in pool for seed in seeds], lr, steps, key, progress, **extra)
        return split_by_configuration(runs, len(pool))

    def run(params: dict, config: Any, seeds: Sequence[int], steps: int, progress: bool = False) -> list[RunResult]:
        return run_many([params], config, seeds, steps, progress)[0]

    method = Method(key, label, "schedule", ranges, run, usage, tuned, options={"domains": dict(domains or {})},
                    run_many=run_many, make_scheduler=make_scheduler, rule=options)
    return method


POSITIVE = (0.0, math.inf, True, True)
"""A knob's default domain: a finite number > 0 (low, high, low_open, high_open)."""


def check_knobs(method: str, ranges: dict, params: Any, defaults: dict, domains: dict) -> dict:
    """A learning-rate-free optimiser's knobs, checked before any work: known, all given (or defaulted),
    each inside its domain (domains: knob -> (low, high, low_open, high_open), default POSITIVE).
    Returns them with the defaults filled in."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of {method}'s knobs, got {type(params).__name__}")
    unknown = sorted(set(params) - set(ranges))
    if unknown:
        raise ValueError(f"{method} has no knob(s) {unknown}; its knobs are {sorted(ranges)}")
    missing = sorted(set(ranges) - set(params) - set(defaults))
    if missing:
        raise ValueError(f"{method} needs its knob(s) {missing} (its knobs are {sorted(ranges)})")
    for knob, value in params.items():
        low, high, low_open, high_open = domains.get(knob, POSITIVE)
        rc.check_float(f"{method}.{knob}", value, low, high, low_open=low_open, high_open=high_open)
    return {**defaults, **params}


def lr_free_method(key: str, label: str, ranges: dict, make_optimizer: Callable, usage: str, *,
                   defaults: dict | None = None, domains: dict | None = None) -> Method:
    """A learning-rate-free optimiser of another package: make_optimizer(parameters, params, steps) -> a
    torch optimiser, one instance per run (its step size comes from norms over all parameters, so runs
    must not share one) over a batched forward and backward pass (rlr_batched.train_own_optimizers), as
    Ray tasks when Ray is started (rlr_peers.submit_per_seed).
    defaults: knobs a run may leave out, with their values; domains: where a knob is valid (check_knobs)."""
    defaults, domains = dict(defaults or {}), dict(domains or {})

    def factory(params: dict, steps: int) -> Callable:
        knobs = check_knobs(label, ranges, params, defaults, domains)
        rc.check_int("steps", steps, 1)
        return lambda parameters, lr: make_optimizer(parameters, knobs, steps)

    def submit(params: dict, config: Any, seeds: Sequence[int], steps: int) -> Callable[[], list[RunResult]]:
        if not isinstance(config, Config):  # another task: its own batched engine, in this process
            return lambda: run_many([params], config, seeds, steps)[0]
        return peers.submit_per_seed(factory(params, steps), key, config, rc.check_seeds("seeds", seeds), steps)

    def run(params: dict, config: Any, seeds: Sequence[int], steps: int, progress: bool = False) -> list[RunResult]:
        return submit(params, config, seeds, steps)()

    def run_many(pool: list[dict], config: Any, seeds: Sequence[int], steps: int, progress: bool = False
                 ) -> list[list[RunResult]]:
        """On the polynomial task (a Config) one configuration at a time through run (Ray tasks per seed); on
        a task object the whole pool x seeds in one batch, run k under the k-th configuration's instance."""
        if isinstance(config, Config):
            return [run(params, config, seeds, steps, progress) for params in pool]
        seeds, task = rc.check_seeds("seeds", seeds), as_task(config)
        if not pool:
            raise ValueError(f"{key}: the pool of configurations is empty")
        makers = [factory(params, steps) for params in pool for _ in seeds]  # configuration-major, seeds within
        runs = task.train_own_optimizers([seed for _ in pool for seed in seeds], makers, steps, key, progress)
        return split_by_configuration(runs, len(pool))

    return Method(key, label, "lr_free", ranges, run, usage, submit=submit, optimizer=factory, run_many=run_many)


DERIVED_DQN_KNOBS = ("dqn.horizon", "dqn.undiscounted")
"""Search knobs that set DQNConfig.gamma rather than a field of their own name."""


def dqn_overrides(params: dict) -> dict:
    """Config overrides of a DQN family's configuration: its dqn.* values, the horizon in decisions as
    gamma = 1 - 1 / horizon, and dqn.undiscounted (a binary knob) as gamma = 1 when it says yes (the
    telescoping return log L_0 - log L_T itself; only valid where the run's end is terminal)."""
    dqn = {name.removeprefix("dqn."): value for name, value in params.items() if name not in DERIVED_DQN_KNOBS}
    if "dqn.horizon" in params:
        dqn["gamma"] = 1.0 - 1.0 / params["dqn.horizon"]
    if params.get("dqn.undiscounted"):
        dqn["gamma"] = 1.0
    return {"dqn": dqn}


def agent_method(key: str, label: str, ranges: dict, schedule: dict, usage: str, *, tuned: str) -> Method:
    """A DQN scheduler that learns within the run (batched engine), with schedule options `schedule`
    (a variant of the state and actions) and the dqn.* values of a configuration."""
    def run(params: dict, config: Config, seeds: Sequence[int], steps: int, progress: bool = False) -> list[RunResult]:
        if not isinstance(config, Config):
            raise ValueError(f"{label} learns within the run on the polynomial task's batched engine only: config "
                             f"must be a Config, got {type(config).__name__}")
        agent = config.with_overrides({**dqn_overrides(params), "schedule": {**schedule, "steps": steps}})
        return rlr_batched.train_rl_scheduled(agent, rc.check_seeds("seeds", seeds), progress=progress)
    return Method(key, label, "agent", ranges, run, usage, tuned, options={"schedule": dict(schedule)})


# ---------------------------------------------------------------------------------------------------
# The study's entries
# ---------------------------------------------------------------------------------------------------

LR_RANGE = (1e-5, 0.3, "log")
"""The learning rates every schedule family searches: the original grid's range and 1.5 decades above it
(a first run with 1e-4 at the bottom chose Adam-HD's lowest value tried, so the range grew)."""

DQN_RANGES = {"dqn.lr": (1e-5, 1e-2, "log"), "dqn.horizon": (3.0, 1000.0, "log"),
              "dqn.epsilon_decay": (100.0, 10_000.0, "log")}
"""A DQN family's search: the Q-network's Adam lr, the discount as a horizon 1 / (1 - gamma), and the
exploration time constant."""

SCALE_FREE = {"features": "log", "lr_factors": (0.5, 1.0, 2.0)}
"""The scale-free agent's schedule options: state (log L, its change, lr position), actions x0.5/x1/x2."""

DQN_USAGE = ("`schedule = rlr_core.ScheduleConfig({schedule})`, then `rlr_core.RLRScheduler(optimizer, "
             "rlr_core.DQNAgent(schedule.state_dim, schedule.n_actions, rlr_core.DQNConfig(lr={{dqn_lr:.2g}}, "
             "gamma=1 - 1 / {{dqn_horizon:.3g}}, epsilon_decay={{dqn_epsilon_decay:.3g}})), schedule)`")


def _cosine(optimizer, params: dict, steps: int):
    from torch.optim.lr_scheduler import CosineAnnealingLR
    return CosineAnnealingLR(optimizer, T_max=steps, eta_min=params["lr"] * params["final_fraction"])


def _exponential(optimizer, params: dict, steps: int):
    from torch.optim.lr_scheduler import ExponentialLR
    return ExponentialLR(optimizer, gamma=params["total_decay"] ** (-1.0 / steps))


def _one_cycle(optimizer, params: dict, steps: int):
    # lr only: torch's default also cycles Adam's beta1, which the batched engine's Adam keeps fixed
    from torch.optim.lr_scheduler import OneCycleLR
    return OneCycleLR(optimizer, max_lr=params["lr"], total_steps=steps, pct_start=params["pct_start"],
                      cycle_momentum=False)


def _schedule_free(parameters, knobs: dict, steps: int):
    import schedulefree
    return schedulefree.AdamWScheduleFree(parameters, lr=knobs["lr"], warmup_steps=round(knobs["warmup_fraction"] * steps))


def _prodigy(parameters, knobs: dict, steps: int):
    import prodigyopt
    return prodigyopt.Prodigy(parameters, lr=1.0, d_coef=knobs["d_coef"])


def _d_adaptation(parameters, knobs: dict, steps: int):
    # Adam's bias correction on (a documented option, off by default): without it the first steps are so
    # large here that MaclaurinNet collapses to a constant prediction (loss 0.29 for good, tests/test_peers.py)
    import dadaptation
    return dadaptation.DAdaptAdam(parameters, lr=knobs["lr"], use_bias_correction=True)


for _method in (
    schedule_method("constant", "constant lr", {"lr": LR_RANGE}, None,
                    "`torch.optim.Adam(model.parameters(), lr={lr:.2g})`", tuned="tuned constant lr"),
    schedule_method("cosine", "cosine annealing", {"lr": LR_RANGE, "final_fraction": (1e-4, 0.3, "log")}, _cosine,
                    "`torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min={lr:.2g} * "
                    "{final_fraction:.2g})` on Adam at lr {lr:.2g}", domains={"final_fraction": (0.0, 1.0, False, False)}),
    schedule_method("exponential", "exponential decay", {"lr": LR_RANGE, "total_decay": (3.0, 1e4, "log")},
                    _exponential, "`torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma={total_decay:.3g} ** "
                    "(-1 / steps))` on Adam at lr {lr:.2g}"),
    schedule_method("one_cycle", "one-cycle", {"lr": LR_RANGE, "pct_start": (0.05, 0.5, "linear")}, _one_cycle,
                    "`torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr={lr:.2g}, total_steps=steps, "
                    "pct_start={pct_start:.2g}, cycle_momentum=False)` on Adam",
                    domains={"pct_start": (0.0, 1.0, True, True)}),
    schedule_method("plateau", "ReduceLROnPlateau", {"lr": LR_RANGE, "factor": (0.1, 0.8, "linear"),
                                                     "patience": (10.0, 2000.0, "log-int")}, None,
                    "`torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor={factor:.2g}, "
                    "patience={patience:.0f})` on Adam at lr {lr:.2g}, stepped with the loss",
                    options=lambda params: {"plateau": {"factor": params["factor"],
                                                        "patience": int(params["patience"])}},
                    domains={"factor": (0.0, 1.0, True, True), "patience": (0.0, math.inf, False, True)}),
    schedule_method("adam_hd", "Adam-HD", {"lr": LR_RANGE, "hypergradient_lr": (1e-9, 1e-3, "log")}, None,
                    f"`{AdamHD.__module__}.AdamHD(model.parameters(), lr={{lr:.2g}}, "
                    "hypergradient_lr={hypergradient_lr:.2g})`",
                    options=lambda params: {"hypergradient_lr": params["hypergradient_lr"]}),
    agent_method("dqn_tuned", "DQN as described", DQN_RANGES, {}, DQN_USAGE.format(schedule=""),
                 tuned="DQN as described, tuned"),
    agent_method("scale_free_dqn_tuned", "scale-free DQN", DQN_RANGES, SCALE_FREE,
                 DQN_USAGE.format(schedule="features='log', lr_factors=(0.5, 1.0, 2.0)"), tuned="scale-free DQN, tuned"),
    lr_free_method("schedule_free", "Schedule-Free AdamW", {"lr": (1e-5, 0.3, "log"),
                                                            "warmup_fraction": (0.0, 0.2, "linear")}, _schedule_free,
                   "`schedulefree.AdamWScheduleFree(model.parameters(), lr={lr:.2g}, warmup_steps=round("
                   "{warmup_fraction:.2g} * steps))`; `optimizer.train()` before training steps, "
                   "`optimizer.eval()` before evaluating or saving", defaults={"warmup_fraction": 0.0},
                   domains={"warmup_fraction": (0.0, 1.0, False, False)}),
    lr_free_method("prodigy", "Prodigy", {"d_coef": (0.1, 10.0, "log")}, _prodigy,
                   "`prodigyopt.Prodigy(model.parameters(), lr=1.0, d_coef={d_coef:.2g})`"),
    lr_free_method("d_adaptation", "D-Adaptation Adam", {"lr": (0.1, 10.0, "log")}, _d_adaptation,
                   "`dadaptation.DAdaptAdam(model.parameters(), lr={lr:.2g}, use_bias_correction=True)`"),
):
    register(_method)
del _method
