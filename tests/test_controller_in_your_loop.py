"""A saved controller in your own training loop (issue 25): load_controller(path, label).scheduler(optimizer,
total_steps) is a frozen torch-style scheduler for any optimiser, model, loss and run length. The reference
for what it must do is the vector environment the controller was trained and evaluated on: on the project's
task the scheduler's learning rates are the environment's, decision for decision."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import rlr_controllers as controllers
import rlr_core as rc
import rlr_engine as engine


def untrained_controller(validation_state: bool = False, steps: int = 10_000, agent_seed: int = 0,
                         interval: int = 100) -> controllers.TrainedController:
    """A DQN controller with a seeded, untrained Q-network: a real policy of the controller's shape (its
    decisions are arbitrary but deterministic), made in a second, with the file fields a trained one has."""
    controller = controllers.ControllerConfig(validation_state=validation_state, decision_interval=interval)
    run_config = engine.Config().with_overrides({"schedule": asdict(controller.schedule(steps)),
                                                 "dqn": controllers.CONTROLLER_DQN})
    agent = rc.DQNAgent(run_config.schedule.state_dim, run_config.schedule.n_actions, run_config.dqn, agent_seed)
    curve = pd.DataFrame({"episode": [0], "round": [0], "seed": [1], "return": [0.0], "diverged": [False]})
    return controllers.TrainedController(controllers.DQN_CONTROLLER, "dqn", run_config.to_dict(),
                                         controllers.policy_weights(agent), curve, 0.0, {}, [1e-4])


def saved(tmp_path, *trained: controllers.TrainedController):
    path = tmp_path / "controllers.pt"
    controllers.save_controllers({controller.label: controller for controller in trained}, path)
    return path


def classification_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two noisy interleaved spirals: data no notebook of the project trains on."""
    generator = torch.Generator().manual_seed(seed)
    angle = torch.rand(400, generator=generator) * 3 * math.pi
    label = torch.randint(0, 2, (400,), generator=generator)
    radius = angle / (3 * math.pi)
    points = torch.stack([radius * torch.cos(angle + math.pi * label), radius * torch.sin(angle + math.pi * label)], 1)
    return points + 0.05 * torch.randn(400, 2, generator=generator), label


def classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # a test is an entry point: it may seed the global generator
    return nn.Sequential(nn.Linear(2, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 2))


def train(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, steps: int, data) -> list[float]:
    """An ordinary loop: full-batch cross-entropy, scheduler.step(loss, validation_loss) after every
    optimizer.step() (the validation loss on a held-out half, for controllers whose state reads it)."""
    inputs, labels = data
    half = len(inputs) // 2

    def losses() -> tuple[torch.Tensor, float]:
        with torch.no_grad():
            validation = nn.functional.cross_entropy(model(inputs[half:]), labels[half:]).item()
        return nn.functional.cross_entropy(model(inputs[:half]), labels[:half]), validation
    loss, validation = losses()
    scheduler.step(loss.item(), validation_loss=validation)
    lrs = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lrs.append([group["lr"] for group in optimizer.param_groups])
        loss, validation = losses()
        scheduler.step(loss.item(), validation_loss=validation)
    return lrs


def test_a_saved_controller_steers_sgd_on_a_model_and_loss_the_project_never_trains(tmp_path):
    path = saved(tmp_path, untrained_controller())
    model = classifier()
    optimizer = torch.optim.SGD([{"params": model[0].parameters()},  # two groups: the head at 10x the body's lr
                                 {"params": model[2:].parameters(), "lr": 1.0}], lr=0.1, momentum=0.9)
    scheduler = controllers.load_controller(path).scheduler(optimizer, total_steps=300)
    assert scheduler.schedule.decision_interval == 3  # 100 of 10 000 scaled to 300: 100 decisions, as trained
    lrs = np.array(train(model, optimizer, scheduler, 300, classification_data()))
    grid = scheduler.schedule.lr_grid
    assert np.all((lrs[:, 0] >= grid[0] * (1 - 1e-12)) & (lrs[:, 0] <= grid[-1] * (1 + 1e-12)))
    assert np.allclose(lrs[:, 1], 10 * lrs[:, 0])  # the groups keep their ratio
    changes = np.flatnonzero(np.diff(lrs[:, 0])) + 1  # the lr moves only when a decision is taken
    assert len(changes) > 0 and np.all(changes % 3 == 0)
    assert scheduler.last_epoch == 301


@pytest.mark.parametrize("steps, interval, validation_state", [(300, 3, False), (10, 3, False), (30, 7, False),
                                                                (10, 10, False), (20, 6, True)])
def test_on_the_projects_task_the_scheduler_takes_the_environments_decisions(steps, interval, validation_state):
    """The scheduler in the readable reference loop (rlr_core: MaclaurinNet, full-batch Adam) against
    run_policy on the vector environment (the batched engine): the same lr at every optimiser step, with
    intervals that divide the run and intervals that leave a last, partial one, and with the validation
    loss in the state (measured, as the environment does, on the task seed's monitoring split)."""
    trained, seed = untrained_controller(validation_state, steps, agent_seed=3, interval=interval), 5
    config = engine.Config.from_dict(trained.run_config).with_seed(seed)
    expected = controllers.run_policy(config, trained.act(), [seed])[0].series["lr"]
    seeds = rc.derive_seeds(seed)
    data = rc.make_polynomial_dataset(config.task, seeds.data)
    monitor = rc.make_polynomial_dataset(config.task, seeds.monitor, config.schedule.validation_examples)
    model = rc.make_model(config.task, seeds.init)
    optimizer = rc.make_adam(model.parameters(), 1e-3)
    scheduler = trained.scheduler(optimizer, steps)
    assert scheduler.schedule == config.schedule  # a run as long as the training's keeps its interval

    def losses() -> dict:
        with torch.no_grad():
            validation = rc.full_batch_loss(model, monitor).item() if validation_state else None
        return {"loss": rc.full_batch_loss(model, data).item(), "validation_loss": validation}
    lrs = []
    scheduler.step(**losses())
    for _ in range(steps):
        optimizer.zero_grad()
        rc.full_batch_loss(model, data).backward()
        optimizer.step()
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step(**losses())
    if steps == 300:
        assert len(set(lrs)) > 2  # the policy moves the lr: the comparison is not of two constants
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)


def test_a_run_shorter_than_the_trained_decisions_decides_every_step():
    trained = untrained_controller()
    optimizer = torch.optim.SGD(classifier().parameters(), lr=0.1)
    assert trained.scheduler(optimizer, 149).schedule.decision_interval == 1
    assert trained.scheduler(optimizer, 1).schedule.decision_interval == 1
    assert trained.scheduler(optimizer, 20_000).schedule.decision_interval == 200


def test_every_saved_learner_loads_as_a_scheduler_with_weights_only(tmp_path):
    """The committed controllers file (DQN and stable-baselines3's learners), read with weights_only=True."""
    path = "results/controllers.pt"
    labels = list(controllers.load_controllers(path))
    assert controllers.load_controller(path).label == controllers.best_trained(controllers.load_controllers(path))
    for label in labels:
        model = classifier(1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        lrs = train(model, optimizer, controllers.load_controller(path, label).scheduler(optimizer, 60), 60,
                    classification_data(1))
        assert all(math.isfinite(lr[0]) and lr[0] > 0 for lr in lrs)


def test_a_state_dict_resumes_the_run_where_it_stopped(tmp_path):
    trained, data = untrained_controller(), classification_data(2)
    model = classifier(2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = trained.scheduler(optimizer, 100, loss_average="interval")
    whole = train(model, optimizer, scheduler, 100, data)
    model = classifier(2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = trained.scheduler(optimizer, 100, loss_average="interval")
    half = train(model, optimizer, first, 50, data)
    torch.save(first.state_dict(), tmp_path / "scheduler.pt")
    resumed = trained.scheduler(optimizer, 100, loss_average="interval")
    resumed.load_state_dict(torch.load(tmp_path / "scheduler.pt", weights_only=True))
    inputs, labels = data[0][:len(data[0]) // 2], data[1][:len(data[0]) // 2]  # train()'s training half
    rest = []
    for _ in range(50):  # the loop goes on where `half` stopped (its last step(loss) already taken)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
        rest.append([group["lr"] for group in optimizer.param_groups])
        resumed.step(nn.functional.cross_entropy(model(inputs), labels).item())
    assert half + rest == whole


def test_a_policy_that_reads_the_validation_loss_needs_it_at_every_decision():
    trained = untrained_controller(validation_state=True)
    model = classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = trained.scheduler(optimizer, 50)
    with pytest.raises(ValueError, match="validation_loss"):
        scheduler.step(0.7)
    with pytest.raises(ValueError, match="validation_loss must be >= 0"):
        scheduler.step(0.7, validation_loss=-0.8)
    assert scheduler.last_epoch == 0  # refused steps change nothing
    scheduler.step(0.7, validation_loss=0.8)
    assert scheduler.last_epoch == 1


def test_bad_input_is_refused_by_name_before_any_step(tmp_path):
    path = saved(tmp_path, untrained_controller())
    trained = controllers.load_controller(path)
    optimizer = torch.optim.SGD(classifier().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="total_steps"):
        trained.scheduler(optimizer, 0)
    with pytest.raises(TypeError, match="total_steps"):
        trained.scheduler(optimizer, 10.5)
    with pytest.raises(TypeError, match="optimizer"):
        trained.scheduler(classifier(), 10)
    with pytest.raises(ValueError, match="loss_average"):
        trained.scheduler(optimizer, 10, loss_average="median")
    with pytest.raises(ValueError, match="label 'nobody'"):
        controllers.load_controller(path, "nobody")
    with pytest.raises(TypeError, match="label"):
        controllers.load_controller(path, 3)
    with pytest.raises(FileNotFoundError):
        controllers.load_controller(tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="path"):
        controllers.load_controller(None)
    scheduler = trained.scheduler(optimizer, 10, loss_average="interval")
    with pytest.raises(FloatingPointError, match="non-finite"):
        scheduler.step(float("nan"))
    with pytest.raises(ValueError, match="loss must be >= 0"):
        scheduler.step(-1.0)
    for bad in ("abc", None, True, torch.ones(2)):
        with pytest.raises(TypeError, match="loss must be a number"):
            scheduler.step(bad)
    assert scheduler.last_epoch == 0 and scheduler.interval_losses == []  # nothing refused was counted
    for bad_action in (1.7, [], [0, 1], None, 5):
        refusing = rc.PolicyScheduler(optimizer, lambda observations, a=bad_action: a, scheduler.schedule)
        with pytest.raises(ValueError, match="act"):
            refusing.step(0.5)
    with pytest.raises(ValueError, match="state must be a PolicyScheduler.state_dict"):
        scheduler.load_state_dict({})
    for key, value in (("last_lr", [-1.0]), ("last_epoch", -5), ("lr_index", 99)):
        with pytest.raises(ValueError, match=key):
            scheduler.load_state_dict({**scheduler.state_dict(), key: value})
    raw = replace(engine.Config.from_dict(trained.run_config).schedule, features="raw", lr_factors=(), reward="training")
    with pytest.raises(ValueError, match="log features"):
        rc.PolicyScheduler(optimizer, trained.act(), raw)
    with pytest.raises(TypeError, match="act"):
        rc.PolicyScheduler(optimizer, None, engine.Config.from_dict(trained.run_config).schedule)


def test_a_frozen_controller_steers_an_mnist1d_run_deciding_on_the_mini_batch_losses():
    """The transfer across tasks: a controller on MNIST-1D's reference loop (mini-batch Adam, cross-entropy)
    sees each mini-batch loss before the step it sets the lr of; on the mean over its interval here."""
    import rlr_tasks

    trained, steps = untrained_controller(agent_seed=1), 600
    config = rlr_tasks.MNIST1DConfig(steps=steps)
    schedulers = []

    def make_scheduler(optimizer):
        schedulers.append(trained.scheduler(optimizer, steps, loss_average="interval"))
        return schedulers[-1]
    run = rlr_tasks.train_mnist1d(0, config, lr=1e-3, make_scheduler=make_scheduler)
    scheduler, lrs, losses = schedulers[0], run.series["lr"], run.series["loss"]
    interval = scheduler.schedule.decision_interval
    assert scheduler.last_epoch == steps and interval == 6  # 100 decisions, as trained
    assert len(set(lrs)) > 1 and np.all(np.flatnonzero(np.diff(lrs)) % interval == interval - 1)
    replay = trained.scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), steps,
                               loss_average="interval")
    expected = []
    for loss in losses:  # the same losses into a second scheduler: the lrs the run used, step by step
        replay.step(loss)
        expected.append(replay.get_last_lr()[0])
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)


def test_the_controllers_trained_on_mnist1d_load_with_weights_only_and_steer_a_users_loop():
    """Notebook 07's committed checkpoints (results/mnist1d_controllers.pt): each reads back with
    weights_only=True, keeps notebook 04's state and reward (it reads the validation loss), and runs a user's
    loop of another length, deciding as often as in training."""
    path = "results/mnist1d_controllers.pt"
    trained = controllers.load_controllers(path)
    training = json.loads(Path("results/mnist1d_summary.json").read_text())["controller_training"]
    picked = training["picked"]
    scores = sorted(training["checkpoint_validation"], key=lambda row: (row["validation_error"], row["validation_ce"]))
    assert picked == scores[0]["method"], "the checkpoint with the lowest validation error on the tuning seeds"
    assert picked in trained and all(label.startswith("DQN controller trained on MNIST-1D") for label in trained)
    for label in trained:
        controller = controllers.load_controller(path, label)
        model = classifier(2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        held_out, held_out_labels = classification_data(3)
        validation = lambda: torch.nn.functional.cross_entropy(model(held_out), held_out_labels).item()  # noqa: E731
        scheduler = controller.scheduler(optimizer, 200, loss_average="interval")
        assert scheduler.schedule.features == "validation" and scheduler.schedule.decision_interval == 2
        inputs, labels = classification_data(2)
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        scheduler.step(loss.item(), validation_loss=validation())
        for _ in range(200):
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            loss = torch.nn.functional.cross_entropy(model(inputs), labels)
            scheduler.step(loss.item(), validation_loss=validation())
        grid = scheduler.schedule.lr_grid
        assert scheduler.last_epoch == 201 and grid[0] <= scheduler.get_last_lr()[0] <= grid[-1]
