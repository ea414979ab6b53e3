"""Batched stepping (snn/batched.py): bit for bit the model's own step, whatever shares the batch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from streamsnn.snn import build_model, frames_to_input
from streamsnn.snn.batched import BLOCK_ROWS, BlockStepper, SlotState, predict_stepwise


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    net = build_model("nmnist", (2, 34, 34), 10).eval()
    with torch.no_grad():                     # batch-norm statistics of a trained net: spikes happen
        for name in ("bn1", "bn2"):
            bn = getattr(net.body, name)
            bn.running_var.fill_(0.25)
            bn.bias.fill_(0.3)
    return net


def _frames(n, t, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, t, 2, 34, 34)) < 0.08).astype(np.int16) * rng.integers(1, 4, (n, t, 2, 34, 34),
                                                                                    dtype=np.int16)


def test_fast_path_equals_the_models_step_bit_for_bit(model):
    frames = _frames(BLOCK_ROWS, 6)
    stepper = BlockStepper(model)
    slots = SlotState(model.state_shapes, BLOCK_ROWS)
    rows = [slots.acquire() for _ in range(BLOCK_ROWS)]
    state = model.init_state(BLOCK_ROWS)
    spikes = 0
    with torch.inference_mode():
        for t in range(6):
            expected = model.step(frames_to_input(frames[:, t]), state).numpy()
            got = stepper.step(slots, rows, frames[:, t])
            assert np.array_equal(got, expected), t
            for name, u in state.membranes.items():
                assert torch.equal(slots.membranes[name][:BLOCK_ROWS], u), (t, name)
            spikes += int((state.membranes["lif_fc1"] == 0).sum())
    assert spikes > 0 and len(np.unique(got)) > 5      # the network did something


def test_a_streams_logits_do_not_depend_on_who_shares_its_batch(model):
    """Sample 0 alone, with three other samples at every position, and in a batch of nine (three blocks)."""
    frames = _frames(9, 5, seed=1)
    stepper = BlockStepper(model)

    def run(order):
        state = stepper.init_state(2)                     # grows as slots are taken
        slots = [state.acquire() for _ in order]
        return np.stack([stepper.step(state, slots, frames[order, t]) for t in range(5)])

    alone = run([0])[:, 0]
    for position in range(BLOCK_ROWS):
        order = [1, 2, 3]
        order.insert(position, 0)
        assert np.array_equal(run(order)[:, position], alone), position
    many = run(list(range(8, -1, -1)))
    assert np.array_equal(many[:, 8], alone)
    assert np.array_equal(run([5])[:, 0], many[:, 3])


def test_idle_slots_are_not_stepped_and_slots_come_back(model):
    frames = _frames(2, 4, seed=2)
    stepper = BlockStepper(model)
    state = stepper.init_state(1)
    a, b = state.acquire(), state.acquire()              # the state doubles for the second slot
    assert state.capacity == 2 and state.in_use == 2
    stepper.step(state, [a, b], frames[:, 0])
    kept = {name: u[b].clone() for name, u in state.membranes.items()}
    for t in range(1, 4):                                # b idles: its membranes stay as they were
        stepper.step(state, [a], frames[:1, t])
    assert all(torch.equal(state.membranes[name][b], kept[name]) for name in kept)
    state.release(a)
    with pytest.raises(ValueError, match="not in use"):
        state.release(a)
    assert state.acquire() == a and not any(state.membranes[name][a].any() for name in kept)


def test_predict_stepwise_equals_stepping_each_sample_alone(model):
    frames = _frames(6, 4, seed=4)
    offline = predict_stepwise(model, frames, 4)
    stepper = BlockStepper(model)
    for i in range(6):
        state = stepper.init_state(1)
        slot = state.acquire()
        alone = np.stack([stepper.step(state, [slot], frames[i:i + 1, t])[0] for t in range(4)])
        assert np.array_equal(offline[:, i], alone), i
