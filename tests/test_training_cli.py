"""A tiny end-to-end `streamsnn train` + `streamsnn eval` on real N-MNIST samples (the bundled split)."""
import json

import numpy as np
import pytest
from conftest import split_dataset

from streamsnn.cli import main
from streamsnn.snn.checkpoint import load_checkpoint
from streamsnn.training.evaluate import evaluate_checkpoint


@pytest.fixture(scope="module")
def tiny_dataset(nmnist_root, tmp_path_factory):
    """Digits 0, 1 and 7 of the bundled Test split: 26 samples to train on, 11 others to test on."""
    return split_dataset(tmp_path_factory.mktemp("tiny_nmnist"), nmnist_root, classes={"0", "1", "7"})


def test_train_then_eval(tiny_dataset, tmp_path, capsys):
    ckpt = tmp_path / "tiny.pt"
    cache = tmp_path / "cache"
    rc = main(["train", "--data", str(tiny_dataset), "--model", "nmnist", "--timesteps", "4", "--reg", "str",
               "--epochs", "8", "--batch-size", "4", "--cache", str(cache), "--out", str(ckpt), "--no-progress"])
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
    assert report["samples"] == 11 and report["timesteps"] == 4
    # The report's figures, recomputed here from the model's own outputs by their definitions.
    _, logits, labels = evaluate_checkpoint(ckpt, tiny_dataset, "Test", cache=cache, progress=False)
    Y = np.cumsum(np.asarray(logits, dtype=np.float64), axis=0)          # (T, N, K)
    right = Y.argmax(axis=2) == np.asarray(labels)[None, :]
    np.testing.assert_allclose(report["per_timestep_accuracy"], right.mean(axis=1))
    assert report["full_accuracy"] == pytest.approx(right[-1].mean())
    # Three well-separated digits after eight epochs (10 of 11 right here): far above chance (1/3).
    assert report["full_accuracy"] >= 0.8
    first_right = np.where(right.any(axis=0), right.argmax(axis=0) + 1, 4)
    assert report["oracle_mean_timesteps"] == pytest.approx(first_right.mean())
    assert {e["policy"] for e in report["cutoff"]} == {"confidence", "topk"}
    z = Y - Y.max(axis=2, keepdims=True)
    confidence = 1.0 / np.exp(z).sum(axis=2)                               # max softmax, (T, N)
    for entry in (e for e in report["cutoff"] if e["policy"] == "confidence"):
        fires = confidence > 1 - entry["epsilon"]
        fires[-1] = True                                                   # T decides whatever the confidence
        stop = fires.argmax(axis=0)
        assert entry["mean_timesteps"] == pytest.approx((stop + 1).mean())
        predicted = Y[stop, np.arange(Y.shape[1])].argmax(axis=1)
        assert entry["accuracy"] == pytest.approx(np.mean(predicted == np.asarray(labels)))


def test_eval_errors_are_one_line(tiny_dataset, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nope")
    rc = main(["eval", "--checkpoint", str(bad), "--data", str(tiny_dataset)])
    assert rc == 2
    assert "bad.pt" in capsys.readouterr().err
    rc = main(["train", "--data", str(tiny_dataset), "--model", "nope", "--out", str(tmp_path / "x.pt")])
    assert rc == 2
    assert "known models" in capsys.readouterr().err
