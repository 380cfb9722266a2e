"""gfm4d:importxbdlabels: xBD label JSON -> building polygons with damage classes, styled on load."""

import json
from collections import Counter

import pytest

pytest.importorskip("qgis.core")

from qgis.core import NULL, QgsCategorizedSymbolRenderer, QgsProject, QgsVectorLayer  # noqa: E402

import processing  # noqa: E402

POST = "santa-rosa-wildfire_00000273_post_disaster.json"
PRE = "santa-rosa-wildfire_00000273_pre_disaster.json"


def test_post_disaster_labels_become_graded_polygons(qgis_app, provider, xbd_dir, tmp_path):
    out = tmp_path / "buildings.gpkg"
    result = processing.run("gfm4d:importxbdlabels", {"INPUT": str(xbd_dir / POST), "OUTPUT": str(out)})
    layer = QgsVectorLayer(result["OUTPUT"], "buildings", "ogr")
    assert layer.isValid() and layer.crs().authid() == "EPSG:4326"
    features = list(layer.getFeatures())
    assert len(features) == 13
    # the sample's grades (data manifest): 9 destroyed, 1 major-damage, 2 no-damage, 1 un-classified
    assert Counter(f["subtype"] for f in features) == {"destroyed": 9, "major-damage": 1, "no-damage": 2, "un-classified": 1}
    assert Counter(f["damage_code"] for f in features) == {4: 9, 3: 1, 1: 2, 5: 1}
    assert {f["disaster_type"] for f in features} == {"fire"}
    assert {f["capture_date"] for f in features} == {"2017-10-11T19:19:41.000Z"}
    # geometry straight from the lng_lat WKT
    raw = json.loads((xbd_dir / POST).read_text())["features"]["lng_lat"]
    first = next(f for f in features if f["uid"] == raw[0]["properties"]["uid"])
    vertex = first.geometry().vertexAt(0)
    lon, lat = (float(v) for v in raw[0]["wkt"].split("((")[1].split(",")[0].split())
    assert (vertex.x(), vertex.y()) == pytest.approx((lon, lat), abs=1e-12)
    assert 38.4 < layer.extent().center().y() < 38.6 and -122.8 < layer.extent().center().x() < -122.6


def test_pre_disaster_labels_have_no_grade(qgis_app, provider, xbd_dir, tmp_path):
    result = processing.run("gfm4d:importxbdlabels", {"INPUT": str(xbd_dir / PRE), "OUTPUT": str(tmp_path / "pre.gpkg")})
    layer = QgsVectorLayer(result["OUTPUT"], "pre", "ogr")
    assert layer.featureCount() == 13
    assert all(f.attribute("damage_code") in (None, NULL) for f in layer.getFeatures())
    assert all(f.attribute("subtype") in (None, NULL) for f in layer.getFeatures())


def test_loaded_layer_is_coloured_by_damage(qgis_app, provider, project, xbd_dir):
    result = processing.runAndLoadResults("gfm4d:importxbdlabels", {"INPUT": str(xbd_dir / POST), "OUTPUT": "TEMPORARY_OUTPUT"})
    layer = QgsProject.instance().mapLayer(result["OUTPUT"])
    assert isinstance(layer.renderer(), QgsCategorizedSymbolRenderer)
    assert layer.renderer().classAttribute() == "damage_code"
    assert [c.label() for c in layer.renderer().categories()] == ["no-damage", "minor-damage", "major-damage", "destroyed", "un-classified"]


def test_a_geojson_file_is_refused_with_advice(qgis_app, provider, tmp_path):
    path = tmp_path / "not_xbd.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(Exception, match="not an xBD label file.*GeoJSON files can be opened as layers"):
        processing.run("gfm4d:importxbdlabels", {"INPUT": str(path), "OUTPUT": str(tmp_path / "x.gpkg")})
