"""MNIST-1D (rlr_tasks): the data against the mnist1d package's generator, offline and free of global side
effects; the models against hand and brute-force computations; the reference loop's plumbing; the batched
loop held to the reference; the metrics against a hand computation.

The data tests that must see the generator run (not the memo of an earlier call) clear
rlr_tasks.generated_arrays' cache first; they come first, so the later tests rebuild a seed at most once.
The whole file runs in well under a minute on one core.
"""

from __future__ import annotations

import hashlib
import math
import random
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from torch import nn

import rlr_batched
import rlr_config
import rlr_core
import rlr_tasks as tasks
from rlr_tasks import MNIST1DConfig

ROOT = Path(__file__).resolve().parents[1]


def split_digest(splits: tasks.MNIST1DSplits) -> str:
    """sha256 over every split's inputs and labels, as bytes (what 'bit-identical' means here)."""
    digest = hashlib.sha256()
    for split in splits:
        for tensor in split:
            digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
            digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def cosine(lr: float, steps: int) -> np.ndarray:
    """The learning rates of torch's CosineAnnealingLR(T_max=steps) from lr, one per step."""
    return rlr_batched.lr_schedule(lambda optimizer: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps),
                                   lr, steps)


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------


def test_building_the_data_leaves_every_global_rng_alone() -> None:
    tasks.generated_arrays.cache_clear()  # the generator itself must run (it seeds numpy and random)
    np.random.seed(123)
    random.seed(456)
    torch.manual_seed(789)
    numpy_before, python_before, torch_before = np.random.get_state(), random.getstate(), torch.get_rng_state()
    tasks.mnist1d_data(7)
    numpy_after = np.random.get_state()
    assert numpy_after[0] == numpy_before[0] and np.array_equal(numpy_after[1], numpy_before[1])
    assert numpy_after[2:] == numpy_before[2:]
    assert random.getstate() == python_before
    assert torch.equal(torch.get_rng_state(), torch_before)
    assert np.random.rand() == np.random.RandomState(123).rand()  # the caller's stream goes on where it was


def test_the_data_build_with_the_network_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    import mnist1d.data
    for owner, name in ((requests, "get"), (requests.Session, "request"), (urllib.request, "urlopen"),
                        (socket.socket, "connect"), (mnist1d.data, "get_dataset")):
        monkeypatch.setattr(owner, name, refuse)
    tasks.generated_arrays.cache_clear()
    splits = tasks.mnist1d_data(8)
    assert [len(split.y) for split in splits] == [3000, 1000, 1000]


def test_the_splits_are_the_generators_data_set_of_the_seed() -> None:
    """Seed 42 is the package's default data set: train + validation are its 4000 training examples in
    order (validation the last 1000), test its 1000 test examples."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    assert args.seed == 42
    with rlr_config.global_rng_preserved():
        expected = make_dataset(args)
    splits = tasks.mnist1d_data(42, MNIST1DConfig(n_validation=1000))
    np.testing.assert_array_equal(splits.train.x.numpy(), expected["x"][:3000].astype(np.float32))
    np.testing.assert_array_equal(splits.validation.x.numpy(), expected["x"][3000:].astype(np.float32))
    np.testing.assert_array_equal(splits.test.x.numpy(), expected["x_test"].astype(np.float32))
    np.testing.assert_array_equal(torch.cat([splits.train.y, splits.validation.y]).numpy(), expected["y"])
    np.testing.assert_array_equal(splits.test.y.numpy(), expected["y_test"])
    in_float64 = tasks.mnist1d_data(42, dtype=torch.float64)
    np.testing.assert_array_equal(in_float64.test.x.numpy(), expected["x_test"])
    for split in splits:
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64 and split.x.shape[1] == 40


def test_the_splits_of_a_seed_are_disjoint_and_another_seed_is_another_data_set() -> None:
    splits = tasks.mnist1d_data(0)
    rows = [{row.tobytes() for row in split.x.numpy()} for split in splits]
    assert [len(r) for r in rows] == [3000, 1000, 1000]  # no example twice inside a split either
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
    assert set(np.unique(splits.train.y.numpy())) == set(range(10))
    other = tasks.mnist1d_data(1)
    assert not ({row.tobytes() for row in other.train.x.numpy()} & rows[0])


def test_n_validation_moves_examples_from_train_to_validation_only() -> None:
    held_out = tasks.mnist1d_data(0, MNIST1DConfig(n_validation=1000))
    all_train = tasks.mnist1d_data(0, MNIST1DConfig(n_validation=0))
    assert torch.equal(all_train.train.x, torch.cat([held_out.train.x, held_out.validation.x]))
    assert torch.equal(all_train.train.y, torch.cat([held_out.train.y, held_out.validation.y]))
    assert len(all_train.validation.y) == 0 and all_train.validation.x.shape == (0, 40)
    assert torch.equal(all_train.test.x, held_out.test.x)


def test_the_data_are_bit_identical_in_a_fresh_process() -> None:
    code = ("import hashlib, rlr_tasks\n"
            "digest = hashlib.sha256()\n"
            "for split in rlr_tasks.mnist1d_data(0):\n"
            "    for tensor in split:\n"
            "        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())\n"
            "        digest.update(tensor.contiguous().numpy().tobytes())\n"
            "print(digest.hexdigest())\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == split_digest(tasks.mnist1d_data(0))


# ---------------------------------------------------------------------------------------------------
# Config and input checks
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, error, match", [
    ({"n_validation": -1}, ValueError, "mnist1d.n_validation"),
    ({"n_validation": 4000}, ValueError, "mnist1d.n_validation"),
    ({"n_validation": 10.0}, TypeError, "mnist1d.n_validation"),
    ({"model": "rnn"}, ValueError, "mnist1d.model"),
    ({"hidden_sizes": ()}, ValueError, "mnist1d.hidden_sizes"),
    ({"hidden_sizes": 100}, TypeError, "mnist1d.hidden_sizes"),
    ({"hidden_sizes": (100, 0)}, ValueError, r"mnist1d.hidden_sizes\[1\]"),
    ({"hidden_sizes": (100, 50)}, ValueError, "equal widths"),
    ({"residual": 1}, TypeError, "mnist1d.residual"),
    ({"channels": 0}, ValueError, "mnist1d.channels"),
    ({"batch_size": 0}, ValueError, "mnist1d.batch_size"),
    ({"steps": 0}, ValueError, "mnist1d.steps"),
])
def test_the_config_refuses_a_bad_field_naming_it(fields: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        MNIST1DConfig(**fields)
    MNIST1DConfig(hidden_sizes=(100, 50), residual=False)  # unequal widths are fine without the residual


def test_the_runs_refuse_bad_input_before_any_work() -> None:
    config, changed = MNIST1DConfig(steps=5), MNIST1DConfig(steps=5)
    changed.steps = 0  # a dataclass can be changed after its checks ran: the run checks again
    cases = [(lambda: tasks.mnist1d_data(-1), ValueError, "seed"),
             (lambda: tasks.mnist1d_data(2**32), ValueError, "seed must be < 2"),
             (lambda: tasks.mnist1d_data(0, dtype=torch.float16), TypeError, "dtype"),
             (lambda: tasks.mnist1d_data(0, {"steps": 5}), TypeError, "config"),
             (lambda: tasks.train_mnist1d(0, config, lr=-1e-3), ValueError, "lr"),
             (lambda: tasks.train_mnist1d(0, config, lr=np.ones(4)), ValueError, r"schedule \[5\]"),
             (lambda: tasks.train_mnist1d(0, config, lr="1e-3"), TypeError, "lr"),
             (lambda: tasks.train_mnist1d(0, config, lr=np.ones(5), make_scheduler=lambda o: None),
              ValueError, "make_scheduler"),
             (lambda: tasks.train_mnist1d(0, changed), ValueError, "mnist1d.steps"),
             (lambda: tasks.train_mnist1d_batched([0, 1], config, np.ones((3, 5))), ValueError, "lrs"),
             (lambda: tasks.train_mnist1d_batched([0, 1], config, [[1e-3] * 5, [math.nan] * 5]), ValueError,
              "lrs must be finite"),
             (lambda: tasks.train_mnist1d_batched([], config), ValueError, "seeds"),
             (lambda: tasks.train_mnist1d_batched([0, 1.5], config), TypeError, r"seeds\[1\]")]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------


def test_the_models_have_the_papers_parameter_counts() -> None:
    """MLPBase 40-100-100-10: 4,100 + 10,100 + 1,010; ConvBase: 150 + 1,900 + 1,900 + 1,260."""
    counts = {name: sum(p.numel() for p in tasks.make_mnist1d_model(MNIST1DConfig(model=name), 0).parameters())
              for name in tasks.MODELS}
    assert counts == {"mlp": 15_210, "cnn": 5_210}
    plain = tasks.make_mnist1d_model(MNIST1DConfig(residual=False), 0)
    assert isinstance(plain, nn.Sequential) and sum(p.numel() for p in plain.parameters()) == 15_210


def test_the_residual_mlp_is_the_papers_formula() -> None:
    model = tasks.make_mnist1d_model(MNIST1DConfig(), 3, torch.float64)
    x = tasks.mnist1d_data(0, dtype=torch.float64).test.x[:5]
    w = {name: p.detach().numpy() for name, p in model.named_parameters()}
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    h = relu(x.numpy() @ w["input.weight"].T + w["input.bias"])
    h = h + relu(h @ w["hidden.0.weight"].T + w["hidden.0.bias"])
    expected = h @ w["output.weight"].T + w["output.bias"]
    np.testing.assert_allclose(model(x).detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def brute_force_conv1d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """out[o, i] = bias[o] + sum over c, j of weight[o, c, j] * x_padded[c, i * stride + j]."""
    padded = np.pad(x, ((0, 0), (padding, padding)))
    length = (padded.shape[1] - weight.shape[2]) // stride + 1
    out = np.empty((weight.shape[0], length))
    for o in range(weight.shape[0]):
        for i in range(length):
            out[o, i] = bias[o] + np.sum(weight[o] * padded[:, i * stride:i * stride + weight.shape[2]])
    return out


def test_the_cnn_matches_a_brute_force_convolution() -> None:
    model = tasks.make_mnist1d_model(MNIST1DConfig(model="cnn", channels=4), 5, torch.float64)
    x = tasks.mnist1d_data(0, dtype=torch.float64).test.x[:3]
    w = {name: p.detach().numpy() for name, p in model.named_parameters()}
    for row, logits in zip(x.numpy(), model(x).detach().numpy()):
        h = row[None, :]
        for conv, kernel in (("conv1", 5), ("conv2", 3), ("conv3", 3)):
            assert w[f"{conv}.weight"].shape[2] == kernel
            h = np.maximum(brute_force_conv1d(h, w[f"{conv}.weight"], w[f"{conv}.bias"], 2, 1), 0.0)
        assert h.shape == (4, 5)  # lengths 40 -> 19 -> 10 -> 5
        np.testing.assert_allclose(logits, w["linear.weight"] @ h.reshape(-1) + w["linear.bias"], rtol=1e-12)


def test_models_are_seeded_like_the_papers_classes_without_touching_the_global_rng() -> None:
    """A seed gives the weights the paper's classes get after torch.manual_seed(seed) (same layers, same
    order), and the caller's torch RNG is left alone."""
    torch.manual_seed(99)
    before = torch.get_rng_state()
    mlp = tasks.make_mnist1d_model(MNIST1DConfig(), 4)
    cnn = tasks.make_mnist1d_model(MNIST1DConfig(model="cnn"), 4)
    assert torch.equal(torch.get_rng_state(), before)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        paper_mlp = [nn.Linear(40, 100), nn.Linear(100, 100), nn.Linear(100, 10)]
        torch.manual_seed(4)
        paper_cnn = [nn.Conv1d(1, 25, 5, stride=2, padding=1), nn.Conv1d(25, 25, 3, stride=2, padding=1),
                     nn.Conv1d(25, 25, 3, stride=2, padding=1), nn.Linear(125, 10)]
    for model, paper in ((mlp, paper_mlp), (cnn, paper_cnn)):
        expected = [p for layer in paper for p in layer.parameters()]
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), expected, strict=True))
    other = tasks.make_mnist1d_model(MNIST1DConfig(), 5)
    assert not torch.equal(next(other.parameters()), next(mlp.parameters()))


# ---------------------------------------------------------------------------------------------------
# Mini-batches and the reference loop
# ---------------------------------------------------------------------------------------------------


def test_mini_batches_see_every_example_once_per_epoch_however_they_are_drawn() -> None:
    at_once = tasks.MiniBatches(30, 7, torch.Generator().manual_seed(3)).next(13)
    chunked = tasks.MiniBatches(30, 7, torch.Generator().manual_seed(3))
    pieces = torch.cat([chunked.next(4), chunked.next(1), chunked.next(8)])
    assert at_once.shape == (13, 7) and torch.equal(at_once, pieces)
    stream = at_once.reshape(-1)
    for epoch in range(len(stream) // 30):
        assert sorted(stream[epoch * 30:(epoch + 1) * 30].tolist()) == list(range(30))
    generator = torch.Generator().manual_seed(3)
    assert torch.equal(stream[:30], torch.randperm(30, generator=generator))  # the stream is torch's randperm


def test_the_reference_run_learns_and_logs_each_step() -> None:
    result = tasks.train_mnist1d(0, MNIST1DConfig(steps=300), lr=1e-3)
    splits = tasks.mnist1d_data(0)
    assert result.diverged_at is None and result.seed == 0 and result.config["task"] == "mnist1d"
    assert len(result.series["loss"]) == 300 and np.all(result.series["lr"] == 1e-3)
    assert result.series["loss"][-50:].mean() < 0.8 * result.series["loss"][:50].mean()
    assert tasks.accuracy(result.model, splits.test.x, splits.test.y) > 0.35  # chance: 0.1
    assert abs(result.series["loss"][0] - math.log(10)) < 0.2  # default init: near-uniform logits at first


def test_a_schedule_array_is_the_torch_scheduler_it_was_read_from() -> None:
    config, make = MNIST1DConfig(steps=60), lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 60)
    scheduled = tasks.train_mnist1d(1, config, lr=1e-2, make_scheduler=make)
    from_array = tasks.train_mnist1d(1, config, lr=cosine(1e-2, 60))
    np.testing.assert_array_equal(scheduled.series["lr"], cosine(1e-2, 60))
    np.testing.assert_array_equal(scheduled.series["lr"], from_array.series["lr"])
    np.testing.assert_array_equal(scheduled.series["loss"], from_array.series["loss"])
    constant = tasks.train_mnist1d(1, config, lr=1e-2)
    assert not np.array_equal(constant.series["loss"], scheduled.series["loss"])


def test_a_schedule_free_optimiser_returns_its_eval_weights() -> None:
    import schedulefree

    made = []

    def make(params, lr):
        made.append(schedulefree.AdamWScheduleFree(params, lr=lr, warmup_steps=0))
        return made[-1]

    result = tasks.train_mnist1d(0, MNIST1DConfig(steps=20), lr=1e-2, make_optimizer=make)
    assert len(result.series["loss"]) == 20
    assert made[0].param_groups[0]["train_mode"] is False  # switched to eval: the model holds the average


# ---------------------------------------------------------------------------------------------------
# The batched loop against the reference
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_fields", [{"model": "mlp"}, {"model": "mlp", "residual": False}, {"model": "cnn"}])
def test_the_batched_runs_are_the_reference_runs_in_float64(monkeypatch: pytest.MonkeyPatch,
                                                            model_fields: dict) -> None:
    """In float64 nothing but summation order differs (batched matmuls, vmap's grouped convolutions,
    the per-run lr times Adam's unit step): 1e-15 measured over 300 steps, held to 1e-12 over 80.
    DRAW_CHUNK is cut to 30 so that the batch indices are drawn across chunk boundaries."""
    monkeypatch.setattr(tasks, "DRAW_CHUNK", 30)
    config, seeds = MNIST1DConfig(steps=80, **model_fields), [0, 1]
    lrs = np.stack([np.full(80, 1e-3), cosine(1e-2, 80)])
    batched = tasks.train_mnist1d_batched(seeds, config, lrs, dtype=torch.float64)
    for k, seed in enumerate(seeds):
        reference = tasks.train_mnist1d(seed, config, lrs[k], dtype=torch.float64)
        assert batched[k].config == reference.config and batched[k].diverged_at is None
        np.testing.assert_array_equal(batched[k].series["lr"], reference.series["lr"])
        np.testing.assert_allclose(batched[k].series["loss"], reference.series["loss"], rtol=1e-12)
        for a, b in zip(batched[k].model.parameters(), reference.model.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_the_batched_runs_follow_the_reference_in_float32(model: str) -> None:
    """float32: the two loops round differently from the first step (~1e-7 relative), and training
    amplifies that chaotically (a ReLU unit or an argmax flips, Adam rescales near-zero gradients): over
    300 steps most runs stay at 3e-7, some drift to 1e-2 at the end (measured). So: the first 50 steps
    within 1e-5, the mean over 300 within 1e-2, and the final test accuracy within 10 of 1000 examples
    (measured: at most 3)."""
    config, seeds = MNIST1DConfig(steps=300, model=model), [0, 1]
    lrs = np.stack([np.full(300, 1e-3), cosine(1e-2, 300)])
    batched = tasks.train_mnist1d_batched(seeds, config, lrs)
    for k, seed in enumerate(seeds):
        reference, test = tasks.train_mnist1d(seed, config, lrs[k]), tasks.mnist1d_data(seed).test
        relative = np.abs(batched[k].series["loss"] / reference.series["loss"] - 1)
        assert relative[:50].max() < 1e-5 and relative.mean() < 1e-2, (relative[:50].max(), relative.mean())
        assert abs(tasks.accuracy(batched[k].model, *test) - tasks.accuracy(reference.model, *test)) <= 0.01
        assert math.isclose(tasks.cross_entropy(batched[k].model, *test),
                            tasks.cross_entropy(reference.model, *test), rel_tol=1e-2)


def test_a_diverging_run_is_cut_where_the_reference_cuts_it_and_spares_the_others() -> None:
    """lr 1e30 sends the weights past float32's range within a step or two: the loss goes non-finite."""
    config = MNIST1DConfig(steps=20, residual=False)
    reference = tasks.train_mnist1d(1, config, lr=1e30)
    assert reference.diverged_at is not None and 0 < reference.diverged_at < 20
    assert len(reference.series["loss"]) == len(reference.series["lr"]) == reference.diverged_at
    healthy, diverging = tasks.train_mnist1d_batched([0, 1], config, [[1e-3] * 20, [1e30] * 20])
    alone = tasks.train_mnist1d_batched([0], config, 1e-3)[0]
    assert diverging.diverged_at == reference.diverged_at and len(diverging.series["loss"]) == reference.diverged_at
    np.testing.assert_allclose(diverging.series["loss"], reference.series["loss"], rtol=1e-5)
    assert healthy.diverged_at is None
    np.testing.assert_array_equal(healthy.series["loss"], alone.series["loss"])  # no op mixes runs


def test_training_leaves_every_global_rng_alone() -> None:
    tasks.generated_arrays.cache_clear()
    np.random.seed(1)
    random.seed(2)
    torch.manual_seed(3)
    states = np.random.get_state()[1].copy(), random.getstate(), torch.get_rng_state()
    tasks.train_mnist1d(0, MNIST1DConfig(steps=3))
    tasks.train_mnist1d_batched([0, 1], MNIST1DConfig(steps=3, model="cnn"))
    assert np.array_equal(np.random.get_state()[1], states[0]) and random.getstate() == states[1]
    assert torch.equal(torch.get_rng_state(), states[2])


# ---------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------


def test_accuracy_and_cross_entropy_match_a_hand_computation() -> None:
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        model.bias.copy_(torch.tensor([0.0, 0.0, 0.5]))
    x = torch.tensor([[2.0, 1.0], [0.0, 3.0], [-1.0, -1.0], [0.5, 0.5]])
    y = torch.tensor([0, 2, 2, 1])
    logits = [[2.0, 1.0, -2.5], [0.0, 3.0, -2.5], [-1.0, -1.0, 2.5], [0.5, 0.5, -0.5]]  # W x + b, by hand
    # right, wrong, right, and a tie between classes 0 and 1 that goes to 0 (torch.argmax's first max)
    assert tasks.accuracy(model, x, y) == 0.5
    by_hand = sum(math.log(sum(math.exp(v) for v in row)) - row[label] for row, label in zip(logits, y.tolist())) / 4
    assert math.isclose(tasks.cross_entropy(model, x, y), by_hand, rel_tol=1e-6)


def test_the_metrics_refuse_a_split_they_cannot_score() -> None:
    model, x, y = nn.Linear(40, 10), torch.zeros(4, 40), torch.zeros(4, dtype=torch.int64)
    for args, error in (((model, x, y[:3]), ValueError), ((model, x, y.float()), TypeError),
                        ((model, x.long(), y), TypeError), ((model, x[:0], y[:0]), ValueError),
                        (("model", x, y), TypeError), ((model, x, y[:, None]), ValueError)):
        with pytest.raises(error):
            tasks.accuracy(*args)
        with pytest.raises(error):
            tasks.cross_entropy(*args)


# ---------------------------------------------------------------------------------------------------
# The batched loop's other lr sources: a controller per run, an optimiser of another package per run
# ---------------------------------------------------------------------------------------------------


def rule_controller(features: str, steps: int = 60, interval: int = 5):
    """make_controller: a PolicyScheduler under a fixed rule of its observation (up when the loss fell and,
    with features='validation', the validation loss did too; else down), so its lr path depends on the run."""
    schedule = rlr_core.ScheduleConfig(steps=steps, features=features, decision_interval=interval,
                                       reward="validation" if features == "validation" else "training")

    def act(observations: np.ndarray) -> np.ndarray:
        fell = observations[0, 1] < 0 and (features != "validation" or observations[0, -1] < 0)
        return np.array([2 if fell else 0])

    return lambda optimizer: rlr_core.PolicyScheduler(optimizer, act, schedule)


@pytest.mark.parametrize("features", ["log", "validation"])
def test_controlled_batched_runs_are_the_reference_runs_under_the_same_controller(features: str) -> None:
    """Each run's own controller, stepped with its own mini-batch losses (and validation losses at its
    decisions): the lr paths are identical to the reference loop's and the losses agree to rounding (float64)."""
    config, seeds = MNIST1DConfig(steps=60, n_validation=500), [0, 1, 2]
    batched = tasks.train_mnist1d_batched(seeds, config, make_controller=rule_controller(features), dtype=torch.float64)
    paths = set()
    for k, seed in enumerate(seeds):
        reference = tasks.train_mnist1d(seed, config, 1e-3, make_scheduler=rule_controller(features), dtype=torch.float64)
        np.testing.assert_array_equal(batched[k].series["lr"], reference.series["lr"])
        np.testing.assert_allclose(batched[k].series["loss"], reference.series["loss"], rtol=1e-12)
        paths.add(tuple(reference.series["lr"]))
    assert len(next(iter(paths))) == 60 and len(set(next(iter(paths)))) > 1  # the controller moved the lr
    assert len(paths) > 1  # and differently per run: a run's controller reads that run's losses, no other's


def test_a_controller_reading_validation_needs_a_validation_split_in_both_loops() -> None:
    config = MNIST1DConfig(steps=10, n_validation=0)
    with pytest.raises(ValueError, match="n_validation"):
        tasks.train_mnist1d(0, config, make_scheduler=rule_controller("validation", 10))
    with pytest.raises(ValueError, match="n_validation"):
        tasks.train_mnist1d_batched([0], config, make_controller=rule_controller("validation", 10))


def test_batched_runs_under_their_own_learning_rate_free_optimisers_are_the_reference_runs() -> None:
    """Schedule-Free AdamW, one instance per run: the same losses as the reference loop (float64, summation
    order only) and the eval-mode weights returned by both."""
    import rlr_methods

    make = rlr_methods.get("schedule_free").optimizer({"lr": 3e-3, "warmup_fraction": 0.1}, 40)
    config, seeds = MNIST1DConfig(steps=40), [0, 1]
    batched = tasks.train_mnist1d_batched(seeds, config, make_optimizer=make, dtype=torch.float64)
    for k, seed in enumerate(seeds):
        reference = tasks.train_mnist1d(seed, config, make_optimizer=make, dtype=torch.float64)
        np.testing.assert_allclose(batched[k].series["loss"], reference.series["loss"], rtol=1e-10)
        np.testing.assert_allclose(batched[k].series["lr"], reference.series["lr"], rtol=1e-12)
        for a, b in zip(batched[k].model.parameters(), reference.model.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_the_batched_lr_sources_refuse_mixed_options_before_any_work() -> None:
    config = MNIST1DConfig(steps=5)
    with pytest.raises(ValueError, match="not both"):
        tasks.train_mnist1d_batched([0], config, make_controller=rule_controller("log", 5),
                                    make_optimizer=lambda p, lr: torch.optim.SGD(p, lr))
    for lrs in (1e-2, 1e-3):
        with pytest.raises(ValueError, match="lrs must be None"):
            tasks.train_mnist1d_batched([0], config, lrs, make_controller=rule_controller("log", 5))
    with pytest.raises(ValueError, match="one factory per run"):
        tasks.train_mnist1d_batched([0, 1], config, make_optimizer=[lambda p, lr: torch.optim.SGD(p, lr)])
    with pytest.raises(ValueError, match="one number"):
        tasks.train_mnist1d_batched([0], config, [1e-3] * 5, make_optimizer=lambda p, lr: torch.optim.SGD(p, lr))
    with pytest.raises(TypeError, match="make_controller"):
        tasks.train_mnist1d_batched([0], config, make_controller="cosine")
    with pytest.raises(TypeError, match="make_controller must return"):
        tasks.train_mnist1d_batched([0], config, make_controller=lambda optimizer: object())


def test_a_list_of_optimiser_factories_gives_run_k_the_kth_configuration() -> None:
    """A pool in one batch: run k is built by the k-th factory, so it equals that configuration run alone."""
    import rlr_methods

    factory, config, seeds = rlr_methods.get("prodigy").optimizer, MNIST1DConfig(steps=25), [0, 0, 1]
    pool = [{"d_coef": 0.3}, {"d_coef": 3.0}, {"d_coef": 1.0}]
    together = tasks.train_mnist1d_batched(seeds, config, make_optimizer=[factory(params, 25) for params in pool],
                                           dtype=torch.float64)
    for k, (seed, params) in enumerate(zip(seeds, pool)):
        alone = tasks.train_mnist1d_batched([seed], config, make_optimizer=factory(params, 25), dtype=torch.float64)[0]
        np.testing.assert_allclose(together[k].series["loss"], alone.series["loss"], rtol=1e-10)
    assert not np.allclose(together[0].series["loss"], together[1].series["loss"])  # same seed, other configuration


class NaNOnStep(torch.optim.SGD):
    """SGD that writes NaN into its parameters on its n-th step: a divergence no loss before it shows."""

    def __init__(self, params, lr: float, n: int) -> None:
        super().__init__(params, lr)
        self.n, self.count = n, 0

    def step(self, closure=None):
        super().step(closure)
        self.count += 1
        if self.count == self.n:
            with torch.no_grad():
                for group in self.param_groups:
                    for parameter in group["params"]:
                        parameter.fill_(math.nan)


def test_weights_left_non_finite_by_the_last_update_are_a_divergence_in_both_loops() -> None:
    config = MNIST1DConfig(steps=6)
    make = lambda params, lr: NaNOnStep(params, 1e-3, n=6)  # noqa: E731
    reference = tasks.train_mnist1d(0, config, make_optimizer=make)
    batched = tasks.train_mnist1d_batched([0, 1], config, make_optimizer=[make, lambda p, lr: torch.optim.SGD(p, 1e-3)])
    assert reference.diverged_at == 6 and len(reference.series["loss"]) == 6
    assert batched[0].diverged_at == 6 and len(batched[0].series["loss"]) == 6
    assert batched[1].diverged_at is None
