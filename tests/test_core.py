"""Unit tests for rlr_core: every expected value is computed independently (numpy or hand arithmetic).

Nothing here compares against output the code saved earlier. Step counts are tiny so the whole file
runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import rlr_core
import rlr_engine
from rlr_core import (
    DQNAgent,
    DQNConfig,
    MaclaurinNet,
    QNetwork,
    ReplayMemory,
    RLRScheduler,
    ScheduleConfig,
    TaskConfig,
    Transition,
    assemble_as_coded_batch,
    derive_seeds,
    epsilon_at,
    full_batch_loss,
    make_adam,
    make_model,
    make_polynomial_dataset,
    soft_update,
)
from rlr_engine import BaselineConfig, Config, train_baseline, train_full_batch, train_rl_scheduled
from rlr_results import RunResult, load_result, save_result

GRID = 10.0 ** np.linspace(-5.0, -2.0, 12)  # the original's grid, written out independently
SHIFTS = (-1, 0, 1)


# ---------------------------------------------------------------------------------------------------
# Independent helpers (numpy)
# ---------------------------------------------------------------------------------------------------


def numpy_mlp_weights(net: nn.Module) -> list[tuple[np.ndarray, np.ndarray]]:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return [(m.weight.detach().double().numpy().copy(), m.bias.detach().double().numpy().copy())
            for m in linears]


def numpy_mlp_forward(weights: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    h = np.asarray(x, dtype=np.float64)
    for k, (w, b) in enumerate(weights):
        h = h @ w.T + b
        if k < len(weights) - 1:
            h = np.maximum(h, 0.0)
    return h


def numpy_huber(prediction: np.ndarray, target: np.ndarray) -> float:
    d = np.abs(prediction - target)
    return float(np.mean(np.where(d < 1.0, 0.5 * d ** 2, d - 0.5)))


def hand_index_path(actions, start: int = 6, n: int = 12) -> list[int]:
    """Grid index after each action: shift by (-1, 0, +1)[a], clip to [0, n - 1]."""
    index, path = start, []
    for a in actions:
        index = min(max(index + SHIFTS[int(a)], 0), n - 1)
        path.append(index)
    return path


def as_coded_rows_by_hand(S, A, S2, R, n_rows: int, n_actions: int = 3):
    """docs/original.md's table, written out row by row with numpy and Python int() (truncation)."""
    states, next_states = np.zeros((n_rows, 2)), np.zeros((n_rows, 2))
    actions, rewards = np.zeros(n_rows, dtype=np.int64), np.zeros(n_rows)

    def action(value: float) -> int:  # int() truncates; the code clips to the action range
        return min(max(int(value), 0), n_actions - 1)

    states[0], actions[0], rewards[0], next_states[0] = S[0], action(S[1][0]), S[3][0], S[2]
    states[1], actions[1], rewards[1], next_states[1] = [A[0]] * 2, action(A[1]), A[3], [A[2]] * 2
    states[2], actions[2], rewards[2], next_states[2] = S2[0], action(S2[1][0]), S2[3][0], S2[2]
    states[3], actions[3], rewards[3], next_states[3] = [R[0]] * 2, action(R[1]), R[3], [R[2]] * 2
    return states, actions, next_states, rewards


# ---------------------------------------------------------------------------------------------------
# Data set and networks
# ---------------------------------------------------------------------------------------------------


def test_dataset_inputs_are_coefficients_times_power_matrix():
    task = TaskConfig()
    data = make_polynomial_dataset(task, seed=123, dtype=torch.float64)
    w = data.targets.numpy()
    x = np.linspace(-2.0, 2.0, 20)
    X = np.empty((5, 20))
    for j in range(5):
        for i in range(20):
            X[j, i] = x[i] ** j
    assert data.inputs.shape == (256, 20) and data.targets.shape == (256, 5)
    np.testing.assert_allclose(data.inputs.numpy(), w @ X, rtol=1e-12, atol=1e-12)
    # float32 (the default) is the same data, rounded
    data32 = make_polynomial_dataset(task, seed=123)
    assert data32.inputs.dtype == torch.float32
    np.testing.assert_allclose(data32.inputs.numpy(), w @ X, rtol=1e-5, atol=1e-5)


def test_dataset_coefficient_std_matches_coeff_scale():
    task = TaskConfig()
    data = make_polynomial_dataset(task, seed=7, n_examples=20_000, dtype=torch.float64)
    std = data.targets.numpy().std(axis=0)
    np.testing.assert_allclose(std, [1.0, 0.5, 0.2, 0.1, 0.05], rtol=0.05)
    assert np.all(np.abs(data.targets.numpy().mean(axis=0)) < 0.05 * np.array([1.0, 0.5, 0.2, 0.1, 0.05]) * 3)


def test_dataset_same_seed_identical_different_seed_different():
    task = TaskConfig()
    a, b, c = (make_polynomial_dataset(task, seed=s) for s in (5, 5, 6))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.targets, c.targets)
    assert not torch.equal(a.inputs, c.inputs)


def test_maclaurin_net_layers_are_20_32_16_5_with_relu():
    net = MaclaurinNet(TaskConfig())
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(32, 20), (16, 32), (5, 16)]
    assert [type(m) for m in net] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert net(torch.zeros(7, 20)).shape == (7, 5)


def test_q_network_layers_are_2_64_64_3_with_relu():
    net = QNetwork(2, 3)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(64, 2), (64, 64), (3, 64)]
    assert [type(m) for m in net] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    agent = DQNAgent(2, 3)
    assert [tuple(p.shape) for p in agent.policy_net.parameters()] == \
        [(64, 2), (64,), (64, 64), (64,), (3, 64), (3,)]


# ---------------------------------------------------------------------------------------------------
# Learning-rate grid and scheduler mechanics
# ---------------------------------------------------------------------------------------------------


def test_lr_grid_is_logspace_minus5_minus2_with_12_points():
    grid = np.array(ScheduleConfig().lr_grid)
    assert grid.shape == (12,)
    np.testing.assert_allclose(grid, GRID, rtol=1e-12)
    assert grid[0] == pytest.approx(1e-5) and grid[-1] == pytest.approx(1e-2)


def test_lr_grid_does_not_contain_1e_minus3():
    grid = np.array(ScheduleConfig().lr_grid)
    assert np.min(np.abs(grid - 1e-3)) / 1e-3 > 0.15
    below, above = grid[grid < 1e-3].max(), grid[grid > 1e-3].min()
    assert below == pytest.approx(8.11e-4, rel=1e-3) and above == pytest.approx(1.52e-3, rel=2e-3)


def test_start_index_6_gives_lr_4_33e_minus4():
    schedule = ScheduleConfig()
    assert schedule.start_index == 12 // 2 == 6
    assert schedule.lr_grid[6] == pytest.approx(4.33e-4, rel=1e-3)
    assert schedule.lr_grid[6] == pytest.approx(10 ** (-5 + 6 * 3 / 11), rel=1e-12)
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.5)
    scheduler = RLRScheduler(optimizer, DQNAgent(2, 3), schedule)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(4.329e-4, rel=1e-3)
    assert scheduler.lr_index == 6


def forced_actions(monkeypatch, agent: DQNAgent, actions) -> list[torch.Tensor]:
    """Replace agent.act by a fixed action sequence; returns the list of states it was shown."""
    remaining, shown = list(actions), []

    def act(state):
        shown.append(torch.as_tensor(state).clone())
        return remaining.pop(0)

    monkeypatch.setattr(agent, "act", act)
    return shown


def test_lr_index_is_clipped_to_grid_and_written_to_every_param_group_at_its_ratio(monkeypatch):
    first, second = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([{"params": [first]}, {"params": [second], "lr": 0.5}], lr=0.1)
    agent = DQNAgent(2, 3, seed=0)
    actions = [2] * 8 + [1] * 2 + [0] * 15 + [2, 1]
    forced_actions(monkeypatch, agent, actions)
    scheduler = RLRScheduler(optimizer, agent, ScheduleConfig())
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([GRID[6], 5 * GRID[6]], rel=1e-12)
    expected = hand_index_path(actions)
    assert max(expected) == 11 and min(expected) == 0  # the sequence really hits both ends
    for k, action in enumerate(actions):
        scheduler.step(1.0 / (k + 1))
        assert scheduler.lr_index == expected[k]
        assert len(optimizer.param_groups) == 2
        for group, ratio in zip(optimizer.param_groups, (1, 5)):  # the second group keeps 0.5 / 0.1
            assert group["lr"] == pytest.approx(ratio * GRID[expected[k]], rel=1e-12)
        assert scheduler.get_last_lr() == pytest.approx([GRID[expected[k]], 5 * GRID[expected[k]]], rel=1e-12)
    assert scheduler.lr_index == 1  # 0, then +1


def test_scheduler_lr_is_used_by_the_next_optimizer_step(monkeypatch):
    """Plain SGD on sum(p^2): each step must move p by -grid[index] * 2p, and q (a group at 7/5 of the first's
    lr) by -7/5 grid[index] * 2q."""
    p = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    q = nn.Parameter(torch.tensor([3.0], dtype=torch.float64))
    optimizer = torch.optim.SGD([{"params": [p]}, {"params": [q], "lr": 7.0}], lr=5.0)
    agent = DQNAgent(2, 3, seed=0)
    actions = [2, 2, 2, 0, 1, 2, 2, 2, 2, 2, 2, 0]
    forced_actions(monkeypatch, agent, actions)
    scheduler = RLRScheduler(optimizer, agent, ScheduleConfig())
    path = hand_index_path(actions)

    def loss_fn():
        return (p ** 2).sum() + (q ** 2).sum()

    loss = loss_fn()
    scheduler.step(loss.item())
    for t in range(len(actions) - 1):
        before_p, before_q = p.detach().numpy().copy(), q.detach().numpy().copy()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lr = GRID[path[t]]
        np.testing.assert_allclose(p.detach().numpy(), before_p - lr * 2 * before_p, rtol=1e-13)
        np.testing.assert_allclose(q.detach().numpy(), before_q - lr * 7.0 / 5.0 * 2 * before_q, rtol=1e-13)
        loss = loss_fn()
        scheduler.step(loss.item())


def test_epsilon_at_matches_exponential_decay_formula():
    config = DQNConfig()
    for t in (0, 1, 5000, 9999, 50_000):
        assert epsilon_at(t, config) == pytest.approx(0.05 + 0.85 * math.exp(-t / 5000), rel=1e-12)
    assert epsilon_at(0, config) == pytest.approx(0.9, rel=1e-12)
    assert epsilon_at(5000, config) == pytest.approx(0.3627, abs=1e-4)
    assert epsilon_at(9999, config) == pytest.approx(0.1651, abs=1e-4)


def test_agent_epsilon_decays_with_each_training_act():
    agent = DQNAgent(2, 3, seed=1)
    for t in range(5):
        agent.act(torch.zeros(2))
        assert agent.last_epsilon == pytest.approx(0.05 + 0.85 * math.exp(-t / 5000), rel=1e-12)


def test_soft_update_moves_target_by_tau_toward_policy():
    torch.manual_seed(0)
    target, policy = nn.Linear(3, 2), nn.Linear(3, 2)
    t_before = [p.detach().numpy().copy() for p in target.parameters()]
    p_before = [p.detach().numpy().copy() for p in policy.parameters()]
    soft_update(target, policy, 0.005)
    for new, old_t, old_p in zip(target.parameters(), t_before, p_before):
        np.testing.assert_allclose(new.detach().numpy(), 0.995 * old_t + 0.005 * old_p, rtol=1e-6, atol=1e-7)
    for unchanged, old_p in zip(policy.parameters(), p_before):
        assert np.array_equal(unchanged.detach().numpy(), old_p)
    soft_update(target, policy, 1.0)
    for new, old_p in zip(target.parameters(), p_before):
        assert np.array_equal(new.detach().numpy(), old_p)


# ---------------------------------------------------------------------------------------------------
# Replay memory
# ---------------------------------------------------------------------------------------------------


def push_numbered(memory: ReplayMemory, i: int) -> None:
    memory.push(torch.tensor([float(i), 10.0 * i]), i % 3, torch.tensor([i + 0.5, -1.0 * i]), float(i))


def test_replay_capacity_is_never_exceeded():
    memory = ReplayMemory(5, 2)
    for i in range(5 + 3):
        push_numbered(memory, i)
        assert len(memory) == min(i + 1, 5)
        assert memory.states.shape[0] == 5


def test_replay_overwrites_oldest_first():
    memory = ReplayMemory(5, 2)
    for i in range(8):
        push_numbered(memory, i)
    # items 0, 1, 2 were replaced by 5, 6, 7 in slots 0, 1, 2; the next write goes to slot 3
    assert memory.rewards.tolist() == [5.0, 6.0, 7.0, 3.0, 4.0]
    assert memory.states[:, 0].tolist() == [5.0, 6.0, 7.0, 3.0, 4.0]
    assert memory.actions.tolist() == [5 % 3, 6 % 3, 7 % 3, 3 % 3, 4 % 3]
    assert memory.position == 3
    push_numbered(memory, 8)
    assert memory.rewards.tolist() == [5.0, 6.0, 7.0, 8.0, 4.0]


def test_replay_sample_shapes_and_rows_are_stored_rows():
    memory = ReplayMemory(10, 2)
    for i in range(13):
        push_numbered(memory, i)
    batch = memory.sample(64, torch.Generator().manual_seed(0))
    assert isinstance(batch, Transition)
    assert batch.state.shape == (64, 2) and batch.next_state.shape == (64, 2)
    assert batch.action.shape == (64,) and batch.action.dtype == torch.long
    assert batch.reward.shape == (64,)
    ids = batch.reward.numpy()
    assert set(ids.tolist()) <= set(range(3, 13))  # only transitions still stored
    assert len(set(ids.tolist())) > 3  # uniform over the memory, not one row
    # every field of a sampled row belongs to the same stored transition
    np.testing.assert_array_equal(batch.state.numpy(), np.stack([ids, 10 * ids], 1))
    np.testing.assert_array_equal(batch.next_state.numpy(), np.stack([ids + 0.5, -ids], 1))
    np.testing.assert_array_equal(batch.action.numpy(), ids.astype(int) % 3)


def test_replay_refuses_non_finite_values():
    memory = ReplayMemory(4, 2)
    good = torch.tensor([0.1, 0.2])
    with pytest.raises(ValueError):
        memory.push(torch.tensor([math.nan, 0.0]), 0, good, 0.0)
    with pytest.raises(ValueError):
        memory.push(good, 0, torch.tensor([0.0, math.inf]), 0.0)
    with pytest.raises(ValueError):
        memory.push(good, 0, good, math.nan)
    with pytest.raises(ValueError):
        memory.push(good, 0, good, -math.inf)
    assert len(memory) == 0 and memory.position == 0
    with pytest.raises(ValueError):
        memory.sample(2, torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------------
# The DQN update
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["described", "as_coded"])
def test_learn_returns_huber_loss_of_dqn_target_and_soft_updates_target(variant):
    n_stored = 70
    config = DQNConfig(variant=variant)
    agent = DQNAgent(2, 3, config, seed=11, dtype=torch.float64)
    reward_scale = 0.6 if variant == "described" else 0.3  # as_coded: keep int(reward) in range
    transitions = []
    for i in range(n_stored):
        state = np.array([0.2 + 0.01 * i, 0.001 * (i - 35)])
        next_state = np.array([0.2 + 0.01 * (i + 1), -0.002 * i])
        transitions.append((state, i % 3, next_state, reward_scale * ((i % 7) - 3)))
    for s, a, s2, r in transitions:  # remember only: the agent's optimiser has not stepped yet
        agent.remember(torch.tensor(s), a, torch.tensor(s2), r)

    # Predict the sample: indices floor(u * size) from the agent's own generator stream.
    generator = torch.Generator()
    generator.set_state(agent.generator.get_state())
    uniforms = torch.rand(64, dtype=torch.float64, generator=generator).numpy()
    indices = np.floor(uniforms * n_stored).astype(int)
    S = np.stack([transitions[k][0] for k in indices])
    A = np.array([transitions[k][1] for k in indices])
    S2 = np.stack([transitions[k][2] for k in indices])
    R = np.array([transitions[k][3] for k in indices])
    if variant == "as_coded":
        S, A, S2, R = as_coded_rows_by_hand(S, A, S2, R, 64)

    policy_before = numpy_mlp_weights(agent.policy_net)
    target_before = numpy_mlp_weights(agent.target_net)
    q_taken = numpy_mlp_forward(policy_before, S)[np.arange(64), A]
    target = R + 0.99 * numpy_mlp_forward(target_before, S2).max(axis=1)
    expected_loss = numpy_huber(q_taken, target)
    assert np.any(np.abs(q_taken - target) >= 1.0) or variant == "as_coded"  # both Huber branches

    # Gradient of the same loss, by autograd on a detached copy (torch.where Huber, not smooth_l1).
    policy_copy = copy.deepcopy(agent.policy_net)
    q = policy_copy(torch.tensor(S))[torch.arange(64), torch.tensor(A)]
    d = q - torch.tensor(target)
    torch.where(d.abs() < 1, 0.5 * d ** 2, d.abs() - 0.5).mean().backward()
    gradients = [p.grad.numpy().copy() for p in policy_copy.parameters()]

    loss = agent.learn()
    assert loss == pytest.approx(expected_loss, rel=1e-10, abs=1e-14)

    # First Adam step: m_hat = g, v_hat = g^2, so theta <- theta - lr * g / (|g| + eps).
    policy_after = [p.detach().numpy() for p in agent.policy_net.parameters()]
    flat_before = [x for pair in policy_before for x in pair]
    changed = False
    for before, after, g in zip(flat_before, policy_after, gradients):
        np.testing.assert_allclose(after, before - 1e-3 * g / (np.abs(g) + 1e-8), rtol=1e-9, atol=1e-12)
        changed |= not np.array_equal(after, before)
    assert changed
    flat_target_before = [x for pair in target_before for x in pair]
    for old_target, new_policy, new_target in zip(flat_target_before, policy_after,
                                                  agent.target_net.parameters()):
        np.testing.assert_allclose(new_target.detach().numpy(),
                                   old_target + 0.005 * (new_policy - old_target), rtol=1e-12, atol=1e-15)


def test_learn_waits_until_memory_holds_learning_starts_transitions():
    agent = DQNAgent(2, 3, DQNConfig(), seed=0)
    weights = [p.detach().clone() for p in agent.policy_net.parameters()]
    for i in range(63):
        agent.remember(torch.tensor([0.1, 0.0]), 1, torch.tensor([0.1, 0.0]), 0.01)
        assert agent.learn() is None
    assert all(torch.equal(a, b) for a, b in zip(weights, agent.policy_net.parameters()))
    agent.remember(torch.tensor([0.1, 0.0]), 1, torch.tensor([0.1, 0.0]), 0.01)
    assert isinstance(agent.learn(), float)


# ---------------------------------------------------------------------------------------------------
# The as-coded batch (docs/original.md's table)
# ---------------------------------------------------------------------------------------------------


def recognisable_batch() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    i = np.arange(64)
    S = np.stack([0.5 + i / 1000, -(i + 1) / 1e5], 1)  # S[1][0] = 0.501: int -> 0 (rounding -> 1)
    A = np.array([2, 1, 2, 1] + [(k * 7) % 3 for k in range(4, 64)])
    S2 = np.stack([0.4 + i / 1000, -(i + 2) / 1e5], 1)
    R = 0.01 * (i + 1)
    R[1] = 0.7  # int -> 0 (rounding -> 1)
    return S, A, S2, R


def test_as_coded_batch_matches_spec_table_row_by_row():
    S, A, S2, R = recognisable_batch()
    batch = Transition(torch.tensor(S, dtype=torch.float32), torch.tensor(A),
                       torch.tensor(S2, dtype=torch.float32), torch.tensor(R, dtype=torch.float32))
    rows = assemble_as_coded_batch(batch, 3)
    f32 = np.float32
    assert rows.state.shape == (64, 2) and rows.next_state.shape == (64, 2)
    assert rows.action.shape == (64,) and rows.reward.shape == (64,)
    # row 0: field S
    assert rows.state[0].tolist() == [f32(0.5), f32(-1e-5)]
    assert rows.action[0].item() == 0
    assert rows.reward[0].item() == f32(0.503)
    assert rows.next_state[0].tolist() == [f32(0.502), f32(-3e-5)]
    # row 1: field A, scalars repeated
    assert rows.state[1].tolist() == [2.0, 2.0]
    assert rows.action[1].item() == 1
    assert rows.reward[1].item() == 1.0
    assert rows.next_state[1].tolist() == [2.0, 2.0]
    # row 2: field S2
    assert rows.state[2].tolist() == [f32(0.4), f32(-2e-5)]
    assert rows.action[2].item() == 0
    assert rows.reward[2].item() == f32(0.403)
    assert rows.next_state[2].tolist() == [f32(0.402), f32(-4e-5)]
    # row 3: field R, scalars repeated
    assert rows.state[3].tolist() == [f32(0.01)] * 2
    assert rows.action[3].item() == 0
    assert rows.reward[3].item() == f32(0.04)
    assert rows.next_state[3].tolist() == [f32(0.03)] * 2
    # rows 4..63 are all zeros
    assert torch.count_nonzero(rows.state[4:]) == 0 and torch.count_nonzero(rows.next_state[4:]) == 0
    assert torch.count_nonzero(rows.action[4:]) == 0 and torch.count_nonzero(rows.reward[4:]) == 0
    # the same, against the hand-written table
    states, actions, next_states, rewards = as_coded_rows_by_hand(S, A, S2, R, 64)
    np.testing.assert_array_equal(rows.state.numpy(), states.astype(np.float32))
    np.testing.assert_array_equal(rows.action.numpy(), actions)
    np.testing.assert_array_equal(rows.next_state.numpy(), next_states.astype(np.float32))
    np.testing.assert_array_equal(rows.reward.numpy(), rewards.astype(np.float32))


def test_as_coded_action_truncates_toward_zero_and_clips_to_action_range():
    S, A, S2, R = recognisable_batch()
    S[1, 0], S2[1, 0], R[1] = 1.7, 4.2, -0.5  # -> 1 (truncated), 2 (clipped from 4), 0 (toward zero)
    to = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    rows = assemble_as_coded_batch(Transition(to(S), torch.tensor(A), to(S2), to(R)), 3)
    assert rows.action[:4].tolist() == [1, 1, 2, 0]
    R[1] = -1.5  # int -> -1, clipped to 0
    rows = assemble_as_coded_batch(Transition(to(S), torch.tensor(A), to(S2), to(R)), 3)
    assert rows.action[3].item() == 0


# ---------------------------------------------------------------------------------------------------
# The environment step: RLRScheduler on the real task
# ---------------------------------------------------------------------------------------------------


def scheduled_loop(variant: str, steps: int = 100, seed: int = 3):
    """Drive RLRScheduler by hand, as its docstring shows; record the states the agent acted on."""
    config = Config(seed=seed)
    seeds = derive_seeds(seed)
    data = make_polynomial_dataset(config.task, seeds.data)
    model = make_model(config.task, seeds.init)
    optimizer = make_adam(model.parameters(), 0.1)
    agent = DQNAgent(2, 3, DQNConfig(variant=variant), seed=seeds.agent)
    real_act, acting_states, actions = agent.act, [], []

    def recording_act(state):
        acting_states.append(torch.as_tensor(state).clone())
        actions.append(real_act(state))
        return actions[-1]

    agent.act = recording_act
    scheduler = RLRScheduler(optimizer, agent, config.schedule)
    loss = full_batch_loss(model, data)
    losses = [loss.item()]
    scheduler.step(losses[0])
    for _ in range(steps):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss = full_batch_loss(model, data)
        losses.append(loss.item())
        scheduler.step(losses[-1])
    return losses, acting_states, actions, agent


@pytest.fixture(scope="module")
def described_loop():
    return scheduled_loop("described")


@pytest.fixture(scope="module")
def as_coded_loop():
    return scheduled_loop("as_coded")


def state32(loss: float, difference: float) -> list[float]:
    return torch.tensor([loss, difference], dtype=torch.float32).tolist()


@pytest.mark.parametrize("loop", ["described_loop", "as_coded_loop"])
def test_state_difference_is_zero_at_first_step(loop, request):
    losses, acting_states, _, _ = request.getfixturevalue(loop)
    assert acting_states[0].tolist() == state32(losses[0], 0.0)


@pytest.mark.parametrize("loop", ["described_loop", "as_coded_loop"])
def test_stored_reward_is_loss_before_minus_loss_after(loop, request):
    losses, _, actions, agent = request.getfixturevalue(loop)
    n = len(losses) - 1
    assert len(agent.replay) == n
    expected = torch.tensor([losses[t] - losses[t + 1] for t in range(n)], dtype=torch.float32)
    assert torch.equal(agent.replay.rewards[:n], expected)
    assert agent.replay.actions[:n].tolist() == actions[:n]
    assert (expected > 0).sum() > n // 2  # the losses do move, so the check has teeth


@pytest.mark.parametrize("loop", ["described_loop", "as_coded_loop"])
def test_stored_next_state_carries_real_loss_difference(loop, request):
    losses, _, _, agent = request.getfixturevalue(loop)
    n = len(losses) - 1
    for t in range(n):
        assert agent.replay.next_states[t].tolist() == state32(losses[t + 1], losses[t + 1] - losses[t])
    assert torch.all(agent.replay.next_states[:n, 1] != 0)


def test_described_acting_state_is_loss_and_real_difference(described_loop):
    losses, acting_states, _, agent = described_loop
    for t in range(1, len(losses)):
        assert acting_states[t].tolist() == state32(losses[t], losses[t] - losses[t - 1])
    assert all(s[1] != 0 for s in acting_states[1:])


def test_described_stored_next_state_is_next_acting_state(described_loop):
    losses, acting_states, _, agent = described_loop
    for t in range(len(losses) - 1):
        assert torch.equal(agent.replay.states[t], acting_states[t])
        assert torch.equal(agent.replay.next_states[t], acting_states[t + 1])


def test_as_coded_acting_state_difference_is_always_zero(as_coded_loop):
    losses, acting_states, _, agent = as_coded_loop
    assert len(acting_states) == len(losses)
    for t, state in enumerate(acting_states):
        assert state.tolist() == state32(losses[t], 0.0)
    n = len(losses) - 1
    # the stored state is the one acted on, (L_t, 0); the stored next state is not the next acting state
    assert torch.count_nonzero(agent.replay.states[:n, 1]) == 0
    assert not torch.equal(agent.replay.next_states[: n - 1], agent.replay.states[1:n])


# ---------------------------------------------------------------------------------------------------
# train_rl_scheduled: the lr reaches the optimizer before each step; losses replay with plain Adam
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded_agent_run():
    config = Config(seed=4, dtype="float64", schedule=ScheduleConfig(steps=120))
    real_make_adam, optimizers = rlr_core.make_adam, []

    def recording_make_adam(params, lr):
        optimizer = real_make_adam(params, lr)
        seen, real_step = [], optimizer.step

        def step(*args, **kwargs):
            seen.append([group["lr"] for group in optimizer.param_groups])
            return real_step(*args, **kwargs)

        optimizer.step = step
        optimizers.append((optimizer, seen))
        return optimizer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rlr_engine, "make_adam", recording_make_adam)
        result = train_rl_scheduled(config)
    model_optimizers = [(o, seen) for o, seen in optimizers
                        if tuple(o.param_groups[0]["params"][0].shape) == (32, 20)]
    assert len(model_optimizers) == 1
    return config, result, model_optimizers[0][1]


def test_agent_run_applies_chosen_lr_before_each_optimizer_step(recorded_agent_run):
    config, result, seen = recorded_agent_run
    steps = config.schedule.steps
    assert result.diverged_at is None and len(seen) == steps
    path = hand_index_path(result.series["action"])
    np.testing.assert_array_equal(result.series["lr_index"], path)
    seen_lr = np.array([lrs[0] for lrs in seen])
    np.testing.assert_allclose(seen_lr, GRID[path], rtol=1e-12)
    np.testing.assert_allclose(result.series["lr"], GRID[path], rtol=1e-12)
    assert len(np.unique(seen_lr)) > 2  # the agent did move the lr


def test_agent_run_losses_equal_plain_adam_with_its_lrs(recorded_agent_run):
    config, result, _ = recorded_agent_run
    seeds = derive_seeds(config.seed)
    data = make_polynomial_dataset(config.task, seeds.data, dtype=torch.float64)
    torch.manual_seed(seeds.init)
    model = MaclaurinNet(config.task).double()
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0, foreach=False)
    x, w = data.inputs, data.targets

    def mse_value() -> float:
        with torch.no_grad():
            return ((model(x) - w) ** 2).mean().item()

    losses = [mse_value()]
    for lr in result.series["lr"]:
        optimizer.param_groups[0]["lr"] = float(lr)
        optimizer.zero_grad()
        ((model(x) - w) ** 2).mean().backward()
        optimizer.step()
        losses.append(mse_value())
    losses = np.array(losses)
    np.testing.assert_allclose(result.series["loss"], losses[1:], rtol=1e-9)
    np.testing.assert_allclose(result.series["reward"], losses[:-1] - losses[1:], rtol=1e-6, atol=1e-15)
    r = result.series["reward"]
    np.testing.assert_array_equal(r[1:], result.series["loss"][:-1] - result.series["loss"][1:])


# ---------------------------------------------------------------------------------------------------
# Determinism and results on disk
# ---------------------------------------------------------------------------------------------------


def small_config(seed: int, variant: str = "described") -> Config:
    return Config(seed=seed, baseline=BaselineConfig(epochs=5), schedule=ScheduleConfig(steps=150),
                  dqn=DQNConfig(variant=variant))


def assert_same_series(a: RunResult, b: RunResult) -> None:
    assert a.series.keys() == b.series.keys()
    for name in a.series:
        np.testing.assert_array_equal(a.series[name], b.series[name], err_msg=name)


@pytest.mark.parametrize("run", [
    lambda c: train_baseline(c),
    lambda c: train_full_batch(c, 1e-3, 40),
    lambda c: train_rl_scheduled(c),
    lambda c: train_rl_scheduled(dataclasses.replace(c, dqn=DQNConfig(variant="as_coded"))),
], ids=["baseline", "full_batch", "rl_described", "rl_as_coded"])
def test_same_config_gives_identical_series_and_other_seed_differs(run):
    first, second, other = run(small_config(0)), run(small_config(0)), run(small_config(1))
    assert_same_series(first, second)
    assert len(first.series["loss"]) == len(other.series["loss"]) > 0
    assert not np.array_equal(first.series["loss"], other.series["loss"])


def test_run_result_round_trips_through_json(tmp_path):
    config = Config(seed=2, schedule=ScheduleConfig(steps=70))
    result = train_rl_scheduled(config)
    path = save_result(result, tmp_path / "run.json")
    loaded = load_result(path)
    assert loaded.method == result.method == "rl_described"
    assert loaded.seed == 2 and loaded.config == json.loads(json.dumps(result.config))
    assert Config.from_dict(loaded.config) == config
    assert loaded.wall_seconds == result.wall_seconds and loaded.diverged_at is None
    assert_same_series(loaded, result)
    assert loaded.series["q_values"].shape == (70, 3)
    assert loaded.series["action"].dtype.kind == "i"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_save_result_refuses_non_finite_series(tmp_path, bad):
    result = RunResult("constant_full_batch", Config().to_dict(), {"loss": np.array([0.5, bad, 0.1])}, 1.0)
    path = tmp_path / "bad.json"
    with pytest.raises(ValueError):
        save_result(result, path)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no temp file left behind either


def test_a_noise_free_task_keeps_its_data_and_a_noisy_one_adds_noise_to_the_samples_only():
    clean = rlr_core.make_polynomial_dataset(rlr_core.TaskConfig(), 3, dtype=torch.float64)
    again = rlr_core.make_polynomial_dataset(rlr_core.TaskConfig(input_noise=0.0), 3, dtype=torch.float64)
    noisy = rlr_core.make_polynomial_dataset(rlr_core.TaskConfig(input_noise=0.1), 3, dtype=torch.float64)
    assert torch.equal(clean.inputs, again.inputs) and torch.equal(clean.targets, noisy.targets)
    assert 0.08 < float((noisy.inputs - clean.inputs).std()) < 0.12
    with pytest.raises(ValueError, match="task.input_noise"):
        rlr_core.TaskConfig(input_noise=-0.1)


def test_the_bayes_floor_is_the_posterior_means_mse_on_sampled_data():
    """Brute force: the posterior mean of w given noisy y, applied to 20 000 sampled polynomials, has the
    MSE bayes_floor states (within sampling error), and no linear predictor fitted on them does better."""
    task = rlr_core.TaskConfig(input_noise=0.1)
    data = rlr_core.make_polynomial_dataset(task, 11, 20_000, dtype=torch.float64)
    scale = torch.tensor(task.coeff_scale, dtype=torch.float64)
    powers = rlr_core.sample_points(task)[None, :] ** torch.arange(task.n_coefficients, dtype=torch.float64)[:, None]
    covariance = torch.linalg.inv(torch.diag(1 / scale ** 2) + powers @ powers.T / 0.1 ** 2)
    posterior_mean = data.inputs @ (covariance @ powers / 0.1 ** 2).T
    floor = rlr_core.bayes_floor(task)
    assert float((posterior_mean - data.targets).square().mean()) == pytest.approx(floor, rel=0.03)
    fitted = torch.linalg.lstsq(data.inputs, data.targets).solution
    assert float((data.inputs @ fitted - data.targets).square().mean()) >= 0.98 * floor
    with pytest.raises(TypeError, match="task must be a TaskConfig"):
        rlr_core.bayes_floor("degree 4")
    assert rlr_core.bayes_floor(rlr_core.TaskConfig()) == 0.0 and rlr_core.bayes_floor(rlr_core.TaskConfig(input_noise=0.2)) > floor
