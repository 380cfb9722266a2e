"""Acquisition dates and cloud cover from explicit values, STAC, GDAL IMAGERY metadata and file names."""

import datetime
import json
import shutil

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from engine.errors import InputError
from engine.geo.dates import (
    Acquisition,
    acquisition_for_raster,
    acquisition_from_imagery_tags,
    acquisition_from_stac,
    check_cloud_fraction,
    date_from_filename,
    parse_date,
)

D = datetime.date
NAIP = "m_3607824_se_17_1_20160620_sub.tif"


# --- parse_date ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2016-06-20", D(2016, 6, 20)),
        ("20160620", D(2016, 6, 20)),
        ("2016-06-20 16:27:47", D(2016, 6, 20)),  # GDAL's IMAGERY format
        ("2016-06-20T16:27:47Z", D(2016, 6, 20)),
        ("2020-01-15T10:14:01.024000000Z", D(2020, 1, 15)),  # nanoseconds, as some STAC APIs write
        ("2020-01-15T23:30:00-05:00", D(2020, 1, 16)),  # evening in New York is the next UTC day
        ("2020-01-15T01:30:00+05:30", D(2020, 1, 14)),
        ("  2016-06-20T16:27  ", D(2016, 6, 20)),
        ("20200115T231401Z", D(2020, 1, 15)),  # basic format, as in Sentinel file names
        ("2020-01-15T20:00:00-0430", D(2020, 1, 16)),
        ("2020-01-15t10:00:00z", D(2020, 1, 15)),
    ],
)
def test_parse_date_reads_iso_8601_and_compact_dates_as_utc(text, expected):
    assert parse_date(text) == expected


def test_parse_date_takes_date_and_datetime_objects():
    assert parse_date(D(2017, 2, 11)) == D(2017, 2, 11)
    tokyo = datetime.timezone(datetime.timedelta(hours=9))
    assert parse_date(datetime.datetime(2017, 2, 11, 8, 0, tzinfo=tokyo)) == D(2017, 2, 10)
    assert parse_date(datetime.datetime(2017, 2, 11, 23, 59)) == D(2017, 2, 11)  # naive = UTC


@pytest.mark.parametrize(
    "bad", ["yesterday", "2016-13-01", "20161340", "11/02/2017", "2016-06", "", "2016-06-20T25:00", "2016-06-20T10:00+25:00"]
)
def test_parse_date_errors_name_the_value(bad):
    with pytest.raises(InputError, match="cannot read a date") as caught:
        parse_date(bad)
    assert repr(bad) in str(caught.value)
    assert "ISO 8601" in str(caught.value)


def test_parse_date_rejects_numbers_instead_of_guessing():
    with pytest.raises(InputError, match="20160620"):
        parse_date(20160620)


# --- file names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (NAIP, D(2016, 6, 20)),
        ("naip/2018/m_3607824_se_17_060_20181025.tif", D(2018, 10, 25)),
        ("S2A_MSIL2A_20200115T101401_N0213_R022_T32TQR_20200115T123456.SAFE", D(2020, 1, 15)),
        ("S2B_MSIL1C_20191231T235959_N0208_R030_T32TQR_20200101T004512.SAFE", D(2019, 12, 31)),
        ("T32TQR_20200115T101401_B04_10m.jp2", D(2020, 1, 15)),
        # Old (2015-2016) Sentinel-2 names start with the production date; sensing follows "_V".
        ("S2A_OPER_PRD_MSIL1C_PDMC_20160102T202002_R008_V20151230T105153_20151230T105153.SAFE", D(2015, 12, 30)),
        ("S1A_IW_GRDH_1SDV_20181102T051010_20181102T051035_024384_02AA1D_E9E0.zip", D(2018, 11, 2)),
        ("LC08_L1TP_042034_20170616_20170629_01_T1", D(2017, 6, 16)),  # second date = processing
        ("LC08_L2SP_042034_20170616_20200903_02_T1_SR_B4.TIF", D(2017, 6, 16)),
        ("LC80420342017167LGN00_B4.TIF", D(2017, 6, 16)),  # pre-collection id: day 167 of 2017
        ("20200115_101401_1005_3B_AnalyticMS.tif", D(2020, 1, 15)),  # PlanetScope
        ("ortho_2016-06-20.tif", D(2016, 6, 20)),
    ],
)
def test_dates_in_file_names(name, expected):
    assert date_from_filename(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "santa-rosa-wildfire_00000273_pre_disaster.png",  # xBD: the id is not a date
        "hurricane-florence_00000363_post_disaster.json",
        "RGB.byte.tif",
        "xv2deploy_pre_tile_1361-10160.tif",
        "m_3607824_se_17_1_20161340_sub.tif",  # month 13
        "m_3607824_se_17_1_20170229_sub.tif",  # 2017 is not a leap year
        # An impossible acquisition date must not fall through to the processing date.
        "LC08_L1TP_042034_20171332_20170629_01_T1",
        "LC80420342017400LGN00",  # day 400
    ],
)
def test_names_without_a_real_date_give_none(name):
    assert date_from_filename(name) is None


# --- GDAL IMAGERY metadata ------------------------------------------------------------------------


def test_imagery_tags_give_date_and_cloud_fraction():
    acq = acquisition_from_imagery_tags({"ACQUISITIONDATETIME": "2016-06-20 16:27:47", "CLOUDCOVER": "12", "SATELLITEID": "WV02"})
    assert acq == Acquisition(D(2016, 6, 20), 0.12, "imagery-metadata", "imagery-metadata")


def test_imagery_tags_accept_iso_datetimes():
    acq = acquisition_from_imagery_tags({"ACQUISITIONDATETIME": "2016-06-20T23:59:59.000Z"})
    assert (acq.date, acq.cloud_cover, acq.source) == (D(2016, 6, 20), None, "imagery-metadata")


@pytest.mark.parametrize("unknown", ["999", "999.0", "-1", "-999"])
def test_imagery_cloud_cover_999_and_negatives_are_unknown(unknown):
    acq = acquisition_from_imagery_tags({"ACQUISITIONDATETIME": "2016-06-20 16:27:47", "CLOUDCOVER": unknown})
    assert acq.date == D(2016, 6, 20) and acq.cloud_cover is None and acq.cloud_source == "none"
    assert acquisition_from_imagery_tags({"CLOUDCOVER": unknown}) is None


def test_imagery_tags_without_acquisition_facts_give_none():
    assert acquisition_from_imagery_tags({}) is None
    assert acquisition_from_imagery_tags({"SATELLITEID": "WV02", "ACQUISITIONDATETIME": "  "}) is None


@pytest.mark.parametrize(
    ("tags", "words"),
    [
        ({"ACQUISITIONDATETIME": "June 20th"}, "'June 20th'"),
        ({"CLOUDCOVER": "cloudy"}, "'cloudy'"),
        ({"CLOUDCOVER": "150"}, "'150'"),
    ],
)
def test_unreadable_imagery_values_raise_errors_naming_them(tags, words):
    with pytest.raises(InputError, match=words):
        acquisition_from_imagery_tags(tags)


# --- STAC ------------------------------------------------------------------------------------------


def _stac_item(**properties):
    return {"type": "Feature", "stac_version": "1.1.0", "id": "S2B_32TQR_20200115_0_L2A", "properties": properties, "assets": {}}


def test_stac_datetime_and_cloud_cover():
    acq = acquisition_from_stac(_stac_item(datetime="2020-01-15T10:14:01.024000Z", **{"eo:cloud_cover": 12.34}))
    assert acq.date == D(2020, 1, 15) and acq.cloud_cover == pytest.approx(0.1234)
    assert (acq.source, acq.cloud_source) == ("stac", "stac")


def test_stac_with_only_start_and_end_takes_the_utc_middle():
    item = _stac_item(datetime=None, start_datetime="2020-01-01T00:00:00Z", end_datetime="2020-01-31T23:59:59Z")
    assert acquisition_from_stac(item).date == D(2020, 1, 16)
    # 2020-05-31T14:00Z .. 2020-06-01T02:00Z: the middle is 20:00 UTC on 31 May (06:00 on 1 June locally).
    item = _stac_item(datetime=None, start_datetime="2020-06-01T00:00:00+10:00", end_datetime="2020-06-01T12:00:00+10:00")
    assert acquisition_from_stac(item).date == D(2020, 5, 31)


def test_stac_without_a_date_or_cloud_reports_none():
    acq = acquisition_from_stac(_stac_item(datetime=None))
    assert acq == Acquisition(None, None, "none", "none")


@pytest.mark.parametrize(
    ("properties", "words"),
    [
        ({"datetime": None, "start_datetime": "2020-01-01T00:00:00Z"}, "open range"),
        ({"datetime": None, "start_datetime": "2020-02-01T00:00:00Z", "end_datetime": "2020-01-01T00:00:00Z"}, "before"),
        ({"datetime": "15.01.2020"}, "'15.01.2020'"),
        ({"datetime": "2020-01-15T00:00:00Z", "eo:cloud_cover": 150}, "0..100"),
    ],
)
def test_stac_errors_name_the_problem(properties, words):
    with pytest.raises(InputError, match=words):
        acquisition_from_stac(_stac_item(**properties))


def test_stac_item_must_have_properties():
    with pytest.raises(InputError, match="properties"):
        acquisition_from_stac({"type": "FeatureCollection", "features": []})


# --- one raster, every source ----------------------------------------------------------------------


def _write_geotiff(path, imagery=None, default_tags=None):
    profile = dict(driver="GTiff", width=8, height=8, count=1, dtype="uint8", crs="EPSG:32617",
                   transform=Affine(1.0, 0.0, 768269.0, 0.0, -1.0, 4057292.0))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((1, 8, 8), 7, dtype="uint8"))
        if imagery:
            dst.update_tags(ns="IMAGERY", **imagery)
        if default_tags:
            dst.update_tags(**default_tags)
    return path


def test_real_naip_file_dates_from_its_name(rasters_dir):
    acq = acquisition_for_raster(rasters_dir / NAIP)
    assert acq == Acquisition(D(2016, 6, 20), None, "filename", "none")


def test_tifftag_datetime_is_never_an_acquisition_date(rasters_dir, tmp_path):
    # Give copies of the real NAIP file a file-edit time; the acquisition date must not change.
    for name in (NAIP, "naip_without_date.tif"):
        copy = tmp_path / name
        shutil.copy(rasters_dir / NAIP, copy)
        with rasterio.open(copy, "r+") as dst:
            dst.update_tags(TIFFTAG_DATETIME="2023:01:05 10:00:00")
        with rasterio.open(copy) as src:
            assert src.tags()["TIFFTAG_DATETIME"] == "2023:01:05 10:00:00"
    assert acquisition_for_raster(tmp_path / NAIP).date == D(2016, 6, 20)
    assert acquisition_for_raster(tmp_path / "naip_without_date.tif") == Acquisition(None, None, "none", "none")


def test_imagery_metadata_written_to_a_geotiff_is_read_back(tmp_path):
    path = _write_geotiff(
        tmp_path / "scene_20150101.tif",  # a file-name date, outranked by the IMAGERY metadata
        imagery={"ACQUISITIONDATETIME": "2016-06-20 16:27:47", "CLOUDCOVER": "12", "SATELLITEID": "WV02"},
        default_tags={"TIFFTAG_DATETIME": "2023:01:05 10:00:00"},
    )
    acq = acquisition_for_raster(path)
    assert acq == Acquisition(D(2016, 6, 20), 0.12, "imagery-metadata", "imagery-metadata")


def test_each_field_comes_from_its_own_best_source(tmp_path):
    path = _write_geotiff(tmp_path / "scene_20150101.tif", imagery={"CLOUDCOVER": "40"})
    acq = acquisition_for_raster(path)
    assert acq == Acquisition(D(2015, 1, 1), 0.4, "filename", "imagery-metadata")


def test_cloud_cover_999_in_a_geotiff_is_unknown(tmp_path):
    path = _write_geotiff(tmp_path / "scene.tif", imagery={"ACQUISITIONDATETIME": "2016-06-20 16:27:47", "CLOUDCOVER": "999"})
    acq = acquisition_for_raster(path)
    assert (acq.date, acq.cloud_cover, acq.cloud_source) == (D(2016, 6, 20), None, "none")


def test_explicit_values_win_and_spare_broken_metadata(tmp_path):
    path = _write_geotiff(tmp_path / "scene_20150101.tif", imagery={"ACQUISITIONDATETIME": "garbage", "CLOUDCOVER": "12"})
    acq = acquisition_for_raster(path, explicit_date="2019-03-04T22:00:00-05:00", explicit_cloud=0.3)
    assert acq == Acquisition(D(2019, 3, 5), 0.3, "explicit", "explicit")
    # Without an explicit date, the broken date is reported instead of silently skipped.
    with pytest.raises(InputError, match="'garbage'"):
        acquisition_for_raster(path)


def test_explicit_cloud_cover_must_be_a_fraction(tmp_path):
    with pytest.raises(InputError, match="cloud_fraction_from_percent"):
        acquisition_for_raster(tmp_path / "scene.tif", imagery_tags={}, explicit_cloud=45)
    assert check_cloud_fraction(0.45) == 0.45


def test_stac_item_argument_outranks_imagery_metadata(tmp_path):
    path = _write_geotiff(tmp_path / "scene_20150101.tif", imagery={"ACQUISITIONDATETIME": "2016-06-20 16:27:47", "CLOUDCOVER": "12"})
    item = _stac_item(datetime="2018-09-20T16:00:00Z")  # no eo:cloud_cover: cloud comes from IMAGERY
    acq = acquisition_for_raster(path, stac_item=item)
    assert acq == Acquisition(D(2018, 9, 20), 0.12, "stac", "imagery-metadata")


def test_sidecar_stac_item_next_to_the_raster(tmp_path):
    path = _write_geotiff(tmp_path / "scene_20150101.tif", imagery={"ACQUISITIONDATETIME": "2016-06-20 16:27:47"})
    (tmp_path / "scene_20150101.json").write_text(
        json.dumps(_stac_item(datetime=None, start_datetime="2018-09-20T00:00:00Z", end_datetime="2018-09-21T00:00:00Z",
                              **{"eo:cloud_cover": 5}))
    )
    acq = acquisition_for_raster(path)
    assert acq == Acquisition(D(2018, 9, 20), 0.05, "stac", "stac")


def test_non_stac_json_beside_the_raster_is_ignored(tmp_path):
    # xBD keeps label JSON beside each image under the same name: it is not a STAC item.
    path = _write_geotiff(tmp_path / "hurricane-florence_00000363_post_disaster.tif")
    label = {"features": {"lng_lat": [], "xy": []}, "metadata": {"capture_date": "2018-09-20T16:00:00.000Z"}}
    (tmp_path / "hurricane-florence_00000363_post_disaster.json").write_text(json.dumps(label))
    assert acquisition_for_raster(path) == Acquisition(None, None, "none", "none")


def test_given_imagery_tags_mean_the_file_is_not_opened(tmp_path):
    acq = acquisition_for_raster(tmp_path / "not_written_20160620.tif", imagery_tags={"CLOUDCOVER": "3"})
    assert acq == Acquisition(D(2016, 6, 20), 0.03, "filename", "imagery-metadata")
    with pytest.raises(InputError, match="cannot open"):
        acquisition_for_raster(tmp_path / "not_written_20160620.tif")
