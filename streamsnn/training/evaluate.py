"""The anytime evaluation of a checkpoint on a dataset split (JSON + PNG), behind ``streamsnn eval``.

JSON keys (accuracies are fractions in [0, 1]):

- ``full_accuracy``: prediction argmax Y(T) at the checkpoint's T;
- ``per_timestep_accuracy``: T values, every sample stopped at a fixed t = 1..T;
- ``oracle_mean_timesteps``: mean over samples of the first t at which argmax Y(t) is right
  (T for samples never right);
- ``cutoff``: a list of ``{"policy", "epsilon" | "beta", "accuracy", "mean_timesteps"}`` over a sweep
  of the confidence cutoff's epsilon and the Top-K cutoff's beta (constant betas, and the per-timestep
  betas calibrated on the training split, stored in the checkpoint);
- ``checkpoint_cutoff``: the same entry for the setting stored in the checkpoint (what ``run`` uses);
- ``samples``, ``split``, ``dataset``, ``timesteps``, ``checkpoint``, ``model``, ``reg``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..cutoff import (EPSILON_SWEEP, ConfidenceCutoff, TopKCutoff, evaluate_policy, oracle_timesteps,
                      per_timestep_accuracy, policy_from_meta)
from ..errors import ConfigError

BETA_SWEEP = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0)
TOPK_SCALES = (0.5, 0.75, 1.0, 1.5, 2.0)


def anytime_report(logits, labels, cutoff_meta: dict | None = None) -> dict:
    """Every measure of the JSON above from logits (T, N, K) and labels (N,)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    per_t = per_timestep_accuracy(logits, labels)
    report = {
        "full_accuracy": per_t[-1],
        "per_timestep_accuracy": per_t,
        "oracle_mean_timesteps": float(oracle_timesteps(logits, labels).mean()),
        "samples": int(labels.shape[0]),
        "timesteps": int(logits.shape[0]),
    }
    sweep = [evaluate_policy(ConfidenceCutoff(e), logits, labels) for e in EPSILON_SWEEP]
    sweep += [evaluate_policy(TopKCutoff([b]), logits, labels) for b in BETA_SWEEP]
    if cutoff_meta and cutoff_meta.get("topk_betas"):
        base = np.asarray(cutoff_meta["topk_betas"], dtype=np.float64)
        for s in TOPK_SCALES:
            entry = evaluate_policy(TopKCutoff(base * s), logits, labels)
            entry["calibrated_scale"] = s
            sweep.append(entry)
    report["cutoff"] = sweep
    if cutoff_meta:
        report["checkpoint_cutoff"] = evaluate_policy(policy_from_meta(cutoff_meta), logits, labels)
    return report


def plot_report(report: dict, path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    T = report["timesteps"]
    ax.plot(range(1, T + 1), [100 * a for a in report["per_timestep_accuracy"]], "o-", color="0.4",
            label="fixed t (all samples stop at t)")
    for policy, marker, color, label in (("confidence", "s-", "C0", "confidence cutoff (sweep of ε)"),
                                         ("topk", "^-", "C2", "Top-K cutoff (sweep of β)")):
        pts = sorted((e["mean_timesteps"], 100 * e["accuracy"]) for e in report["cutoff"]
                     if e["policy"] == policy and "calibrated_scale" not in e)
        if pts:
            ax.plot(*zip(*pts), marker, color=color, ms=4, label=label)
    if "checkpoint_cutoff" in report:
        c = report["checkpoint_cutoff"]
        ax.plot([c["mean_timesteps"]], [100 * c["accuracy"]], "*", color="C3", ms=14,
                label=f"checkpoint setting ({c['policy']}, {c.get('epsilon', c.get('beta'))})")
    ax.axvline(report["oracle_mean_timesteps"], color="C1", ls=":", label="oracle mean timesteps")
    ax.axhline(100 * report["full_accuracy"], color="0.6", ls="--", lw=0.8)
    ax.set_xlabel("mean timesteps per sample")
    ax.set_ylabel("accuracy (%)")
    ax.set_xlim(0.8, T + 0.2)
    lo = min(100 * min(report["per_timestep_accuracy"]), 100 * report["full_accuracy"] - 10)
    ax.set_ylim(max(0, lo - 2), 100.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def evaluate_checkpoint(checkpoint, data, split="Test", cache=None, device=None, progress=True, dataset=None,
                        download=False):
    """(report, logits, labels) for a checkpoint on one split of its dataset (``dataset`` overrides the
    one stored in the checkpoint; checkpoints without one read the N-MNIST folder layout). For datasets
    split 9:1, the held-out files stored in the checkpoint are the Test split. Logits (T, N, K) are
    computed as the streaming job computes them wherever the job can run the model."""
    from ..datasets import open_dataset
    from ..snn.batched import predict_stepwise
    from ..snn.checkpoint import load_checkpoint
    from .data import FrameCache, build_frame_cache
    from .loop import predict
    from .trainer import pick_device

    dev = pick_device(device)
    model, meta = load_checkpoint(checkpoint, map_location=dev)
    stored = meta.get("dataset") or {"name": "nmnist", "split": {}}
    name = dataset or stored["name"]
    split_info = (stored.get("split") or {}) if name == stored["name"] else {}
    T = int(meta.get("timesteps", 10))
    tw = float(meta.get("binning", {}).get("time_window", 30_000.0))
    sensor = meta.get("sensor_size") or [model.input_size[2], model.input_size[1], model.input_size[0]]
    ds = open_dataset(name, data, split, sensor_size=sensor if name == "nmnist" else None,
                      split_seed=int(split_info.get("seed", 0)), test_files=split_info.get("test_files"),
                      download=download)
    names = meta.get("class_names")
    if names and list(names) != list(ds.class_names):
        raise ConfigError(f"{ds.root}/{ds.split}: classes {ds.class_names} differ from the checkpoint's classes {names}")
    with FrameCache(build_frame_cache(ds, tw, T, cache, progress=progress)) as frames:
        if dev.type == "cpu":
            # Stepped frame by frame as the streaming job steps them (snn/batched.py; frames resized to
            # the model's input the same way), so that these logits are, bit for bit, the ones
            # `streamsnn run` computes for the same sample, whatever shares its batch.
            logits = predict_stepwise(model, frames, T)
        else:
            # a GPU: the whole-batch forward pass
            logits = predict(model, frames, T, device=dev)
        labels = frames.labels
    report = anytime_report(logits, labels, meta.get("cutoff"))
    report.update(split=ds.split, dataset=name, checkpoint=str(checkpoint), model=meta.get("model"),
                  reg=meta.get("reg"))
    return report, logits, labels
