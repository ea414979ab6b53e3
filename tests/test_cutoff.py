"""Cutoff policies: hand-checked decisions, offline == online, calibration, anytime measures."""
import numpy as np
import pytest

from streamsnn.cutoff import (ConfidenceCutoff, Decision, TopKCutoff, evaluate_policy, max_softmax,
                              oracle_timesteps, per_timestep_accuracy, policy_from_meta, update_rows)
from streamsnn.errors import ConfigError


def _logits():
    # T = 3, N = 3, K = 2
    return np.array([
        [[4.0, 0.0], [0.5, 0.0], [0.0, 0.1]],
        [[0.0, 0.0], [3.0, 0.0], [0.0, 0.1]],
        [[0.0, 0.0], [0.0, 0.0], [0.0, 0.1]],
    ])


def test_confidence_cutoff_by_hand():
    # Y(1) = [4, 0] -> p = 1/(1 + e^-4) = 0.982 > 0.95: exits at t = 1
    # sample 1: p(Y(1)) = 0.622, p(Y(2)) = p([3.5, 0]) = 0.971 -> t = 2
    # sample 2: never above 0.95 -> forced at T = 3 with label 1
    labels, steps, conf = ConfidenceCutoff(0.05).decide(_logits())
    assert labels.tolist() == [0, 0, 1]
    assert steps.tolist() == [1, 2, 3]
    assert conf[0] == pytest.approx(1 / (1 + np.exp(-4)))
    assert conf[2] == pytest.approx(1 / (1 + np.exp(-0.3)))


def test_topk_cutoff_by_hand():
    labels, steps, _ = TopKCutoff([3.0, 3.0, 3.0]).decide(_logits())
    assert steps.tolist() == [1, 2, 3] and labels.tolist() == [0, 0, 1]
    # per-timestep betas: beta_1 = 5 keeps sample 0 in until t = 2
    _, steps, _ = TopKCutoff([5.0, 1.0]).decide(_logits())
    assert steps.tolist() == [2, 2, 3]


@pytest.mark.parametrize("seed", range(6))
def test_offline_equals_online(seed):
    rng = np.random.default_rng(seed)
    T, N, K = 8, 40, 5
    logits = rng.normal(0, 1.5, (T, N, K)) + (rng.random((1, N, K)) < 0.2) * rng.normal(1, 1, (1, N, K))
    for policy in (ConfidenceCutoff(0.1), ConfidenceCutoff(0.01), ConfidenceCutoff(0.0),
                   TopKCutoff(rng.uniform(0, 4, T)), TopKCutoff([2.0])):
        labels, steps, conf = policy.decide(logits)
        for n in range(N):
            stream = policy.online(max_timesteps=T)
            decision = None
            for t in range(T):
                decision = stream.update(logits[t, n])
                if decision is not None:
                    break
            assert isinstance(decision, Decision)
            assert (decision.label, decision.timesteps) == (labels[n], steps[n])
            assert decision.confidence == conf[n]
            assert decision.forced == (not bool(policy.fires(np.cumsum(logits[:, n], 0)[steps[n] - 1][None], steps[n])[0]))
            assert stream.update(logits[0, n]) is None  # decided: quiet until reset
            assert stream.finish() == decision
            stream.reset()
            assert stream.t == 0 and not stream.decided


def test_online_finish_forces_early_and_reset():
    policy = ConfidenceCutoff(1e-9)
    stream = policy.online()  # no max_timesteps: only finish() forces
    assert stream.update([0.1, 0.0]) is None
    assert stream.update([0.1, 0.0]) is None
    d = stream.finish()
    assert d.forced and d.timesteps == 2 and d.label == 0
    stream.reset()
    with pytest.raises(ConfigError):
        stream.finish()


def test_calibration():
    rng = np.random.default_rng(0)
    T, N, K = 6, 200, 4
    labels = rng.integers(0, K, N)
    logits = rng.normal(0, 1, (T, N, K))
    logits[:, np.arange(N), labels] += 1.0
    full = per_timestep_accuracy(logits, labels)[-1]
    policy = ConfidenceCutoff.calibrate(logits, labels, max_drop=0.0)
    acc = evaluate_policy(policy, logits, labels)["accuracy"]
    assert acc >= full - 1e-12
    larger = [e for e in (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5) if e > policy.epsilon]
    for e in larger:  # every larger epsilon of the sweep loses samples
        assert evaluate_policy(ConfidenceCutoff(e), logits, labels)["accuracy"] < full
    topk = TopKCutoff.calibrate(logits, labels, quantile=1.0)
    assert topk.betas.shape == (T,)
    Y = np.cumsum(logits, 0)
    for t in range(T):  # no calibration sample that is wrong at t exits at t
        wrong = Y[t].argmax(-1) != labels
        part = np.sort(Y[t][wrong], -1)
        assert np.all(part[:, -1] - part[:, -2] <= topk.betas[t] + 1e-12)


def test_anytime_measures_and_meta():
    logits = _logits()
    labels = np.array([0, 0, 0])
    assert per_timestep_accuracy(logits, labels) == [pytest.approx(2 / 3)] * 3
    assert oracle_timesteps(logits, labels).tolist() == [1, 1, 3]
    assert isinstance(policy_from_meta({"policy": "confidence", "epsilon": 0.1}), ConfidenceCutoff)
    assert isinstance(policy_from_meta({"policy": "topk", "beta": [1.0, 2.0]}), TopKCutoff)
    with pytest.raises(ConfigError):
        policy_from_meta({"policy": "magic"})
    with pytest.raises(ConfigError):
        ConfidenceCutoff(1.5)
    assert max_softmax(np.array([[0.0, 0.0]]))[0] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(4))
def test_rows_updated_together_decide_as_each_stream_alone(seed):
    # the streaming job runs the cutoff for a batch's rows at once; streams that joined at other times
    # (other t), stopped early (max_timesteps), and two policies share the batch
    rng = np.random.default_rng(seed)
    T, N, K = 10, 24, 10
    logits = rng.normal(0, 1.5, (T, N, K)).astype(np.float32)
    policies = [ConfidenceCutoff(0.05), TopKCutoff(rng.uniform(0, 4, T))]
    joined = rng.integers(0, 4, N)
    def make(n):
        return policies[n % 2].online(max_timesteps=int(rng.integers(2, T + 1)))
    together = [make(n) for n in range(N)]
    alone = [policies[n % 2].online(together[n].max_timesteps) for n in range(N)]
    for step in range(T + 4):
        rows = [n for n in range(N) if 0 <= step - joined[n] < T]
        if not rows:
            continue
        got = update_rows([together[n] for n in rows], np.stack([logits[step - joined[n], n] for n in rows]))
        for n, decision in zip(rows, got):
            assert decision == alone[n].update(logits[step - joined[n], n])
    assert all(c.decided for c in together) and [c.decision for c in together] == [c.decision for c in alone]
    for n, cutoff in enumerate(together):  # and as offline decide (each timestep's own fires) on that stream
        labels, steps, confidences = policies[n % 2].decide(logits[:cutoff.max_timesteps, n:n + 1])
        assert (cutoff.decision.label, cutoff.decision.timesteps) == (labels[0], steps[0])
        assert cutoff.decision.confidence == confidences[0]
