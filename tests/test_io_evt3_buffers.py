"""EVT 3.0 files denser than one event per word: the decoder's first buffer is sized by the word count."""
import numpy as np
import pytest

from streamsnn.io.prophesee import Evt3Recording


@pytest.mark.parametrize("block_bytes", [None, 64])
def test_evt3_denser_than_one_event_per_word_reads_whole(tmp_path, block_bytes):
    # Full VECT_12 and VECT_8 words hold 32 events in 3 words: more events than words.
    rows = 3000
    words = [0x8001]
    for row in range(rows):
        words += [0x6000 | (row % 4096), 0x0000 | (row % 700), 0x3800 | 24, 0x4FFF, 0x4FFF, 0x50FF]
    path = tmp_path / "dense.raw"
    path.write_bytes(b"% evt 3.0\n% geometry 1280x720\n" + np.array(words, dtype="<u2").tobytes())
    if block_bytes is None:
        events = Evt3Recording(path).read()
    else:
        events = np.concatenate(list(Evt3Recording(path, block_bytes=block_bytes).chunks(n_events=997)))
    assert len(events) == rows * 32 > len(words)
    np.testing.assert_array_equal(events["x"][:32], np.arange(24, 56))
    np.testing.assert_array_equal(events["y"][-32:], (rows - 1) % 700)
    np.testing.assert_array_equal(events["t"][-1], 4096 + (rows - 1) % 4096)
    assert (events["p"] == 1).all()
