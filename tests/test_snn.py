"""LIF neuron, surrogate, multi-step == single-step, explicit state, model zoo, checkpoints."""
import pickle

import pytest
import torch

from streamsnn.errors import CheckpointError, ConfigError, StreamsnnError
from streamsnn.snn import (LIF, NetworkState, StateShapeError, build_model, frames_to_input, lif_step,
                           spike)
from streamsnn.snn.checkpoint import load_checkpoint, save_checkpoint


def test_triangle_surrogate_gradient_values():
    u = torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.25, 1.5, 2.0, 3.0], requires_grad=True)
    s = spike(u, 1.0)
    assert s.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]  # H(u - 1), H(0) = 1
    s.sum().backward()
    # ds/du = max(0, 1 - |u - 1|)
    assert torch.allclose(u.grad, torch.tensor([0.0, 0.0, 0.5, 1.0, 0.75, 0.5, 0.0, 0.0]))


def test_lif_dynamics_by_hand():
    # inputs 0.6, 0.6, 0.6, 2.0 on one neuron: u = 0.6, 0.9, 1.05 (spike, reset), 2.0 (spike)
    u_post = None
    seen = []
    for current in (0.6, 0.6, 0.6, 2.0):
        s, u, u_post = lif_step(torch.tensor([current]), u_post)
        seen.append((round(float(u), 6), float(s), round(float(u_post), 6)))
    assert seen == [(0.6, 0.0, 0.6), (0.9, 0.0, 0.9), (1.05, 1.0, 0.0), (2.0, 1.0, 0.0)]


def test_lif_layer_trace_splits_spatial_and_temporal():
    x = torch.tensor([[[0.6]], [[0.6]], [[0.6]]])  # (T=3, N=1, 1)
    s, tr = LIF().forward_seq(x, "lif", record=True)
    assert s.flatten().tolist() == [0, 0, 1]
    assert torch.allclose(tr.temporal.flatten(), torch.tensor([0.0, 0.3, 0.45]))
    assert torch.allclose(tr.u, tr.current + tr.temporal)


@pytest.mark.parametrize("name,input_size", [("nmnist", (2, 34, 34)), ("dvsgesture", (2, 64, 64)),
                                             ("cifar10dvs", (2, 32, 32))])
def test_multi_step_equals_single_step(name, input_size):
    torch.manual_seed(0)
    model = build_model(name, input_size, 5).eval()
    # wake the network up so that every layer spikes
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.fill_(3.0)
    T, N = 4, 3
    x = torch.poisson(torch.full((T, N, *input_size), 0.5))
    with torch.no_grad():
        multi, traces = model(x, return_traces=True)
        state = model.init_state(N)
        single = torch.stack([model.step(x[t], state) for t in range(T)])
    assert multi.shape == (T, N, 5)
    assert torch.allclose(multi, single, atol=1e-5)
    assert any(tr.s.sum() > 0 for tr in traces)
    assert state.timestep == T
    # the state after T steps holds the last u_post of every layer
    for tr in traces:
        assert torch.allclose(state.membranes[tr.name], tr.u_post[-1], atol=1e-5)


def test_state_reset_detach_and_batch_errors():
    model = build_model("nmnist", (2, 34, 34), 10)
    state = model.init_state(2)
    assert isinstance(state, NetworkState) and set(state.membranes) == set(model.lif_names)
    frame = torch.rand(2, 2, 34, 34) * 4
    model.step(frame, state)
    assert any(u.requires_grad for u in state.membranes.values())
    state.detach()
    assert not any(u.requires_grad for u in state.membranes.values())
    for u in state.membranes.values():
        u.fill_(0.25)
    state.reset(rows=[1])
    assert all(float(u[0].min()) == 0.25 and float(u[1].abs().max()) == 0 for u in state.membranes.values())
    state.reset()
    assert state.timestep == 0 and all(float(u.abs().max()) == 0 for u in state.membranes.values())
    with pytest.raises(StateShapeError, match="batch size 3"):
        model.step(torch.zeros(3, 2, 34, 34), state)
    assert state.batch_size == 2  # never re-initialised silently
    with pytest.raises(StateShapeError):
        model.step(torch.zeros(2, 2, 32, 32), state)
    with pytest.raises(StateShapeError):
        model(torch.zeros(2, 2, 34, 34))
    assert issubclass(StateShapeError, StreamsnnError)


def test_single_step_reset_gives_a_fresh_window():
    torch.manual_seed(1)
    model = build_model("nmnist").eval()
    x = torch.poisson(torch.full((3, 1, 2, 34, 34), 1.0))
    with torch.no_grad():
        state = model.init_state(1)
        first = [model.step(x[t], state) for t in range(3)]
        state.reset()
        again = [model.step(x[t], state) for t in range(3)]
    for a, b in zip(first, again):
        assert torch.equal(a, b)


def test_model_zoo():
    g = build_model("dvsgesture")
    assert g.input_size == (2, 128, 128) and g.num_classes == 11
    names = [n for n, _ in g.body.named_children()]
    assert names[0] == "conv1" and g.body.conv1.kernel_size == (4, 4) and g.body.conv1.stride == (4, 4)
    assert g.body.fc1.out_features == 512 and g.body.fc.out_features == 11
    assert build_model("nmnist").input_size == (2, 34, 34)
    assert build_model("cifar10dvs", (2, 48, 48), 10).num_classes == 10
    with pytest.raises(ConfigError, match="known models"):
        build_model("resnet999", (2, 34, 34), 10)
    with pytest.raises(ConfigError):
        build_model("nmnist", (2, 34), 10)


def test_frames_to_input():
    import numpy as np

    frames = np.random.default_rng(0).integers(0, 5, (10, 2, 34, 34)).astype(np.int16)
    x = frames_to_input(frames)
    assert x.dtype == torch.float32 and x.shape == (10, 2, 34, 34)
    assert np.array_equal(x.numpy(), frames.astype(np.float32))


def _meta():
    return {"class_names": [str(i) for i in range(10)], "sensor_size": [34, 34, 2],
            "binning": {"time_window": 30000.0}, "timesteps": 10,
            "cutoff": {"policy": "confidence", "epsilon": 0.01}, "reg": "str", "seed": 0,
            "command": "streamsnn train ..."}


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model("nmnist").eval()
    path = save_checkpoint(tmp_path / "m.pt", model, _meta())
    loaded, meta = load_checkpoint(path)
    assert meta["model"] == "nmnist" and meta["input_size"] == [2, 34, 34] and meta["num_classes"] == 10
    assert meta["cutoff"] == {"policy": "confidence", "epsilon": 0.01}
    x = torch.rand(3, 2, 2, 34, 34) * 3
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training
    # weights_only loading: the raw file holds only tensors and plain containers
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "streamsnn-checkpoint"


class _Evil:
    """Unpickling this creates the file ``marker``: proof that loading ran code from the checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="nope.pt"):
        load_checkpoint(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage)
    code = tmp_path / "code.pt"
    marker = tmp_path / "payload-ran"
    torch.save({"format": "streamsnn-checkpoint", "x": _Evil(marker)}, code)
    with pytest.raises(CheckpointError, match="code.pt"):
        load_checkpoint(code)
    assert not marker.exists()
    torch.load(code, weights_only=False)     # the payload is real: an unsafe load does run it
    assert marker.exists()
    pickled = tmp_path / "pickle.pt"
    pickled.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="pickle.pt"):
        load_checkpoint(pickled)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="other.pt.*not a streamsnn checkpoint"):
        load_checkpoint(other)
    good = save_checkpoint(tmp_path / "good.pt", build_model("nmnist"), _meta())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(truncated)
    payload = torch.load(good, weights_only=True)
    payload["meta"]["num_classes"] = 11
    wrong = tmp_path / "wrong.pt"
    torch.save(payload, wrong)
    with pytest.raises(CheckpointError, match="wrong.pt.*do not fit"):
        load_checkpoint(wrong)
    with pytest.raises(CheckpointError, match="plain"):
        save_checkpoint(tmp_path / "bad.pt", build_model("nmnist"), {"x": object()})


def test_bundled_checkpoint():
    from streamsnn.snn.checkpoint import bundled_checkpoint

    path = bundled_checkpoint()
    assert path.stat().st_size < 2_000_000
    model, meta = load_checkpoint(path)
    assert meta["model"] == "nmnist" and meta["input_size"] == [2, 34, 34] and meta["num_classes"] == 10
    assert meta["class_names"] == [str(i) for i in range(10)] and meta["sensor_size"] == [34, 34, 2]
    assert meta["binning"]["time_window"] == 30000.0 and meta["timesteps"] == 10 and meta["reg"] == "str"
    assert meta["cutoff"]["policy"] == "confidence" and 0 < meta["cutoff"]["epsilon"] < 1
    assert meta["command"].startswith("streamsnn train --data ") and "--reg str" in meta["command"]
    with pytest.raises(CheckpointError):
        bundled_checkpoint("nope")
