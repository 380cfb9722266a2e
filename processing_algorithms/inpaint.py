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

from .base import EngineAlgorithm, advanced, is_unset
from .compat import FIELD_ANY, NUMBER_DOUBLE, SOURCE_VECTOR_POLYGON
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

    def name(self) -> str:
        return "inpaint"

    def displayName(self) -> str:
        return self.tr("Inpaint disaster polygons")

    def shortHelpString(self) -> str:
        return self.tr(
            "Synthesises a post-event image from a pre-event raster and disaster polygons (flood extents, burn "
            "scars, damaged building footprints, xBD labels). Pixels outside the (feathered) polygons stay as "
            "they are; inside, the model paints the damage, with a prompt per class. The label output says which "
            "class each pixel was painted as (0: unchanged), so the damage location of the image is known.\n\n"
            "Use 'Selected features only' to send some polygons. The class comes from the class field (or from "
            "subtype, dmg, damage, notation... when empty); the Classes table sets a prompt per class and whether "
            "it is inpainted (yes/no). Extent limits the work to a window of the raster."
        )

    def add_inputs(self) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Pre-event raster")))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.POLYGONS, self.tr("Disaster polygons"), [SOURCE_VECTOR_POLYGON]))
        self.addParameter(QgsProcessingParameterField(
            self.CLASS_FIELD, self.tr("Class field (empty: found by name)"), None, self.POLYGONS, FIELD_ANY, optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.DISASTER_TYPE, self.tr("Disaster type (empty: from the polygons)"), DISASTER_TYPES, False, None, True, True))
        self.addParameter(self.date_parameter(self.DATE, self.tr("Post-event date")))
        self.addParameter(QgsProcessingParameterNumber(
            self.STRENGTH, self.tr("Strength (how much of the masked area is repainted)"), NUMBER_DOUBLE, 1.0, False, 0.01, 1.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.DILATION, self.tr("Grow polygons by (metres)"), NUMBER_DOUBLE, 0.0, False, 0.0, 10000.0))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, self.tr("Only this extent (empty: the whole raster)"), optional=True))
        self.addParameter(advanced(QgsProcessingParameterMatrix(
            self.CLASSES, self.tr("Classes: prompt and whether to inpaint"), 0, False,
            [self.tr("Class"), self.tr("Prompt (empty: default)"), self.tr("Inpaint (yes/no/empty)")], None, True)))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.CLOUD_COVER, self.tr("Cloud cover (0 to 1)"), NUMBER_DOUBLE, None, True, 0.0, 1.0)))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.FEATHER, self.tr("Feather the mask edge over (metres; empty: three pixels)"), NUMBER_DOUBLE, None, True, 0.0, 10000.0)))
        self.addParameter(advanced(QgsProcessingParameterBand(
            self.RGB_BANDS, self.tr("Red, green and blue bands (empty: from the raster)"), None, self.INPUT, True, True)))

    def add_outputs(self) -> None:
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Post-event image")))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT_LABEL, self.tr("Damage label raster"), optional=True, createByDefault=True))
        self.addParameter(QgsProcessingParameterFeatureSink(
            self.OUTPUT_POLYGONS, self.tr("Damage label polygons"), optional=True, createByDefault=False))

    def prepare(self, parameters, context, feedback, folder):
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(self.tr("Choose the pre-event raster layer."))
        region = None
        if not is_unset(parameters.get(self.EXTENT)):
            region = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
        image = export_raster(layer, os.path.join(folder, "image.tif"), region, context, feedback)
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

        params = {"strength": self.parameterAsDouble(parameters, self.STRENGTH, context),
                  "dilation_m": self.parameterAsDouble(parameters, self.DILATION, context),
                  "label_polygons": not is_unset(parameters.get(self.OUTPUT_POLYGONS))}
        prompts, inpaint = class_settings(self.parameterAsMatrix(parameters, self.CLASSES, context))
        bands = self.parameterAsInts(parameters, self.RGB_BANDS, context) if not is_unset(parameters.get(self.RGB_BANDS)) else []
        if bands and len(bands) != 3:
            raise QgsProcessingException(self.tr("Choose exactly three bands (red, green, blue), or none."))
        optional = {
            "class_field": self.field_name(parameters, self.CLASS_FIELD, context),
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

    def deliver(self, client, job, parameters, context, feedback, folder, written):
        results = {
            self.OUTPUT: self.fetch_raster(client, job, "image", parameters, self.OUTPUT, context, feedback, folder, written),
            self.OUTPUT_LABEL: self.fetch_raster(client, job, "label", parameters, self.OUTPUT_LABEL, context, feedback, folder, written),
        }
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
