"""The demo that `make demo` runs: every file it promises, on the grids it promises."""

import numpy as np
import rasterio
from rasterio.features import rasterize
from scipy.ndimage import distance_transform_cdt

from engine.demo import REAL_EVENTS, SAMPLE, run_demo
from engine.geo.vectors import read_polygons


def test_demo_writes_generated_and_inpainted_results_lined_up_with_the_sample(tmp_path):
    lines = list(run_demo(tmp_path / "out", tmp_path / "models", steps=1))
    assert any("acquired 2016-06-20" in line for line in lines)
    out = tmp_path / "out"
    for name in ("generated_on_sample_grid", "generated_wide_epsg4326", "inpainted_burn_scar", "inpainted_flood",
                 "inpainted_fire"):
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
    # The real events (the 2019 flood, the 2010 Fourmile Canyon fire) painted into the images from before
    # them, on their grids, as are the real images from after them.
    assert [event.name for event in REAL_EVENTS] == ["flood", "fire"]
    for event in REAL_EVENTS:
        with rasterio.open(event.before) as before, rasterio.open(out / f"inpainted_{event.name}.tif") as painted, \
                rasterio.open(out / f"inpainted_{event.name}_label.tif") as label, rasterio.open(event.after) as real:
            for result in (painted, label, real):
                assert result.crs == before.crs and result.transform == before.transform and result.shape == before.shape
            changed = (before.read() != painted.read()).any(axis=0)
            area = label.read(1) > 0
            pixel_area = abs(before.transform.a * before.transform.e)
            polygons = read_polygons(event.polygons).to_crs(before.crs).geometries
            touched = rasterize(polygons, before.shape, transform=before.transform, all_touched=True) > 0
        mapped = sum(g.area for g in polygons) / pixel_area
        assert mapped > {"flood": 4000, "fire": 15000}[event.name]
        assert abs(area.sum() - mapped) < 0.15 * mapped  # the label is the event's own area
        assert changed[area].mean() > 0.5
        # Nothing beyond the pixels the polygons touch and their 3-pixel feather (plus the pixel the edge crosses).
        assert distance_transform_cdt(~touched, metric="chessboard")[changed].max() <= 4
        for name in (f"{event.name}_before", f"{event.name}_real"):
            assert (out / f"{name}.png").is_file()
    assert (out / "inpainted_burn_scar_zoom.png").is_file()
    assert (out / "overview.png").is_file()
