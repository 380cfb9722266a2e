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

from .base import EngineAlgorithm, advanced, explained, is_unset
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

    HELP_ANCHOR = "predict-image-at-a-date"
    TAGS = ("predict, prediction, time series, temporal, forecast, before after, pre-event, post-event, change, "
            "date, sequence, controlnet, diffusion, diffusionsat, synthetic")
    INTRO = (
        "Predicts the image at a target date from a time stack of rasters (any CRS and resolution), as DiffusionSat's "
        "temporal ControlNet does; two layers give the pre/post case. The output lies on the reference layer's grid "
        "(the first input unless Reference is set), limited to Extent when given. Every layer needs a date: from "
        "Dates, its temporal properties, its file name (e.g. ..._20160620...), a STAC item beside it or its imagery "
        "metadata; the dates are checked before anything is sent."
    )

    def name(self) -> str:
        return "predict"

    def displayName(self) -> str:
        return self.tr("Predict image at a date")

    def add_inputs(self) -> None:
        self.addParameter(explained(QgsProcessingParameterMultipleLayers(self.INPUTS, self.tr("Time stack"), SOURCE_RASTER),
                                    self.tr("The dated rasters of one place, in any CRS and resolution.")))
        self.addParameter(explained(QgsProcessingParameterString(self.DATES, self.tr("Dates"), optional=True), self.tr(
            "One date per layer, in the same order, comma-separated (YYYY-MM-DD); leave an entry empty to read that "
            "layer's date from the layer. Empty: every layer's own date.")))
        self.addParameter(explained(self.date_parameter(self.TARGET_DATE, self.tr("Target date"), optional=False),
                                    self.tr("The date to predict the image at: before, between or after the layers' dates.")))
        self.addParameter(explained(QgsProcessingParameterRasterLayer(self.REFERENCE, self.tr("Reference grid"), optional=True),
                                    self.tr("The raster whose grid (CRS, pixels) the output takes; any raster. Empty: the first layer.")))
        self.addParameter(explained(QgsProcessingParameterExtent(self.EXTENT, self.tr("Extent"), optional=True),
                                    self.tr("Only predict this part of the reference (any CRS). Empty: all of it.")))
        self.addParameter(advanced(explained(QgsProcessingParameterNumber(
            self.CLOUD_COVER, self.tr("Cloud cover"), NUMBER_DOUBLE, None, True, 0.0, 1.0),
            self.tr("Fraction of the predicted image under cloud, 0 to 1. Empty: not conditioned on."))))
        self.addParameter(advanced(explained(QgsProcessingParameterNumber(
            self.CONTROL_SCALE, self.tr("Conditioning scale"), NUMBER_DOUBLE, 1.0, False, 0.0, 10.0),
            self.tr("How strongly the layers steer the prediction; 0 ignores them."))))

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
        target_date = self.optional_date(parameters, self.TARGET_DATE, context)
        if target_date is None:
            raise QgsProcessingException(self.tr("Give the target date (YYYY-MM-DD)."))
        dates = self.layer_dates(layers, split_dates(self.parameterAsString(parameters, self.DATES, context), len(layers)),
                                 reference, feedback)
        files = []
        if reference is None:  # a grid from outside the stack
            files.append(("reference", self.name_upload(export_raster(
                ref_layer, os.path.join(folder, "reference.tif"), region, context, feedback), ref_layer, "reference")))
        for index, layer in enumerate(layers):
            if feedback.isCanceled():
                break
            if index == reference:
                window = region
            else:
                margin = FRAME_MARGIN_PX * max(layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY())
                window = region_in_layer_crs(region, ref_layer.crs(), layer.crs(), context.transformContext(), margin)
            files.append(("frames", self.name_upload(export_raster(
                layer, os.path.join(folder, f"frame_{index}.tif"), window, context, feedback), layer, f"layer {index + 1}")))
        params = {
            "target_date": target_date,
            "dates": dates,
            "reference": reference or 0,
            "control_scale": self.parameterAsDouble(parameters, self.CONTROL_SCALE, context),
        }
        cloud = self.optional_number(parameters, self.CLOUD_COVER, context)
        if cloud is not None:
            params["cloud_cover"] = cloud
        return params, files

    def layer_dates(self, layers, given, reference, feedback) -> list:
        """Each layer's date (ISO), from Dates or the layer itself; refused before any upload when one has none."""
        dates, undated = [], []
        for index, layer in enumerate(layers):
            date, source = (given[index], "Dates parameter") if given[index] is not None else acquisition_date(layer)
            if date is None:
                undated.append(f"{layer.name()!r} (layer {index + 1})")
                continue
            dates.append(date.isoformat())
            feedback.pushInfo(self.tr("Layer {0} ({1}): date {2} ({3}){4}").format(
                index + 1, layer.name(), dates[-1], source, ", reference" if index == reference else ""))
        if undated:
            raise QgsProcessingException(self.tr(
                "No acquisition date for {0}: nothing was sent. Give the dates in Dates (one per layer, in order, e.g. "
                "'2016-06-20, , 2017-07-01'), or set each layer's date in its Temporal properties (fixed range).").format(
                " and ".join(undated)))
        return dates

    def deliver(self, client, job, parameters, context, feedback, folder, written):
        return {self.OUTPUT: self.fetch_raster(client, job, "image", parameters, self.OUTPUT, context, feedback, folder, written)}
