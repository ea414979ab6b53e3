import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    return Path(os.environ.get("STREAMSNN_TEST_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _data_root()
    if not (root / "recordings").is_dir():
        pytest.fail(f"test data not found at {root}; set STREAMSNN_TEST_DATA")
    return root


@pytest.fixture(scope="session")
def recordings(data_root) -> Path:
    return data_root / "recordings"


@pytest.fixture(scope="session")
def nmnist_root(data_root) -> Path:
    return data_root / "nmnist_small"


# CI runs the property tests on a fixed sequence of examples, so a landing does not hinge on a
# random draw; a developer's run (no CI variable) keeps exploring new examples every time.
if os.environ.get("CI"):
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, print_blob=True)
    settings.load_profile("ci")
