"""Results on disk: the one schema every run is saved in, atomic writes, and the agent file format.

RunResult is what every training loop returns (rlr_engine, rlr_batched); save_result / save_results
write it as JSON (with the config, seed, package versions and the git commit) plus a sibling .npz for
many runs, atomically: readers see the old file or the new one, never half of one. save_agent /
load_agent write and read a trained policy as plain tensors (torch.load(..., weights_only=True)).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from rlr_core import DQNAgent, DQNConfig, DTYPES, network_weights


@dataclass
class RunResult:
    """One run: what was trained, with which config and seed, and what it logged."""

    method: str
    config: dict
    series: dict[str, np.ndarray]
    wall_seconds: float
    diverged_at: int | None = None
    """index of the step/epoch whose loss (or, for the agent, Q-values) was non-finite; series stop before it"""
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    """the trained network, for plots in the same session (not saved to JSON)"""
    policy_state: dict | None = field(default=None, repr=False, compare=False)
    """agent runs: the policy network's final state_dict (CPU tensors), e.g. to replay it frozen through
    rlr_engine.train_rl_scheduled(initial_policy=...); not saved to JSON"""

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    def summary(self) -> dict:
        loss = self.series["loss"]
        return {"final_loss": float(loss[-1]) if len(loss) else None,
                "median_last_100": float(np.median(loss[-100:])) if len(loss) else None,
                "wall_seconds": self.wall_seconds, "diverged_at": self.diverged_at,
                "n_logged": int(len(loss))}


def package_versions() -> dict:
    """Versions of what produced a result, torch's thread count, and the git commit with a flag saying
    whether the checkout had uncommitted changes (then the commit alone does not name the code)."""
    import matplotlib
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__, "matplotlib": matplotlib.__version__,
                "platform": platform.platform(), "torch_threads": torch.get_num_threads()}
    versions.update(git_state(Path(__file__).resolve().parent))
    return versions


TREE_STATE_VARIABLE = "RLR_TREE_DIRTY"
"""Set by `make reproduce` to 0 or 1: whether the tree had uncommitted changes when the run started.
The run itself rewrites tracked files (the notebooks in place, results/, figures/), so a check made while
it runs would call every run after the first notebook dirty."""


def git_state(folder: Path) -> dict:
    """{'git_commit': HEAD, 'git_dirty': whether tracked files differ from it}, or {} outside a checkout.
    Under `make reproduce`, git_dirty is the state at the start of the run (TREE_STATE_VARIABLE)."""
    def git(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *arguments], capture_output=True, text=True, cwd=folder, timeout=30)
    try:
        commit, status = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {}
    if commit.returncode != 0 or status.returncode != 0:
        return {}
    at_start = os.environ.get(TREE_STATE_VARIABLE)
    if at_start in ("0", "1"):
        return {"git_commit": commit.stdout.strip(), "git_dirty": at_start == "1",
                "git_dirty_checked": "when make reproduce started"}
    return {"git_commit": commit.stdout.strip(), "git_dirty": bool(status.stdout.strip()),
            "git_dirty_checked": "when the result was written"}


def check_parameters(annotations: dict[str, Any], namespace: dict[str, Any]) -> None:
    """A notebook's parameters (the annotated names of its parameters cell: pass __annotations__ and
    globals()) against their declared types, in its first code cell: papermill injects plain values, so
    seed=1.5, progress="no" or results_dir=3 would otherwise reach the run. An int is accepted for a float;
    a bool is never an int. TypeError naming the parameter."""
    for name, kind in annotations.items():
        if not isinstance(kind, type):
            continue  # a string annotation (from __future__ import annotations): nothing to check against
        value = namespace[name]
        if kind is float:
            fits = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind is int:
            fits = isinstance(value, int) and not isinstance(value, bool)
        else:
            fits = isinstance(value, kind)
        if not fits:
            raise TypeError(f"parameter {name} must be a {kind.__name__}, got {type(value).__name__} ({value!r})")


def check_input_file(name: str, path: str | Path, made_by: str) -> Path:
    """path if it is a file; FileNotFoundError naming the parameter and the notebook that writes it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: {path} is missing: run {made_by} first (with the same {name})")
    return path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Any], Any]) -> Path:
    """write(binary_file) into a temp file in the same folder, fsync, then rename over path.

    Readers see the old file or the new one, never half of one. On an error the temp file is removed;
    only a hard kill (SIGKILL, power loss) can leave a hidden '.<name>.*.tmp' beside the target.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as temp_file:
            write(temp_file)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.chmod(temp_name, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(temp_name, path)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text (UTF-8) atomically: readers never see half a file."""
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def save_benchmark(path: str | Path, measured: dict, readme_markdown: Callable[[dict], str]) -> Path:
    """A benchmark's results as JSON, atomically, with the README's part of them ("readme_markdown", which
    readme.py places as written) rendered by the benchmark's own readme_markdown(measured)."""
    text = readme_markdown(measured)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"readme_markdown must give non-empty markdown for {path}, got {text!r}")
    return atomic_write_text(path, json.dumps({**measured, "readme_markdown": text}, indent=1))


def save_table_csv(table: Any, path: str | Path, index: bool = False) -> Path:
    """Write a pandas DataFrame as CSV, atomically: the one way notebooks write tables."""
    return atomic_write_text(path, table.to_csv(index=index))


def save_arrays_npz(path: str | Path, **arrays: Any) -> Path:
    """np.savez(path, **arrays), atomically: the one way notebooks write large arrays beside a JSON."""
    return atomic_write(path, lambda file: np.savez(file, **arrays))


def result_to_dict(result: RunResult) -> dict:
    """The shared results schema: config, seed, method, series, summary, versions."""
    series = {}
    for name, values in result.series.items():
        values = np.asarray(values)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise ValueError(f"series {name!r} of {result.method} holds non-finite values")
        series[name] = values.tolist()
    return {"method": result.method, "seed": result.seed, "config": result.config, "series": series,
            "summary": result.summary(), "versions": package_versions()}


def save_result(result: RunResult, path: str | Path) -> Path:
    """Save one run as JSON, atomically. NaN/inf are refused (allow_nan=False), never written."""
    return atomic_write_text(path, json.dumps(result_to_dict(result), allow_nan=False))


def load_result(path: str | Path) -> RunResult:
    """Read a result written by save_result back into a RunResult (series as numpy arrays); ValueError naming
    the file for anything else."""
    try:
        data = json.loads(Path(path).read_text())
        return RunResult(data["method"], data["config"],
                         {name: np.asarray(values) for name, values in data["series"].items()},
                         data["summary"]["wall_seconds"], data["summary"]["diverged_at"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a result written by save_result ({type(error).__name__}: {error})") from error


def json_ready(value: Any) -> Any:
    """A copy of nested dicts/lists/tuples with numpy scalars as Python numbers and NaN/inf as None,
    so that json.dumps(..., allow_nan=False) writes valid JSON (no NaN tokens) for summaries."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def save_results(results: Sequence[RunResult], path: str | Path) -> Path:
    """Save several runs (e.g. one per seed): a readable JSON index (method, seed, config, summary,
    versions per run) and their series in a sibling .npz (keys 'run<i>/<series>'), both atomic.

    The two are one unit: the arrays are written first and the JSON, written last, records their sha256,
    so a write that fails between the two renames (the arrays new, the JSON old) leaves a pair that
    load_results refuses instead of mixing one run's summary with another run's series.
    """
    if len(results) == 0:
        raise ValueError("results must hold at least one RunResult")
    path = Path(path)
    arrays, runs = {}, []
    for i, result in enumerate(results):
        entry = result_to_dict(result)  # checks that every series is finite
        del entry["series"], entry["versions"]
        runs.append(entry)
        arrays.update({f"run{i}/{name}": np.asarray(values) for name, values in result.series.items()})
    arrays_path = save_arrays_npz(path.with_suffix(".npz"), **arrays)
    return atomic_write_text(path, json.dumps({"runs": runs, "versions": package_versions(),
                                               "arrays": arrays_path.name, "arrays_sha256": file_sha256(arrays_path)},
                                              indent=1, allow_nan=False))


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes."""
    import hashlib
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_results(path: str | Path) -> list[RunResult]:
    """Read runs written by save_results (series back from the sibling .npz). ValueError, naming the file,
    for an index that is not save_results' or arrays whose hash is not the one the index recorded."""
    path = Path(path)
    try:
        index = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a results index written by save_results ({error})") from error
    if not isinstance(index, dict) or not {"runs", "arrays", "arrays_sha256"} <= set(index):
        raise ValueError(f"{path}: not a results index written by save_results (it needs runs, arrays, arrays_sha256)")
    name = index["arrays"]
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..") \
            or not path.with_name(name).is_file():
        raise ValueError(f"{path}: its arrays {name!r} are not a file beside it")
    arrays_path = path.with_name(name)
    if file_sha256(arrays_path) != index["arrays_sha256"]:
        raise ValueError(f"{path}: {arrays_path.name} is not the file this index was written with (sha256 "
                         "differs): a write was interrupted between the two; re-run what wrote them")
    runs = index["runs"]
    if not isinstance(runs, list) or not all(isinstance(run, dict) and {"method", "config", "summary"} <= set(run)
                                             for run in runs):
        raise ValueError(f"{path}: runs must be a list of runs with method, config and summary")
    try:
        with np.load(arrays_path, allow_pickle=False) as arrays:  # opened once: checked, then read
            prefixes = {key.split("/", 1)[0] for key in arrays.files}
            if prefixes != {f"run{i}" for i in range(len(runs))}:
                raise LookupError(f"the index lists {len(runs)} runs, {arrays_path.name} holds {sorted(prefixes)}")
            results = []
            for i, run in enumerate(runs):
                prefix = f"run{i}/"
                series = {key[len(prefix):]: arrays[key] for key in arrays.files if key.startswith(prefix)}
                results.append(RunResult(run["method"], run["config"], series, run["summary"]["wall_seconds"],
                                         run["summary"]["diverged_at"]))
    except LookupError as error:
        raise ValueError(f"{path}: {error}") from error
    except ValueError as error:
        raise ValueError(f"{path}: {arrays_path.name} holds no plain arrays ({error})") from error
    return results


AGENT_FILE_FORMAT = "rlr_scheduler.dqn_agent"
AGENT_FILE_VERSION = 1


def save_agent(agent: DQNAgent, path: str | Path) -> Path:
    """Write a trained agent's policy to a small file, atomically, for load_agent.

    Holds the config (as a dict), state_dim, n_actions, steps_done (so epsilon continues where it was)
    and the policy and target weights: plain tensors and primitives, readable with
    torch.load(path, weights_only=True), no pickled code. Not the replay memory, the Q-network's
    optimiser or the RNG: to continue a run bit-identically, save RLRScheduler.state_dict() instead.
    """
    if not isinstance(agent, DQNAgent):
        raise TypeError(f"agent must be a DQNAgent, got {type(agent).__name__}")
    content = {"format": AGENT_FILE_FORMAT, "format_version": AGENT_FILE_VERSION,
               "state_dim": agent.state_dim, "n_actions": agent.n_actions, "config": asdict(agent.config),
               "steps_done": agent.steps_done, "policy_net": network_weights(agent.policy_net),
               "target_net": network_weights(agent.target_net)}
    return atomic_write(path, lambda file: torch.save(content, file))


def load_agent(path: str | Path, seed: int = 0, device: str | torch.device = "cpu", *,
               state_dim: int | None = None, n_actions: int | None = None) -> DQNAgent:
    """Read a save_agent file into a new DQNAgent (training mode; call eval() on its scheduler to freeze it).

    seed seeds the new agent's RNG (exploration, replay sampling); its replay memory and optimiser
    start empty. state_dim / n_actions, when given, must match the file's. Anything that is not a
    save_agent file of the expected shape raises ValueError saying what is wrong; a missing file
    raises FileNotFoundError.
    """
    where = f"load_agent({str(path)!r})"
    if not Path(path).is_file():
        raise FileNotFoundError(f"{where}: no such file")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # OSError included: torch reports a truncated zip as [Errno 22]  # random bytes, JSON, a pickle with code in it...: not an agent file
        raise ValueError(f"{where}: not a file written by save_agent (torch.load failed: "
                         f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from error
    config, dtype = check_agent_file(content, where, {"state_dim": state_dim, "n_actions": n_actions})
    agent = DQNAgent(content["state_dim"], content["n_actions"], config, seed, dtype, device)
    for name in ("policy_net", "target_net"):
        getattr(agent, name).load_state_dict(checked_weights(content[name], getattr(agent, name), name, where,
                                                             f"state_dim={agent.state_dim}, n_actions="
                                                             f"{agent.n_actions}, hidden_size={config.hidden_size}"))
    agent.steps_done = content["steps_done"]
    return agent


def check_agent_file(content: Any, where: str, expected: dict[str, int | None]) -> tuple[DQNConfig, torch.dtype]:
    """The DQN config and weight dtype of a save_agent file's content; ValueError naming what is wrong."""
    if not isinstance(content, dict) or content.get("format") != AGENT_FILE_FORMAT:
        kind = f"a dict with keys {sorted(map(str, content))[:8]}" if isinstance(content, dict) \
            else f"a {type(content).__name__}"
        raise ValueError(f"{where}: not a file written by save_agent (it holds {kind}, "
                         f"without format={AGENT_FILE_FORMAT!r})")
    if content.get("format_version") != AGENT_FILE_VERSION:
        raise ValueError(f"{where}: agent file format_version {content.get('format_version')!r}, this code "
                         f"reads version {AGENT_FILE_VERSION}")
    missing = {"state_dim", "n_actions", "config", "steps_done", "policy_net", "target_net"} - set(content)
    if missing:
        raise ValueError(f"{where}: agent file lacks {sorted(missing)}")
    for name, wanted in expected.items():
        value = content[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {name} must be an int >= 1, the file has {value!r}")
        if wanted is not None and value != wanted:
            raise ValueError(f"{where}: the agent has {name}={value}, expected {name}={wanted}")
    steps_done = content["steps_done"]
    if isinstance(steps_done, bool) or not isinstance(steps_done, int) or steps_done < 0:
        raise ValueError(f"{where}: steps_done must be an int >= 0, the file has {steps_done!r}")
    try:
        config = DQNConfig(**content["config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: the file's DQN config is invalid: {error}") from error
    weights = content["policy_net"]
    first_weight = next(iter(weights.values()), None) if isinstance(weights, dict) else None
    if not isinstance(first_weight, torch.Tensor) or first_weight.dtype not in DTYPES.values():
        raise ValueError(f"{where}: policy_net must hold float32 or float64 weight tensors")
    return config, first_weight.dtype


def checked_weights(saved: Any, network: nn.Module, name: str, where: str, shape_words: str) -> dict:
    """saved, if it is a finite state_dict with exactly the network's tensor names and shapes."""
    expected = network.state_dict()
    if not isinstance(saved, dict) or set(saved) != set(expected):
        raise ValueError(f"{where}: {name} holds tensors {sorted(saved) if isinstance(saved, dict) else saved!r}"
                         f", a Q-network needs {sorted(expected)}")
    for key, tensor in saved.items():
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected[key].shape:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"{where}: {name}.{key} has shape {shape}, expected "
                             f"{tuple(expected[key].shape)} for {shape_words}")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{where}: {name}.{key} holds non-finite weights")
    return saved
