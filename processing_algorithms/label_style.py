"""How inpaint's results load: the label raster paletted with its class names, right under the image.

Processing loads result layers in the order of their file paths, so the label would land above
or below the image by chance, and a raster of small integers looks like a grey stretch. Each of
the two layers gets a post-processor; the label's gives it a paletted style (class names from
the label's GFM4D_LABEL_CLASSES metadata, 0 "unchanged" transparent), and whichever comes
second puts the label directly under the image.
"""

from __future__ import annotations

from qgis.core import (
    QgsLayerTree,
    QgsPalettedRasterRenderer,
    QgsProcessingLayerPostProcessorInterface,
    QgsProject,
)
from qgis.PyQt.QtGui import QColor

from .damage_classes import CLASS_NAMES, NO_CHANGE, parse_class_table

CLASS_COLOURS = {
    1: "#1a9641",  # no-damage: green
    2: "#fdae61",  # minor: orange
    3: "#f46d43",  # major: red-orange
    4: "#d7191c",  # destroyed: red
    5: "#999999",  # un-classified: grey
    6: "#7b3294",  # affected: purple
    7: "#92c5de",  # flood trace: light blue
    8: "#2166ac",  # flooded area: blue
    9: "#8c510a",  # burnt area: brown
}
OTHER_COLOURS = ("#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#1b9e77", "#d95f02", "#7570b3", "#666666")


def label_classes(layer) -> dict[int, str]:
    """{code: name} of a label layer: its metadata's class table, else the engine's fixed names."""
    from osgeo import gdal

    dataset = gdal.Open(layer.source())
    table = parse_class_table(dataset.GetMetadataItem("GFM4D_LABEL_CLASSES") if dataset is not None else None)
    return table or dict(CLASS_NAMES)


def palette(classes: dict[int, str]) -> list:
    """Paletted renderer classes: 0 "unchanged" transparent, then each class in its colour."""
    unchanged = QColor(0, 0, 0, 0)
    entries = [QgsPalettedRasterRenderer.Class(NO_CHANGE, unchanged, "unchanged")]
    for index, (code, name) in enumerate(sorted(classes.items())):
        colour = CLASS_COLOURS.get(code, OTHER_COLOURS[index % len(OTHER_COLOURS)])
        entries.append(QgsPalettedRasterRenderer.Class(code, QColor(colour), f"{code} {name}"))
    return entries


def style_label(layer) -> None:
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, palette(label_classes(layer))))
    layer.triggerRepaint()


class ResultLayers:
    """The image and label layers of one inpaint run, as Processing loads them."""

    keep = []  # Processing holds post-processors weakly: keep them alive until used

    def __init__(self):
        self.layer_ids = {"image": None, "label": None}
        self.processors = {role: _Loaded(self, role) for role in self.layer_ids}
        ResultLayers.keep.append(self)

    def processor(self, role: str) -> QgsProcessingLayerPostProcessorInterface:
        return self.processors[role]

    def loaded(self, role: str, layer, context) -> None:
        if role == "label":
            style_label(layer)
        self.layer_ids[role] = layer.id()
        project = context.project() or QgsProject.instance()
        if None not in self.layer_ids.values():
            put_under(project.layerTreeRoot(), self.layer_ids["label"], self.layer_ids["image"])
            ResultLayers.keep.remove(self)


class _Loaded(QgsProcessingLayerPostProcessorInterface):
    def __init__(self, results: ResultLayers, role: str):
        super().__init__()
        self.results, self.role = results, role

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS's name)
        self.results.loaded(self.role, layer, context)


def put_under(root, layer_id: str, above_id: str) -> None:
    """Move layer `layer_id`'s node directly under layer `above_id`'s node in the layer tree.

    The copy goes in before the original comes out: a layer that leaves the tree even for a
    moment is removed from the project.
    """
    node, above = root.findLayer(layer_id), root.findLayer(above_id)
    if node is None or above is None:
        return
    parent = above.parent()
    index = next(i for i, child in enumerate(parent.children()) if QgsLayerTree.isLayer(child) and child.layerId() == above_id)
    if index + 1 < len(parent.children()) and parent.children()[index + 1] is node:
        return
    parent.insertChildNode(index + 1, node.clone())
    node.parent().removeChildNode(node)
