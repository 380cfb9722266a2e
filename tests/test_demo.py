"""The demo that `make demo` runs: every file it promises, on the grids it promises."""

import numpy as np
import rasterio

from engine.demo import SAMPLE, run_demo


def test_demo_writes_generated_and_inpainted_results_lined_up_with_the_sample(tmp_path):
    lines = list(run_demo(tmp_path / "out", tmp_path / "models", steps=1))
    assert any("acquired 2016-06-20" in line for line in lines)
    out = tmp_path / "out"
    for name in ("generated_on_sample_grid", "generated_wide_epsg4326", "inpainted_burn_scar"):
        assert (out / f"{name}.tif").is_file() and (out / f"{name}.png").is_file()
    assert (out / "sample_input.png").is_file()
    with rasterio.open(SAMPLE) as sample, rasterio.open(out / "generated_on_sample_grid.tif") as generated, \
            rasterio.open(out / "inpainted_burn_scar.tif") as post, rasterio.open(out / "inpainted_burn_scar_label.tif") as label:
        for result in (generated, post, label):
            assert result.crs == sample.crs and result.transform == sample.transform and result.shape == sample.shape
        before, after, classes = sample.read(), post.read(), label.read(1)
    changed = (before != after).any(axis=0)
    assert changed.any() and np.array_equal(before[3], after[3])  # NIR untouched
    assert (classes > 0).sum() > 0 and not changed[classes == 0].all()
    with rasterio.open(out / "generated_wide_epsg4326.tif") as wide:
        assert wide.crs.to_epsg() == 4326
