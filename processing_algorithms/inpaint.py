"""Inpaint: a pre-event raster plus disaster polygons become a post-event raster and its label."""

from __future__ import annotations

import os

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterBand,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterMatrix,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from .base import EngineAlgorithm, advanced, explained, is_unset
from .compat import FIELD_ANY, NUMBER_DOUBLE, SOURCE_VECTOR_POLYGON
from .damage_classes import CLASS_FIELDS, find_class_field
from .label_style import ResultLayers
from .layer_export import export_features, export_raster
from .outputs import copy_features, open_vector

DISASTER_TYPES = ["flooding", "fire", "wind", "earthquake", "tsunami", "volcano"]
_YES = ("yes", "y", "true", "1")
_NO = ("no", "n", "false", "0")


def class_settings(matrix: list) -> tuple[dict, dict]:
    """(class_prompts, inpaint_classes) from the flat CLASSES table [class, prompt, inpaint, ...]."""
    prompts, inpaint = {}, {}
    cells = ["" if cell is None else str(cell).strip() for cell in matrix]
    for row in range(0, len(cells) - len(cells) % 3, 3):
        name, prompt, flag = cells[row:row + 3]
        if not name:
            continue
        if prompt:
            prompts[name] = prompt
        if flag.lower() in _YES:
            inpaint[name] = True
        elif flag.lower() in _NO:
            inpaint[name] = False
        elif flag:
            raise QgsProcessingException(f"Class {name!r}: write yes, no or nothing in the Inpaint column, not {flag!r}.")
    return prompts, inpaint


class InpaintAlgorithm(EngineAlgorithm):
    TASK = "inpaint"
    INPUT = "INPUT"
    POLYGONS = "POLYGONS"
    CLASS_FIELD = "CLASS_FIELD"
    CLASSES = "CLASSES"
    DISASTER_TYPE = "DISASTER_TYPE"
    DATE = "DATE"
    CLOUD_COVER = "CLOUD_COVER"
    STRENGTH = "STRENGTH"
    DILATION = "DILATION"
    FEATHER = "FEATHER"
    RGB_BANDS = "RGB_BANDS"
    EXTENT = "EXTENT"
    OUTPUT = "OUTPUT"
    OUTPUT_LABEL = "OUTPUT_LABEL"
    OUTPUT_POLYGONS = "OUTPUT_POLYGONS"

    HELP_ANCHOR = "inpaint-disaster-polygons"
    TAGS = ("inpaint, inpainting, disaster, damage, damage assessment, flood, flooding, fire, wildfire, burn scar, "
            "wind, hurricane, earthquake, tsunami, volcano, xbd, xview, xview2, copernicus ems, post-event, synthetic, "
            "synthetic data, training data, label, mask, diffusion")
    INTRO = (
        "Synthesises a post-event image from a pre-event raster and disaster polygons. Pixels outside the (feathered) "
        "polygons stay as they are; inside, the model paints the damage, with a prompt per class. The damage label "
        "says which class each pixel was painted as (0: unchanged), so where the damage lies in the image is known; "
        "it loads with the class names, under the image."
    )

    def name(self) -> str:
        return "inpaint"

    def displayName(self) -> str:
        return self.tr("Inpaint disaster polygons")

    def add_inputs(self) -> None:
        self.addParameter(explained(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Pre-event raster")), self.tr(
            "The image before the disaster; the output lies on its grid, with its data type, nodata and bands.")))
        self.addParameter(explained(QgsProcessingParameterFeatureSource(
            self.POLYGONS, self.tr("Disaster polygons"), [SOURCE_VECTOR_POLYGON]), self.tr(
            "Flood extents, burn scars, damaged building footprints, xBD labels; in any CRS. 'Selected features only' "
            "sends just the selected ones.")))
        self.addParameter(explained(QgsProcessingParameterField(
            self.CLASS_FIELD, self.tr("Class field"), None, self.POLYGONS, FIELD_ANY, optional=True), self.tr(
            "The attribute with each polygon's class: an xBD damage grade (subtype), a numeric grade 1-4 (dmg), a "
            "Copernicus EMS grading or notation. Empty: the first of {0} that the polygons fill; without any, every "
            "polygon is one class ('affected').").format(", ".join(CLASS_FIELDS))))
        self.addParameter(explained(QgsProcessingParameterEnum(
            self.DISASTER_TYPE, self.tr("Disaster type"), DISASTER_TYPES, False, None, True, True), self.tr(
            "Worded into each class's prompt. Empty: the polygons' disaster_type or event_type attribute, if they share one.")))
        self.addParameter(explained(self.date_parameter(self.DATE, self.tr("Post-event date")),
                                    self.tr("The date the post-event image should look taken on. Empty: none.")))
        self.addParameter(explained(QgsProcessingParameterNumber(
            self.STRENGTH, self.tr("Strength"), NUMBER_DOUBLE, 1.0, False, 0.01, 1.0), self.tr(
            "How much of the masked area is repainted: 1 repaints it fully, lower values keep more of the pre-event image.")))
        self.addParameter(explained(QgsProcessingParameterNumber(
            self.DILATION, self.tr("Dilation (m)"), NUMBER_DOUBLE, 0.0, False, 0.0, 10000.0),
            self.tr("Grow the polygons by this many ground metres before painting.")))
        self.addParameter(explained(QgsProcessingParameterExtent(self.EXTENT, self.tr("Extent"), optional=True),
                                    self.tr("Only inpaint this part of the raster (any CRS). Empty: the whole raster.")))
        self.addParameter(advanced(explained(QgsProcessingParameterMatrix(
            self.CLASSES, self.tr("Classes"), 0, False, [self.tr("Class"), self.tr("Prompt"), self.tr("Inpaint")], None, True),
            self.tr("Per class (name or code): a prompt (empty: the default for the class) and whether it is inpainted "
                    "(yes / no; empty: the default, which leaves no-damage and un-classified as they are)."))))
        self.addParameter(advanced(explained(QgsProcessingParameterNumber(
            self.CLOUD_COVER, self.tr("Cloud cover"), NUMBER_DOUBLE, None, True, 0.0, 1.0),
            self.tr("Fraction of the image under cloud, 0 to 1. Empty: not conditioned on."))))
        self.addParameter(advanced(explained(QgsProcessingParameterNumber(
            self.FEATHER, self.tr("Feather (m)"), NUMBER_DOUBLE, None, True, 0.0, 10000.0),
            self.tr("Width of the soft edge between painted and kept pixels, in ground metres. Empty: three pixels."))))
        self.addParameter(advanced(explained(QgsProcessingParameterBand(
            self.RGB_BANDS, self.tr("RGB bands"), None, self.INPUT, True, True),
            self.tr("The red, green and blue bands, in that order. Empty: by the raster's colour interpretation."))))

    def add_outputs(self) -> None:
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Post-event image")))
        self.addParameter(explained(QgsProcessingParameterRasterDestination(
            self.OUTPUT_LABEL, self.tr("Damage label raster"), optional=True, createByDefault=True), self.tr(
            "The class painted at each pixel (0: unchanged, 255: no data), on the image's grid.")))
        self.addParameter(explained(QgsProcessingParameterFeatureSink(
            self.OUTPUT_POLYGONS, self.tr("Damage label polygons"), optional=True, createByDefault=False), self.tr(
            "The painted areas as polygons with their class code and name.")))

    def prepare(self, parameters, context, feedback, folder):
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(self.tr("Choose the pre-event raster layer."))
        region = None
        if not is_unset(parameters.get(self.EXTENT)):
            region = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
        image = self.name_upload(export_raster(layer, os.path.join(folder, "image.tif"), region, context, feedback),
                                 layer, "raster")
        source = self.parameterAsSource(parameters, self.POLYGONS, context)
        if source is None:
            raise QgsProcessingException(self.tr("Choose the disaster polygon layer."))
        polygons = os.path.join(folder, "polygons.gpkg")
        window = region if region is not None else layer.extent()
        count = export_features(source, polygons, context, feedback, window, layer.crs())
        if count == 0:
            raise QgsProcessingException(self.tr(
                "None of the polygons lies over the raster's window: choose polygons over the image (or no "
                "'selected features only'), or widen the extent."))
        feedback.pushInfo(self.tr("{0} polygon(s) over the raster's window").format(count))
        class_field = self.field_name(parameters, self.CLASS_FIELD, context) or self.found_class_field(polygons, feedback)

        params = {"strength": self.parameterAsDouble(parameters, self.STRENGTH, context),
                  "dilation_m": self.parameterAsDouble(parameters, self.DILATION, context),
                  "label_polygons": not is_unset(parameters.get(self.OUTPUT_POLYGONS))}
        prompts, inpaint = class_settings(self.parameterAsMatrix(parameters, self.CLASSES, context))
        bands = self.parameterAsInts(parameters, self.RGB_BANDS, context) if not is_unset(parameters.get(self.RGB_BANDS)) else []
        if bands and len(bands) != 3:
            raise QgsProcessingException(self.tr("Choose exactly three bands (red, green, blue), or none."))
        optional = {
            "class_field": class_field,
            "class_prompts": prompts or None,
            "inpaint_classes": inpaint or None,
            "disaster_type": self.optional_string(parameters, self.DISASTER_TYPE, context),
            "date": self.optional_date(parameters, self.DATE, context),
            "cloud_cover": self.optional_number(parameters, self.CLOUD_COVER, context),
            "feather_m": self.optional_number(parameters, self.FEATHER, context),
            "rgb_bands": bands or None,
        }
        params.update({key: value for key, value in optional.items() if value is not None})
        return params, [("image", image), ("polygons", polygons)]

    def found_class_field(self, polygons: str, feedback) -> str | None:
        """The class field found by name among the polygons sent (the Class field parameter left empty)."""
        layer = open_vector(polygons, "polygons")
        found = find_class_field(layer)
        if found is not None:
            feedback.pushInfo(self.tr("Class field: {0} (found by name; set Class field to use another)").format(found))
        else:
            feedback.pushInfo(self.tr("No class field ({0}) among the polygons' attributes: every polygon is one class, "
                                      "'affected'. Set Class field to classify them.").format(", ".join(CLASS_FIELDS)))
        return found

    def deliver(self, client, job, parameters, context, feedback, folder, written):
        results = {
            self.OUTPUT: self.fetch_raster(client, job, "image", parameters, self.OUTPUT, context, feedback, folder, written),
            self.OUTPUT_LABEL: self.fetch_raster(client, job, "label", parameters, self.OUTPUT_LABEL, context, feedback, folder, written),
        }
        self.style_on_loading(results[self.OUTPUT], results[self.OUTPUT_LABEL], context)
        if not is_unset(parameters.get(self.OUTPUT_POLYGONS)):
            downloaded = client.download(job["id"], "polygons", os.path.join(folder, "label_polygons.gpkg"), feedback)
            layer = open_vector(downloaded, "label polygons")
            sink, dest_id = self.parameterAsSink(parameters, self.OUTPUT_POLYGONS, context, layer.fields(), layer.wkbType(), layer.crs())
            if sink is None:
                raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT_POLYGONS))
            copy_features(layer, sink, feedback)
            del sink
            del layer
            results[self.OUTPUT_POLYGONS] = dest_id
            if os.path.isfile(dest_id.split("|")[0]):
                written.append(dest_id.split("|")[0])
        return results

    @staticmethod
    def style_on_loading(image: str | None, label: str | None, context) -> None:
        """When QGIS loads the results: the label paletted with class names, right under the image."""
        if not label or not context.willLoadLayerOnCompletion(label):
            return
        loaded = ResultLayers()
        context.layerToLoadOnCompletionDetails(label).setPostProcessor(loaded.processor("label"))
        if image and context.willLoadLayerOnCompletion(image):
            context.layerToLoadOnCompletionDetails(image).setPostProcessor(loaded.processor("image"))
