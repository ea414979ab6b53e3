#!/usr/bin/env python
"""Ablation: TET alone, TET+RCS, TET+STR over several seeds, same T and epochs; anytime table + plot.

    python tools/ablation.py --data ../shared/data/nmnist_small --out out/ablation --seeds 0 1 2
    python tools/ablation.py --dataset dvsgesture --data ROOT --out out/gesture --seeds 0

Each run is `streamsnn train` with the dataset's recipe (or --recipe; only --reg and --seed differ),
evaluated on Test. Per run: full-T accuracy, the confidence cutoff stored in the checkpoint (epsilon calibrated on
the training split), and the "loses at most one sample" operating point: the largest epsilon of the
sweep whose Test accuracy is at most one sample below full T (an oracle choice on Test, reported
for comparison between methods). Finished runs are kept (OUT/runs/*.json) and skipped on a rerun.
Method names: none, rcs, str, or str:VARIANT / str:VARIANT:STRENGTH for STR variants.
"At most 1 % lost" is the largest epsilon of the sweep whose accuracy is at most 1 % of the samples
(at least one sample) below full T. With --select-on-train the same point is measured on the training
split too, and the methods are ranked by it (a choice made without looking at Test):

    python tools/ablation.py --recipe nmnist-short --out out/sweep --seeds 0 --select-on-train \
        --methods str:stf:0.05 str:stf:0.1 str:stf:0.25 str:stf:0.5 str:stf:1.0 str:l2:0.05 ...
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamsnn.cli import main as cli_main  # noqa: E402
from streamsnn.snn.checkpoint import load_checkpoint  # noqa: E402
from streamsnn.cutoff import EPSILON_SWEEP, ConfidenceCutoff, evaluate_policy  # noqa: E402
from streamsnn.training.evaluate import evaluate_checkpoint  # noqa: E402
from streamsnn.training.recipes import recipe as find_recipe, train_config  # noqa: E402
from streamsnn.training.trainer import configure_threads, train  # noqa: E402

LABELS = {"none": "TET", "rcs": "TET+RCS", "str": "TET+STR"}


def label(method: str) -> str:
    """"str:stf:0.05" -> "TET+STR stf 0.05"; the plain methods by LABELS."""
    if method in LABELS:
        return LABELS[method]
    parts = method.split(":")
    return " ".join([LABELS.get(parts[0], parts[0])] + parts[1:])


def parse_method(text: str) -> dict:
    parts = text.split(":")
    out = {"reg": parts[0]}
    if len(parts) > 1 and parts[1]:
        out["str_variant"] = parts[1]
    if len(parts) > 2:
        out["reg_strength"] = float(parts[2])
    return out


def operating_point(logits, labels, max_lost_fraction: float = 0.01) -> dict:
    """Largest epsilon of the sweep whose accuracy is at most ``max_lost_fraction`` of the samples
    (at least one sample) below full T."""
    n = len(labels)
    max_lost = max(1, int(np.floor(max_lost_fraction * n + 1e-9)))
    full = float((np.asarray(logits).sum(0).argmax(-1) == labels).mean())
    best = evaluate_policy(ConfidenceCutoff(0.0), logits, labels)
    for eps in sorted(EPSILON_SWEEP):
        r = evaluate_policy(ConfidenceCutoff(eps), logits, labels)
        if r["accuracy"] >= full - max_lost / n - 1e-12:
            best = r
    return best


def t_quantile_975(df: int) -> float:
    """Student's t 97.5 % quantile (two-sided 95 % interval): exact table to 10 degrees of freedom,
    the Cornish-Fisher expansion beyond (error < 1e-3 there)."""
    table = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
    if df <= len(table):
        return table[df - 1]
    z = 1.959964
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def half_interval(values) -> float:
    """Half the width of the 95 % interval of the mean of ``values`` (Student's t; at least 2 values)."""
    v = np.asarray(values, dtype=float)
    return t_quantile_975(v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)


def run_one(method: str, seed: int, args) -> dict:
    tag = method.replace(":", "-") + f"-s{seed}"
    out_json = args.out / "runs" / f"{tag}.json"
    if out_json.exists() and not args.force:
        return json.loads(out_json.read_text())
    spec = parse_method(method)
    ckpt = args.out / "ckpt" / f"{tag}.pt"
    t0 = time.perf_counter()
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    if ckpt.exists() and not args.force:  # trained before, evaluation missing
        meta = load_checkpoint(ckpt)[1]
    elif set(spec) == {"reg"}:
        # exactly `streamsnn train --data DIR --recipe NAME --reg R [--seed S] --out CKPT`
        argv = ["train", "--data", str(args.data), "--dataset", args.dataset, "--recipe", args.recipe,
                "--reg", spec["reg"], "--seed", str(seed), "--out", str(ckpt), "--no-progress"]
        for flag, value in (("--timesteps", args.timesteps), ("--epochs", args.epochs), ("--cache", args.cache),
                            ("--input-size", args.input_size), ("--batch-size", args.batch_size)):
            if value:
                argv += [flag, str(value)]
        if cli_main(argv) != 0:
            raise SystemExit(f"training failed: streamsnn {' '.join(argv)}")
        meta = load_checkpoint(ckpt)[1]
    else:
        hw = tuple(int(v) for v in args.input_size.lower().split("x")) if args.input_size else None
        cfg = train_config(args.recipe, dataset=args.dataset, timesteps=args.timesteps, seed=seed,
                           epochs=args.epochs, batch_size=args.batch_size, input_hw=hw, **spec)
        meta = train(args.data, ckpt, cfg, cache=args.cache, progress=False,
                     command=f"python tools/ablation.py --recipe {args.recipe} --methods {method} --seeds {seed}",
                     report_test=False)
    wall = time.perf_counter() - t0
    report, logits, labels = evaluate_checkpoint(ckpt, args.data, "Test", args.cache, progress=False)
    np.save(args.out / "runs" / f"{tag}-logits.npy", logits)
    op = operating_point(logits, labels)
    train_op = None
    if args.select_on_train:
        _, train_logits, train_labels = evaluate_checkpoint(ckpt, args.data, "Train", args.cache, progress=False)
        train_op = operating_point(train_logits, train_labels)
    result = {"method": method, "seed": seed, "command": meta.get("command"), "cutoff_epsilon": meta["cutoff"]["epsilon"], "train_seconds": meta["train_seconds"], "wall_seconds": round(wall, 1),
              "train_accuracy": meta["train_accuracy"], "full_accuracy": report["full_accuracy"],
              "per_timestep_accuracy": report["per_timestep_accuracy"],
              "oracle_mean_timesteps": report["oracle_mean_timesteps"],
              "checkpoint_cutoff": report["checkpoint_cutoff"], "lose_at_most_1pct": op,
              "train_lose_at_most_1pct": train_op,
              "sweep": [e for e in report["cutoff"] if e["policy"] == "confidence"]}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1))
    return result


def summarise(results: list[dict], methods) -> tuple[str, dict]:
    rows = ["| method | full-T accuracy | cutoff losing <= 1 %: mean timesteps | 95 % interval | accuracy there | "
            "stored cutoff (ε from Train): mean timesteps | 95 % interval | accuracy there | oracle mean timesteps | "
            "seeds |", "|---|---|---|---|---|---|---|---|---|---|"]
    summary = {}

    def ms(values, scale=1.0, fmt="{:.2f}"):
        v = np.asarray(values, dtype=float) * scale
        return (fmt + " ± " + fmt).format(v.mean(), v.std(ddof=1) if v.size > 1 else 0.0)

    def ci(values):
        v = np.asarray(values, dtype=float)
        if v.size < 2:
            return "—"
        half = half_interval(v)
        return f"[{v.mean() - half:.2f}, {v.mean() + half:.2f}]"

    for method in methods:
        rs = [r for r in results if r["method"] == method]
        if not rs:
            continue
        name = label(method)
        s = {
            "full_accuracy": [r["full_accuracy"] for r in rs],
            "op_mean_timesteps": [r["lose_at_most_1pct"]["mean_timesteps"] for r in rs],
            "op_accuracy": [r["lose_at_most_1pct"]["accuracy"] for r in rs],
            "op_epsilon": [r["lose_at_most_1pct"]["epsilon"] for r in rs],
            "ckpt_mean_timesteps": [r["checkpoint_cutoff"]["mean_timesteps"] for r in rs],
            "ckpt_accuracy": [r["checkpoint_cutoff"]["accuracy"] for r in rs],
            "oracle": [r["oracle_mean_timesteps"] for r in rs],
            "seeds": [r["seed"] for r in rs],
            "train_seconds": [r["train_seconds"] for r in rs],
        }
        summary[method] = s
        rows.append(f"| {name} | {ms(s['full_accuracy'], 100, '{:.1f}')} % | {ms(s['op_mean_timesteps'])} | "
                    f"{ci(s['op_mean_timesteps'])} | {ms(s['op_accuracy'], 100, '{:.1f}')} % | "
                    f"{ms(s['ckpt_mean_timesteps'])} | {ci(s['ckpt_mean_timesteps'])} | "
                    f"{ms(s['ckpt_accuracy'], 100, '{:.1f}')} % | {ms(s['oracle'])} | {len(rs)} |")
    return "\n".join(rows), summary


def paired_differences(results, methods, baseline: str = "none") -> tuple[str, dict]:
    """Per method, its mean timesteps minus the baseline's in the same seed (the seeds pair the runs:
    same data order, same initial weights), at "<= 1 % lost" on Test, at the stored cutoff, and at
    "<= 1 % lost" on Train where measured: mean and 95 % interval (Student's t). A method needs fewer
    timesteps than the baseline beyond the seeds' noise when the whole interval is below 0."""
    base = {r["seed"]: r for r in results if r["method"] == baseline}
    measures = (("Test, <= 1 % lost", lambda r: r["lose_at_most_1pct"]["mean_timesteps"]),
                ("Test, stored cutoff", lambda r: r["checkpoint_cutoff"]["mean_timesteps"]),
                ("Train, <= 1 % lost", lambda r: (r.get("train_lose_at_most_1pct") or {}).get("mean_timesteps")))
    rows = ["| method − " + label(baseline) + " (same seed) | " +
            " | ".join(f"{name}: mean difference [95 % interval]" for name, _ in measures) + " | seeds |",
            "|---|" + "---|" * len(measures) + "---|"]
    out = {}
    for method in methods:
        if method == baseline:
            continue
        pairs = [(r, base[r["seed"]]) for r in results if r["method"] == method and r["seed"] in base]
        if not pairs:
            continue
        cells, out[method] = [], {}
        for name, value in measures:
            d = np.array([value(r) - value(b) for r, b in pairs
                          if value(r) is not None and value(b) is not None], dtype=float)
            if d.size < 2:
                cells.append("—")
                continue
            half = half_interval(d)
            out[method][name] = {"mean": float(d.mean()), "low": float(d.mean() - half),
                                 "high": float(d.mean() + half), "per_seed": d.tolist()}
            cells.append(f"{d.mean():+.2f} [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}]")
        rows.append(f"| {label(method)} | " + " | ".join(cells) + f" | {len(pairs)} |")
    return "\n".join(rows), out


def rank_on_train(results) -> list:
    """(method, mean training-split timesteps at <= 1 % lost), fewest first."""
    by_method = {}
    for r in results:
        if r.get("train_lose_at_most_1pct"):
            by_method.setdefault(r["method"], []).append(r["train_lose_at_most_1pct"]["mean_timesteps"])
    return sorted(((m, float(np.mean(v))) for m, v in by_method.items()), key=lambda item: item[1])


def plot(results, methods, path, timesteps, title=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for i, method in enumerate(methods):
        rs = [r for r in results if r["method"] == method]
        if not rs:
            continue
        color = f"C{i}"
        name = label(method)
        per_t = 100 * np.mean([r["per_timestep_accuracy"] for r in rs], axis=0)
        axes[0].plot(range(1, timesteps + 1), per_t, "o--", color=color, ms=3, label=f"{name}, fixed t")
        eps = sorted({e["epsilon"] for e in rs[0]["sweep"]})
        xs, ys = [], []
        for e in eps:
            pts = [next(p for p in r["sweep"] if p["epsilon"] == e) for r in rs]
            xs.append(np.mean([p["mean_timesteps"] for p in pts]))
            ys.append(100 * np.mean([p["accuracy"] for p in pts]))
        axes[0].plot(xs, ys, "s-", color=color, ms=3, label=f"{name}, confidence cutoff")
        axes[1].plot(xs, [100 * np.mean([r["full_accuracy"] for r in rs]) - y for y in ys], "s-", color=color,
                     ms=3, label=name)
    axes[0].set_xlabel("mean timesteps per sample")
    axes[0].set_ylabel("Test accuracy (%), mean over seeds")
    axes[0].set_xlim(0.8, timesteps + 0.2)
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    axes[1].axhline(1.0, color="0.5", ls=":", lw=1)
    axes[1].set_xlabel("mean timesteps per sample (confidence cutoff sweep)")
    axes[1].set_ylabel("accuracy lost against full T (points)")
    axes[1].set_xlim(0.8, timesteps + 0.2)
    axes[1].grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def add_run_options(p) -> None:
    """Options shared with tools/reproduce_paper.py: where the data is and what every run trains."""
    p.add_argument("--data", default="../shared/data/nmnist_small")
    p.add_argument("--dataset", default="nmnist")
    p.add_argument("--recipe", default=None, help="named recipe (default: the dataset's)")
    p.add_argument("--cache", default=None)
    p.add_argument("--timesteps", type=int, default=None, help="default: the recipe's")
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--input-size", default=None, metavar="HxW", help="default: the recipe's")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    p.add_argument("--select-on-train", action="store_true",
                   help="also measure the <= 1 %% lost point on the training split and rank the methods by it")


def resolve_run_options(args) -> int:
    """Fill the recipe name; returns T of the runs."""
    args.recipe = args.recipe or args.dataset
    return args.timesteps or find_recipe(args.recipe).timesteps


def run_all(args, methods, seeds) -> list[dict]:
    results = []
    for seed in seeds:
        for method in methods:
            r = run_one(method, seed, args)
            results.append(r)
            print(f"{method:>12} seed {seed}: full {r['full_accuracy']:.3f}, <=1 % lost: "
                  f"{r['lose_at_most_1pct']['mean_timesteps']:.2f} steps at {r['lose_at_most_1pct']['accuracy']:.3f} "
                  f"(eps {r['lose_at_most_1pct']['epsilon']:g}); stored eps: "
                  f"{r['checkpoint_cutoff']['mean_timesteps']:.2f} steps at {r['checkpoint_cutoff']['accuracy']:.3f} "
                  f"({r['train_seconds']:.0f} s training)", flush=True)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p)
    p.add_argument("--out", type=Path, default=Path("out/ablation"))
    p.add_argument("--methods", nargs="+", default=["none", "rcs", "str"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--plot", default=None, help="PNG path (default OUT/ablation.png)")
    args = p.parse_args(argv)
    timesteps = resolve_run_options(args)
    configure_threads()
    results = run_all(args, args.methods, args.seeds)
    order = sorted(args.methods, key=lambda m: (["none", "rcs", "str"].index(m) if m in LABELS else 3, m))
    table, summary = summarise(results, order)
    differences, summary["paired_differences"] = paired_differences(results, order)
    table += "\n\n" + differences
    print(table)
    if args.select_on_train:
        ranking = rank_on_train(results)
        print("ranked on Train (mean timesteps at <= 1 % lost, mean over seeds):")
        for method, steps in ranking:
            print(f"  {method}: {steps:.3f}")
        summary["ranking_on_train"] = ranking
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    r = find_recipe(args.recipe)
    title = f"{args.dataset}, recipe {args.recipe}: T = {timesteps} x {r.time_window / 1000:g} ms"
    plot(results, order, args.plot or (args.out / "ablation.png"), timesteps, title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
