"""Reader throughput: streamsnn against expelliarmus, on the real recordings and on large generated files.

    python tools/bench_readers.py                 # default run, about a minute or two
    python tools/bench_readers.py --events 50e6   # a bigger generated file

Every figure is the best of --repeat whole-file reads (events per second,
file already in the page cache). For RAW EVT 2.0, EVT 3.0 and DAT,
expelliarmus reads the same file in the same run; for EVT 3.0 its timestamps
are wrong (see the data README) but its speed is still the reference. "h5"
rows read the HDF5 event store (format version 2: scale-offset fields)
converted from the file above them, compared with streamsnn reading that file;
generated EVT 3.0 files of 100,000, 300,000 and 1,000,000 events show where
the store overtakes the RAW read (at least 15 reads each: small reads are
short).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streamsnn.events import EVENT_DTYPE  # noqa: E402
from streamsnn.io import convert_to_store, open_recording, read_events  # noqa: E402
from streamsnn.io.prophesee import read_with_expelliarmus, write_raw  # noqa: E402

EXPELLIARMUS_ENCODING = {"evt2": "evt2", "evt3": "evt3", "dat": "dat"}


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def synthetic_events(n: int, width: int = 1280, height: int = 720, seed: int = 0) -> np.ndarray:
    """Sensor-like events: runs of neighbouring pixels on one row firing together (as edges do),
    about 1 event per µs... 2.5 per group, spanning more than one 2**24 µs EVT 3.0 time loop."""
    rng = np.random.default_rng(seed)
    groups = int(n / 2.4) + 16
    lengths = np.minimum(rng.geometric(1 / 2.5, groups), 24)
    total = np.cumsum(lengths)
    groups = int(np.searchsorted(total, n)) + 1
    lengths = lengths[:groups]
    lengths[-1] -= int(total[groups - 1] - n)
    t = np.cumsum(rng.integers(0, 7, groups))
    y = rng.integers(0, height, groups)
    x0 = rng.integers(0, width - 24, groups)
    p = rng.integers(0, 2, groups)
    events = np.empty(n, dtype=EVENT_DTYPE)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    events["t"] = np.repeat(t, lengths)
    events["y"] = np.repeat(y, lengths)
    events["p"] = np.repeat(p, lengths)
    events["x"] = np.repeat(x0, lengths) + (np.arange(n) - starts)
    return events


def measure(label: str, path: Path, fmt: str, repeat: int, rows: list, sensor_size=None, h5_dir: Path | None = None):
    seconds, events = best_time(lambda: read_events(path, sensor_size=sensor_size), repeat)
    n = events.size
    row = {"file": label, "format": fmt, "events": n, "ours": n / seconds, "ref": None, "note": ""}
    encoding = EXPELLIARMUS_ENCODING.get(fmt)
    if encoding is not None:
        ref_seconds, ref = best_time(lambda: read_with_expelliarmus(path, encoding), repeat)
        row["ref"] = n / ref_seconds
        if fmt == "evt3":
            same = all(np.array_equal(ref[f], events[f]) for f in "xyp")
            row["note"] = "x,y,p agree; expelliarmus t wrong" if same else "x,y,p DISAGREE"
        else:
            same = all(np.array_equal(ref[f], events[f]) for f in "txyp")
            row["note"] = "identical output" if same else "OUTPUT DIFFERS"
        if fmt == "evt2":
            # read() = our structural check + expelliarmus; our own decoder alone for comparison
            from streamsnn.io.prophesee import Evt2Recording

            own_seconds, _ = best_time(lambda: Evt2Recording(path, engine="numba").read(), repeat)
            row["note"] += f"; own decoder alone {n / own_seconds / 1e6:.1f} M/s"
    rows.append(row)
    if h5_dir is not None:
        h5 = h5_dir / (path.name + ".h5")
        convert_to_store(path, h5, sensor_size=sensor_size, overwrite=True)
        h5_seconds, stored = best_time(lambda: read_events(h5), repeat)
        assert np.array_equal(stored, events), f"{h5} does not round-trip"
        rows.append({"file": "  -> " + h5.name, "format": "hdf5", "events": n, "ours": n / h5_seconds,
                     "ref": None, "note": f"{n / h5_seconds / row['ours']:.2f}x reading the {fmt} file "
                                          f"({os.path.getsize(h5) / os.path.getsize(path):.2f}x its size, "
                                          f"{os.path.getsize(h5) / n:.1f} B/event, scale-offset)"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("STREAMSNN_TEST_DATA", str(REPO.parent / "shared" / "data")),
                        help="test data root holding recordings/ and nmnist_small/")
    parser.add_argument("--events", type=float, default=20e6, help="events in the generated files (default 20e6)")
    parser.add_argument("--repeat", type=int, default=3, help="reads per measurement; the best counts")
    parser.add_argument("--tmp", default=None, help="folder for generated files (default: a temporary folder)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    data = Path(args.data)
    recordings = data / "recordings"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        # compile (or load the cached) Numba kernels outside the timings
        for name in ("evt3_gen41_pedestrians.raw", "evt2_gen3_sample.raw"):
            read_events(recordings / name)

        for path in sorted(recordings.iterdir()):
            with open_recording(path) as rec:
                fmt = rec.format
            given = (34, 34) if path.name.startswith("nmnist") else None
            big_enough = path.stat().st_size > 500_000
            measure(path.name, path, fmt, args.repeat, rows, sensor_size=given,
                    h5_dir=tmp if big_enough and fmt in ("evt2", "evt3") else None)

        nmnist = sorted((data / "nmnist_small").glob("*/*/*.bin"))
        if nmnist:
            seconds, total = best_time(lambda: sum(read_events(f).size for f in nmnist), args.repeat)
            rows.append({"file": f"nmnist_small ({len(nmnist)} files)", "format": "atis_bin", "events": total,
                         "ours": total / seconds, "ref": None,
                         "note": f"{len(nmnist) / seconds:,.0f} files/s"})

        # The store against the RAW file it came from, from 100,000 events up.
        for small in (100_000, 300_000, 1_000_000):
            path = tmp / f"generated_{small // 1000}k_evt3.raw"
            write_raw(path, synthetic_events(small, seed=1), (1280, 720), "evt3")
            measure(path.name, path, "evt3", max(args.repeat, 15), rows, h5_dir=tmp)
            path.unlink()

        n = int(args.events)
        start = time.perf_counter()
        events = synthetic_events(n)
        for encoding in ("evt3", "evt2"):
            path = tmp / f"generated_{n // 1_000_000}M_{encoding}.raw"
            write_raw(path, events, (1280, 720), encoding)
            check = read_events(path)
            assert np.array_equal(check, events), f"{path.name} does not decode to what was encoded"
            del check
            measure(path.name, path, encoding, args.repeat, rows, h5_dir=tmp)
            path.unlink()
        generated_s = time.perf_counter() - start

    print(f"streamsnn reader benchmark: best of {args.repeat} whole-file reads, events/s; "
          f"expelliarmus on the same file in the same run ({os.cpu_count()} CPUs)")
    header = f"{'file':<42} {'format':<8} {'events':>11} {'streamsnn':>12} {'expelliarmus':>13} {'ratio':>6}  note"
    print(header)
    print("-" * len(header))
    for r in rows:
        ref = f"{r['ref'] / 1e6:10.1f} M/s" if r["ref"] else f"{'':>13}"
        ratio = f"{r['ours'] / r['ref']:5.2f}x" if r["ref"] else f"{'':>6}"
        print(f"{r['file']:<42} {r['format']:<8} {r['events']:>11,} {r['ours'] / 1e6:8.1f} M/s {ref} {ratio}  {r['note']}")
    print(f"(generated files: {n:,} events, {generated_s:.0f} s to generate, encode, verify, convert and time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
