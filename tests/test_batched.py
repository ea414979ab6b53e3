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


def test_torch_fast_path_equals_the_models_step_bit_for_bit(model):
    frames = _frames(BLOCK_ROWS, 6)
    stepper = BlockStepper(model, engine="torch")
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


def test_the_event_engine_is_chosen_on_the_cpu_and_follows_the_models_step(model):
    """Same network, other order of the same float32 sums: logits within a few ulps of the torch
    modules' over six steps with spikes in every layer, and the same membranes up to rounding."""
    stepper = BlockStepper(model)
    assert stepper.engine == "event"
    frames = _frames(8, 6, seed=5)
    state = stepper.init_state(8)
    slots = [state.acquire() for _ in range(8)]
    reference = model.init_state(8)
    with torch.inference_mode():
        for t in range(6):
            expected = model.step(frames_to_input(frames[:, t]), reference).numpy()
            got = stepper.step(state, slots, frames[:, t])
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
            assert np.array_equal(got.argmax(1), expected.argmax(1))
    assert len(np.unique(got)) > 5 and int((reference.membranes["lif_fc1"] == 0).sum()) > 0


@pytest.mark.parametrize("engine", ["event", "torch"])
def test_a_streams_logits_do_not_depend_on_who_shares_its_batch(model, engine):
    """Sample 0 alone, with three other samples at every position, and in a batch of nine (three blocks)."""
    frames = _frames(9, 5, seed=1)
    stepper = BlockStepper(model, engine=engine)

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


@pytest.mark.parametrize("engine", ["event", "torch"])
def test_idle_slots_are_not_stepped_and_slots_come_back(model, engine):
    frames = _frames(2, 4, seed=2)
    stepper = BlockStepper(model, engine=engine)
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


@pytest.mark.parametrize("engine", ["event", "torch"])
def test_predict_stepwise_equals_stepping_each_sample_alone(model, engine):
    frames = _frames(6, 4, seed=4)
    offline = predict_stepwise(model, frames, 4, engine=engine)
    stepper = BlockStepper(model, engine=engine)
    for i in range(6):
        state = stepper.init_state(1)
        slot = state.acquire()
        alone = np.stack([stepper.step(state, [slot], frames[i:i + 1, t])[0] for t in range(4)])
        assert np.array_equal(offline[:, i], alone), i


def _spec_net(spec, input_size, classes, seed):
    from streamsnn.snn.models import build_from_layers
    torch.manual_seed(seed)
    spec = [dict(entry, name=f"layer{i}") for i, entry in enumerate(spec)]
    net = build_from_layers(spec, input_size, classes).eval()
    with torch.no_grad():
        for layer in net.body:
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                layer.weight.mul_(3.0)              # strong enough that every spiking layer fires
    return net


def _conv(cin, cout, k, stride, padding, bias):
    return {"kind": "conv2d", "in_channels": cin, "out_channels": cout, "kernel_size": k, "stride": stride,
            "padding": padding, "dilation": 1, "groups": 1, "bias": bias}


LIF_SPEC = {"kind": "lif", "decay": 0.5, "threshold": 1.0}


@pytest.mark.parametrize("spec, size", [
    # the DVS Gesture stem (4x4 stride 4, no padding) with a bias, then sum pooling and average pooling
    ([_conv(2, 8, 4, 4, 0, True), LIF_SPEC, {"kind": "sumpool2d", "kernel_size": 2, "stride": 2, "padding": 0},
      _conv(8, 6, 3, 1, 1, False), LIF_SPEC, {"kind": "avgpool2d", "kernel_size": 2, "stride": 2, "padding": 0},
      {"kind": "flatten"}, {"kind": "linear", "in_features": 24, "out_features": 5, "bias": False}], (2, 32, 32)),
    # stride 2 with padding, odd sizes, max pooling with its own stride, a spiking hidden layer
    ([_conv(3, 5, 3, 2, 1, True), LIF_SPEC, {"kind": "maxpool2d", "kernel_size": 3, "stride": 2},
      {"kind": "flatten"}, {"kind": "linear", "in_features": 5 * 3 * 3, "out_features": 7, "bias": True}, LIF_SPEC,
      {"kind": "linear", "in_features": 7, "out_features": 4, "bias": True}], (3, 13, 15)),
    # 2x2 max pooling (its own pass) of a convolution's real values, odd sizes, before the spiking layer
    ([_conv(2, 4, 3, 1, 1, True), {"kind": "maxpool2d", "kernel_size": 2, "stride": 2}, LIF_SPEC,
      {"kind": "flatten"}, {"kind": "linear", "in_features": 4 * 5 * 4, "out_features": 3, "bias": True}], (2, 11, 9)),
])
def test_the_event_engine_runs_every_layer_kind_as_the_torch_modules_do(spec, size):
    net = _spec_net(spec, size, spec[-1]["out_features"], seed=7)
    stepper = BlockStepper(net)
    assert stepper.engine == "event"
    rng = np.random.default_rng(8)
    frames = (rng.random((5, 6, *size)) < 0.2).astype(np.int16) * rng.integers(1, 5, (5, 6, *size), dtype=np.int16)
    state = stepper.init_state(5)
    slots = [state.acquire() for _ in range(5)]
    reference = net.init_state(5)
    fired = 0
    with torch.inference_mode():
        for t in range(6):
            expected = net.step(frames_to_input(frames[:, t]), reference).numpy()
            np.testing.assert_allclose(stepper.step(state, slots, frames[:, t]), expected, rtol=1e-5, atol=1e-4)
            fired += sum(int((u == 0).sum()) for u in reference.membranes.values())
    assert fired > 0


def test_layers_the_event_engine_does_not_run_fall_back_to_torch():
    grouped = dict(_conv(4, 4, 3, 1, 1, False), groups=2, in_channels=4)
    net = _spec_net([grouped, LIF_SPEC, {"kind": "flatten"},
                     {"kind": "linear", "in_features": 4 * 8 * 8, "out_features": 3, "bias": True}], (4, 8, 8), 3, 1)
    assert BlockStepper(net).engine == "torch"
    from streamsnn.snn.event_engine import Unsupported
    with pytest.raises(Unsupported, match="groups"):
        BlockStepper(net, engine="event")


def test_rows_split_over_two_threads_give_the_same_bits(model):
    from streamsnn.snn.event_engine import EventEngine

    frames = _frames(12, 4, seed=9)
    results = []
    for threads in (1, 2):
        engine = EventEngine(model, threads=threads)
        membranes = torch.zeros((13, engine.state_shapes["neurons"][0]))
        results.append(np.stack([engine.step(membranes, list(range(12))[::-1], frames[::-1, t]) for t in range(4)]))
        results.append(membranes.numpy().copy())
    assert np.array_equal(results[0], results[2]) and np.array_equal(results[1], results[3])
    assert len(np.unique(results[0])) > 5
