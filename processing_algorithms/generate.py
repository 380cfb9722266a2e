"""Generate: a prompt and metadata become a georeferenced image over an extent or AOI polygons."""

from __future__ import annotations

import os

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterCrs,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
)

from .base import EngineAlgorithm, crs_for_engine, explained, is_unset
from .compat import NUMBER_DOUBLE, SOURCE_VECTOR_POLYGON
from .layer_export import export_features


class GenerateAlgorithm(EngineAlgorithm):
    TASK = "generate"
    EXTENT = "EXTENT"
    AOI = "AOI"
    OUTPUT_CRS = "OUTPUT_CRS"
    RESOLUTION = "RESOLUTION"
    DATE = "DATE"
    CLOUD_COVER = "CLOUD_COVER"
    OUTPUT = "OUTPUT"

    DEFAULT_PROMPT = "a fmow satellite image of a farm"
    PROMPT_REQUIRED = True
    HELP_ANCHOR = "generate-satellite-image"
    TAGS = ("generate, synthetic, synthetic data, satellite image, text to image, prompt, diffusion, diffusionsat, "
            "stable diffusion, remote sensing, imagery, fmow")
    INTRO = (
        "Generates a georeferenced RGB image over an extent (in any CRS) or over AOI polygons, at the chosen ground "
        "resolution, conditioned on a text prompt and on metadata (location, resolution, date, cloud cover) as "
        "DiffusionSat is. Large extents are generated window by window and blended seamlessly."
    )

    def name(self) -> str:
        return "generate"

    def displayName(self) -> str:
        return self.tr("Generate satellite image")

    def add_inputs(self) -> None:
        self.addParameter(explained(QgsProcessingParameterExtent(self.EXTENT, self.tr("Extent"), optional=True), self.tr(
            "Where to generate, in any CRS (the output takes it unless Output CRS is set). Give an extent or AOI "
            "polygons, not both.")))
        self.addParameter(explained(QgsProcessingParameterFeatureSource(
            self.AOI, self.tr("AOI polygons"), [SOURCE_VECTOR_POLYGON], optional=True), self.tr(
            "Instead of an extent: generate over these polygons' bounds and mask the image outside them.")))
        self.addParameter(explained(QgsProcessingParameterCrs(self.OUTPUT_CRS, self.tr("Output CRS"), optional=True),
                                    self.tr("Empty: the extent's (or the polygons') CRS.")))
        self.addParameter(explained(QgsProcessingParameterNumber(
            self.RESOLUTION, self.tr("Resolution (m)"), NUMBER_DOUBLE, 1.0, False, 0.01, 100000.0),
            self.tr("Ground metres per pixel, whatever the CRS's units; the model is told this ground sample distance.")))
        self.addParameter(explained(self.date_parameter(self.DATE, self.tr("Acquisition date")),
                                    self.tr("The date the image should look taken on (season, vegetation). Empty: none.")))
        self.addParameter(explained(QgsProcessingParameterNumber(
            self.CLOUD_COVER, self.tr("Cloud cover"), NUMBER_DOUBLE, None, True, 0.0, 1.0),
            self.tr("Fraction of the image under cloud, 0 to 1. Empty: not conditioned on.")))

    def add_outputs(self) -> None:
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Generated image")))

    def prepare(self, parameters, context, feedback, folder):
        has_extent, has_aoi = not is_unset(parameters.get(self.EXTENT)), not is_unset(parameters.get(self.AOI))
        if has_extent == has_aoi:
            raise QgsProcessingException(self.tr(
                "Say where to generate with either an extent or AOI polygons (not both, not neither)."))
        output_crs = self.parameterAsCrs(parameters, self.OUTPUT_CRS, context) if not is_unset(parameters.get(self.OUTPUT_CRS)) else None
        params = {"resolution_m": self.parameterAsDouble(parameters, self.RESOLUTION, context)}
        files = []
        if has_extent:
            extent_crs = self.parameterAsExtentCrs(parameters, self.EXTENT, context)
            crs = output_crs if output_crs is not None and output_crs.isValid() else extent_crs
            if not crs.isValid():
                raise QgsProcessingException(self.tr(
                    "The extent has no CRS: give one (e.g. '500000,501000,4100000,4101000 [EPSG:32618]') or set Output CRS."))
            extent = self.parameterAsExtent(parameters, self.EXTENT, context, crs)
            params["extent"] = [extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()]
            params["crs"] = crs_for_engine(crs)
        else:
            source = self.parameterAsSource(parameters, self.AOI, context)
            path = os.path.join(folder, "aoi.gpkg")
            if export_features(source, path, context, feedback) == 0:
                raise QgsProcessingException(self.tr(
                    "The AOI layer has no polygons to generate over (with 'selected features only', select some first)."))
            files.append(("aoi", path))
            if output_crs is not None and output_crs.isValid():
                params["crs"] = crs_for_engine(output_crs)
        date = self.optional_date(parameters, self.DATE, context)
        cloud = self.optional_number(parameters, self.CLOUD_COVER, context)
        params.update({key: value for key, value in (("date", date), ("cloud_cover", cloud)) if value is not None})
        return params, files

    def deliver(self, client, job, parameters, context, feedback, folder, written):
        return {self.OUTPUT: self.fetch_raster(client, job, "image", parameters, self.OUTPUT, context, feedback, folder, written)}
