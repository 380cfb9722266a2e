"""Polygon layers: reading every supported container, reprojection, and writing back."""

import json
import shutil
import struct
import zipfile

import numpy as np
import pyogrio
import pyproj
import pytest
import shapely

from engine.errors import InputError
from engine.geo.vectors import PolygonLayer, read_polygons, write_polygons

CEMS_STEM = "EMSR332_08PORDENONE_DEL_v1_observed_event_a"


def _dbf_records(path):
    """Minimal dBase III reader: a check on the attributes that does not go through OGR."""
    data = path.read_bytes()
    count, header_size, record_size = struct.unpack("<IHH", data[4:12])
    fields, offset = [], 32
    while data[offset] != 0x0D:
        name = data[offset : offset + 11].split(b"\0")[0].decode()
        fields.append((name, data[offset + 16]))
        offset += 32
    records = []
    for i in range(count):
        start = header_size + i * record_size + 1  # skip the deletion flag
        record = {}
        for name, size in fields:
            record[name] = data[start : start + size].decode("latin-1").strip()
            start += size
        records.append(record)
    return records


def _shp_header_bounds(path):
    return struct.unpack("<4d", path.read_bytes()[36:68])


def test_shapefile_attributes_bounds_and_crs(vectors_dir):
    path = vectors_dir / "xview2_deploy_joplin" / "damage.shp"
    layer = read_polygons(path)
    records = _dbf_records(path.with_suffix(".dbf"))
    assert len(layer) == len(records) == 640
    assert [a["dmg"] for a in layer.attributes] == [int(r["dmg"]) for r in records]
    assert layer.crs.to_epsg() == 32615
    assert layer.feature_ids == list(range(640))
    assert np.allclose(layer.bounds(), _shp_header_bounds(path), atol=1e-6)


def test_geopackage_layer(vectors_dir):
    layer = read_polygons(vectors_dir / "xview2_deploy_joplin" / "bldg_polys.gpkg", layer="Missouri_clip")
    assert len(layer) == 77
    assert layer.crs.to_epsg() == 4326
    left, bottom, right, top = layer.bounds()
    assert -94.5 < left < right < -94.49 and 37.07 < bottom < top < 37.08  # Joplin, Missouri


def test_zipped_shapefile_reads_like_the_plain_one(vectors_dir, tmp_path):
    folder = vectors_dir / "cems_EMSR332_flood"
    archive = tmp_path / "cems.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for suffix in (".shp", ".shx", ".dbf", ".prj"):
            zf.write(folder / f"{CEMS_STEM}{suffix}", f"{CEMS_STEM}{suffix}")
    zipped, plain = read_polygons(archive), read_polygons(folder / f"{CEMS_STEM}.shp")
    assert len(zipped) == len(plain) == 43
    assert all(a.equals_exact(b, 0) for a, b in zip(zipped.geometries, plain.geometries))
    assert {a["notation"] for a in zipped.attributes} == {"Flooded area"}


def test_reprojection_matches_pyproj_and_round_trips(vectors_dir):
    layer = read_polygons(vectors_dir / "xview2_deploy_joplin" / "damage.shp")
    wgs84 = layer.to_crs("EPSG:4326")
    x, y = shapely.get_coordinates(layer.geometries[5])[0]
    lon, lat = pyproj.Transformer.from_crs(32615, 4326, always_xy=True).transform(x, y)
    assert np.allclose(shapely.get_coordinates(wgs84.geometries[5])[0], (lon, lat), atol=1e-9)
    back = wgs84.to_crs(layer.crs)
    assert max(g.hausdorff_distance(h) for g, h in zip(layer.geometries, back.geometries)) < 1e-6
    assert back.ids == layer.ids and back.attributes == layer.attributes


def test_write_geopackage_and_geojson_keep_types(tmp_path, vectors_dir):
    layer = read_polygons(vectors_dir / "xview2_deploy_joplin" / "damage.shp")
    layer.attributes[3] = {"dmg": None}
    for name in ("out.gpkg", "out.geojson"):
        path = write_polygons(layer, tmp_path / name)
        meta, _, wkb, fields = pyogrio.raw.read(path)
        assert list(meta["fields"]) == ["dmg"]
        assert meta["dtypes"][0].startswith("int")
        assert pyproj.CRS(meta["crs"]).to_epsg() == 32615
        expected = [np.nan if a["dmg"] is None else a["dmg"] for a in layer.attributes]
        assert np.array_equal(np.asarray(fields[0], dtype=float), expected, equal_nan=True)  # null stays null
        geometries = shapely.from_wkb(wkb)
        assert all(g.equals(h) for g, h in zip(geometries, layer.geometries))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.geojson", "out.gpkg"]


# Conus Albers as GeoTIFFs from ESRI software carry it: the parameters of EPSG:5070, no authority code.
_ALBERS_WITHOUT_CODE = (
    'PROJCS["Albers Conical Equal Area",GEOGCS["NAD83",DATUM["North_American_Datum_1983",'
    'SPHEROID["GRS 1980",6378137,298.257222101004]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],'
    'PROJECTION["Albers_Conic_Equal_Area"],PARAMETER["latitude_of_center",23],PARAMETER["longitude_of_center",-96],'
    'PARAMETER["standard_parallel_1",29.5],PARAMETER["standard_parallel_2",45.5],PARAMETER["false_easting",0],'
    'PARAMETER["false_northing",0],UNIT["metre",1]]'
)


@pytest.mark.parametrize("wkt, written_as", [
    (_ALBERS_WITHOUT_CODE, "EPSG:5070"),
    ('PROJCS["local Albers",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
     'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Albers_Conic_Equal_Area"],'
     'PARAMETER["latitude_of_center",40],PARAMETER["longitude_of_center",10],PARAMETER["standard_parallel_1",20],'
     'PARAMETER["standard_parallel_2",60],PARAMETER["false_easting",0],PARAMETER["false_northing",0],UNIT["metre",1]]',
     "OGC:CRS84"),
    # Conus Albers as MTBS writes it: rasterio names it ESRI:102039 first, which fewer readers know.
    ('PROJCS["USA_Contiguous_Albers_Equal_Area_Conic_USGS_version",GEOGCS["NAD83",DATUM["North_American_Datum_1983",'
     'SPHEROID["GRS 1980",6378137,298.257222101004]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],'
     'PROJECTION["Albers_Conic_Equal_Area"],PARAMETER["latitude_of_center",23],PARAMETER["longitude_of_center",-96],'
     'PARAMETER["standard_parallel_1",29.5],PARAMETER["standard_parallel_2",45.5],PARAMETER["false_easting",0],'
     'PARAMETER["false_northing",0],UNIT["metre",1]]', "EPSG:5070"),
])
def test_geojson_keeps_the_place_of_polygons_in_a_crs_without_a_code(tmp_path, wkt, written_as):
    """GeoJSON names a CRS by its code only: one without a code must not come back read as lon/lat."""
    from rasterio.crs import CRS

    crs = CRS.from_wkt(wkt)
    square = shapely.box(-2_049_000, 2_016_000, -2_040_000, 2_028_000)
    path = write_polygons(PolygonLayer([square], [{"notation": "Burnt area"}], crs, "burn"), tmp_path / "burn.geojson")
    back = read_polygons(path)
    assert back.crs == CRS.from_user_input(written_as)
    named = json.loads(path.read_text(encoding="utf-8"))["crs"]["properties"]["name"]
    assert named == {"EPSG:5070": "urn:ogc:def:crs:EPSG::5070", "OGC:CRS84": "urn:ogc:def:crs:OGC::CRS84"}[written_as]
    assert back.to_crs(crs).geometries[0].hausdorff_distance(square) < 1e-3  # metres
    assert [p.name for p in tmp_path.iterdir()] == ["burn.geojson"]


def test_geojson_refuses_a_local_crs_in_a_sentence(tmp_path):
    from rasterio.crs import CRS

    layer = PolygonLayer([shapely.box(0, 0, 10, 10)], [{}], CRS.from_wkt('LOCAL_CS["site grid",UNIT["metre",1]]'), "site")
    with pytest.raises(InputError, match=r"local CRS .* \.gpkg"):
        write_polygons(layer, tmp_path / "site.geojson")
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_unknown_format(tmp_path, vectors_dir):
    layer = read_polygons(vectors_dir / "xview2_deploy_joplin" / "intersect_polys.shp")
    with pytest.raises(InputError, match=r"\.gpkg or \.geojson"):
        write_polygons(layer, tmp_path / "out.kml")


def test_lines_are_refused(tmp_path):
    path = tmp_path / "roads.geojson"
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "properties": {"flooded": "yes"}, "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}
                ],
            }
        )
    )
    with pytest.raises(InputError, match="polygons are needed"):
        read_polygons(path)


def test_shapefile_without_prj_is_refused(tmp_path, vectors_dir):
    for suffix in (".shp", ".shx", ".dbf"):
        shutil.copy(vectors_dir / "cems_EMSR332_flood" / f"{CEMS_STEM}{suffix}", tmp_path / f"flood{suffix}")
    with pytest.raises(InputError, match="no CRS"):
        read_polygons(tmp_path / "flood.shp")


def test_missing_file_and_pixel_space_layers_fail_clearly(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_polygons(tmp_path / "nothing.gpkg")
    pixels = PolygonLayer([shapely.box(0, 0, 10, 10)], [{}], None, "labels.json")
    with pytest.raises(InputError, match="pixel coordinates"):
        pixels.to_crs("EPSG:4326")


def test_xbd_label_json_is_recognised(xbd_dir):
    layer = read_polygons(xbd_dir / "santa-rosa-wildfire_00000273_post_disaster.json")
    assert len(layer) == 13
    assert layer.crs.to_epsg() == 4326
    left, bottom, right, top = layer.bounds()
    assert -122.8 < left < right < -122.6 and 38.4 < bottom < top < 38.6  # Santa Rosa, California
