"""The demo that `make demo` runs: every file it promises, on the grids it promises."""

import numpy as np
import rasterio
from rasterio.features import rasterize
from scipy.ndimage import distance_transform_cdt

from engine.demo import BEFORE_FLOOD, FLOOD_POLYGONS, REAL_FLOOD, SAMPLE, run_demo
from engine.geo.vectors import read_polygons


def test_demo_writes_generated_and_inpainted_results_lined_up_with_the_sample(tmp_path):
    lines = list(run_demo(tmp_path / "out", tmp_path / "models", steps=1))
    assert any("acquired 2016-06-20" in line for line in lines)
    out = tmp_path / "out"
    for name in ("generated_on_sample_grid", "generated_wide_epsg4326", "inpainted_burn_scar", "inpainted_flood"):
        assert (out / f"{name}.tif").is_file() and (out / f"{name}.png").is_file()
    assert (out / "sample_input.png").is_file()
    with rasterio.open(SAMPLE) as sample, rasterio.open(out / "generated_on_sample_grid.tif") as generated, \
            rasterio.open(out / "inpainted_burn_scar.tif") as post, rasterio.open(out / "inpainted_burn_scar_label.tif") as label:
        for result in (generated, post, label):
            assert result.crs == sample.crs and result.transform == sample.transform and result.shape == sample.shape
        before, after, classes = sample.read(), post.read(), label.read(1)
    changed = (before != after).any(axis=0)
    assert changed.any() and np.array_equal(before[3], after[3])  # NIR untouched
    # Changes stay within the labelled polygon plus its 3 m feather (1 m pixels).
    rows, cols = np.nonzero(classes > 0)
    changed_rows, changed_cols = np.nonzero(changed)
    assert rows.size > 0
    assert changed_rows.min() >= rows.min() - 4 and changed_rows.max() <= rows.max() + 4
    assert changed_cols.min() >= cols.min() - 4 and changed_cols.max() <= cols.max() + 4
    with rasterio.open(out / "generated_wide_epsg4326.tif") as wide:
        assert wide.crs.to_epsg() == 4326
    # The 2019 flood painted into the dry 2009 image, on its grid, as is the real 2019 beside it.
    with rasterio.open(BEFORE_FLOOD) as before, rasterio.open(out / "inpainted_flood.tif") as flooded, \
            rasterio.open(out / "inpainted_flood_label.tif") as label, rasterio.open(REAL_FLOOD) as real:
        for result in (flooded, label, real):
            assert result.crs == before.crs and result.transform == before.transform and result.shape == before.shape
        changed = (before.read() != flooded.read()).any(axis=0)
        flood = label.read(1) > 0
        polygons = read_polygons(FLOOD_POLYGONS).geometries
        touched = rasterize(polygons, before.shape, transform=before.transform, all_touched=True) > 0
    mapped = sum(g.area for g in polygons) / 25  # 5 m pixels
    assert mapped > 4000 and abs(flood.sum() - mapped) < 0.15 * mapped  # the label is the 2019 water
    assert changed[flood].mean() > 0.5
    # Nothing beyond the pixels the polygons touch and their 3-pixel feather (plus the pixel the edge crosses).
    assert distance_transform_cdt(~touched, metric="chessboard")[changed].max() <= 4
    for name in ("flood_before", "flood_real", "inpainted_burn_scar_zoom"):
        assert (out / f"{name}.png").is_file()
    assert (out / "overview.png").is_file()
