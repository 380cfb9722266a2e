"""gfm4d:inpaint through processing.run: the pre-event grid kept, pixels outside the mask untouched,
the class field given or found by name, 'selected features only' honoured, label polygons as a
layer, the label loaded paletted under the image."""

import numpy as np
import pytest

pytest.importorskip("qgis.core")

from helpers import needs_task, raster_grid, read_bands, whole_pixel_window  # noqa: E402
from qgis.core import (  # noqa: E402
    QgsFeature,
    QgsProcessingFeatureSourceDefinition,
    QgsProcessingFeedback,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)

import processing  # noqa: E402

HALF = 45.0  # metres: a 90 m window of the 0.6 m pre-event tile


@pytest.fixture
def pre_event(rasters_dir):
    layer = QgsRasterLayer(str(rasters_dir / "xv2deploy_pre_tile_1361-10160.tif"), "pre")
    assert layer.isValid() and layer.crs().authid() == "EPSG:26915"
    return layer


@pytest.fixture
def damage(vectors_dir, project):
    layer = QgsVectorLayer(str(vectors_dir / "xview2_deploy_joplin" / "damage.shp"), "damage", "ogr")
    assert layer.isValid() and layer.crs().authid() == "EPSG:32615"
    project.addMapLayer(layer)
    return layer


def window_around_centre(layer):
    centre = layer.extent().center()
    return centre.x() - HALF, centre.y() - HALF, centre.x() + HALF, centre.y() + HALF


def extent_text(bounds, crs):
    xmin, ymin, xmax, ymax = bounds
    return f"{xmin},{xmax},{ymin},{ymax} [{crs}]"


def test_window_keeps_the_source_grid_and_pixels_outside_the_mask(provider, engine, pre_event, damage, tmp_path):
    needs_task(engine, "inpaint")
    bounds = window_around_centre(pre_event)
    out, label = tmp_path / "post.tif", tmp_path / "label.tif"
    processing.run("gfm4d:inpaint", {
        "INPUT": pre_event, "POLYGONS": damage, "CLASS_FIELD": "dmg", "EXTENT": extent_text(bounds, "EPSG:26915"),
        "STEPS": 1, "FEATHER": 0.6, "OUTPUT": str(out), "OUTPUT_LABEL": str(label)})

    from osgeo import gdal

    source = gdal.Open(pre_event.source())
    col, row, cols, rows = whole_pixel_window(source.GetGeoTransform(), (source.RasterXSize, source.RasterYSize), bounds)
    x0, dx, _, y0, _, dy = source.GetGeoTransform()
    for path, bands in ((out, 3), (label, 1)):
        grid = raster_grid(path)
        assert grid.epsg == "EPSG:26915"
        assert grid.origin == pytest.approx((x0 + col * dx, y0 + row * dy), abs=1e-6)
        assert grid.pixel == pytest.approx((0.6, 0.6), abs=1e-9)
        assert (grid.width, grid.height, grid.bands) == (cols, rows, bands)

    classes = read_bands(label)
    assert set(np.unique(classes)) <= {0, 1, 2, 3, 4}  # dmg grades 1..4, 0 unchanged
    assert (classes > 0).mean() > 0.05
    # Outside the painted classes (and a margin for the feathered edge) the input comes back untouched.
    painted = classes > 0
    near = painted.copy()
    for shift in range(1, 6):
        for axis in (0, 1):
            near |= np.roll(painted, shift, axis) | np.roll(painted, -shift, axis)
    before = source.ReadAsArray(col, row, cols, rows)
    after = read_bands(out)
    assert (after[:, ~near] == before[:, ~near]).all()
    assert (after[:, painted] != before[:, painted]).any()


def test_selected_features_only_and_label_polygons(provider, engine, pre_event, damage, tmp_path):
    needs_task(engine, "inpaint")
    bounds = window_around_centre(pre_event)
    destroyed = [f.id() for f in damage.getFeatures() if f["dmg"] == 4]
    assert destroyed and len(destroyed) < damage.featureCount()
    damage.selectByIds(destroyed)
    label, polygons = tmp_path / "label.tif", tmp_path / "label_polygons.gpkg"
    result = processing.run("gfm4d:inpaint", {
        "INPUT": pre_event, "POLYGONS": QgsProcessingFeatureSourceDefinition(damage.id(), True), "CLASS_FIELD": "dmg",
        "EXTENT": extent_text(bounds, "EPSG:26915"), "STEPS": 1, "OUTPUT": str(tmp_path / "post.tif"),
        "OUTPUT_LABEL": str(label), "OUTPUT_POLYGONS": str(polygons)})
    assert set(np.unique(read_bands(label))) == {0, 4}  # only the selected (destroyed) polygons were sent
    layer = QgsVectorLayer(result["OUTPUT_POLYGONS"], "polygons", "ogr")
    assert layer.isValid() and layer.featureCount() > 0
    assert layer.crs().authid() == "EPSG:26915"
    assert {f["class_code"] for f in layer.getFeatures()} == {4}
    xmin, ymin, xmax, ymax = raster_grid(label).bounds
    window = QgsRectangle(xmin, ymin, xmax, ymax)
    assert all(f.geometry().boundingBox().intersects(window) for f in layer.getFeatures())


def test_no_polygon_over_the_window_is_explained(provider, engine, pre_event, vectors_dir, tmp_path):
    needs_task(engine, "inpaint")
    flood = str(vectors_dir / "cems_EMSR332_flood" / "EMSR332_08PORDENONE_DEL_v1_observed_event_a.shp")  # Italy
    with pytest.raises(Exception, match="None of the polygons lies over the raster's window"):
        processing.run("gfm4d:inpaint", {"INPUT": pre_event, "POLYGONS": flood, "STEPS": 1, "OUTPUT": str(tmp_path / "x.tif")})
    assert not (tmp_path / "x.tif").exists()


def test_empty_class_field_finds_the_class_by_name(provider, engine, pre_event, damage, tmp_path):
    needs_task(engine, "inpaint")
    log = []

    class Feedback(QgsProcessingFeedback):
        def pushInfo(self, text):  # noqa: N802
            log.append(text)

    label = tmp_path / "label.tif"
    processing.run("gfm4d:inpaint", {
        "INPUT": pre_event, "POLYGONS": damage, "EXTENT": extent_text(window_around_centre(pre_event), "EPSG:26915"),
        "STEPS": 1, "OUTPUT": str(tmp_path / "post.tif"), "OUTPUT_LABEL": str(label)}, feedback=Feedback())
    job = engine.job(next(line.split()[2] for line in log if line.startswith("Engine job ")))
    assert job["params"]["class_field"] == "dmg"
    assert any(line.startswith("Class field: dmg (found by name") for line in log)
    grades = set(np.unique(read_bands(label))) - {0}
    assert grades and grades <= {1, 2, 3, 4}  # damage grades, not the one constant class (6, 'affected')


def test_class_field_search_follows_the_engine(qgis_app, xbd_dir, tmp_path):
    import ast
    from pathlib import Path

    from processing_algorithms.damage_classes import CLASS_FIELDS, find_class_field
    from processing_algorithms.import_xbd import ImportXbdLabelsAlgorithm

    engine_source = (Path(__file__).resolve().parents[2] / "engine" / "geo" / "damage_classes.py").read_text()
    assignment = next(node for node in ast.parse(engine_source).body
                      if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CLASS_FIELDS")
    assert CLASS_FIELDS == ast.literal_eval(assignment.value)

    def imported(name):
        out = tmp_path / f"{name}.gpkg"
        processing.run(ImportXbdLabelsAlgorithm().create(), {"INPUT": str(xbd_dir / name), "OUTPUT": str(out)})
        return QgsVectorLayer(str(out), name, "ogr")

    assert find_class_field(imported("santa-rosa-wildfire_00000273_post_disaster.json")) == "subtype"
    # pre-disaster labels have no grade: neither subtype nor damage_code is filled
    assert find_class_field(imported("santa-rosa-wildfire_00000273_pre_disaster.json")) is None
    layer = QgsVectorLayer("Polygon?crs=EPSG:4326&field=Subtype:string&field=DMG:integer", "memory", "memory")
    feature = QgsFeature(layer.fields())
    feature.setAttributes([" ", 3])
    layer.dataProvider().addFeatures([feature])
    assert find_class_field(layer) == "DMG"  # any letter case; blank text says nothing


@pytest.mark.parametrize("image_name, label_name", [("a_post.tif", "b_label.tif"), ("b_post.tif", "a_label.tif")])
def test_label_loads_paletted_with_class_names_under_the_image(provider, engine, pre_event, damage, tmp_path,
                                                               image_name, label_name):
    # Processing loads results in the order of their paths: both orders end with the label under the image
    needs_task(engine, "inpaint")
    from qgis.core import QgsProject

    result = processing.runAndLoadResults("gfm4d:inpaint", {
        "INPUT": pre_event, "POLYGONS": damage, "CLASS_FIELD": "dmg",
        "EXTENT": extent_text(window_around_centre(pre_event), "EPSG:26915"), "STEPS": 1,
        "OUTPUT": str(tmp_path / image_name), "OUTPUT_LABEL": str(tmp_path / label_name)})
    project = QgsProject.instance()
    loaded = {layer.source(): layer for layer in project.mapLayers().values()}
    image, label = loaded[result["OUTPUT"]], loaded[result["OUTPUT_LABEL"]]
    order = [node.layerId() for node in project.layerTreeRoot().findLayers()]
    assert order.index(label.id()) == order.index(image.id()) + 1
    renderer = label.renderer()
    assert renderer.type() == "paletted"
    classes = {entry.value: (entry.label, entry.color.alpha()) for entry in renderer.classes()}
    assert classes[0] == ("unchanged", 0)
    present = set(np.unique(read_bands(tmp_path / label_name))) - {0, 255}
    names = {1: "no-damage", 2: "minor-damage", 3: "major-damage", 4: "destroyed"}
    for code in present:
        assert classes[code] == (f"{code} {names[code]}", 255)
    project.removeMapLayers([image.id(), label.id()])


def test_label_is_moved_under_the_image_and_stays_in_the_project(project):
    from processing_algorithms.label_style import put_under

    layers = {name: QgsVectorLayer("Point?crs=EPSG:4326", name, "memory") for name in ("pre", "image", "label")}
    for name in ("pre", "image", "label"):  # each new layer goes on top: label, image, pre
        project.addMapLayer(layers[name])
    root = project.layerTreeRoot()
    group = root.insertGroup(0, "results")
    node = root.findLayer(layers["image"].id())
    group.insertChildNode(0, node.clone())
    node.parent().removeChildNode(node)
    put_under(root, layers["label"].id(), layers["image"].id())
    from qgis.PyQt.QtCore import QCoreApplication

    QCoreApplication.processEvents()  # the layer tree hands removals to the project through the event loop
    assert [child.layerId() for child in group.children()] == [layers["image"].id(), layers["label"].id()]
    assert [node.layerId() for node in root.findLayers()] == [layers[name].id() for name in ("image", "label", "pre")]
    assert all(project.mapLayer(layer.id()) is layer for layer in layers.values())
