"""tools/ablation.py: the operating point and the interval it reports."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def ablation():
    path = Path(__file__).resolve().parents[1] / "tools" / "ablation.py"
    spec = importlib.util.spec_from_file_location("ablation_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
