import numpy as np
import pytest
from PIL import Image

from conftest import copy_sample
from streamsnn.cli import main
from streamsnn.view import frame_to_rgb


def test_frame_to_rgb_on_brighter_off_darker():
    frame = np.zeros((2, 4, 5), dtype=np.int16)
    frame[1, 0, 0] = 3  # ON
    frame[0, 1, 1] = 3  # OFF
    rgb = frame_to_rgb(frame)
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0] == 255 and rgb[1, 1, 0] == 0 and rgb[2, 2, 0] == 128


def test_view_gif_of_real_nmnist_sample(nmnist_root, tmp_path, capsys):
    from streamsnn.io import read_events

    sample = copy_sample(nmnist_root, tmp_path / "digit.bin")
    span = int(np.ptp(read_events(sample)["t"]))
    out = tmp_path / "digit.gif"
    assert main(["view", str(sample), "--out", str(out)]) == 0
    with Image.open(out) as gif:
        # ~300 ms of events in 30 ms frames, the last one incomplete.
        assert gif.n_frames == span // 30_000 + 1
        assert gif.size == (34 * 7, 34 * 7)
    assert "34x34" in capsys.readouterr().out


def test_view_png_grid_of_raw_recording(tmp_path):
    from streamsnn.events import make_events
    from streamsnn.io.prophesee import write_raw

    rng = np.random.default_rng(0)
    n = 20_000
    t = np.sort(rng.integers(0, 45_000, n))                      # 45 ms: five 10 ms frames, the last incomplete
    x, y = rng.integers(600, 700, n), rng.integers(300, 400, n)  # a bright square in the middle of a Gen4 sensor
    path = tmp_path / "gen41.raw"
    write_raw(path, make_events(x, y, t, np.ones(n, dtype=np.int64)), (1280, 720), encoding="evt3")
    out = tmp_path / "gen41.png"
    assert main(["view", str(path), "--out", str(out), "--time-window", "10000"]) == 0
    with Image.open(out) as png:
        # a grid of 4 columns, 300 x 300 px per frame at 100 dpi: 5 frames take two rows
        assert png.size == (1200, 600)
        pixels = np.asarray(png.convert("RGB"))
    # ON events render white on the grey of an empty sensor
    assert (pixels == 255).all(axis=2).sum() > 1000 and (np.abs(pixels.astype(int) - 128) <= 1).all(axis=2).any()


@pytest.mark.parametrize("name,err", [("digit.jpg", "must end in .png or .gif")])
def test_view_refuses_unknown_output(nmnist_root, tmp_path, capsys, name, err):
    sample = copy_sample(nmnist_root, tmp_path / "digit.bin")
    assert main(["view", str(sample), "--out", str(tmp_path / name)]) == 2
    assert err in capsys.readouterr().err


def test_view_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["view", str(tmp_path / "nope.raw"), "--out", str(tmp_path / "x.png")]) == 2
    assert "nope.raw" in capsys.readouterr().err
