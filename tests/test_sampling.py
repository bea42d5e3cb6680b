"""Which frames a backbone sees: uniform bins, short clips repeat frames, windows split the clip."""

import numpy as np
import pytest

from kscli.extract.sampling import sample_frame_indices


def test_uniform_centres_of_equal_bins():
    np.testing.assert_array_equal(sample_frame_indices(160, 8)[0], [10, 30, 50, 70, 90, 110, 130, 150])


def test_short_clip_repeats_frames_in_order():
    idx = sample_frame_indices(5, 16)[0]  # a 0.16 s clip at 30 fps
    assert len(idx) == 16 and idx.min() == 0 and idx.max() == 4
    assert np.all(np.diff(idx) >= 0) and set(idx) == {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(sample_frame_indices(1, 4), [[0, 0, 0, 0]])


def test_long_clip_needs_only_the_sampled_frames():
    idx = sample_frame_indices(212 * 30, 16)
    assert idx.shape == (1, 16) and len(np.unique(idx)) == 16 and idx.max() < 212 * 30


def test_windows_split_the_clip_in_order():
    idx = sample_frame_indices(300, 4, windows=3)
    assert idx.shape == (3, 4)
    for w in range(3):
        assert np.all((idx[w] >= w * 100) & (idx[w] < (w + 1) * 100))


def test_bad_arguments():
    with pytest.raises(ValueError):
        sample_frame_indices(0, 8)
    with pytest.raises(ValueError):
        sample_frame_indices(10, 0)
