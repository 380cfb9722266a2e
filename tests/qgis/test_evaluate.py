"""gfm4d:evaluate through Processing: the real xView2 pre tile against its post tile (another CRS),
with the damage polygons as a mask; the error map on the result's grid, loaded with a colour ramp,
the summary in the log and the numbers equal to the engine's report."""

import json

import numpy as np
import pytest

pytest.importorskip("qgis.core")

from helpers import needs_task, raster_grid, read_bands  # noqa: E402
from qgis.core import QgsProcessingException, QgsProject, QgsRasterLayer, QgsVectorLayer  # noqa: E402

import processing  # noqa: E402

PRE, POST = "xv2deploy_pre_tile_1361-10160.tif", "xv2deploy_post_tile_32524-5137.tif"


class InfoLog:
    def __init__(self):
        from qgis.core import QgsProcessingFeedback

        self.lines = []
        log = self.lines

        class Feedback(QgsProcessingFeedback):
            def pushInfo(self, text):  # noqa: N802
                log.append(text)

        self.feedback = Feedback()


def test_evaluate_loads_a_styled_error_map_and_logs_the_summary(provider, engine, project, rasters_dir, vectors_dir, tmp_path):
    needs_task(engine, "evaluate")
    pre = QgsRasterLayer(str(rasters_dir / PRE), "pre")  # EPSG:26915
    post = QgsRasterLayer(str(rasters_dir / POST), "post")  # EPSG:4326, covers about half of the pre tile
    damage = QgsVectorLayer(str(vectors_dir / "xview2_deploy_joplin" / "damage.shp"), "damage", "ogr")  # EPSG:32615
    assert pre.isValid() and post.isValid() and damage.isValid()
    log = InfoLog()
    out = tmp_path / "error.tif"
    results = processing.runAndLoadResults("gfm4d:evaluate", {
        "RESULT": pre, "REFERENCE": post, "MASK": damage, "WINDOW": 256, "OUTPUT": str(out),
        "REPORT": str(tmp_path / "report.json"), "TABLE": str(tmp_path / "table.csv"), "PLOT": str(tmp_path / "plot.png")},
        feedback=log.feedback)
    report = json.loads((tmp_path / "report.json").read_text())
    assert results["MSE"] == pytest.approx(report["overall"]["mse"]) and results["SSIM"] == pytest.approx(report["overall"]["ssim"])
    assert 0.3 < report["overlap"]["fraction_of_grid"] < 0.6
    assert report["mask"]["pixels_inside"] > 0 and report["inside_mask"]["pixels"] == report["mask"]["pixels_inside"]
    assert any(line.startswith("Overall: MSE") for line in log.lines)
    assert any(line.startswith("Inside the mask: MSE") for line in log.lines)
    # The error map lies on the result's grid, pixel for pixel; NaN where the post tile has no data.
    grid, source = raster_grid(out), raster_grid(rasters_dir / PRE)
    assert (grid.epsg, grid.origin, grid.pixel, grid.width, grid.height, grid.bands) == (
        source.epsg, source.origin, source.pixel, source.width, source.height, 2)
    error = read_bands(out)
    assert int(np.isfinite(error[0]).sum()) == report["overlap"]["pixels"]
    assert (tmp_path / "table.csv").read_text().startswith("scope,")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    loaded = [layer for layer in QgsProject.instance().mapLayers().values() if layer.source() == str(out)]
    assert len(loaded) == 1 and loaded[0].renderer().type() == "singlebandpseudocolor"


def test_different_band_counts_are_one_clear_message(provider, engine, rasters_dir, tmp_path):
    needs_task(engine, "evaluate")
    naip = QgsRasterLayer(str(rasters_dir / "m_3607824_se_17_1_20160620_sub.tif"), "naip")  # R, G, B, NIR
    with pytest.raises(QgsProcessingException, match="3 bands and the reference 4"):
        processing.run("gfm4d:evaluate", {"RESULT": naip, "REFERENCE": naip, "BANDS": "1,2,3",
                                          "OUTPUT": str(tmp_path / "e.tif")})
    assert not (tmp_path / "e.tif").exists()
