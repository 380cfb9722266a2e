"""Window layouts cover every cell with whole windows; blend weights cross-fade overlaps."""

import numpy as np
import pytest

from engine.errors import InputError
from engine.geo.tiling import Span, axis_starts, blend_weights, plan_windows, ramp


@pytest.mark.parametrize("length, size, overlap", [(64, 16, 4), (100, 16, 8), (17, 16, 4), (16, 16, 4), (250, 64, 16)])
def test_windows_cover_the_axis_with_at_least_the_overlap(length, size, overlap):
    starts = axis_starts(length, size, overlap)
    assert starts[0] == 0 and starts[-1] + size == max(length, size)
    covered = np.zeros(max(length, size), dtype=int)
    for s in starts:
        covered[s : s + size] += 1
    assert covered.min() >= 1
    for a, b in zip(starts, starts[1:]):
        assert a + size - b >= overlap


def test_plan_windows_count_for_three_by_two():
    windows = plan_windows(height=28, width=40, size=16, overlap=4)
    assert len({w.row for w in windows}) == 2 and len({w.col for w in windows}) == 3
    assert all((w.height, w.width) == (16, 16) for w in windows)


def test_small_canvas_gets_one_clipped_window():
    assert plan_windows(10, 12, 16, 4) == [Span(0, 0, 10, 12)]


def test_bad_overlap_is_refused():
    with pytest.raises(InputError):
        axis_starts(100, 16, 16)


def test_ramps_cross_fade_to_one_in_the_overlap():
    size, overlap = 16, 6
    a = ramp(size, overlap)
    b = ramp(size, overlap)
    total = np.zeros(size + size - overlap)
    total[:size] += a
    total[size - overlap :] += b
    assert np.allclose(total[size - overlap : size], 1.0, atol=1e-6)
    assert a.min() > 0 and a.max() == 1.0


def test_blend_weights_are_separable_and_positive():
    w = blend_weights(8, 12, 3)
    assert w.shape == (8, 12) and (w > 0).all()
    assert np.allclose(w, np.outer(ramp(8, 3), ramp(12, 3)))


def test_span_intersection():
    assert Span(0, 0, 10, 10).intersection(Span(5, 8, 10, 10)) == Span(5, 8, 5, 2)
    assert Span(0, 0, 10, 10).intersection(Span(10, 0, 5, 5)) is None


def test_group_overlapping_makes_disjoint_regions():
    from engine.geo.tiling import group_overlapping

    a, b = Span(0, 0, 16, 16), Span(12, 12, 16, 16)  # overlap diagonally: one region
    c = Span(40, 40, 16, 16)  # far away: its own region
    d = Span(0, 20, 8, 8)  # overlaps neither a nor b, only their bounding box: joins them
    groups = group_overlapping([a, b, c, d])
    boxes = sorted((box for box, _ in groups), key=lambda s: (s.row, s.col))
    assert boxes == [Span(0, 0, 28, 28), Span(40, 40, 16, 16)]
    for (box1, _), (box2, _) in zip(groups, groups[1:]):
        assert box1.intersection(box2) is None
    assert sorted(len(m) for _, m in groups) == [1, 3]
