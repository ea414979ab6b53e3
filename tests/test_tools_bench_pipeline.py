"""tools/bench_pipeline.py --passes: the split every stream replays, each sample K times."""
import pytest

from conftest import load_tool
from streamsnn.datasets import bundled_nmnist_root
from streamsnn.io.folder import SampleFolder


@pytest.fixture(scope="module")
def bench():
    return load_tool("bench_pipeline")


def test_repeated_split_holds_every_sample_k_times_in_pass_order(bench, tmp_path):
    source = SampleFolder(bundled_nmnist_root(), "Test")
    root = bench.repeated_split(bundled_nmnist_root(), 3, tmp_path)
    repeated = SampleFolder(root, "Test")
    assert repeated.classes == source.classes
    assert len(repeated.samples) == 3 * len(source.samples)
    originals = sorted((s.class_name, s.path.name) for s in source.samples)
    for k in range(3):
        this_pass = sorted((s.class_name, s.path.name.split("_", 1)[1]) for s in repeated.samples
                           if s.path.name.startswith(f"p{k}_"))
        assert this_pass == originals
    for sample in repeated.samples:
        assert sample.path.resolve() == (source.root / "Test" / sample.class_name
                                         / sample.path.name.split("_", 1)[1]).resolve()
    # within a class, pass 0's samples come first, then pass 1's, ...
    first_class = [s.path.name for s in repeated.samples if s.class_name == repeated.samples[0].class_name]
    passes = [int(name[1:name.index("_")]) for name in first_class]
    assert passes == sorted(passes)
