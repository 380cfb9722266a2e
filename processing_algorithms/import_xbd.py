"""Import xBD labels: an xBD / xView2 label JSON becomes a polygon layer with damage classes."""

from __future__ import annotations

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsField,
    QgsFields,
    QgsFillSymbol,
    QgsGeometry,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFile,
    QgsRendererCategory,
)
from .base import Gfm4dAlgorithm, explained
from .compat import FAST_INSERT, FIELD_INT, FIELD_STRING, FILE_BEHAVIOR_FILE, SOURCE_VECTOR_POLYGON, WKB_MULTIPOLYGON
from .xbd import DAMAGE_CODES, XbdFormatError, read_xbd_labels

DAMAGE_COLOURS = {1: "#1a9641", 2: "#fdae61", 3: "#f46d43", 4: "#d7191c", 5: "#999999"}


def xbd_fields() -> QgsFields:
    fields = QgsFields()
    for name in ("uid", "feature_type", "subtype"):
        fields.append(QgsField(name, FIELD_STRING))
    fields.append(QgsField("damage_code", FIELD_INT))
    for name in ("disaster", "disaster_type", "capture_date", "img_name"):
        fields.append(QgsField(name, FIELD_STRING))
    return fields


class DamageStyle(QgsProcessingLayerPostProcessorInterface):
    """Colours the loaded layer by damage grade (green: no damage ... red: destroyed)."""

    instances = []  # Processing holds post-processors weakly: keep them alive until used

    def postProcessLayer(self, layer, context, feedback):
        categories = []
        for name, code in DAMAGE_CODES.items():
            symbol = QgsFillSymbol.createSimple({"color": DAMAGE_COLOURS[code], "outline_color": "#222222"})
            categories.append(QgsRendererCategory(code, symbol, name))
        layer.setRenderer(QgsCategorizedSymbolRenderer("damage_code", categories))
        layer.triggerRepaint()

    @classmethod
    def create(cls):
        cls.instances.append(cls())
        return cls.instances[-1]


class ImportXbdLabelsAlgorithm(Gfm4dAlgorithm):
    INPUT = "INPUT"
    OUTPUT = "OUTPUT"

    HELP_ANCHOR = "import-xbd-labels"
    TAGS = ("xbd, xview, xview2, xbd labels, damage, damage assessment, building damage, buildings, footprints, "
            "disaster, hurricane, flood, fire, wildfire, earthquake, tsunami, volcano, labels, json, import")
    INTRO = (
        "Reads an xBD / xView2 label file (*_disaster.json) into a polygon layer in EPSG:4326: one building per "
        "feature with its uid, damage grade (subtype) and damage_code (1 no-damage, 2 minor, 3 major, 4 destroyed, "
        "5 un-classified; empty for pre-disaster labels) and the scene's disaster, disaster type and capture date. "
        "The layer can go straight into Inpaint as its polygons (its subtype is found as the class field)."
    )

    def name(self) -> str:
        return "importxbdlabels"

    def displayName(self) -> str:
        return self.tr("Import xBD labels")

    def group(self) -> str:
        return self.tr("Labels")

    def groupId(self) -> str:
        return "labels"

    def initAlgorithm(self, config=None):
        self.addParameter(explained(QgsProcessingParameterFile(
            self.INPUT, self.tr("xBD label file"), FILE_BEHAVIOR_FILE, "json"),
            self.tr("An xBD / xView2 *_disaster.json label file (pre- or post-disaster).")))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, self.tr("Building damage"), SOURCE_VECTOR_POLYGON))

    def processAlgorithm(self, parameters, context, feedback):
        path = self.parameterAsFile(parameters, self.INPUT, context)
        try:
            labels = read_xbd_labels(path)
        except XbdFormatError as exc:
            raise QgsProcessingException(str(exc)) from None
        fields = xbd_fields()
        sink, dest_id = self.parameterAsSink(parameters, self.OUTPUT, context, fields, WKB_MULTIPOLYGON,
                                             QgsCoordinateReferenceSystem("EPSG:4326"))
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        scene = labels.scene()
        skipped = 0
        total = max(1, len(labels.buildings))
        for index, building in enumerate(labels.buildings):
            if feedback.isCanceled():
                break
            geometry = QgsGeometry.fromWkt(building.wkt)
            if geometry.isNull() or geometry.isEmpty():
                skipped += 1
                continue
            geometry.convertToMultiType()
            feature = QgsFeature(fields)
            feature.setGeometry(geometry)
            feature.setAttributes([building.uid, building.feature_type, building.subtype, building.damage_code,
                                   scene["disaster"], scene["disaster_type"], scene["capture_date"], scene["img_name"]])
            sink.addFeature(feature, FAST_INSERT)
            feedback.setProgress(100.0 * (index + 1) / total)
        if skipped:
            feedback.reportError(self.tr("{0} building(s) with unreadable WKT were skipped").format(skipped))
        feedback.pushInfo(self.tr("{0} building(s) from {1}").format(len(labels.buildings) - skipped, scene["img_name"] or path))
        if context.willLoadLayerOnCompletion(dest_id):
            context.layerToLoadOnCompletionDetails(dest_id).setPostProcessor(DamageStyle.create())
        return {self.OUTPUT: dest_id}
