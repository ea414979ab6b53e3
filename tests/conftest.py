"""Fixtures, markers and the figures every test agrees on.

Two kinds of input:
- bundled or generated: the N-MNIST Test split that ships in the package (``nmnist_root``),
  files the tests write with the project's own writers. These run everywhere, a bare clone too.
- the real third-party recordings in ``../shared/data`` (or ``$STREAMSNN_TEST_DATA``), which are
  never redistributed. Tests that use them (through the ``data_root``, ``recordings`` or
  ``nmnist_full_root`` fixtures, or marked ``requires_data``) skip with a reason when the folder is
  absent, and the whole run fails instead when ``STREAMSNN_REQUIRE_DATA=1`` (as ``.ci/run`` sets).
"""
from __future__ import annotations

import math
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "STREAMSNN_TEST_DATA"
REQUIRE_ENV = "STREAMSNN_REQUIRE_DATA"
DATA_FIXTURES = {"data_root", "recordings", "nmnist_full_root"}

# The figures of ../shared/data/README.md, verified there by two independent decoders:
# name -> (format, sensor size, event count, first t, last t). None where the README gives no figure.
RECORDINGS = {
    "evt2_gen3_sample.raw": ("evt2", (640, 480, 2), 539_481, 1_317_888, 1_367_888),
    "evt2_gen3_sparklers.raw": ("evt2", (640, 480, 2), 521_252, 913_716_224, 913_812_095),
    "evt3_gen41_sample.raw": ("evt3", (1280, 720, 2), 219_596, 11_718_656, 11_727_457),
    "evt3_gen41_pedestrians.raw": ("evt3", (1280, 720, 2), 5_000, 5_840_504, 5_885_714),
    "dat_ncars_car.dat": ("dat", None, 4_407, 0, 99_937),
    "dat_ncars_sample.dat": ("dat", None, 2_009, 0, 99_952),
    "aedat4_dvxplorer_sample.aedat4": ("aedat4", (320, 240, 2), 111_954, None, None),
    "nmnist_sample.bin": ("atis_bin", (34, 34, 2), 4_325, 654, 311_175),
    "aedat2_dvs128_walking.aedat": ("aedat2", (128, 128, 2), 125_028, None, None),
    "aedat2_dvs128_walking2.aedat": ("aedat2", (128, 128, 2), 70_304, None, None),
    "atis40_dvs128_clip1.bin": ("atis_bin", (128, 128, 2), 63_471, None, None),
    "atis40_dvs128_clip2.bin": ("atis_bin", (128, 128, 2), 84_260, None, None),
    "atis40_dvs128_clip3.bin": ("atis_bin", (128, 128, 2), 113_063, None, None),
    "atis40_dvs128_clip4.bin": ("atis_bin", (128, 128, 2), 151_879, None, None),
    "atis40_dvs128_clip5.bin": ("atis_bin", (128, 128, 2), 181_179, None, None),
}
# Parameters (and tests) that read the real recordings: skipped without the data folder.
REAL = pytest.mark.requires_data
# The bundled split: 100 samples of N-MNIST Test; samples per class 0..9.
BUNDLED_TEST_CLASS_COUNTS = (8, 14, 8, 11, 14, 7, 10, 15, 2, 11)


def data_folder() -> Path:
    return Path(os.environ.get(DATA_ENV, REPO_ROOT.parent / "shared" / "data")).resolve()


def data_available() -> bool:
    return (data_folder() / "recordings").is_dir()


def data_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def load_tool(name: str):
    """``tools/<name>.py`` as a module (the tools are scripts beside the package, not part of it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_tool", REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port nobody listens on right now, on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_configure(config):
    config.addinivalue_line("markers", f"requires_data: needs the real recordings in ${DATA_ENV}")


def pytest_sessionstart(session):
    if data_required() and not data_available():
        pytest.exit(f"{REQUIRE_ENV} is set but the test data folder {data_folder()} is missing "
                    f"(it must hold recordings/ and nmnist_small/; set {DATA_ENV})", returncode=1)


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason=f"needs the real recordings: {data_folder()} not found; "
                                   f"set {DATA_ENV} to the folder holding recordings/ and nmnist_small/")
    for item in items:
        if DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.requires_data)
        if item.get_closest_marker("requires_data") and not data_available():
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = data_folder()
    if not (root / "recordings").is_dir():
        pytest.fail(f"test data not found at {root}; set {DATA_ENV}")
    return root


@pytest.fixture(scope="session")
def recordings(data_root) -> Path:
    return data_root / "recordings"


@pytest.fixture(scope="session")
def nmnist_full_root(data_root) -> Path:
    """The labelled N-MNIST subset of the data folder: Train (1,000) and Test (100)."""
    return data_root / "nmnist_small"


@pytest.fixture(scope="session")
def nmnist_root(tmp_path_factory) -> Path:
    """The N-MNIST Test split bundled in the package (100 samples), extracted as a user's first run would."""
    from streamsnn.datasets import bundled_nmnist_root

    return bundled_nmnist_root(cache=tmp_path_factory.mktemp("streamsnn-cache"))


def split_dataset(root: Path, nmnist_root: Path, *, classes=None, train_share: float = 2 / 3,
                  train_limit: int | None = None) -> Path:
    """A Train/Test dataset made of the bundled Test samples (symlinks): the first ``train_share`` of
    each class (at most ``train_limit``) go to Train, the rest to Test, so the two never overlap."""
    for folder in sorted((nmnist_root / "Test").iterdir()):
        if classes is not None and folder.name not in classes:
            continue
        files = sorted(folder.glob("*.bin"))
        n_train = min(len(files) - 1, max(1, math.ceil(len(files) * train_share)))
        if train_limit is not None:
            n_train = min(n_train, train_limit)
        for split, chosen in (("Train", files[:n_train]), ("Test", files[n_train:])):
            target = root / split / folder.name
            target.mkdir(parents=True, exist_ok=True)
            for f in chosen:
                (target / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="session")
def nmnist_split(nmnist_root, tmp_path_factory) -> Path:
    """Train and Test folders made of the bundled split, for training end to end on a bare clone."""
    return split_dataset(tmp_path_factory.mktemp("nmnist_split"), nmnist_root)


def copy_sample(nmnist_root: Path, target: Path, index: int = 0) -> Path:
    """One bundled N-MNIST sample copied to ``target`` (a file tests may damage)."""
    source = sorted((nmnist_root / "Test").glob("*/*.bin"))[index]
    shutil.copyfile(source, target)
    return target


def decision_message(seq: int, stream: str = "s") -> dict:
    """A decision message of the schema, as a job would publish it."""
    return {"schema": 1, "stream": stream, "seq": seq, "label": 1, "confidence": 0.9, "timesteps": 3,
            "max_timesteps": 10, "window_start_us": 0, "window_end_us": 1000, "published_ns": time.time_ns(),
            "latency_ms": 0.1}


# CI runs the property tests on a fixed sequence of examples, so a landing does not hinge on a
# random draw; a developer's run (no CI variable) keeps exploring new examples every time.
if os.environ.get("CI"):
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, print_blob=True)
    settings.load_profile("ci")
