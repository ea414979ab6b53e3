"""NIR in and out: the LIF mapping against NIR's own equations, export -> import round trips, the bundled
checkpoint through NIR and through snnTorch's NIR importer, and the errors for what streamsnn cannot run."""
from __future__ import annotations

import json
from collections import OrderedDict

import nir
import numpy as np
import pytest
import torch

from streamsnn.cli import main
from streamsnn.cutoff import policy_from_meta
from streamsnn.errors import CheckpointError
from streamsnn.snn import LIF, build_model, from_nir, lif_step, read_nir, to_nir, write_nir
from streamsnn.snn.checkpoint import bundled_checkpoint, load_checkpoint, save_checkpoint

META = {"binning": {"time_window": 30000.0}, "sensor_size": [34, 34, 2], "timesteps": 10,
        "class_names": [str(i) for i in range(10)], "cutoff": {"policy": "confidence", "epsilon": 0.1}}


def _randomised(model, seed=0):
    """Random eval-mode batch-norm statistics, so folding them into the convolution is really tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.6 - 0.3)
    return model.eval()


def _nir_lif_reference(node, currents, dt):
    """NIR's LIF as its spec writes it, one forward-Euler step of dt per input, float32:
    v += dt/tau * (v_leak - v + r*I); z = v > v_threshold; v = v_reset where z."""
    f = np.float32
    v = np.zeros_like(currents[0], dtype=f)
    spikes = []
    for current in currents:
        v = v + (f(dt) / node.tau) * (node.v_leak - v + node.r * current)
        z = v > node.v_threshold
        v = np.where(z, node.v_reset, v).astype(f)
        spikes.append(z.astype(f))
    return np.stack(spikes)


def test_lif_mapping_equals_nir_equations_including_exactly_at_threshold():
    dt = 0.03
    layer = OrderedDict(flatten=torch.nn.Flatten(), lif=LIF())
    from streamsnn.snn.models import SpikingNet

    net = SpikingNet("probe", (1, 1, 6), 6, layer).eval()
    node = to_nir(net, {}, dt=dt).nodes["lif"]
    assert isinstance(node, nir.LIF)
    # tau = dt / (1 - decay), r = tau / dt, leak and reset to 0, threshold just below 1 (NIR fires on v > thr)
    np.testing.assert_array_equal(node.tau, np.float32(2 * dt))
    np.testing.assert_array_equal(node.r, np.float32(2.0))
    np.testing.assert_array_equal(node.v_leak, 0.0)
    np.testing.assert_array_equal(node.v_reset, 0.0)
    np.testing.assert_array_equal(node.v_threshold, np.nextafter(np.float32(1), np.float32(0)))
    # currents that land exactly on the threshold (1.0; 0.5 * 0.5 + 0.75; 0.5 * 0.75 + 0.625), just below,
    # far above, negative
    currents = np.array([[1.0, 0.9999999, 0.5, 3.0, -1.0, 0.75],
                         [0.0, 0.0, 0.75, 0.25, 2.5, 0.625],
                         [0.5, 1e-7, 0.5, 0.0, 0.5, 0.6875]], dtype=np.float32)
    ours, u_post = [], None
    for current in torch.from_numpy(currents):
        s, _, u_post = lif_step(current, u_post)
        ours.append(s.numpy())
    ours = np.stack(ours)
    assert ours[0, 0] == 1 and ours[0, 1] == 0 and ours[1, 2] == 1 and ours[1, 5] == 1   # >= at exactly 1
    np.testing.assert_array_equal(ours, _nir_lif_reference(node, currents, dt))


@pytest.mark.parametrize("name, size", [("nmnist", (2, 34, 34)), ("dvsgesture", (2, 32, 32)),
                                        ("cifar10dvs", (2, 16, 16))])
def test_zoo_models_round_trip_layer_for_layer(name, size):
    model = _randomised(build_model(name, size))
    back, meta = from_nir(to_nir(model, META))
    kinds = [type(m).__name__ for m in model.body.children() if not isinstance(m, (torch.nn.BatchNorm2d,
                                                                                    torch.nn.Dropout))]
    assert [type(m).__name__ for m in back.body.children()] == kinds
    assert all(m.decay == 0.5 and m.threshold == 1.0 for m in back.body.children() if isinstance(m, LIF))
    x = torch.randint(0, 4, (5, 3, *size), generator=torch.Generator().manual_seed(1)).float()
    with torch.no_grad():
        a, b = model(x), back(x)
    assert a.abs().sum() > 0
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert meta["nir"]["dt"] == pytest.approx(0.03) and meta["binning"] == META["binning"]


def test_metadata_survives_the_file_and_max_pool_is_written_as_avg_pool_plus_any_spike(tmp_path):
    model = _randomised(build_model("nmnist"))
    path = write_nir(tmp_path / "net.nir", model, META)
    graph = nir.read(path)
    md = graph.metadata
    assert float(md["dt"]) == 0.03 and float(md["frame_length_us"]) == 30000.0
    assert list(md["sensor_size"]) == [34, 34, 2] and int(md["timesteps"]) == 10
    assert json.loads(md["cutoff"]) == META["cutoff"] and json.loads(md["class_names"]) == META["class_names"]
    assert json.loads(md["streamsnn"])["model"] == "nmnist"
    assert isinstance(graph.nodes["pool1"], nir.AvgPool2d)
    any_spike = graph.nodes["pool1_any"]
    assert isinstance(any_spike, nir.LIF)
    np.testing.assert_array_equal(any_spike.tau, np.float32(0.03))      # tau = dt: no memory
    np.testing.assert_array_equal(any_spike.v_threshold, 0.0)           # fires when the window's mean > 0
    assert "bn1" not in graph.nodes and "dropout" not in graph.nodes     # folded / identity at inference
    loaded, meta = load_checkpoint(path)                                 # what `run --checkpoint X.nir` does
    assert [type(m).__name__ for m in loaded.body.children()].count("MaxPool2d") == 2
    assert meta["cutoff"] == META["cutoff"] and meta["timesteps"] == 10


def test_cli_export_then_import_nir_then_checkpoint_loads(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "m.pt", _randomised(build_model("nmnist")), META)
    assert main(["export", str(ckpt), str(tmp_path / "m.nir")]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["dt_s"] == pytest.approx(0.03) and "pool1_any:LIF" in exported["nodes"]
    assert main(["import-nir", str(tmp_path / "m.nir"), str(tmp_path / "back.pt")]) == 0
    imported = json.loads(capsys.readouterr().out)
    assert imported["lif"] == [[0.5, 1.0]]
    original, _ = load_checkpoint(ckpt)
    back, meta = load_checkpoint(tmp_path / "back.pt")
    assert meta["model"] == "nir" and meta["layers"][0]["kind"] == "conv2d"
    x = torch.randint(0, 3, (4, 2, 2, 34, 34), generator=torch.Generator().manual_seed(2)).float()
    with torch.no_grad():
        torch.testing.assert_close(back(x), original(x), rtol=1e-5, atol=1e-5)
    # a time step that makes dt/tau > 1 is refused with the node and the numbers
    assert main(["import-nir", str(tmp_path / "m.nir"), str(tmp_path / "bad.pt"), "--dt", "1"]) == 2
    err = capsys.readouterr().err
    assert "m.nir" in err and "'lif1'" in err and "dt / tau" in err and len(err.strip().splitlines()) == 1


def _graph(*nodes, metadata=None):
    graph = nir.NIRGraph.from_list(*nodes)
    graph.metadata = {"dt": 1e-3} if metadata is None else metadata
    return graph


def _lif(n, **kw):
    params = dict(tau=2e-3, r=2.0, v_leak=0.0, v_threshold=1.0, v_reset=0.0)
    params.update(kw)
    return nir.LIF(**{k: np.full(n, v, dtype=np.float32) if np.ndim(v) == 0 else np.asarray(v, np.float32)
                      for k, v in params.items()})


def _dense(n_in, n_out):
    return nir.Affine(weight=np.ones((n_out, n_in), np.float32), bias=np.zeros(n_out, np.float32))


def _front():
    return [nir.Input(input_type={"input": np.array([1, 2, 2])}),
            nir.Flatten(input_type={"input": np.array([1, 2, 2])}, start_dim=0, end_dim=-1), _dense(4, 3)]


@pytest.mark.parametrize("bad, match", [
    (dict(v_reset=0.5), r"'lif'.*reset rule v_reset = 0.5"),
    (dict(v_leak=0.1), r"'lif'.*v_leak = 0.1"),
    (dict(r=1.0), r"'lif'.*input scaling r \* dt / tau = 0.5"),
    (dict(tau=[2e-3, 3e-3, 2e-3]), r"'lif'.*parameter tau differs between neurons"),
    (dict(v_threshold=0.0), r"'lif'.*v_threshold = 0"),
])
def test_unrepresentable_lif_parameters_are_named(bad, match):
    with pytest.raises(CheckpointError, match=match):
        from_nir(_graph(*_front(), _lif(3, **bad)))


def test_unsupported_nodes_graphs_and_files_are_refused(tmp_path):
    cuba = nir.CubaLIF(tau_syn=np.full(3, 1e-3), tau_mem=np.full(3, 2e-3), r=np.full(3, 2.0), v_leak=np.zeros(3),
                       v_threshold=np.ones(3))
    with pytest.raises(CheckpointError, match=r"'cubalif' \(CubaLIF\) has no exact streamsnn equivalent.*LIF"):
        from_nir(_graph(*_front(), cuba))
    with pytest.raises(CheckpointError, match="does not state its time step"):
        from_nir(_graph(*_front(), _lif(3), metadata={}))
    flat = nir.NIRGraph.from_list(_dense(4, 3), _lif(3))
    flat.metadata = {"dt": 1e-3}
    with pytest.raises(CheckpointError, match=r"Input\): shape \[4\].*\(polarities, height, width\)"):
        from_nir(flat)
    branched = _graph(*_front(), _lif(3))
    branched.nodes["extra"] = _dense(4, 3)
    branched.edges.append(("flatten", "extra"))
    with pytest.raises(CheckpointError, match="'flatten' has 2 outgoing edges"):
        from_nir(branched)
    garbage = tmp_path / "x.nir"
    garbage.write_bytes(b"not hdf5 at all")
    with pytest.raises(CheckpointError, match=r"x.nir: not a readable NIR graph"):
        load_checkpoint(garbage)
    # export side: a max pool over non-spikes has no exact NIR form
    from streamsnn.snn.models import SpikingNet

    net = SpikingNet("p", (1, 4, 4), 4, OrderedDict(pool=torch.nn.MaxPool2d(2), flat=torch.nn.Flatten(),
                                                     lif=LIF()))
    with pytest.raises(CheckpointError, match="'pool'.*NIR has no max pool"):
        to_nir(net, {}, dt=1e-3)


def _reset_snntorch(net):
    """snnTorch neurons built with init_hidden keep their membrane in the module: zero it for a new sample."""
    for module in net.modules():
        if hasattr(module, "reset_mem"):
            module.reset_mem()


@pytest.fixture
def one_thread():
    """One torch thread: per-frame snnTorch calls are tiny, and two threads on two busy cores are much slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_graph_written_by_snntorch_runs_the_same_in_streamsnn():
    """snnTorch's exporter writes its Leaky neuron with dt = 1e-4 and no time step in the file, so the
    import is told dt. snnTorch's reset_mechanism must be "zero" (its default, "subtract", is written as
    v_reset = 0 all the same and would differ), and snnTorch fires on mem > threshold where streamsnn fires
    on u >= threshold: the import moves the threshold one float32 up, and the outputs agree exactly."""
    import snntorch as snn
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(0)

    def leaky(n, beta, threshold):
        # per-neuron tensors: with scalars snnTorch 1.0.0 writes shape-() parameters that nir 1.0.8 rejects
        return snn.Leaky(beta=torch.full((n,), beta), threshold=torch.full((n,), threshold),
                         reset_mechanism="zero", init_hidden=True, reset_delay=False)

    net = torch.nn.Sequential(torch.nn.Flatten(0), torch.nn.Linear(2 * 8 * 8, 20), leaky(20, 0.5, 1.0),
                              torch.nn.Linear(20, 10), leaky(10, 0.75, 0.5))
    with torch.no_grad():
        net[1].weight.mul_(6)
        net[3].weight.mul_(4)
    x = torch.randint(0, 3, (6, 1, 2, 8, 8), generator=torch.Generator().manual_seed(3)).float()
    graph = export_to_nir(net, x[0, 0])            # NIR shapes have no batch axis: one unbatched sample
    model, _ = from_nir(graph, dt=1e-4)
    assert [(m.decay, m.threshold) for m in model.body.children() if isinstance(m, LIF)] == [
        (0.5, float(np.nextafter(np.float32(1.0), np.float32(2)))),
        (0.75, float(np.nextafter(np.float32(0.5), np.float32(2))))]
    with torch.no_grad():
        ours = model(x)
        _reset_snntorch(net)                       # the export ran a sample through it
        theirs = torch.stack([net(x[t, 0]) for t in range(x.shape[0])]).unsqueeze(1)
    assert 0 < ours.mean() < 1                     # some output neurons spike, not all
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


# --------------------------------------------------------------------------- the bundled checkpoint


@pytest.fixture(scope="module")
def bundled_test_split(nmnist_root, tmp_path_factory):
    from streamsnn.datasets import open_dataset
    from streamsnn.training.data import FrameCache, build_frame_cache

    model, meta = load_checkpoint(bundled_checkpoint())
    ds = open_dataset("nmnist", nmnist_root, "Test", sensor_size=meta["sensor_size"])
    path = build_frame_cache(ds, meta["binning"]["time_window"], meta["timesteps"],
                             tmp_path_factory.mktemp("cache"), progress=False)
    with FrameCache(path) as cache:
        frames, labels = cache.read_all(), cache.labels
    assert frames.shape[0] == 100
    return model, meta, frames, labels


def test_bundled_checkpoint_through_nir_gives_identical_decisions(bundled_test_split, tmp_path):
    from streamsnn.training.loop import predict

    model, meta, frames, labels = bundled_test_split
    back, back_meta = read_nir(write_nir(tmp_path / "bundled.nir", model, meta))
    for key in ("binning", "cutoff", "timesteps", "sensor_size", "class_names"):
        assert back_meta[key] == meta[key]
    policy = policy_from_meta(meta["cutoff"])
    original = predict(model, frames, meta["timesteps"])
    imported = predict(back, frames, meta["timesteps"])
    label_a, steps_a, _ = policy.decide(original)
    label_b, steps_b, _ = policy.decide(imported)
    assert np.array_equal(label_a, label_b) and np.array_equal(steps_a, steps_b)
    assert np.array_equal(original.argmax(-1), imported.argmax(-1))
    assert (label_a == labels).mean() >= 0.9        # and the decisions are the checkpoint's real ones


def test_bundled_checkpoint_in_snntorch_gives_the_same_classes_per_timestep(bundled_test_split, tmp_path, one_thread):
    """snnTorch's NIR importer on our exported file, on the same frames. Differences it forces:
    - time step: snnTorch fixes dt = 1e-4 s and reads beta = 1 - dt/tau, so the file is exported with
      dt = 1e-4 (`streamsnn export --dt 1e-4`); with the default dt (the 30 ms frame) its beta would be 0.998;
    - batch axis: it maps NIR's Flatten(start_dim=0) (NIR shapes have no batch axis) straight onto torch,
      so it is fed unbatched frames (P, H, W), one sample at a time;
    - threshold: it fires on mem > v_threshold, as NIR says; the exported threshold is the float32 below 1,
      so that is streamsnn's u >= 1; reset: it resets to zero (reset_mechanism "zero"), as exported;
    - state: its neurons keep their membrane inside the module (init_hidden), reset by hand per sample."""
    from snntorch.import_nir import import_from_nir

    from streamsnn.training.loop import predict

    model, meta, frames, labels = bundled_test_split
    net = import_from_nir(nir.read(write_nir(tmp_path / "bundled-snntorch.nir", model, meta, dt=1e-4)))
    T = meta["timesteps"]
    theirs = np.zeros((T, frames.shape[0], meta["num_classes"]), dtype=np.float32)
    with torch.no_grad():
        for n in range(frames.shape[0]):
            _reset_snntorch(net)
            for t in range(T):
                out, _ = net(torch.from_numpy(frames[n, t]).float())
                theirs[t, n] = out.numpy()
    ours = predict(model, frames, T)
    same = (ours.argmax(-1) == theirs.argmax(-1)).all(axis=0)
    assert same.sum() >= 99, np.flatnonzero(~same)
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


def test_run_accepts_a_nir_file(bundled_test_split, nmnist_root, tmp_path):
    """`streamsnn run --checkpoint X.nir`: the streaming job loads the graph and decides as the checkpoint does."""
    import subprocess
    import sys

    from streamsnn.stream.log import read_decision_log
    from streamsnn.training.evaluate import evaluate_checkpoint

    model, meta, _, _ = bundled_test_split
    small = tmp_path / "data" / "Test"
    for folder in sorted((nmnist_root / "Test").iterdir()):     # one sample per class
        (small / folder.name).mkdir(parents=True)
        first = sorted(folder.iterdir())[0]
        (small / folder.name / first.name).symlink_to(first)
    _, logits, _ = evaluate_checkpoint(bundled_checkpoint(), small.parent, "Test", cache=tmp_path / "cache",
                                       device="cpu", progress=False)
    labels, steps, _ = policy_from_meta(meta["cutoff"]).decide(logits)
    path = write_nir(tmp_path / "bundled.nir", model, meta)
    log = tmp_path / "decisions.h5"
    run = subprocess.run([sys.executable, "-m", "streamsnn.cli", "run", "--source", str(small), "--checkpoint",
                          str(path), "--publish", "tcp://127.0.0.1:0", "--speed", "0", "--log", str(log)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    rows = read_decision_log(log)
    assert [r["label"] for r in rows] == labels.tolist()
    assert [r["timesteps"] for r in rows] == steps.tolist()
