"""The tonic dataset layouts, read directly from small replicas in the real file formats, and
`streamsnn train|eval --dataset` end to end on each."""
import json

import numpy as np
import pytest

from dataset_replicas import write_cifar10dvs, write_gesture, write_ncaltech101, write_nmnist
from streamsnn.cli import main
from streamsnn.datasets import open_dataset
from streamsnn.datasets.splits import stratified_split
from streamsnn.errors import ConfigError, EventFormatError
from streamsnn.snn.checkpoint import load_checkpoint
from streamsnn.training.data import FrameCache, build_frame_cache

pytest.importorskip("dv_processing")


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    root = tmp_path_factory.mktemp("replicas")
    write_gesture(root)
    write_cifar10dvs(root)
    write_ncaltech101(root)
    write_nmnist(root)
    return root


# --------------------------------------------------------------------------- readers and layouts

def test_gesture_layout_and_units(replicas):
    train = open_dataset("dvsgesture", replicas, "Train")
    test = open_dataset("dvsgesture", replicas / "DVSGesture", "test")  # the dataset folder itself works too
    assert len(train) == 6 and len(test) == 3
    assert train.labels.tolist() == [0, 1, 2, 0, 1, 2] and len(train.class_names) == 11
    assert train.relative_names()[0] == "ibmGestureTrain/user01_fluorescent/0.npy"
    table = np.load(replicas / "DVSGesture/ibmGestureTest/user24_led/1.npy")
    events = test.read(1)
    np.testing.assert_array_equal(events["t"], table[:, 3].astype(np.int64) * 1000)  # ms -> µs
    np.testing.assert_array_equal(events["x"], table[:, 0])
    np.testing.assert_array_equal(events["p"], table[:, 2])


def test_gesture_bad_files(tmp_path):
    folder = tmp_path / "DVSGesture" / "ibmGestureTrain" / "user01_led"
    folder.mkdir(parents=True)
    np.save(folder / "3.npy", np.zeros((5, 3)))
    with pytest.raises(EventFormatError, match=r"3\.npy.*\(N, 4\)"):
        open_dataset("dvsgesture", tmp_path, "Train").read(0)
    np.save(folder / "3.npy", np.array([[1, 1, 0, 5], [1, 1, 1, 4]]))
    with pytest.raises(EventFormatError, match="steps back"):
        open_dataset("dvsgesture", tmp_path, "Train").read(0)
    np.save(folder / "12.npy", np.zeros((1, 4)))
    with pytest.raises(EventFormatError, match="class index"):
        open_dataset("dvsgesture", tmp_path, "Train")


def test_cifar10dvs_reads_aedat4_with_tonic_labels(replicas):
    train = open_dataset("cifar10dvs", replicas, "Train")
    test = open_dataset("cifar10dvs", replicas, "Test")
    assert train.class_names[3] == "cat" and set(train.labels.tolist()) == {0, 3}
    assert len(train) + len(test) == 20 and sorted(test.labels.tolist()) == [0, 3]
    events = test.read(0)
    assert events.size == 300 and events["t"][0] >= 1_000_000 and np.all(np.diff(events["t"]) >= 0)


def test_cifar10dvs_rejects_unknown_class_folder(tmp_path, replicas):
    (replicas / "CIFAR10DVS" / "dragons").mkdir()
    try:
        with pytest.raises(EventFormatError, match="dragons"):
            open_dataset("cifar10dvs", replicas, "Train")
    finally:
        (replicas / "CIFAR10DVS" / "dragons").rmdir()


def test_ncaltech101_background_included_and_shifted(replicas):
    train = open_dataset("ncaltech101", replicas, "Train")
    assert train.class_names == ["BACKGROUND_Google", "accordion", "airplanes"]
    events = train.read(len(train) - 1)
    assert events["x"].min() == 0 and events["y"].min() == 0  # shifted like tonic


def test_ncaltech101_drops_events_outside_the_nominal_sensor(tmp_path):
    from streamsnn.events import make_events
    from streamsnn.io.atis import write_atis_bin

    folder = tmp_path / "Caltech101" / "ant"
    folder.mkdir(parents=True)
    write_atis_bin(folder / "image_0001.bin", make_events([10, 255, 20], [5, 5, 200], [1, 2, 3], [1, 0, 1]))
    events = open_dataset("ncaltech101", tmp_path, "Train", ).files  # one file: goes to Train
    ds = open_dataset("ncaltech101", tmp_path, "Train")
    assert len(events) == 1
    read = ds.read(0)
    assert read["x"].tolist() == [0] and read["y"].tolist() == [0]  # (245, 0) and (10, 195) are outside 240x180


def test_nmnist_tonic_layout(replicas):
    ds = open_dataset("nmnist", replicas, "Test")
    assert ds.root == replicas / "NMNIST" and len(ds) == 6 and ds.class_names == ["0", "1", "7"]


def test_stratified_split_is_seeded_and_per_class():
    labels = np.repeat(np.arange(4), [10, 20, 31, 1])
    train, test = stratified_split(labels, 0.1, seed=3)
    assert np.bincount(labels[test], minlength=4).tolist() == [1, 2, 3, 0]
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(labels.size))
    again, other = stratified_split(labels, 0.1, seed=3)[1], stratified_split(labels, 0.1, seed=4)[1]
    assert again.tolist() == test.tolist() and other.tolist() != test.tolist()


def test_missing_layout_and_download_errors(tmp_path, monkeypatch):
    with pytest.raises(EventFormatError, match="--download"):
        open_dataset("dvsgesture", tmp_path / "nothing", "Train")
    with pytest.raises(EventFormatError, match="no CIFAR10DVS layout"):
        open_dataset("cifar10dvs", tmp_path, "Train")
    with pytest.raises(ConfigError, match="known datasets"):
        open_dataset("mnist", tmp_path, "Train")
    import tonic
    import urllib.error

    def offline(**kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tonic.datasets, "NCALTECH101", offline)
    with pytest.raises(ConfigError, match="downloading NCALTECH101 with tonic failed.*URLError"):
        open_dataset("ncaltech101", tmp_path, "Train", download=True)


def test_frame_cache_reads_by_batch(replicas, tmp_path):
    ds = open_dataset("dvsgesture", replicas, "Train")
    path = build_frame_cache(ds, 375_000.0, 8, tmp_path, progress=False)
    assert build_frame_cache(ds, 375_000.0, 8, tmp_path, progress=False) == path  # built once
    with FrameCache(path) as cache:
        assert cache.shape == (6, 8, 2, 128, 128) and cache.labels.tolist() == ds.labels.tolist()
        everything = cache.read_all()
        np.testing.assert_array_equal(cache.take([5, 0, 5]), everything[[5, 0, 5]])
    assert int(everything[0].sum()) == 400  # every event of the 2 s sample falls in the 8 x 375 ms


# --------------------------------------------------------------------------- end to end through the CLI

CASES = {
    # dataset: (extra train options, expected input size, Test samples). The recipes' networks at a small
    # input keep this quick; N-Caltech101 trains the compact N-MNIST network (any model takes any dataset).
    "dvsgesture": (["--input-size", "32x32"], [2, 32, 32], 3),
    "cifar10dvs": (["--input-size", "16x16", "--batch-size", "18"], [2, 16, 16], 2),  # one step of the VGG
    "ncaltech101": (["--model", "nmnist", "--input-size", "34x34"], [2, 34, 34], 3),
    "nmnist": ([], [2, 34, 34], 6),
}


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_train_and_eval_on_replica(dataset, replicas, tmp_path):
    extra, input_size, n_test = CASES[dataset]
    ckpt, cache = tmp_path / f"{dataset}.pt", tmp_path / "cache"
    rc = main(["train", "--dataset", dataset, "--data", str(replicas), "--timesteps", "3", "--epochs", "1",
               "--batch-size", "4", "--cache", str(cache), "--out", str(ckpt), "--no-progress", *extra])
    assert rc == 0
    model, meta = load_checkpoint(ckpt)
    assert meta["dataset"]["name"] == dataset and meta["input_size"] == input_size
    assert list(model.input_size) == input_size and meta["timesteps"] == 3
    assert meta["train_config"]["recipe"] == dataset
    if dataset in ("cifar10dvs", "ncaltech101"):
        split = meta["dataset"]["split"]
        assert split["seed"] == 0 and len(split["test_files"]) == n_test
        assert meta["train_config"]["optimizer"] == "sgd" and meta["train_config"]["shift"] == 25
        assert "resized to " in meta["binning"]["preprocess"]
    out_json = tmp_path / "eval.json"
    rc = main(["eval", "--checkpoint", str(ckpt), "--data", str(replicas), "--cache", str(cache),
               "--json", str(out_json)])
    assert rc == 0
    report = json.loads(out_json.read_text())
    assert report["dataset"] == dataset and report["samples"] == n_test and report["timesteps"] == 3
    assert 0 <= report["full_accuracy"] <= 1 and len(report["per_timestep_accuracy"]) == 3


def test_eval_uses_the_stored_held_out_files(replicas, tmp_path, capsys):
    ckpt, cache = tmp_path / "c.pt", tmp_path / "cache"
    assert main(["train", "--dataset", "cifar10dvs", "--data", str(replicas), "--timesteps", "2", "--epochs", "1",
                 "--model", "nmnist", "--input-size", "34x34", "--split-seed", "5", "--cache", str(cache), "--out", str(ckpt),
                 "--no-progress"]) == 0
    _, meta = load_checkpoint(ckpt)
    held_out = meta["dataset"]["split"]["test_files"]
    assert held_out == open_dataset("cifar10dvs", replicas, "Test", split_seed=5).relative_names()
    victim = replicas / "CIFAR10DVS" / held_out[0]
    moved = victim.with_suffix(".moved")
    victim.rename(moved)
    try:
        rc = main(["eval", "--checkpoint", str(ckpt), "--data", str(replicas), "--cache", str(cache)])
        assert rc == 2
        err = capsys.readouterr().err
        assert held_out[0] in err and "held-out file" in err and len(err.strip().splitlines()) == 1
    finally:
        moved.rename(victim)


def test_reproduce_paper_runs_on_a_replica(replicas, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "reproduce_paper.py"
    spec = importlib.util.spec_from_file_location("reproduce_paper", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "paper"
    assert tool.main(["--dataset", "dvsgesture", "--data", str(replicas), "--out", str(out), "--epochs", "1",
                      "--timesteps", "2", "--input-size", "32x32", "--batch-size", "6",
                      "--cache", str(tmp_path / "cache")]) == 0
    table = (out / "paper_table.md").read_text()
    for row in ("| TET | ", "| TET+RCS | ", "| TET+STR | "):
        assert row in table
    assert "97.80 %" in table and "98.26 %" in table  # the paper's column
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results] == ["none", "rcs", "str"]
    assert all(r["per_timestep_accuracy"] and 1 <= r["checkpoint_cutoff"]["mean_timesteps"] <= 2 for r in results)


def test_recipes_fill_the_config_and_options_override():
    from streamsnn.training.recipes import RECIPES, train_config

    cfg = train_config("dvsgesture")
    assert (cfg.timesteps, cfg.batch_size, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.epochs,
            cfg.shift) == (16, 32, "sgd", 0.1, 0.9, 5e-4, 100, 25)
    assert train_config("cifar10dvs").input_hw == (48, 48) and train_config("cifar10dvs").batch_size == 128
    short = train_config("nmnist-short", timesteps=None, reg="none")
    assert (short.timesteps, short.time_window, short.reg) == (20, 5_000.0, "none")
    assert set(RECIPES) >= {"nmnist", "nmnist-short", "dvsgesture", "cifar10dvs", "ncaltech101"}
    with pytest.raises(ConfigError, match="known recipes"):
        train_config("imagenet")
    with pytest.raises(ConfigError, match="STR variant"):
        train_config("nmnist", str_variant="nope")
