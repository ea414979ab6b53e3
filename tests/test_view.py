import numpy as np
import pytest
from PIL import Image

from streamsnn.cli import main
from streamsnn.view import frame_to_rgb


def test_frame_to_rgb_on_brighter_off_darker():
    frame = np.zeros((2, 4, 5), dtype=np.int16)
    frame[1, 0, 0] = 3  # ON
    frame[0, 1, 1] = 3  # OFF
    rgb = frame_to_rgb(frame)
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0] == 255 and rgb[1, 1, 0] == 0 and rgb[2, 2, 0] == 128


def test_view_gif_of_real_nmnist_sample(recordings, tmp_path, capsys):
    out = tmp_path / "digit.gif"
    assert main(["view", str(recordings / "nmnist_sample.bin"), "--out", str(out)]) == 0
    with Image.open(out) as gif:
        # 311 ms of events in 30 ms frames, the last one incomplete.
        assert gif.n_frames == 11
        assert gif.size == (34 * 7, 34 * 7)
    assert "34x34" in capsys.readouterr().out


def test_view_png_grid_of_raw_recording(recordings, tmp_path):
    out = tmp_path / "gen41.png"
    assert main(["view", str(recordings / "evt3_gen41_pedestrians.raw"), "--out", str(out),
                 "--time-window", "10000"]) == 0
    with Image.open(out) as png:
        assert png.size[0] > 0


@pytest.mark.parametrize("name,err", [("digit.jpg", "must end in .png or .gif")])
def test_view_refuses_unknown_output(recordings, tmp_path, capsys, name, err):
    assert main(["view", str(recordings / "nmnist_sample.bin"), "--out", str(tmp_path / name)]) == 2
    assert err in capsys.readouterr().err


def test_view_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["view", str(tmp_path / "nope.raw"), "--out", str(tmp_path / "x.png")]) == 2
    assert "nope.raw" in capsys.readouterr().err
