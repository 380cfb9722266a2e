"""Predict: a time stack of rasters with their dates becomes the image at a target date."""

from __future__ import annotations

import os
import re

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterExtent,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from .base import EngineAlgorithm, advanced, is_unset
from .compat import NUMBER_DOUBLE, SOURCE_RASTER
from .dates import acquisition_date, parse_iso_date
from .layer_export import export_raster, region_in_layer_crs

# Source pixels added around each non-reference frame's window, for the engine's resampling.
FRAME_MARGIN_PX = 4


def split_dates(text: str, frames: int) -> list:
    """Per-frame dates from 'YYYY-MM-DD, , YYYY-MM-DD' (an empty entry: read from the layer)."""
    if not text or not text.strip():
        return [None] * frames
    entries = [entry.strip() for entry in re.split(r"[,;]", text)]
    if len(entries) != frames:
        raise QgsProcessingException(
            f"Dates lists {len(entries)} entries for {frames} input layers: give one per layer, in the same order "
            "(leave an entry empty to read that layer's date)."
        )
    try:
        return [parse_iso_date(entry) if entry else None for entry in entries]
    except ValueError as exc:
        raise QgsProcessingException(f"Dates: {exc}.") from None


class PredictAlgorithm(EngineAlgorithm):
    TASK = "predict"
    INPUTS = "INPUTS"
    DATES = "DATES"
    TARGET_DATE = "TARGET_DATE"
    REFERENCE = "REFERENCE"
    EXTENT = "EXTENT"
    CLOUD_COVER = "CLOUD_COVER"
    CONTROL_SCALE = "CONTROL_SCALE"
    OUTPUT = "OUTPUT"

    DEFAULT_PROMPT = ""
    DEFAULT_STEPS = 50
    DEFAULT_GUIDANCE = 1.0

    def name(self) -> str:
        return "predict"

    def displayName(self) -> str:
        return self.tr("Predict image at a date")

    def shortHelpString(self) -> str:
        return self.tr(
            "Predicts the image at a target date from a time stack of rasters (any CRS and resolution), as "
            "DiffusionSat's temporal ControlNet does; two layers give the pre/post case. The output lies on the "
            "reference layer's grid (the first input unless Reference is set; any raster may be the reference), "
            "limited to Extent when given.\n\n"
            "Each layer's date is taken from Dates (comma-separated, one entry per layer, empty entries skipped), "
            "else from its temporal properties, its file name (e.g. ..._20160620...) or its imagery metadata."
        )

    def add_inputs(self) -> None:
        self.addParameter(QgsProcessingParameterMultipleLayers(self.INPUTS, self.tr("Rasters of the time stack"), SOURCE_RASTER))
        self.addParameter(QgsProcessingParameterString(
            self.DATES, self.tr("Their dates (YYYY-MM-DD, comma-separated; empty: from each layer)"), optional=True))
        self.addParameter(self.date_parameter(self.TARGET_DATE, self.tr("Target date"), optional=False))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.REFERENCE, self.tr("Reference layer, whose grid the output takes (empty: the first input)"), optional=True))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, self.tr("Only this extent (empty: the reference's)"), optional=True))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.CLOUD_COVER, self.tr("Cloud cover (0 to 1)"), NUMBER_DOUBLE, None, True, 0.0, 1.0)))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.CONTROL_SCALE, self.tr("Conditioning scale"), NUMBER_DOUBLE, 1.0, False, 0.0, 10.0)))

    def add_outputs(self) -> None:
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Predicted image")))

    def reference_layer(self, layers, parameters, context):
        """(index of the reference among the frames or None, the reference layer)."""
        if is_unset(parameters.get(self.REFERENCE)):
            return 0, layers[0]
        reference = self.parameterAsRasterLayer(parameters, self.REFERENCE, context)
        if reference is None:
            raise QgsProcessingException(self.tr("The reference layer cannot be read."))
        for matches in (lambda layer: layer.id() == reference.id(), lambda layer: layer.source() == reference.source()):
            for index, layer in enumerate(layers):
                if matches(layer):  # the same layer first, else the same data
                    return index, layer
        return None, reference

    def prepare(self, parameters, context, feedback, folder):
        layers = self.parameterAsLayerList(parameters, self.INPUTS, context)
        if not layers:
            raise QgsProcessingException(self.tr("Choose the raster layers of the time stack."))
        reference, ref_layer = self.reference_layer(layers, parameters, context)
        if is_unset(parameters.get(self.EXTENT)):
            region = ref_layer.extent()
        else:
            region = self.parameterAsExtent(parameters, self.EXTENT, context, ref_layer.crs())
        given = split_dates(self.parameterAsString(parameters, self.DATES, context), len(layers))
        files, dates = [], []
        if reference is None:  # a grid from outside the stack
            files.append(("reference", export_raster(ref_layer, os.path.join(folder, "reference.tif"), region, context, feedback)))
        for index, layer in enumerate(layers):
            if feedback.isCanceled():
                break
            if index == reference:
                window = region
            else:
                margin = FRAME_MARGIN_PX * max(layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY())
                window = region_in_layer_crs(region, ref_layer.crs(), layer.crs(), context.transformContext(), margin)
            files.append(("frames", export_raster(layer, os.path.join(folder, f"frame_{index}.tif"), window, context, feedback)))
            date, source = (given[index], "Dates parameter") if given[index] is not None else acquisition_date(layer)
            dates.append(date.isoformat() if date is not None else None)
            feedback.pushInfo(self.tr("Layer {0} ({1}): date {2} ({3}){4}").format(
                index + 1, layer.name(), dates[-1] or "unknown", source, ", reference" if index == reference else ""))
        params = {
            "target_date": self.optional_date(parameters, self.TARGET_DATE, context),
            "reference": reference or 0,
            "control_scale": self.parameterAsDouble(parameters, self.CONTROL_SCALE, context),
        }
        if params["target_date"] is None:
            raise QgsProcessingException(self.tr("Give the target date (YYYY-MM-DD)."))
        if any(date is not None for date in dates):
            params["dates"] = dates
        cloud = self.optional_number(parameters, self.CLOUD_COVER, context)
        if cloud is not None:
            params["cloud_cover"] = cloud
        return params, files

    def deliver(self, client, job, parameters, context, feedback, folder, written):
        return {self.OUTPUT: self.fetch_raster(client, job, "image", parameters, self.OUTPUT, context, feedback, folder, written)}
