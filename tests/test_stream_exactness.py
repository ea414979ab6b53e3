"""Many streams, one model: every stream's decisions equal `streamsnn eval`'s, alone or sharing batches.

The bundled checkpoint at its stored cutoff, the N-MNIST Test split replayed by 1, 4, 16 and 20 streams at
once (as fast as possible, so the streams really share batches). Each stream replays the split in its
own order (sample files renamed through symlinks), so the rows sharing a batch hold different samples.
Every decision -- label, timesteps, confidence to 1e-6 -- equals the offline evaluation of that sample.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamsnn.snn.checkpoint import bundled_checkpoint
from streamsnn.stream.config import PipelineConfig, SourceConfig
from streamsnn.stream.job import Pipeline
from streamsnn.stream.log import read_decision_log

BUNDLED_CHECKPOINT = bundled_checkpoint()


def _rotated_split(root: Path, test: Path, k: int) -> list[str]:
    """ROOT/Test/<class>/<rank>-<file>: the samples of `test`, each class rotated by k; returns the original
    'class/file' of each sample in the order the job replays them (class, then file name)."""
    order = []
    for cls in sorted(p.name for p in test.iterdir() if p.is_dir()):
        files = sorted(p.name for p in (test / cls).iterdir())
        (root / "Test" / cls).mkdir(parents=True)
        for i, name in enumerate(files):
            rank = (i - k) % len(files)
            (root / "Test" / cls / f"{rank:04d}-{name}").symlink_to(test / cls / name)
        order += [f"{cls}/{files[(r + k) % len(files)]}" for r in range(len(files))]
    return order


@pytest.fixture(scope="module")
def offline(nmnist_root, tmp_path_factory):
    """Per sample ('class/file'): (label, timesteps, confidence) from `streamsnn eval`'s library function."""
    from streamsnn.cutoff import policy_from_meta
    from streamsnn.snn.checkpoint import load_checkpoint
    from streamsnn.training.evaluate import evaluate_checkpoint

    _, meta = load_checkpoint(BUNDLED_CHECKPOINT)
    _, logits, _ = evaluate_checkpoint(BUNDLED_CHECKPOINT, nmnist_root, "Test",
                                       cache=tmp_path_factory.mktemp("cache"), device="cpu", progress=False)
    labels, steps, confidence = policy_from_meta(meta["cutoff"]).decide(logits)
    test = nmnist_root / "Test"
    names = [f"{cls}/{f.name}" for cls in sorted(p.name for p in test.iterdir() if p.is_dir())
             for f in sorted((test / cls).iterdir())]
    assert len(names) == logits.shape[1]
    return {name: (int(labels[i]), int(steps[i]), float(confidence[i])) for i, name in enumerate(names)}


@pytest.mark.timeout(240)
# 20: more streams than one block of rows (EVENT_BLOCK_ROWS), so batches go through in several blocks,
# each block's decisions sent before the next is stepped
@pytest.mark.parametrize("streams", [1, 4, 16, 20])
def test_every_stream_equals_offline_eval(tmp_path, nmnist_root, offline, streams):
    orders, sources = {}, []
    for k in range(streams):
        orders[f"s{k}"] = _rotated_split(tmp_path / f"split{k}", nmnist_root / "Test", 3 * k)
        sources.append(SourceConfig(uri=str(tmp_path / f"split{k}" / "Test"), stream=f"s{k}", speed=0.0))
    log = tmp_path / "decisions.h5"
    pipeline = Pipeline(PipelineConfig(sources=sources, checkpoint=str(BUNDLED_CHECKPOINT),
                                       endpoint="tcp://127.0.0.1:*", settle_s=0.0, log=str(log)))
    assert pipeline.run() == 0
    rows = read_decision_log(log)
    assert len(rows) == 100 * streams
    for name, order in orders.items():
        mine = [r for r in rows if r["stream"] == name]
        assert [r["seq"] for r in mine] == list(range(100))
        expected = np.array([offline[sample] for sample in order])
        assert np.array_equal([r["label"] for r in mine], expected[:, 0].astype(int)), name
        assert np.array_equal([r["timesteps"] for r in mine], expected[:, 1].astype(int)), name
        assert np.allclose([r["confidence"] for r in mine], expected[:, 2], rtol=0, atol=1e-6), name
    if streams > 1:
        # the streams really shared batches (as fast as possible, every stream has frames waiting): all of
        # them in one batch at least once, and several in a batch as a rule (how many on average depends
        # on how far the inference thread runs ahead of the frame thread: 7-10 of 16 measured)
        assert pipeline.scheduler.batch_rows_max == streams
        assert pipeline.scheduler.batch_rows_sum / pipeline.scheduler.batches > min(streams / 4, 3)


@pytest.mark.timeout(240)
def test_a_model_on_resized_frames_streams_with_the_offline_decisions(tmp_path, nmnist_root):
    """A checkpoint trained on frames resized to its input (as the CIFAR10-DVS VGG recipe is: sensor
    34x34, network 20x20 here): the job bins at the sensor's size, resizes as training and `eval` do,
    and decides as `eval` does."""
    import torch

    from streamsnn.cutoff import policy_from_meta
    from streamsnn.snn import build_model
    from streamsnn.snn.checkpoint import load_checkpoint, save_checkpoint
    from streamsnn.training.evaluate import evaluate_checkpoint

    torch.manual_seed(1)
    model = build_model("nmnist", (2, 20, 20), 10)
    with torch.no_grad():                  # spikes in every layer, decisions at different timesteps
        for bn in (model.body.bn1, model.body.bn2):
            bn.running_var.fill_(0.05)
            bn.bias.fill_(0.4)
        model.body.fc.weight.mul_(40.0)    # confident logits: the cutoff fires early for some samples
    checkpoint = save_checkpoint(tmp_path / "resized.pt", model, {
        "class_names": [str(i) for i in range(10)], "sensor_size": [34, 34, 2],
        "binning": {"time_window": 30_000}, "timesteps": 10, "cutoff": {"policy": "confidence", "epsilon": 0.2}})
    _, meta = load_checkpoint(checkpoint)
    _, logits, _ = evaluate_checkpoint(checkpoint, nmnist_root, "Test", cache=tmp_path / "cache", device="cpu",
                                       progress=False)
    labels, steps, confidence = policy_from_meta(meta["cutoff"]).decide(logits)
    assert len(set(steps.tolist())) > 1             # not every sample stops at the same timestep
    log = tmp_path / "decisions.h5"
    sources = [SourceConfig(uri=str(nmnist_root / "Test"), stream=f"s{k}", speed=0.0) for k in range(3)]
    pipeline = Pipeline(PipelineConfig(sources=sources, checkpoint=str(checkpoint), endpoint="tcp://127.0.0.1:*",
                                       settle_s=0.0, log=str(log)))
    assert pipeline.run() == 0
    rows = read_decision_log(log)
    assert len(rows) == 300
    for k in range(3):
        mine = sorted((r for r in rows if r["stream"] == f"s{k}"), key=lambda r: r["seq"])
        assert [r["label"] for r in mine] == labels.tolist()
        assert [r["timesteps"] for r in mine] == steps.tolist()
        assert np.allclose([r["confidence"] for r in mine], confidence, rtol=0, atol=1e-6)
