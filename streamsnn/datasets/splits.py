"""The held-out split of datasets that ship without one (CIFAR10-DVS, N-Caltech101).

The field's rule: a seeded split stratified by class, 9 parts training to 1 part test. The test files
(relative paths) are stored in the checkpoint, so that evaluation uses exactly the held-out samples
even if the folder gains files later.
"""
from __future__ import annotations

import numpy as np

TEST_FRACTION = 0.1


def stratified_split(labels, test_fraction: float = TEST_FRACTION, seed: int = 0):
    """(train_indices, test_indices), both sorted: in every class ``round(test_fraction * n_class)``
    samples (at least 1 when the class has 2 or more) go to test, chosen by a seeded permutation."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n_test = int(round(test_fraction * members.size))
        if members.size >= 2:
            n_test = min(max(n_test, 1), members.size - 1)
        else:
            n_test = 0
        test.extend(rng.permutation(members)[:n_test].tolist())
    test = np.sort(np.asarray(test, dtype=np.int64))
    train = np.setdiff1d(np.arange(labels.size), test)
    return train, test
