"""RLRScheduler as a drop-in torch scheduler: state_dict round trip, train()/eval(), the lr_grid keyword,
and save_agent / load_agent.

Expected values are computed independently (argmax of the policy net by hand, the index path by hand,
a second run from a loaded state). Step counts are small: the file runs in a few seconds.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import rlr_core as rc
import rlr_engine as engine
import rlr_results as results_io

GRID = 10.0 ** np.linspace(-5.0, -2.0, 12)  # the original's grid, written out independently


def make_problem(model_seed: int):
    """A user's own model and data (not MaclaurinNet): the scheduler must not care what it trains."""
    generator = torch.Generator().manual_seed(1234)
    inputs, targets = torch.randn(64, 6, generator=generator), torch.randn(64, 2, generator=generator)
    torch.manual_seed(model_seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
    optimizer = torch.optim.Adam(model.parameters())

    def loss_fn() -> torch.Tensor:
        return nn.functional.mse_loss(model(inputs), targets)

    return model, optimizer, loss_fn


def run_steps(scheduler: rc.RLRScheduler, optimizer, loss_fn, n: int, loss: torch.Tensor | None = None):
    """The README loop for n training steps; returns the lr each step used and the last loss (with graph)."""
    if loss is None:
        loss = loss_fn()
    lrs = []
    for _ in range(n):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss = loss_fn()
        scheduler.step(loss.item())
    return lrs, loss


def agent_tensors(agent: rc.DQNAgent) -> dict[str, torch.Tensor]:
    """Every tensor the agent's future depends on, flattened by name (independent of state_dict)."""
    tensors = {f"policy.{k}": v.detach().clone() for k, v in agent.policy_net.state_dict().items()}
    tensors |= {f"target.{k}": v.detach().clone() for k, v in agent.target_net.state_dict().items()}
    for p_index, param in enumerate(agent.policy_net.parameters()):
        for name, value in agent.optimizer.state[param].items():
            tensors[f"adam.{p_index}.{name}"] = torch.as_tensor(value).clone()
    for name in ("states", "actions", "next_states", "rewards"):
        tensors[f"replay.{name}"] = getattr(agent.replay, name).clone()
    tensors["generator"] = agent.generator.get_state().clone()
    return tensors


def assert_same_tensors(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), f"{name} differs"


# ---------------------------------------------------------------------------------------------------
# state_dict / load_state_dict
# ---------------------------------------------------------------------------------------------------


def test_state_dict_round_trip_continues_bit_identically(tmp_path):
    """k steps, save, n more; a fresh model/optimizer/scheduler loaded from the save does the same n steps."""
    k, n = 90, 40  # past learning_starts (64): the agent learns on both sides of the save
    model, optimizer, loss_fn = make_problem(model_seed=0)
    scheduler = rc.RLRScheduler(optimizer, seed=0)
    scheduler.step(loss_fn().item())
    _, loss = run_steps(scheduler, optimizer, loss_fn, k)
    assert len(scheduler.agent.replay) == k
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, tmp_path / "checkpoint.pt")
    snapshot = scheduler.state_dict()  # in memory: a later step must not change it
    lrs_continued, _ = run_steps(scheduler, optimizer, loss_fn, n, loss)
    expected_agent, expected_model = agent_tensors(scheduler.agent), {k: v.clone() for k, v in model.state_dict().items()}
    assert len(set(lrs_continued)) > 1, "the test should see the lr change"

    for source in ("file", "memory"):
        model_b, optimizer_b, loss_fn_b = make_problem(model_seed=99)  # other initial weights...
        scheduler_b = rc.RLRScheduler(optimizer_b, seed=7)  # ...and another agent: all overwritten
        checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
        if source == "memory":
            checkpoint["scheduler"] = snapshot
        model_b.load_state_dict(checkpoint["model"])
        optimizer_b.load_state_dict(checkpoint["optimizer"])
        scheduler_b.load_state_dict(checkpoint["scheduler"])
        assert scheduler_b.last_epoch == k + 1 and scheduler_b.agent.steps_done == k + 1
        lrs_b, _ = run_steps(scheduler_b, optimizer_b, loss_fn_b, n)
        assert lrs_b == lrs_continued, source
        assert_same_tensors(agent_tensors(scheduler_b.agent), expected_agent)
        assert_same_tensors(model_b.state_dict(), expected_model)
        assert scheduler_b.agent.steps_done == scheduler.agent.steps_done
        assert scheduler_b.lr_index == scheduler.lr_index


def test_state_dict_holds_only_tensors_and_primitives():
    _, optimizer, loss_fn = make_problem(model_seed=0)
    scheduler = rc.RLRScheduler(optimizer, seed=0)
    scheduler.step(loss_fn().item())
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["schedule"]["lr_grid"] == pytest.approx(GRID, rel=1e-12)
    assert state["lr_index"] == scheduler.lr_index


def test_load_state_dict_refuses_another_grid_or_an_index_off_the_grid():
    _, optimizer, _ = make_problem(model_seed=0)
    state = rc.RLRScheduler(optimizer, seed=0).state_dict()
    _, other_optimizer, _ = make_problem(model_seed=0)
    with pytest.raises(ValueError, match="saved with schedule"):
        rc.RLRScheduler(other_optimizer, lr_grid=[1e-4, 1e-3, 1e-2]).load_state_dict(state)
    with pytest.raises(ValueError, match="lr_index 12, outside the grid"):
        rc.RLRScheduler(other_optimizer).load_state_dict({**state, "lr_index": 12})


# ---------------------------------------------------------------------------------------------------
# train() and eval()
# ---------------------------------------------------------------------------------------------------


def test_eval_is_frozen_and_greedy_and_train_learns_again():
    """eval(): action = argmax Q(s) (computed here), no replay write, no update, no epsilon step.

    epsilon is 1 in this config, so in training every action is random: greedy actions can only come
    from eval mode.
    """
    config = rc.DQNConfig(epsilon_start=1.0, epsilon_end=1.0, learning_starts=8, batch_size=8)
    agent = rc.DQNAgent(2, 3, config, seed=3)
    _, optimizer, loss_fn = make_problem(model_seed=0)
    scheduler = rc.RLRScheduler(optimizer, agent)
    scheduler.step(loss_fn().item())
    _, loss = run_steps(scheduler, optimizer, loss_fn, 20)
    assert agent.last_explored
    frozen, steps_done, replay_size = agent_tensors(agent), agent.steps_done, len(agent.replay)
    del frozen["generator"]  # act() draws its 2 uniforms in eval too (fixed draw pattern)

    assert scheduler.eval() is scheduler
    index = scheduler.lr_index
    for _ in range(25):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss = loss_fn()
        value = loss.item()
        state = torch.tensor([value, value - scheduler.previous_loss], dtype=torch.float32)
        with torch.no_grad():
            greedy = int(agent.policy_net(state).argmax())
        scheduler.step(value)
        assert scheduler.last_action == greedy and not agent.last_explored
        index = min(max(index + (-1, 0, 1)[greedy], 0), 11)
        assert scheduler.lr_index == index
        assert optimizer.param_groups[0]["lr"] == pytest.approx(GRID[index], rel=1e-12)
    now = agent_tensors(agent)
    del now["generator"]
    assert_same_tensors(now, frozen)
    assert agent.steps_done == steps_done and len(agent.replay) == replay_size

    assert scheduler.train() is scheduler
    run_steps(scheduler, optimizer, loss_fn, 1, loss)
    assert len(agent.replay) == replay_size + 1 and agent.steps_done == steps_done + 1
    assert not torch.equal(agent.policy_net[0].weight, frozen["policy.0.weight"]), "train() learns again"


# ---------------------------------------------------------------------------------------------------
# The lr_grid keyword
# ---------------------------------------------------------------------------------------------------


def test_lr_grid_keyword_builds_the_schedule_starting_mid_grid():
    _, optimizer, _ = make_problem(model_seed=0)
    scheduler = rc.RLRScheduler(optimizer, lr_grid=[1e-4, 1e-3, 1e-2, 1e-1])
    assert scheduler.schedule.lr_grid == (1e-4, 1e-3, 1e-2, 1e-1)
    assert scheduler.schedule.start_index == 2  # len // 2, as the original's 12 // 2 = 6
    assert scheduler.get_last_lr() == [1e-2] and optimizer.param_groups[0]["lr"] == 1e-2
    assert rc.RLRScheduler(optimizer, lr_grid=np.array([1e-3, 1e-2]), start_index=0).get_last_lr() == [1e-3]
    assert rc.RLRScheduler(optimizer).schedule == rc.ScheduleConfig()  # no grid given: the original's


def test_lr_grid_keyword_is_validated_by_schedule_config():
    _, optimizer, _ = make_problem(model_seed=0)
    with pytest.raises(ValueError, match="schedule.lr_grid must be strictly increasing"):
        rc.RLRScheduler(optimizer, lr_grid=[1e-2, 1e-3])
    with pytest.raises(ValueError, match=r"schedule.lr_grid\[1\] must be a finite number"):
        rc.RLRScheduler(optimizer, lr_grid=[1e-3, -1.0])
    with pytest.raises(TypeError, match="lr_grid must be a sequence"):
        rc.RLRScheduler(optimizer, lr_grid=1e-3)
    with pytest.raises(ValueError, match="start_index must be in"):
        rc.RLRScheduler(optimizer, lr_grid=[1e-3, 1e-2], start_index=2)
    with pytest.raises(ValueError, match="either schedule"):
        rc.RLRScheduler(optimizer, schedule=rc.ScheduleConfig(), lr_grid=[1e-3, 1e-2])


def test_scheduler_refuses_an_agent_of_another_shape():
    _, optimizer, _ = make_problem(model_seed=0)
    with pytest.raises(ValueError, match="agent.state_dim must be 2"):
        rc.RLRScheduler(optimizer, rc.DQNAgent(4, 3))
    with pytest.raises(ValueError, match="agent has 2 actions"):
        rc.RLRScheduler(optimizer, rc.DQNAgent(2, 2))


# ---------------------------------------------------------------------------------------------------
# save_agent / load_agent
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def trained_agent() -> rc.DQNAgent:
    agent = rc.DQNAgent(2, 3, rc.DQNConfig(hidden_size=16, learning_starts=8, batch_size=8), seed=5)
    _, optimizer, loss_fn = make_problem(model_seed=0)
    scheduler = rc.RLRScheduler(optimizer, agent)
    scheduler.step(loss_fn().item())
    run_steps(scheduler, optimizer, loss_fn, 30)
    return agent


def plain_content(value) -> bool:
    """True when value is made of dicts, lists, tuples, str/int/float/bool/None and tensors only."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain_content(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(plain_content(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool, torch.Tensor))


def test_save_agent_round_trips_the_policy_in_a_plain_file(tmp_path, trained_agent):
    path = results_io.save_agent(trained_agent, tmp_path / "agent.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.pt"], "no temp file left behind"
    content = torch.load(path, weights_only=True)
    assert plain_content(content)
    assert content["config"] == json.loads(json.dumps(content["config"])), "config is a plain dict"
    assert (content["state_dim"], content["n_actions"]) == (2, 3)

    loaded = results_io.load_agent(path, seed=1)
    assert loaded.config == trained_agent.config and loaded.steps_done == trained_agent.steps_done == 31
    for name in ("policy_net", "target_net"):
        for key, tensor in getattr(trained_agent, name).state_dict().items():
            assert torch.equal(getattr(loaded, name).state_dict()[key], tensor), f"{name}.{key}"
    states = torch.randn(50, 2) * torch.tensor([0.5, 0.01])
    with torch.no_grad():
        assert torch.equal(loaded.policy_net(states).argmax(1), trained_agent.policy_net(states).argmax(1))
    assert len(loaded.replay) == 0, "the replay memory is not part of the file"

    results_io.save_agent(loaded, path)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.pt"]


def test_loaded_agent_drives_a_frozen_scheduler(tmp_path, trained_agent):
    path = results_io.save_agent(trained_agent, tmp_path / "agent.pt")
    _, optimizer, loss_fn = make_problem(model_seed=1)
    scheduler = rc.RLRScheduler(optimizer, agent=results_io.load_agent(path)).eval()
    scheduler.step(loss_fn().item())
    run_steps(scheduler, optimizer, loss_fn, 10)
    assert len(scheduler.agent.replay) == 0 and scheduler.get_last_lr()[0] in rc.ScheduleConfig().lr_grid


def test_load_agent_rejects_files_that_are_not_agents(tmp_path, trained_agent):
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(4096))
    as_json = tmp_path / "agent.json"
    as_json.write_text(json.dumps({"format": results_io.AGENT_FILE_FORMAT, "state_dim": 2}))
    a_tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), a_tensor)
    a_model = tmp_path / "model.pt"
    torch.save(trained_agent.policy_net.state_dict(), a_model)
    with_code = tmp_path / "pickled.pt"
    torch.save({"format": results_io.AGENT_FILE_FORMAT, "config": trained_agent.config}, with_code)  # a dataclass
    for path, message in ((random_bytes, "not a file written by save_agent"),
                          (as_json, "not a file written by save_agent"),
                          (a_tensor, "not a file written by save_agent .it holds a Tensor"),
                          (a_model, "not a file written by save_agent .it holds a dict with keys"),
                          (with_code, "not a file written by save_agent .torch.load failed")):
        with pytest.raises(ValueError, match=message):
            results_io.load_agent(path)
    with pytest.raises(FileNotFoundError):
        results_io.load_agent(tmp_path / "missing.pt")


def test_load_agent_rejects_other_shapes_and_broken_content(tmp_path, trained_agent):
    path = results_io.save_agent(trained_agent, tmp_path / "agent.pt")
    with pytest.raises(ValueError, match="the agent has state_dim=2, expected state_dim=4"):
        results_io.load_agent(path, state_dim=4)
    with pytest.raises(ValueError, match="the agent has n_actions=3, expected n_actions=5"):
        results_io.load_agent(path, n_actions=5)
    good = torch.load(path, weights_only=True)

    def broken(drop: str | None = None, **changes):
        target = tmp_path / "broken.pt"
        torch.save({k: v for k, v in {**good, **changes}.items() if k != drop}, target)
        return target

    with pytest.raises(ValueError, match=r"policy_net.0.weight has shape \(16, 3\), expected \(16, 2\)"):
        results_io.load_agent(broken(policy_net={**good["policy_net"], "0.weight": torch.zeros(16, 3)}))
    with pytest.raises(ValueError, match=r"policy_net.4.weight has shape \(3, 16\), expected \(4, 16\)"):
        results_io.load_agent(broken(n_actions=4))
    with pytest.raises(ValueError, match="target_net holds tensors"):
        results_io.load_agent(broken(target_net={"weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match="non-finite weights"):
        results_io.load_agent(broken(policy_net={**good["policy_net"], "2.bias": torch.full((16,), math.nan)}))
    with pytest.raises(ValueError, match="config is invalid.*dqn.gamma"):
        results_io.load_agent(broken(config={**good["config"], "gamma": 2.0}))
    with pytest.raises(ValueError, match="format_version 99"):
        results_io.load_agent(broken(format_version=99))
    with pytest.raises(ValueError, match=r"lacks \['steps_done'\]"):
        results_io.load_agent(broken(drop="steps_done"))


# --- ablation options of the study: scale-free features and multiplicative actions -------------------


def test_log_features_state_and_reward_match_hand_computation():
    schedule = rc.ScheduleConfig(features="log")
    assert schedule.state_dim == 3
    state = rc.loss_state(2e-6, 4e-6, rc.lr_position(1e-4, schedule), "log", torch.float64)
    assert state.tolist() == pytest.approx([math.log(2e-6), math.log(2e-6) - math.log(4e-6), 1 / 3])
    assert rc.loss_reward(4e-6, 2e-6, "log") == pytest.approx(math.log(2))
    assert rc.loss_state(2e-6, None, 0.0, "log", torch.float64)[1] == 0.0


def test_multiplicative_actions_clip_to_the_grid_range_and_log_the_nearest_index():
    schedule = rc.ScheduleConfig(lr_factors=(0.5, 1.0, 2.0))
    assert schedule.n_actions == 3
    grid = schedule.lr_grid
    assert rc.next_lr(6, grid[-1], 2, schedule) == (len(grid) - 1, grid[-1])
    assert rc.next_lr(0, grid[0], 0, schedule) == (0, grid[0])
    index, lr = rc.next_lr(6, 1e-3, 0, schedule)
    assert lr == 5e-4 and grid[index] == min(grid, key=lambda g: abs(math.log(g) - math.log(5e-4)))


def test_log_feature_run_rewards_are_log_loss_decreases():
    config = engine.Config(dtype="float64", schedule=rc.ScheduleConfig(steps=60, features="log", lr_factors=(0.5, 1.0, 2.0)))
    result = engine.train_rl_scheduled(config)
    losses = result.series["loss"]
    assert np.allclose(result.series["reward"][1:], np.log(losses[:-1]) - np.log(losses[1:]), rtol=1e-12)
    ratios = result.series["lr"][1:] / result.series["lr"][:-1]
    on_edge = np.isin(result.series["lr"][1:], [config.schedule.lr_grid[0], config.schedule.lr_grid[-1]])
    assert np.all(np.isclose(ratios, 0.5) | np.isclose(ratios, 1.0) | np.isclose(ratios, 2.0) | on_edge)


def test_each_param_group_keeps_its_ratio_to_the_first_groups_lr():
    """As torch's LambdaLR scales each group's base lr: a head at 10x the body's lr stays at 10x."""
    body, head = torch.nn.Linear(3, 4), torch.nn.Linear(4, 1)
    optimizer = torch.optim.Adam([{"params": body.parameters(), "lr": 1e-3},
                                  {"params": head.parameters(), "lr": 1e-2}])
    scheduler = rc.RLRScheduler(optimizer, seed=0)
    reference = torch.optim.lr_scheduler.LambdaLR(torch.optim.Adam(
        [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0},
         {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 10.0}]), lambda epoch: 1.0)
    assert [lr / reference.get_last_lr()[0] for lr in reference.get_last_lr()] == [1.0, 10.0]
    for loss in (1.0, 0.9, 0.8, 0.85, 0.7):
        scheduler.step(loss)
        lrs = [group["lr"] for group in optimizer.param_groups]
        assert lrs == scheduler.get_last_lr() and lrs[1] == pytest.approx(10 * lrs[0], rel=1e-12)
        assert lrs[0] in scheduler.schedule.lr_grid
    again = rc.RLRScheduler(torch.optim.Adam([{"params": body.parameters(), "lr": 1e-3},
                                           {"params": head.parameters(), "lr": 1e-2}]), seed=0)
    again.load_state_dict(scheduler.state_dict())
    assert again.get_last_lr() == scheduler.get_last_lr()
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\]"):
        rc.RLRScheduler(torch.optim.SGD(body.parameters(), lr=0.0))


def test_a_scheduler_state_saved_before_the_validation_fields_still_loads():
    import torch
    import rlr_core as rc
    model = rc.make_model(rc.TaskConfig(), 0)
    state = rc.RLRScheduler(torch.optim.Adam(model.parameters()), seed=0).state_dict()
    for field in ("reward", "validation_examples"):
        del state["schedule"][field]
    rc.RLRScheduler(torch.optim.Adam(model.parameters()), seed=0).load_state_dict(state)  # no error
