"""gfm4d:generate through processing.run on a real engine: output grids from extents and AOI polygons."""

import pytest

pytest.importorskip("qgis.core")

from helpers import raster_grid, read_bands  # noqa: E402
from qgis.core import (  # noqa: E402
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsProcessingFeatureSourceDefinition,
    QgsProject,
    QgsRectangle,
    QgsVectorLayer,
)

import processing  # noqa: E402

TINY = {"STEPS": 1, "MODEL": "demo-satunet", "PROMPT": "a fmow satellite image of a farm", "SEED": 3}


def test_extent_in_the_output_crs_gives_that_grid(provider, tmp_path):
    out = tmp_path / "farm.tif"
    result = processing.run("gfm4d:generate", {
        **TINY, "EXTENT": "500000,500256,4100000,4100130 [EPSG:32618]", "RESOLUTION": 2, "OUTPUT": str(out)})
    assert result["OUTPUT"] == str(out)
    grid = raster_grid(out)
    assert grid.epsg == "EPSG:32618"
    assert grid.origin == (500000.0, 4100130.0)  # the extent's top-left corner
    assert grid.pixel == (2.0, 2.0)
    assert (grid.width, grid.height, grid.bands) == (128, 65, 3)
    assert len(result["JOB_ID"]) >= 8


def test_extent_in_another_crs_is_transformed_to_the_output_crs(provider, tmp_path):
    out = tmp_path / "reprojected.tif"
    lonlat = QgsRectangle(-75.001, 40.000, -74.998, 40.002)
    processing.run("gfm4d:generate", {
        **TINY, "EXTENT": f"{lonlat.xMinimum()},{lonlat.xMaximum()},{lonlat.yMinimum()},{lonlat.yMaximum()} [EPSG:4326]",
        "OUTPUT_CRS": "EPSG:32618", "RESOLUTION": 4, "OUTPUT": str(out)})
    utm = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"), QgsCoordinateReferenceSystem("EPSG:32618"),
                                 QgsProject.instance()).transformBoundingBox(lonlat)
    grid = raster_grid(out)
    assert grid.epsg == "EPSG:32618"
    assert grid.origin == pytest.approx((utm.xMinimum(), utm.yMaximum()), abs=1e-6)
    assert grid.pixel == (4.0, 4.0)
    assert grid.width == round(utm.width() / 4) and grid.height == round(utm.height() / 4)
    assert 60 <= grid.width <= 70  # 0.003 degrees of longitude at 40 N is ~256 m


def test_aoi_selected_features_only(provider, project, vectors_dir, tmp_path):
    layer = QgsVectorLayer(str(vectors_dir / "xview2_deploy_joplin" / "bldg_polys.gpkg"), "buildings", "ogr")
    assert layer.isValid() and layer.featureCount() == 77
    project.addMapLayer(layer)
    features = list(layer.getFeatures())
    first = features[0].geometry().centroid().asPoint()
    nearest = sorted(features, key=lambda f: f.geometry().centroid().asPoint().distance(first))[:3]
    layer.selectByIds([f.id() for f in nearest])
    out = tmp_path / "aoi.tif"
    processing.run("gfm4d:generate", {
        **TINY, "AOI": QgsProcessingFeatureSourceDefinition(layer.id(), True), "OUTPUT_CRS": "EPSG:32615",
        "RESOLUTION": 1, "OUTPUT": str(out)})
    to_utm = QgsCoordinateTransform(layer.crs(), QgsCoordinateReferenceSystem("EPSG:32615"), project)

    def utm_bounds(features):
        bounds = QgsRectangle()
        bounds.setMinimal()
        for feature in features:
            geometry = feature.geometry()
            geometry.transform(to_utm)
            bounds.combineExtentWith(geometry.boundingBox())
        return bounds

    selected, everything = utm_bounds(layer.getSelectedFeatures()), utm_bounds(layer.getFeatures())
    assert selected.width() * selected.height() < 0.25 * everything.width() * everything.height()
    grid = raster_grid(out)
    assert grid.epsg == "EPSG:32615"
    assert grid.origin == pytest.approx((selected.xMinimum(), selected.yMaximum()), abs=1e-6)
    assert grid.pixel == (1.0, 1.0)
    assert (grid.width, grid.height) == (round(selected.width()), round(selected.height()))


def test_same_seed_same_image_other_seed_other_image(provider, tmp_path):
    extent = "500000,500128,4100000,4100128 [EPSG:32618]"
    paths = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        paths.append(tmp_path / f"{name}.tif")
        processing.run("gfm4d:generate", {**TINY, "SEED": seed, "EXTENT": extent, "RESOLUTION": 2, "OUTPUT": str(paths[-1])})
    a, b, c = (read_bands(p) for p in paths)
    assert (a == b).all()
    assert (a != c).mean() > 0.5


def test_extent_and_aoi_together_are_refused(provider, vectors_dir, tmp_path):
    with pytest.raises(Exception, match="either an extent or AOI polygons"):
        processing.run("gfm4d:generate", {
            **TINY, "EXTENT": "500000,500128,4100000,4100128 [EPSG:32618]",
            "AOI": str(vectors_dir / "xview2_deploy_joplin" / "intersect_polys.shp"), "OUTPUT": str(tmp_path / "x.tif")})
    assert not (tmp_path / "x.tif").exists()


def test_other_raster_formats_are_converted_and_vrt_is_refused(provider, tmp_path):
    from osgeo import gdal

    extent = "500000,500064,4100000,4100032 [EPSG:32618]"
    out = tmp_path / "farm.img"
    processing.run("gfm4d:generate", {**TINY, "EXTENT": extent, "RESOLUTION": 1, "OUTPUT": str(out)})
    assert gdal.Open(str(out)).GetDriver().ShortName == "HFA"
    grid = raster_grid(out)
    assert (grid.epsg, grid.origin, grid.width, grid.height, grid.bands) == ("EPSG:32618", (500000.0, 4100032.0), 64, 32, 3)
    with pytest.raises(Exception, match="save the output as a GeoTIFF"):
        processing.run("gfm4d:generate", {**TINY, "EXTENT": extent, "RESOLUTION": 1, "OUTPUT": str(tmp_path / "x.vrt")})
    assert not (tmp_path / "x.vrt").exists()


def test_log_gets_each_progress_text_once_and_batch_size_is_the_engines_unless_given(provider, engine, tmp_path):
    from qgis.core import QgsProcessingFeedback

    texts, infos = [], []

    class Feedback(QgsProcessingFeedback):
        def pushInfo(self, text):  # noqa: N802
            infos.append(text)

        def setProgressText(self, text):  # noqa: N802 (the dialog writes each one to its Log tab)
            texts.append(text)

    feedback = Feedback()
    extent = "500000,500256,4100000,4100256 [EPSG:32618]"
    processing.run("gfm4d:generate", {**TINY, "STEPS": 8, "EXTENT": extent, "RESOLUTION": 2, "OUTPUT": str(tmp_path / "a.tif")},
                   feedback=feedback)
    assert texts and all(a != b for a, b in zip(texts, texts[1:])), texts
    job = engine.job(next(line.split()[2] for line in infos if line.startswith("Engine job ")))
    assert job["params"].get("batch_size") is None  # not sent: the engine chooses from its free memory
    infos.clear()
    processing.run("gfm4d:generate", {**TINY, "BATCH_SIZE": 2, "EXTENT": extent, "RESOLUTION": 2, "OUTPUT": str(tmp_path / "b.tif")},
                   feedback=feedback)
    job = engine.job(next(line.split()[2] for line in infos if line.startswith("Engine job ")))
    assert job["params"]["batch_size"] == 2


def test_progress_reporter_writes_a_text_only_when_it_changes(qgis_app):
    from qgis.core import QgsProcessingFeedback

    from processing_algorithms.base import progress_reporter

    texts, values = [], []

    class Feedback(QgsProcessingFeedback):
        def setProgressText(self, text):  # noqa: N802
            texts.append(text)

    feedback = Feedback()
    feedback.progressChanged.connect(values.append)
    report = progress_reporter(feedback)
    polls = [{"state": "queued", "queue_position": 1}] * 3 + [{"state": "running", "message": "step 1/4", "progress": 0.25}] * 4 + [
        {"state": "running", "message": "step 2/4", "progress": 0.5}, {"state": "succeeded", "message": "done", "progress": 1.0}]
    for job in polls:
        report(job)
    assert texts == ["Queued on the engine (1 job(s) ahead)", "step 1/4", "step 2/4", "done"]
    assert values[-1] == 100.0
