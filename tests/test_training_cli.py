"""A tiny end-to-end `streamsnn train` + `streamsnn eval` on a few real N-MNIST samples."""
import json

import pytest

from streamsnn.cli import main
from streamsnn.snn.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def tiny_dataset(nmnist_root, tmp_path_factory):
    """Train: 4 samples of digits 0, 1 and 7; Test: 2 of each (symlinks to the real files)."""
    root = tmp_path_factory.mktemp("tiny_nmnist")
    for split, n in (("Train", 4), ("Test", 2)):
        for digit in ("0", "1", "7"):
            src = sorted((nmnist_root / split / digit).glob("*.bin"))[:n]
            dst = root / split / digit
            dst.mkdir(parents=True)
            for f in src:
                (dst / f.name).symlink_to(f)
    return root


def test_train_then_eval(tiny_dataset, tmp_path, capsys):
    ckpt = tmp_path / "tiny.pt"
    cache = tmp_path / "cache"
    rc = main(["train", "--data", str(tiny_dataset), "--model", "nmnist", "--timesteps", "4", "--reg", "str",
               "--epochs", "2", "--batch-size", "4", "--cache", str(cache), "--out", str(ckpt), "--no-progress"])
    assert rc == 0 and ckpt.is_file()
    assert list(cache.glob("frames-nmnist-Train-*.h5")) and list(cache.glob("frames-nmnist-Test-*.h5"))
    model, meta = load_checkpoint(ckpt)
    assert meta["model"] == "nmnist" and meta["class_names"] == ["0", "1", "7"] and meta["num_classes"] == 3
    assert meta["timesteps"] == 4 and meta["binning"]["time_window"] == 30000.0
    assert meta["sensor_size"] == [34, 34, 2] and meta["reg"] == "str"
    assert meta["cutoff"]["policy"] == "confidence" and 0 <= meta["cutoff"]["epsilon"] <= 1
    assert meta["command"].startswith("streamsnn train --data")
    out_json, out_png = tmp_path / "eval.json", tmp_path / "eval.png"
    rc = main(["eval", "--checkpoint", str(ckpt), "--data", str(tiny_dataset), "--split", "Test",
               "--json", str(out_json), "--plot", str(out_png), "--cache", str(cache)])
    assert rc == 0 and out_png.stat().st_size > 1000
    report = json.loads(out_json.read_text())
    assert 0 <= report["full_accuracy"] <= 1
    assert len(report["per_timestep_accuracy"]) == 4
    assert all(0 <= a <= 1 for a in report["per_timestep_accuracy"])
    assert 1 <= report["oracle_mean_timesteps"] <= 4
    assert report["samples"] == 6
    policies = {e["policy"] for e in report["cutoff"]}
    assert policies == {"confidence", "topk"}
    for entry in report["cutoff"]:
        assert ("epsilon" in entry) or ("beta" in entry)
        assert 0 <= entry["accuracy"] <= 1 and 1 <= entry["mean_timesteps"] <= 4


def test_eval_errors_are_one_line(tiny_dataset, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nope")
    rc = main(["eval", "--checkpoint", str(bad), "--data", str(tiny_dataset)])
    assert rc == 2
    assert "bad.pt" in capsys.readouterr().err
    rc = main(["train", "--data", str(tiny_dataset), "--model", "nope", "--out", str(tmp_path / "x.pt")])
    assert rc == 2
    assert "known models" in capsys.readouterr().err
