"""tools/ablation.py: the operating point and the interval it reports."""
import numpy as np
import pytest

from conftest import load_tool


@pytest.fixture(scope="module")
def ablation():
    return load_tool("ablation")


def test_t_quantile(ablation):
    assert ablation.t_quantile_975(4) == 2.776
    assert ablation.t_quantile_975(30) == pytest.approx(2.042, abs=1e-3)
    assert ablation.t_quantile_975(11) == pytest.approx(2.201, abs=1e-3)


def test_operating_point_allows_one_percent(ablation):
    # 200 samples, T = 2: at t = 1 three samples are wrong (1.5 %), two of them (1 %) stay wrong if stopped
    labels = np.zeros(200, dtype=np.int64)
    logits = np.zeros((2, 200, 2))
    logits[:, :, 0] = 5.0  # confident and right at t = 1
    logits[0, :2, :] = [0.0, 5.0]  # confident and wrong at t = 1, right at t = 2
    logits[1, :2, :] = [20.0, 0.0]
    op = ablation.operating_point(logits, labels, 0.01)
    assert op["accuracy"] == pytest.approx(0.99) and op["mean_timesteps"] == pytest.approx(1.0)
    strict = ablation.operating_point(logits, labels, 0.004)  # at least one sample may be lost: still 2 > 1
    assert strict["accuracy"] == pytest.approx(1.0) and strict["mean_timesteps"] > 1.0


def test_paired_differences_pair_runs_by_seed(ablation):
    def run(method, seed, test_steps, stored_steps, train_steps=None):
        return {"method": method, "seed": seed, "lose_at_most_1pct": {"mean_timesteps": test_steps},
                "checkpoint_cutoff": {"mean_timesteps": stored_steps},
                "train_lose_at_most_1pct": None if train_steps is None else {"mean_timesteps": train_steps}}

    results = [run("none", 0, 5.0, 6.0, 4.0), run("none", 1, 3.0, 5.0, 4.5), run("none", 2, 4.0, 5.5, 4.2),
               # STR: one timestep fewer than TET in every seed at <= 1 % lost, a constant difference
               run("str", 2, 3.0, 5.0, 4.0), run("str", 0, 4.0, 6.5, 3.5), run("str", 1, 2.0, 4.0, 4.4),
               run("rcs", 0, 6.0, 6.0)]          # one seed only: no interval
    table, out = ablation.paired_differences(results, ["none", "rcs", "str"])
    test = out["str"]["Test, <= 1 % lost"]
    assert test["mean"] == pytest.approx(-1.0) and test["low"] == pytest.approx(-1.0) and test["high"] == pytest.approx(-1.0)
    stored = out["str"]["Test, stored cutoff"]          # differences 0.5, -1.0, -0.5: mean -1/3
    half = 4.303 * np.std([0.5, -1.0, -0.5], ddof=1) / np.sqrt(3)     # t(0.975, 2 df) = 4.303
    assert stored["mean"] == pytest.approx(-1 / 3) and stored["high"] - stored["mean"] == pytest.approx(half, rel=1e-3)
    assert sorted(out["str"]["Train, <= 1 % lost"]["per_seed"]) == pytest.approx(sorted([-0.5, -0.1, -0.2]))
    assert out["rcs"] == {} and "| TET+RCS | — | — | — | 1 |" in table
