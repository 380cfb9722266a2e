"""Evaluate against reference: how far a generated or predicted raster is from the real image.

Sends the result and the reference (only the part over the result) to the engine's evaluate task,
loads the error map as a colour-ramped layer, keeps the JSON/CSV report and PNG plot where asked,
and prints the summary (MSE, PSNR, SSIM overall and inside/outside the mask) in the log.
"""

from __future__ import annotations

import json
import os
import shutil

from qgis.core import (
    QgsColorRampShader,
    QgsGradientColorRamp,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorLayer,
    QgsRasterShader,
    QgsSingleBandPseudoColorRenderer,
    QgsStyle,
)
from qgis.PyQt.QtGui import QColor

from .base import EngineAlgorithm, advanced, is_unset
from .compat import NUMBER_DOUBLE, NUMBER_INTEGER, SOURCE_VECTOR_POLYGON
from .layer_export import export_features, export_raster, region_in_layer_crs

# Reference pixels added around the result's extent, for the engine's resampling.
REFERENCE_MARGIN_PX = 4


def parse_bands(text: str | None, what: str) -> list | None:
    """'1, 2, 3' -> [1, 2, 3]; empty -> None."""
    if not text or not text.strip():
        return None
    try:
        bands = [int(part) for part in text.replace(";", ",").replace(" ", ",").split(",") if part]
    except ValueError:
        raise QgsProcessingException(f"{what}: write band numbers separated by commas, e.g. 1,2,3.") from None
    if not bands or min(bands) < 1:
        raise QgsProcessingException(f"{what}: band numbers start at 1, e.g. 1,2,3.")
    return bands


class ErrorMapStyle(QgsProcessingLayerPostProcessorInterface):
    """Absolute error (band 1) on a dark-to-bright ramp from 0 to its 98th percentile."""

    instances = []  # Processing holds post-processors weakly: keep them alive until used

    def __init__(self, high: float):
        super().__init__()
        self.high = high

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        ramp = QgsStyle.defaultStyle().colorRamp("Magma") or QgsGradientColorRamp(QColor("#000004"), QColor("#fcfdbf"))
        shader = QgsColorRampShader(0.0, max(self.high, 1e-9), ramp)
        shader.classifyColorRamp(8, -1)
        raster_shader = QgsRasterShader()
        raster_shader.setRasterShaderFunction(shader)
        renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, raster_shader)
        renderer.setClassificationMin(0.0)
        renderer.setClassificationMax(max(self.high, 1e-9))
        layer.setRenderer(renderer)
        layer.triggerRepaint()

    @classmethod
    def create(cls, high: float):
        cls.instances.append(cls(high))
        return cls.instances[-1]


def summary_lines(report: dict) -> list:
    """The report's headline numbers as log lines."""
    overlap = report["overlap"]
    lines = [f"Compared {overlap['pixels']} pixels ({100 * overlap['fraction_of_grid']:.1f} % of the "
             f"{report['grid']['on']}'s grid, {report['grid']['crs']}), data range {report['data_range']:g}"]
    for scope, label in (("overall", "Overall"), ("inside_mask", "Inside the mask"), ("outside_mask", "Outside the mask")):
        m = report.get(scope)
        if m:
            psnr = m["psnr"] if isinstance(m["psnr"], str) else f"{m['psnr']:.2f}"
            lines.append(f"{label}: MSE {m['mse']:.4g}, PSNR {psnr} dB, SSIM {m['ssim']:.3f} ({m['pixels']} px)")
    lpips = report.get("learned", {}).get("lpips")
    if lpips:
        lines.append(f"LPIPS: {lpips['mean']:.4g} (mean of {lpips['windows']} windows)")
    lines.append(f"Computed with {report['library']}")
    return lines


class EvaluateAlgorithm(EngineAlgorithm):
    TASK = "evaluate"
    RESULT = "RESULT"
    REFERENCE = "REFERENCE"
    MASK = "MASK"
    BANDS = "BANDS"
    REFERENCE_BANDS = "REFERENCE_BANDS"
    REVERSE = "REVERSE"
    WINDOW = "WINDOW"
    DATA_RANGE = "DATA_RANGE"
    LPIPS = "LPIPS"
    NETWORKS = "NETWORKS"
    OUTPUT = "OUTPUT"
    REPORT = "REPORT"
    TABLE = "TABLE"
    PLOT = "PLOT"
    MSE = "MSE"
    PSNR = "PSNR"
    SSIM = "SSIM"

    def name(self) -> str:
        return "evaluate"

    def displayName(self) -> str:
        return self.tr("Evaluate against reference")

    def group(self) -> str:
        return self.tr("Evaluation")

    def groupId(self) -> str:
        return "evaluation"

    def tags(self):
        return self.tr("evaluate,accuracy,error,mse,psnr,ssim,lpips,reference,validation,compare").split(",")

    def shortHelpString(self) -> str:
        return self.tr(
            "Measures how close a generated or predicted raster is to the real image of the same place and date: "
            "MSE, PSNR and SSIM (scikit-image's formulas) per band and overall, per window, and inside/outside an "
            "optional mask layer (e.g. the damage polygons of an inpainting run: identical outside, changed inside).\n\n"
            "The reference may be in any CRS and resolution: it is warped onto the result's grid (or the reverse), and "
            "only pixels valid in both count. The error map (band 1: absolute error, band 2: local SSIM) lies on that "
            "grid and is loaded with a colour ramp; the summary is printed in the log.\n\n"
            "Bands: by default all bands are compared; give the band numbers when the two differ (e.g. 1,2,3 for the "
            "RGB of a 4-band NAIP image). Data range: empty takes it from the data type (255 for 8-bit). LPIPS needs "
            "its networks in a folder of the engine's models directory, named in Networks folder."
        )

    # --- parameters: no prompt, model or sampler ------------------------------------------------

    def add_prompt_and_sampling(self) -> None:
        self.addParameter(advanced(QgsProcessingParameterString(
            self.ENGINE_URL, self.tr("Engine URL (empty: the plugin's setting)"), optional=True)))

    def sampling_params(self, parameters, context) -> dict:
        return {}

    def add_inputs(self) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(self.RESULT, self.tr("Result (generated or predicted raster)")))
        self.addParameter(QgsProcessingParameterRasterLayer(self.REFERENCE, self.tr("Reference (the real image)")))
        self.addParameter(QgsProcessingParameterVectorLayer(
            self.MASK, self.tr("Mask polygons (metrics inside and outside them too)"), [SOURCE_VECTOR_POLYGON], optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.BANDS, self.tr("Result bands to compare (e.g. 1,2,3; empty: all)"), optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.REFERENCE_BANDS, self.tr("Reference bands, in the same order (empty: all)"), optional=True))
        self.addParameter(advanced(QgsProcessingParameterBoolean(
            self.REVERSE, self.tr("Warp the result onto the reference's grid instead"), False)))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.WINDOW, self.tr("Metric window (pixels)"), NUMBER_INTEGER, 256, False, 7, 8192)))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.DATA_RANGE, self.tr("Data range (empty: from the data type)"), NUMBER_DOUBLE, None, True, 0.0)))
        self.addParameter(advanced(QgsProcessingParameterBoolean(self.LPIPS, self.tr("Also LPIPS"), False)))
        self.addParameter(advanced(QgsProcessingParameterString(
            self.NETWORKS, self.tr("Networks folder in the engine's models directory (for LPIPS)"), optional=True)))

    def add_outputs(self) -> None:
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Error map")))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.REPORT, self.tr("Report (JSON)"), self.tr("JSON files (*.json)"), optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.TABLE, self.tr("Metrics table (CSV)"), self.tr("CSV files (*.csv)"), optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.PLOT, self.tr("Plot (PNG)"), self.tr("PNG files (*.png)"), optional=True, createByDefault=False))
        for name, label in ((self.MSE, "MSE"), (self.PSNR, "PSNR (dB)"), (self.SSIM, "SSIM")):
            self.addOutput(QgsProcessingOutputNumber(name, self.tr(label)))

    # --- running ---------------------------------------------------------------------------------

    def prepare(self, parameters, context, feedback, folder):
        result = self.parameterAsRasterLayer(parameters, self.RESULT, context)
        reference = self.parameterAsRasterLayer(parameters, self.REFERENCE, context)
        if result is None or reference is None:
            raise QgsProcessingException(self.tr("Choose the result and the reference raster layers."))
        files = [("result", export_raster(result, os.path.join(folder, "result.tif"), None, context, feedback))]
        margin = REFERENCE_MARGIN_PX * max(reference.rasterUnitsPerPixelX(), reference.rasterUnitsPerPixelY())
        window = region_in_layer_crs(result.extent(), result.crs(), reference.crs(), context.transformContext(), margin)
        if not window.intersects(reference.extent()):
            raise QgsProcessingException(self.tr(
                "The reference does not overlap the result: choose the real image of the same place."))
        files.append(("reference", export_raster(reference, os.path.join(folder, "reference.tif"), window, context, feedback)))
        mask = self.parameterAsVectorLayer(parameters, self.MASK, context)
        if mask is not None:
            polygons = os.path.join(folder, "mask.gpkg")
            count = export_features(mask, polygons, context, feedback, result.extent(), result.crs())
            if count == 0:
                raise QgsProcessingException(self.tr("None of the mask polygons lies over the result: choose polygons over it."))
            files.append(("mask", polygons))
        params = {
            "reverse": self.parameterAsBool(parameters, self.REVERSE, context),
            "window": self.parameterAsInt(parameters, self.WINDOW, context),
        }
        for key, name, what in (("bands", self.BANDS, "Result bands"), ("reference_bands", self.REFERENCE_BANDS, "Reference bands")):
            bands = parse_bands(self.parameterAsString(parameters, name, context), what)
            if bands is not None:
                params[key] = bands
        data_range = self.optional_number(parameters, self.DATA_RANGE, context)
        if data_range is not None:
            params["data_range"] = data_range
        if self.parameterAsBool(parameters, self.LPIPS, context):
            params["learned"] = ["lpips"]
            networks = self.optional_string(parameters, self.NETWORKS, context)
            if networks is None:
                raise QgsProcessingException(self.tr(
                    "LPIPS needs its networks: name their folder in the engine's models directory (Networks folder)."))
            params["networks"] = networks
        return params, files

    def deliver(self, client, job, parameters, context, feedback, folder, written):
        report_file = client.download(job["id"], "report", os.path.join(folder, "report.json"), feedback)
        with open(report_file, encoding="utf-8") as handle:
            report = json.load(handle)
        for line in summary_lines(report):
            feedback.pushInfo(line)
        results = {self.OUTPUT: self.fetch_raster(client, job, "error_map", parameters, self.OUTPUT, context, feedback,
                                                  folder, written)}
        destination = results[self.OUTPUT]
        if destination and context.willLoadLayerOnCompletion(destination):
            windows = [w["mse"] for w in report.get("windows", []) if w.get("mse") is not None]
            high = max(windows) ** 0.5 * 2 if windows else 1.0  # about the brightest windows' typical error
            context.layerToLoadOnCompletionDetails(destination).setPostProcessor(ErrorMapStyle.create(high))
        for name, result in ((self.REPORT, "report"), (self.TABLE, "table"), (self.PLOT, "plot")):
            target = self.parameterAsFileOutput(parameters, name, context)
            if is_unset(target):
                continue
            source = report_file if result == "report" else client.download(
                job["id"], result, os.path.join(folder, os.path.basename(target)), feedback)
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            written.append(target)
            shutil.copyfile(source, target)
            results[name] = target
        overall = report["overall"]
        results.update({self.MSE: overall["mse"], self.SSIM: overall["ssim"],
                        self.PSNR: float("inf") if overall["psnr"] == "inf" else overall["psnr"]})
        return results
