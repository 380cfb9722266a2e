"""What the algorithms send: raster windows on whole source pixels (GDAL files and other layers),
vector features in their own CRS, and each layer's acquisition date."""

import datetime as dt

import numpy as np
import pytest

pytest.importorskip("qgis.core")

from helpers import raster_grid, read_bands, whole_pixel_window  # noqa: E402
from qgis.core import (  # noqa: E402
    QgsDateTimeRange,
    QgsFeature,
    QgsGeometry,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsRasterDataProvider,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QDate, QDateTime, QTime  # noqa: E402

from processing_algorithms.compat import RASTER_FIXED_TEMPORAL_RANGE  # noqa: E402
from processing_algorithms.dates import acquisition_date, date_from_name, parse_iso_date  # noqa: E402
from processing_algorithms.layer_export import export_features, export_raster  # noqa: E402


@pytest.fixture
def context(qgis_app):
    return QgsProcessingContext()


@pytest.fixture
def rgb(rasters_dir):
    layer = QgsRasterLayer(str(rasters_dir / "RGB.byte.tif"), "rgb")
    assert layer.isValid()
    return layer


def test_whole_geotiff_is_sent_as_it_is(rgb, context, tmp_path):
    sent = export_raster(rgb, str(tmp_path / "w.tif"), None, context, QgsProcessingFeedback())
    assert sent == rgb.source()
    assert not (tmp_path / "w.tif").exists()


def test_window_of_a_gdal_file_keeps_whole_source_pixels(rgb, context, tmp_path):
    from osgeo import gdal

    region = QgsRectangle(200010.0, 2700020.0, 209000.0, 2706100.0)  # not on the 300 m grid
    sent = export_raster(rgb, str(tmp_path / "w.tif"), region, context, QgsProcessingFeedback())
    source = gdal.Open(rgb.source())
    col, row, cols, rows = whole_pixel_window(source.GetGeoTransform(), (source.RasterXSize, source.RasterYSize),
                                              (200010.0, 2700020.0, 209000.0, 2706100.0))
    grid = raster_grid(sent)
    x0, dx, _, y0, _, dy = source.GetGeoTransform()
    assert grid.origin == (x0 + col * dx, y0 + row * dy)
    assert (grid.width, grid.height, grid.bands, grid.epsg) == (cols, rows, 3, "EPSG:32618")
    assert np.array_equal(read_bands(sent), source.ReadAsArray(col, row, cols, rows))
    assert gdal.Open(sent).GetRasterBand(1).GetNoDataValue() == 0


def test_a_layer_that_is_not_a_gdal_file_goes_through_qgis(rgb, context, tmp_path):
    parameters = QgsRasterDataProvider.VirtualRasterParameters()
    parameters.crs, parameters.extent, parameters.width, parameters.height = rgb.crs(), rgb.extent(), rgb.width(), rgb.height()
    parameters.formula = '"rgb@2" * 2'
    source = QgsRasterDataProvider.VirtualRasterInputLayers()
    source.name, source.uri, source.provider = "rgb", rgb.source(), "gdal"
    parameters.rInputLayers = [source]
    virtual = QgsRasterLayer(QgsRasterDataProvider.encodeVirtualRasterProviderUri(parameters), "doubled", "virtualraster")
    assert virtual.isValid()
    region = QgsRectangle(200010.0, 2700020.0, 209000.0, 2706100.0)
    sent = export_raster(virtual, str(tmp_path / "v.tif"), region, context, QgsProcessingFeedback())
    assert sent == str(tmp_path / "v.tif")
    from osgeo import gdal

    original = gdal.Open(rgb.source())
    col, row, cols, rows = whole_pixel_window(original.GetGeoTransform(), (original.RasterXSize, original.RasterYSize),
                                              (200010.0, 2700020.0, 209000.0, 2706100.0))
    grid = raster_grid(sent)
    x0, dx, _, y0, _, dy = original.GetGeoTransform()
    assert grid.origin == pytest.approx((x0 + col * dx, y0 + row * dy), abs=1e-6)
    assert (grid.width, grid.height, grid.bands, grid.epsg) == (cols, rows, 1, "EPSG:32618")
    expected = original.GetRasterBand(2).ReadAsArray(col, row, cols, rows).astype(float) * 2
    assert np.array_equal(read_bands(sent), expected)


def test_a_window_outside_the_raster_is_refused(rgb, context, tmp_path):
    with pytest.raises(QgsProcessingException, match="does not overlap the raster layer 'rgb'"):
        export_raster(rgb, str(tmp_path / "x.tif"), QgsRectangle(0, 0, 10, 10), context, QgsProcessingFeedback())


def test_features_in_their_crs_inside_the_window(vectors_dir, context, tmp_path):
    layer = QgsVectorLayer(str(vectors_dir / "xview2_deploy_joplin" / "damage.shp"), "damage", "ogr")
    window = QgsRectangle(367300, 4103500, 367500, 4103700)  # in EPSG:26915, the pre-event tile's CRS
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject

    to_layer = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:26915"), layer.crs(), QgsProject.instance())
    inside = to_layer.transformBoundingBox(window)
    expected = sum(1 for f in layer.getFeatures() if f.geometry().boundingBox().intersects(inside))
    path = str(tmp_path / "p.gpkg")
    count = export_features(layer, path, context, QgsProcessingFeedback(), window, QgsCoordinateReferenceSystem("EPSG:26915"))
    written = QgsVectorLayer(path, "written", "ogr")
    assert 0 < count == expected == written.featureCount() < layer.featureCount()
    assert written.crs().authid() == "EPSG:32615"
    assert sorted(f["dmg"] for f in written.getFeatures()) == sorted(
        f["dmg"] for f in layer.getFeatures() if f.geometry().boundingBox().intersects(inside))


def test_a_text_field_called_fid_survives(context, tmp_path):
    layer = QgsVectorLayer("Polygon?crs=EPSG:32633&field=fid:string&field=class:string", "m", "memory")
    features = []
    for index, (fid, name) in enumerate((("a", "flooded-area"), ("a", "flood-trace"))):
        feature = QgsFeature(layer.fields())
        feature.setAttributes([fid, name])
        feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(index, 0, index + 1, 1)))
        features.append(feature)
    layer.dataProvider().addFeatures(features)
    path = str(tmp_path / "fid.gpkg")
    assert export_features(layer, path, context, QgsProcessingFeedback()) == 2
    written = QgsVectorLayer(path, "written", "ogr")
    assert [(f["fid"], f["class"]) for f in written.getFeatures()] == [("a", "flooded-area"), ("a", "flood-trace")]


@pytest.mark.parametrize("name, expected", [
    ("m_3607824_se_17_1_20160620_sub.tif", dt.date(2016, 6, 20)),
    ("S2B_MSIL2A_20200615T100559_N0214_R022_T33UUP_20200615T121543.tif", dt.date(2020, 6, 15)),
    ("planet_2021-03-04_analytic.tif", dt.date(2021, 3, 4)),
    ("xv2deploy_pre_tile_1361-10160.tif", None),
    ("santa-rosa-wildfire_00000273_post_disaster.png", None),
    ("scene_20191345_then_20190101.tif", None),  # a date-like group that is no date stops the search
])
def test_date_in_a_file_name(name, expected):
    assert date_from_name(name) == expected


def test_iso_dates():
    assert parse_iso_date("2017-10-11T19:19:41.000Z") == dt.date(2017, 10, 11)
    assert parse_iso_date("20160620") == dt.date(2016, 6, 20)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_iso_date("June 2016")


def test_acquisition_date_sources_in_order(qgis_app, rasters_dir, tmp_path):
    from osgeo import gdal

    naip = QgsRasterLayer(str(rasters_dir / "m_3607824_se_17_1_20160620_sub.tif"), "naip")
    assert acquisition_date(naip) == (dt.date(2016, 6, 20), "file name")
    properties = naip.temporalProperties()
    properties.setIsActive(True)
    properties.setMode(RASTER_FIXED_TEMPORAL_RANGE)
    start = QDateTime(QDate(2016, 7, 1), QTime(10, 0))
    properties.setFixedTemporalRange(QgsDateTimeRange(start, start.addDays(1)))
    assert acquisition_date(naip) == (dt.date(2016, 7, 1), "temporal properties")

    path = tmp_path / "scene.tif"
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), 4, 4, 1)
    dataset.SetGeoTransform((500000, 10, 0, 4000000, 0, -10))
    dataset.SetMetadataItem("ACQUISITIONDATETIME", "2019-08-07T10:11:12.000Z", "IMAGERY")
    dataset.SetMetadataItem("TIFFTAG_DATETIME", "2024:01:01 00:00:00")  # when the file was written: ignored
    dataset = None
    assert acquisition_date(QgsRasterLayer(str(path), "scene")) == (dt.date(2019, 8, 7), "imagery metadata")
    assert acquisition_date(QgsRasterLayer(str(rasters_dir / "RGB.byte.tif"), "rgb")) == (None, "none")
