"""gfm4d:predict and gfm4d:superres through processing.run: reference grids, dates found per layer,
only the needed window uploaded, extents given in another CRS."""

import numpy as np
import pytest

pytest.importorskip("qgis.core")

from helpers import needs_task, raster_grid, whole_pixel_window  # noqa: E402
from qgis.core import QgsDateTimeRange, QgsRasterLayer  # noqa: E402
from qgis.PyQt.QtCore import QDate, QDateTime, QTime  # noqa: E402

import processing  # noqa: E402
from processing_algorithms.compat import RASTER_FIXED_TEMPORAL_RANGE  # noqa: E402

NAIP = "m_3607824_se_17_1_20160620_sub.tif"


class InfoLog:
    """A feedback that keeps what the algorithm reports."""

    def __init__(self):
        from qgis.core import QgsProcessingFeedback

        self.lines = []
        log = self.lines

        class Feedback(QgsProcessingFeedback):
            def pushInfo(self, text):  # noqa: N802
                log.append(text)

        self.feedback = Feedback()

    def job_id(self) -> str:
        return next(line.split()[2] for line in self.lines if line.startswith("Engine job "))


def fixed_range(layer, year, month, day):
    properties = layer.temporalProperties()
    properties.setIsActive(True)
    properties.setMode(RASTER_FIXED_TEMPORAL_RANGE)
    start = QDateTime(QDate(year, month, day), QTime(0, 0))
    properties.setFixedTemporalRange(QgsDateTimeRange(start, start.addDays(1)))


def test_predict_dates_from_name_temporal_properties_and_parameter(provider, engine, rasters_dir, tmp_path):
    needs_task(engine, "predict")
    first = QgsRasterLayer(str(rasters_dir / NAIP), "naip")  # date in the file name
    second = QgsRasterLayer(str(rasters_dir / NAIP), "naip, summer 2017")
    fixed_range(second, 2017, 7, 1)  # the layer's Temporal tab wins over the file name
    third = QgsRasterLayer(str(rasters_dir / NAIP), "naip 3")
    log = InfoLog()
    out = tmp_path / "predicted.tif"
    processing.run("gfm4d:predict", {
        "INPUTS": [first, second, third], "DATES": ", , 2018-03-03", "TARGET_DATE": "2019-01-01",
        "REFERENCE": second, "STEPS": 1, "OUTPUT": str(out)},
        feedback=log.feedback)
    job = engine.job(log.job_id())
    assert job["params"]["dates"] == ["2016-06-20", "2017-07-01", "2018-03-03"]
    assert job["params"]["target_date"] == "2019-01-01"
    assert job["params"]["reference"] == 1
    grid = raster_grid(out)
    source = raster_grid(rasters_dir / NAIP)
    assert (grid.epsg, grid.origin, grid.pixel, grid.width, grid.height) == (
        source.epsg, source.origin, source.pixel, source.width, source.height)


def test_predict_window_of_mixed_crs_frames(provider, engine, rasters_dir, tmp_path):
    needs_task(engine, "predict")
    pre = QgsRasterLayer(str(rasters_dir / "xv2deploy_pre_tile_1361-10160.tif"), "pre")  # EPSG:26915
    post = QgsRasterLayer(str(rasters_dir / "xv2deploy_post_tile_32524-5137.tif"), "post")  # EPSG:4326
    centre = pre.extent().center()
    bounds = (centre.x() - 40, centre.y() - 40, centre.x() + 40, centre.y() + 40)
    log = InfoLog()
    out = tmp_path / "predicted.tif"
    processing.run("gfm4d:predict", {
        "INPUTS": [pre, post], "DATES": "2011-05-20,2011-05-23", "TARGET_DATE": "2011-06-01",
        "EXTENT": f"{bounds[0]},{bounds[2]},{bounds[1]},{bounds[3]} [EPSG:26915]", "STEPS": 1, "OUTPUT": str(out)},
        feedback=log.feedback)
    from osgeo import gdal

    source = gdal.Open(pre.source())
    col, row, cols, rows = whole_pixel_window(source.GetGeoTransform(), (source.RasterXSize, source.RasterYSize), bounds)
    grid = raster_grid(out)
    x0, dx, _, y0, _, dy = source.GetGeoTransform()
    assert grid.epsg == "EPSG:26915"
    assert grid.origin == pytest.approx((x0 + col * dx, y0 + row * dy), abs=1e-6)
    assert (grid.width, grid.height) == (cols, rows) == (134, 134)
    # Both frames were cut to the window before upload (plus a margin for resampling the second one).
    uploads = engine.uploads(log.job_id())
    sizes = [(gdal.Open(str(p)).RasterXSize, gdal.Open(str(p)).RasterYSize) for p in uploads]
    assert sizes[0] == (134, 134)
    assert all(w < 200 and h < 200 for w, h in sizes)


def test_predict_failed_job_reports_the_engines_reason(provider, engine, rasters_dir, tmp_path):
    needs_task(engine, "predict")
    if "demo-prepost" not in engine.models_for("predict"):
        pytest.skip("the engine has no 2D pre/post demo model")
    naip = QgsRasterLayer(str(rasters_dir / NAIP), "naip")
    with pytest.raises(Exception) as raised:
        processing.run("gfm4d:predict", {
            "INPUTS": [naip, naip], "TARGET_DATE": "2019-01-01", "MODEL": "demo-prepost", "STEPS": 1,
            "OUTPUT": str(tmp_path / "x.tif")})
    assert "predict job failed" in str(raised.value) or "refused" in str(raised.value)
    assert "frame" in str(raised.value)
    assert not (tmp_path / "x.tif").exists()


@pytest.fixture
def sentinel2(tmp_path):
    """A small 10-band Sentinel-2 L2A-like scene (uint16, 10 m, UTM 33N), bands described out of order."""
    from osgeo import gdal, osr

    path = tmp_path / "S2B_MSIL2A_20200615T100559_N0214_R022_T33UUP_20200615T121543_sub.tif"
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), 40, 40, 10, gdal.GDT_UInt16)
    dataset.SetGeoTransform((400000, 10, 0, 5000000, 0, -10))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    dataset.SetProjection(srs.ExportToWkt())
    rng = np.random.default_rng(0)
    for index, name in enumerate(["B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12"]):
        band = dataset.GetRasterBand(index + 1)
        band.SetDescription(name)
        band.WriteArray(rng.integers(500, 3000, (40, 40)).astype(np.uint16))
    dataset = None
    return path


def test_superres_extent_window_resolution_and_date(provider, engine, sentinel2, tmp_path):
    needs_task(engine, "superres")
    layer = QgsRasterLayer(str(sentinel2), "s2")
    log = InfoLog()
    out = tmp_path / "sr.tif"
    processing.run("gfm4d:superres", {
        "INPUT": layer, "EXTENT": "400050,400250,4999750,4999950 [EPSG:32633]", "STEPS": 1, "OUTPUT": str(out)},
        feedback=log.feedback)
    grid = raster_grid(out)
    assert grid.epsg == "EPSG:32633"
    assert grid.origin == (400050.0, 4999950.0)
    assert grid.pixel == (1.25, 1.25)  # a Sentinel-2 10 m pixel / 8
    assert (grid.width, grid.height, grid.bands) == (160, 160, 3)
    job = engine.job(log.job_id())
    assert job["params"]["date"] == "2020-06-15"  # from the file name, which does not travel with the window
    assert job["params"]["extent"] == [400050.0, 4999750.0, 400250.0, 4999950.0]
    from osgeo import gdal

    (upload,) = engine.uploads(log.job_id())
    sent = gdal.Open(str(upload))
    assert (sent.RasterXSize, sent.RasterYSize, sent.RasterCount) == (24, 24, 10)  # 20 px + 2 px margin each side
    assert sent.GetRasterBand(4).GetDescription() == "B08"


def test_superres_extent_in_another_crs(provider, engine, sentinel2, tmp_path):
    needs_task(engine, "superres")
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject, QgsRectangle

    utm = QgsRectangle(400100, 4999800, 400300, 4999900)
    lonlat = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:32633"), QgsCoordinateReferenceSystem("EPSG:4326"),
                                    QgsProject.instance()).transformBoundingBox(utm)
    out = tmp_path / "sr.tif"
    processing.run("gfm4d:superres", {
        "INPUT": str(sentinel2), "RESOLUTION": 2.5, "STEPS": 1, "OUTPUT": str(out),
        "EXTENT": f"{lonlat.xMinimum()},{lonlat.xMaximum()},{lonlat.yMinimum()},{lonlat.yMaximum()} [EPSG:4326]"})
    back = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"), QgsCoordinateReferenceSystem("EPSG:32633"),
                                  QgsProject.instance()).transformBoundingBox(lonlat)
    grid = raster_grid(out)
    assert grid.epsg == "EPSG:32633" and grid.pixel == (2.5, 2.5)
    assert grid.origin == pytest.approx((back.xMinimum(), back.yMaximum()), abs=1e-6)
    assert (grid.width, grid.height) == (round(back.width() / 2.5), round(back.height() / 2.5))
    assert back.contains(utm)


def test_predict_layer_without_a_date_is_named_before_anything_is_sent(provider, engine, rasters_dir, tmp_path):
    needs_task(engine, "predict")
    dated = QgsRasterLayer(str(rasters_dir / NAIP), "naip")
    undated = QgsRasterLayer(str(rasters_dir / "RGB.byte.tif"), "city scene")
    jobs_before = len(engine.jobs())
    with pytest.raises(Exception) as raised:
        processing.run("gfm4d:predict", {"INPUTS": [dated, undated], "TARGET_DATE": "2019-01-01", "STEPS": 1,
                                         "OUTPUT": str(tmp_path / "x.tif")})
    message = str(raised.value)
    assert "No acquisition date for 'city scene' (layer 2): nothing was sent" in message
    assert "Dates" in message and "Temporal properties" in message and "RGB.byte" not in message
    assert len(engine.jobs()) == jobs_before
    assert not (tmp_path / "x.tif").exists()


def test_layer_dates_from_a_stac_item_and_a_landsat_scene_id(provider, rasters_dir, tmp_path):
    import json
    import shutil

    from qgis.core import QgsApplication

    stac, landsat = tmp_path / "scene.tif", tmp_path / "LC80420342017167LGN00_B4.tif"
    for path in (stac, landsat):
        shutil.copy(rasters_dir / "RGB.byte.tif", path)
    (tmp_path / "scene.json").write_text(json.dumps({
        "type": "Feature", "stac_version": "1.0.0", "id": "scene", "properties": {"datetime": "2015-08-03T23:20:30-05:00"}}))
    layers = [QgsRasterLayer(str(stac), "scene"), QgsRasterLayer(str(landsat), "landsat")]
    log = InfoLog()
    algorithm = QgsApplication.processingRegistry().createAlgorithmById("gfm4d:predict")
    assert algorithm.layer_dates(layers, [None, None], 0, log.feedback) == ["2015-08-04", "2017-06-16"]  # UTC; day 167
    assert log.lines[0] == "Layer 1 (scene): date 2015-08-04 (STAC item), reference"
    assert log.lines[1] == "Layer 2 (landsat): date 2017-06-16 (file name)"
