"""TET, RCS and STR on tiny tensors, against values worked out by hand."""
import math

import pytest
import torch

from streamsnn.snn.state import LIFTrace
from streamsnn.training.losses import rcs_loss, str_loss, tet_loss


def _trace(s, u_post, current=None):
    s = torch.tensor(s, dtype=torch.float32)
    u_post = torch.tensor(u_post, dtype=torch.float32)
    current = torch.zeros_like(s) if current is None else torch.tensor(current, dtype=torch.float32)
    return LIFTrace("lif", current, current, s, u_post, 0.5, 1.0)


def test_tet_by_hand():
    o = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]]])  # (T=2, N=1, K=2)
    y = torch.tensor([0])
    ce = (math.log(2) + math.log(1 + math.exp(-1))) / 2
    mse = (1 + 1 + 0 + 1) / 4
    assert float(tet_loss(o, y)) == pytest.approx(0.999 * ce + 0.001 * mse, rel=1e-6)


def test_rcs_by_hand():
    # T = 2 -> floor(0.3 * 2) = 0 -> r_d is the mean over all T. One layer, two neurons, two samples.
    # sample 0: r(1) = r(2) = [1, 0.5]  -> cos = 1      -> RCS = 1 / (1 + 1e-5)
    # sample 1: r(1) = [1, 0], r(2) = [0, 1], r_d = [.5, .5] -> cos = 1/sqrt(2) -> RCS = 1 / (0.70711 + 1e-5)
    s = [[[1, 0], [1, 0]], [[1, 0], [0, 1]]]            # (T, N, D)
    u_post = [[[0, 0.5], [0, 0]], [[0, 0.5], [0, 0]]]
    tr = _trace(s, u_post)
    y = torch.tensor([0, 0])
    both_right = torch.tensor([[[2.0, 0.0], [2.0, 0.0]]] * 2)
    assert float(rcs_loss([tr], both_right, y)) == pytest.approx(1 / (1 / math.sqrt(2) + 1e-5), rel=1e-5)
    # sample 1 wrong at the last timestep -> only sample 0 counts
    one_wrong = both_right.clone()
    one_wrong[1, 1] = torch.tensor([0.0, 2.0])
    assert float(rcs_loss([tr], one_wrong, y)) == pytest.approx(1 / (1 + 1e-5), rel=1e-5)
    # nobody right -> 0; two identical layers -> same mean
    assert float(rcs_loss([tr], -both_right, y)) == 0.0
    assert float(rcs_loss([tr, tr], both_right, y)) == pytest.approx(1 / (1 / math.sqrt(2) + 1e-5), rel=1e-5)


def test_rcs_reference_window_is_the_last_30_percent():
    # T = 4 -> floor(1.2) = 1: r_d = r(4) only
    s = [[[1.0, 0.0]], [[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]]
    tr = _trace(s, [[[0.0, 0.0]]] * 4)
    o = torch.tensor([[[1.0, 0.0]]] * 4)
    # cos with r_d = [0, 1]: 0, 0, 0, 1 -> mean 0.25
    assert float(rcs_loss([tr], o, torch.tensor([0]))) == pytest.approx(1 / (0.25 + 1e-5), rel=1e-5)


def test_str_deferral_by_hand():
    # one timestep, three neurons: s = [1, 0, 0], u_post = [0, 0.5, 0.25]
    # deferred share = 0.75 / (1 + 0.75)
    tr = _trace([[[1.0, 0.0, 0.0]]], [[[0.0, 0.5, 0.25]]])
    assert float(str_loss([tr], "deferral")) == pytest.approx(0.75 / 1.75, rel=1e-5)
    # negative membrane is not deferred activity
    tr2 = _trace([[[1.0, 0.0]]], [[[0.0, -0.5]]])
    assert float(str_loss([tr2], "deferral")) == pytest.approx(0.0, abs=1e-6)


def test_str_stf_by_hand():
    # t=1: I = [0.6, 0.2], no spikes -> u_post = [0.6, 0.2]; temporal part 0 -> share 0
    # t=2: I = [0.1, 0.1], temporal = 0.5 * [0.6, 0.2] -> share 0.4 / (0.2 + 0.4)
    tr = _trace([[[0.0, 0.0]], [[0.0, 0.0]]], [[[0.6, 0.2]], [[0.4, 0.2]]], current=[[[0.6, 0.2]], [[0.1, 0.1]]])
    assert float(str_loss([tr], "stf")) == pytest.approx((0 + 0.4 / 0.6) / 2, rel=1e-5)


def test_str_l2_by_hand():
    # one timestep, three neurons: u = [1.5, 0.3, 0.4], the first fires -> tied = [1.5, 0, 0], residual [0, 0.3, 0.4]
    u = torch.tensor([[[1.5, 0.3, 0.4]]])
    s = torch.tensor([[[1.0, 0.0, 0.0]]])
    tr = LIFTrace("lif", u, u, s, u * (1 - s), 0.5, 1.0)
    assert float(str_loss([tr], "l2")) == pytest.approx(0.5 / (1.5 + 0.5), rel=1e-5)
    silent = LIFTrace("lif", u, u, torch.zeros_like(s), u, 0.5, 1.0)
    assert float(str_loss([silent], "l2")) == pytest.approx(1.0, rel=1e-5)


def test_str_unknown_variant():
    with pytest.raises(ValueError, match="unknown STR variant"):
        str_loss([_trace([[[1.0]]], [[[0.0]]])], "nope")


def test_regularisers_give_gradients_to_the_weights():
    from streamsnn.snn import build_model

    torch.manual_seed(0)
    model = build_model("nmnist")
    x = torch.poisson(torch.full((3, 16, 2, 34, 34), 1.0))
    for name in ("str", "str:l2", "rcs"):
        model.zero_grad()
        logits, traces = model(x, return_traces=True)
        if name == "rcs":
            # RCS only weighs samples predicted right at each of its last timesteps (none: loss 0, no
            # gradient, by definition): the tail is the last timestep alone, the targets the untrained
            # model's own predictions there.
            y = logits.detach()[-1].argmax(-1)
            loss = rcs_loss(traces, logits, y, tail=0.34)
        else:
            loss = str_loss(traces, *name.split(":")[1:])
        loss.backward()
        grad = model.body.conv1.weight.grad
        assert grad is not None and torch.isfinite(grad).all()
        assert grad.abs().sum() > 0, f"{name}: the regulariser gives the first layer no gradient at all"
