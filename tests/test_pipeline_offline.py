"""Online equals offline: the N-MNIST Test folder replayed through the streaming job gives, sample for sample,
the decisions (label and timesteps) that `streamsnn eval` computes offline with the same cutoff."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from streamsnn.stream.log import read_decision_log

PY = sys.executable


def _tiny_dataset(root, nmnist_root, per_class=8):
    """Train: the first few bundled samples of each class (symlinks, no copies); Test: the whole bundled split.
    The two overlap: this test compares online with offline decisions, not generalisation."""
    (root / "Train").mkdir(parents=True)
    for folder in sorted((nmnist_root / "Test").iterdir()):
        (root / "Train" / folder.name).mkdir()
        for f in sorted(folder.iterdir())[:per_class]:
            (root / "Train" / folder.name / f.name).symlink_to(f)
    (root / "Test").symlink_to(nmnist_root / "Test")
    return root


def _pick_epsilon(logits):
    """An epsilon from eval's sweep that exits early for some samples and late for others, and that no sample
    meets within 1e-4 (so float rounding between batched and single-step inference cannot flip a decision)."""
    from streamsnn.cutoff import EPSILON_SWEEP, ConfidenceCutoff, max_softmax

    Y = np.cumsum(np.asarray(logits, dtype=np.float64), axis=0)
    confidence = max_softmax(Y)                                   # (T, N)
    candidates = list(EPSILON_SWEEP) + [round(1 - float(np.quantile(confidence[t], q)), 6)
                                        for t in range(min(4, confidence.shape[0])) for q in (0.3, 0.5, 0.7)]
    best = None
    for eps in candidates:
        if not 0 < eps < 1:
            continue
        _, steps, _ = ConfidenceCutoff(eps).decide(logits)
        margin = np.abs(confidence - (1 - eps)).min()
        spread = len(np.unique(steps))
        if margin > 1e-4 and 1 < steps.mean() < logits.shape[0] and (best is None or spread > best[1]):
            best = (float(eps), spread, eps in EPSILON_SWEEP)
    assert best is not None, "no usable epsilon"
    return best[0], best[2]


@pytest.mark.timeout(300)
def test_replayed_test_folder_equals_streamsnn_eval(tmp_path, nmnist_root):
    data = _tiny_dataset(tmp_path / "data", nmnist_root)
    ckpt = tmp_path / "trained.pt"
    env = dict(os.environ, STREAMSNN_CACHE=str(tmp_path / "cache"))
    train = subprocess.run([PY, "-m", "streamsnn.cli", "train", "--data", str(data), "--epochs", "3", "--lr", "0.005",
                            "--batch-size", "8", "--out",
                            str(ckpt), "--cache", str(tmp_path / "cache"), "--no-progress"],
                           capture_output=True, text=True, timeout=200, env=env)
    assert train.returncode == 0, train.stderr

    # offline: the library function behind `streamsnn eval`
    from streamsnn.cutoff import ConfidenceCutoff
    from streamsnn.training.evaluate import evaluate_checkpoint

    report, logits, labels = evaluate_checkpoint(ckpt, data, "Test", cache=tmp_path / "cache", device="cpu",
                                                 progress=False)
    epsilon, in_sweep = _pick_epsilon(logits)
    offline_labels, offline_steps, _ = ConfidenceCutoff(epsilon).decide(logits)

    # online: the streaming job on the same folder, as fast as possible
    log = tmp_path / "decisions.h5"
    run = subprocess.run([PY, "-m", "streamsnn.cli", "run", "--source", str(data / "Test"), "--checkpoint",
                          str(ckpt), "--publish", "tcp://127.0.0.1:0", "--speed", "0", "--log", str(log),
                          "--cutoff-epsilon", repr(epsilon)], capture_output=True, text=True, timeout=200)
    assert run.returncode == 0, run.stderr
    rows = read_decision_log(log)
    assert len(rows) == len(labels) == 100
    online_labels = np.array([r["label"] for r in rows])
    online_steps = np.array([r["timesteps"] for r in rows])
    assert np.array_equal(np.array([r["target"] for r in rows]), labels)
    assert np.array_equal(online_steps, offline_steps), (epsilon, np.flatnonzero(online_steps != offline_steps))
    assert np.array_equal(online_labels, offline_labels)
    assert len(np.unique(online_steps)) > 1          # the cutoff really decided at different times

    if in_sweep:   # and the figures `streamsnn eval --json` prints for that epsilon
        out = tmp_path / "eval.json"
        ev = subprocess.run([PY, "-m", "streamsnn.cli", "eval", "--checkpoint", str(ckpt), "--data", str(data),
                             "--json", str(out), "--cache", str(tmp_path / "cache"), "--device", "cpu"],
                            capture_output=True, text=True, timeout=200, env=env)
        assert ev.returncode == 0, ev.stderr
        entry = next(e for e in json.loads(out.read_text())["cutoff"]
                     if e["policy"] == "confidence" and e["epsilon"] == epsilon)
        assert entry["accuracy"] == pytest.approx(float((online_labels == labels).mean()))
        assert entry["mean_timesteps"] == pytest.approx(float(online_steps.mean()))


BUNDLED = __import__("pathlib").Path(__file__).resolve().parents[1] / "streamsnn" / "checkpoints" / "nmnist_str.pt"


@pytest.mark.timeout(200)
@pytest.mark.skipif(not BUNDLED.is_file(), reason="the bundled checkpoint is not in this checkout")
def test_bundled_checkpoint_online_equals_eval_at_its_own_cutoff(tmp_path, nmnist_root):
    """The bundled checkpoint (trained by `streamsnn train` with the README recipe) at its stored cutoff:
    the job's decisions equal eval's, sample for sample, and so do accuracy and mean timesteps."""
    from streamsnn.cutoff import max_softmax, policy_from_meta
    from streamsnn.snn.checkpoint import load_checkpoint
    from streamsnn.training.evaluate import evaluate_checkpoint

    _, meta = load_checkpoint(BUNDLED)
    report, logits, labels = evaluate_checkpoint(BUNDLED, nmnist_root, "Test", cache=tmp_path / "cache",
                                                 device="cpu", progress=False)
    policy = policy_from_meta(meta["cutoff"])
    offline_labels, offline_steps, _ = policy.decide(logits)
    confidence = max_softmax(np.cumsum(np.asarray(logits, dtype=np.float64), axis=0))
    assert np.abs(confidence - (1 - meta["cutoff"]["epsilon"])).min() > 1e-5   # no knife-edge sample
    log = tmp_path / "decisions.h5"
    run = subprocess.run([PY, "-m", "streamsnn.cli", "run", "--source", str(nmnist_root / "Test"), "--checkpoint",
                          str(BUNDLED), "--publish", "tcp://127.0.0.1:0", "--speed", "0", "--log", str(log)],
                         capture_output=True, text=True, timeout=150)
    assert run.returncode == 0, run.stderr
    rows = read_decision_log(log)
    assert np.array_equal([r["timesteps"] for r in rows], offline_steps)
    assert np.array_equal([r["label"] for r in rows], offline_labels)
    online_accuracy = float(np.mean([r["label"] == r["target"] for r in rows]))
    assert online_accuracy == pytest.approx(report["checkpoint_cutoff"]["accuracy"])
    assert float(np.mean([r["timesteps"] for r in rows])) == pytest.approx(report["checkpoint_cutoff"]["mean_timesteps"])
