"""Super-resolution: a Sentinel-2 multiband raster becomes an ~8x finer RGB raster."""

from __future__ import annotations

import os
import re

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterExtent,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from .base import EngineAlgorithm, advanced, explained, is_unset
from .compat import NUMBER_DOUBLE
from .dates import acquisition_date
from .layer_export import export_raster

# Source pixels sent around the extent, so the output's edges are conditioned on real pixels.
MARGIN_PX = 2


class SuperresAlgorithm(EngineAlgorithm):
    TASK = "superres"
    INPUT = "INPUT"
    BANDS = "BANDS"
    EXTENT = "EXTENT"
    RESOLUTION = "RESOLUTION"
    DATE = "DATE"
    CLOUD_COVER = "CLOUD_COVER"
    CONTROL_SCALE = "CONTROL_SCALE"
    OUTPUT = "OUTPUT"

    HAS_WINDOWS = False

    HELP_ANCHOR = "super-resolve-sentinel-2"
    TAGS = ("super resolution, super-resolution, superresolution, superres, sentinel-2, sentinel, upscale, upsample, "
            "sharpen, enhance, high resolution, controlnet, diffusion, diffusionsat, synthetic")
    INTRO = (
        "Makes an RGB image about 8 times finer than a Sentinel-2 multiband raster, as DiffusionSat's super-resolution "
        "ControlNet does. The fine detail is synthesised by the model: use it as a plausible rendering, not as a "
        "measurement."
    )

    def name(self) -> str:
        return "superres"

    def displayName(self) -> str:
        return self.tr("Super-resolve Sentinel-2")

    def add_inputs(self) -> None:
        self.addParameter(explained(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Sentinel-2 raster")),
                                    self.tr("A multiband Sentinel-2 scene (L1C or L2A reflectances).")))
        self.addParameter(explained(QgsProcessingParameterString(self.BANDS, self.tr("Band names"), optional=True), self.tr(
            "The Sentinel-2 band of each raster band, in order, comma-separated (e.g. B02,B03,B04,B08). Empty: from the "
            "raster's band descriptions.")))
        self.addParameter(explained(QgsProcessingParameterExtent(self.EXTENT, self.tr("Extent"), optional=True),
                                    self.tr("Only this part of the scene (any CRS). Empty: the whole raster.")))
        self.addParameter(explained(QgsProcessingParameterNumber(
            self.RESOLUTION, self.tr("Resolution (m)"), NUMBER_DOUBLE, None, True, 0.01, 1000.0),
            self.tr("Ground metres per output pixel. Empty: the scene's pixel size / 8.")))
        self.addParameter(explained(self.date_parameter(self.DATE, self.tr("Acquisition date")),
                                    self.tr("Empty: the layer's date (temporal properties, file name or metadata).")))
        self.addParameter(advanced(explained(QgsProcessingParameterNumber(
            self.CLOUD_COVER, self.tr("Cloud cover"), NUMBER_DOUBLE, None, True, 0.0, 1.0),
            self.tr("Fraction of the scene under cloud, 0 to 1. Empty: not conditioned on."))))
        self.addParameter(advanced(explained(QgsProcessingParameterNumber(
            self.CONTROL_SCALE, self.tr("Conditioning scale"), NUMBER_DOUBLE, 1.0, False, 0.0, 10.0),
            self.tr("How strongly the Sentinel-2 pixels steer the output; 0 ignores them."))))

    def add_outputs(self) -> None:
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Super-resolved image")))

    def prepare(self, parameters, context, feedback, folder):
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(self.tr("Choose the Sentinel-2 raster layer."))
        params = {"control_scale": self.parameterAsDouble(parameters, self.CONTROL_SCALE, context)}
        window = None
        if not is_unset(parameters.get(self.EXTENT)):
            extent = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
            params["extent"] = [extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()]
            window = extent.buffered(MARGIN_PX * max(layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY()))
        image = self.name_upload(export_raster(layer, os.path.join(folder, "image.tif"), window, context, feedback),
                                 layer, "raster")
        bands = self.optional_string(parameters, self.BANDS, context)
        if bands is not None:
            names = [name.strip() for name in re.split(r"[,;\s]+", bands) if name.strip()]
            if len(names) != layer.bandCount():
                raise QgsProcessingException(self.tr("Bands names {0} bands, but the raster has {1}: name each band once, in order.").format(
                    len(names), layer.bandCount()))
            params["bands"] = names
        date = self.optional_date(parameters, self.DATE, context)
        if date is None:
            found, source = acquisition_date(layer)
            if found is not None:
                date = found.isoformat()
                feedback.pushInfo(self.tr("Acquisition date {0} (from the {1})").format(date, source))
        optional = {
            "resolution_m": self.optional_number(parameters, self.RESOLUTION, context),
            "date": date,
            "cloud_cover": self.optional_number(parameters, self.CLOUD_COVER, context),
        }
        params.update({key: value for key, value in optional.items() if value is not None})
        return params, [("image", image)]

    def deliver(self, client, job, parameters, context, feedback, folder, written):
        return {self.OUTPUT: self.fetch_raster(client, job, "image", parameters, self.OUTPUT, context, feedback, folder, written)}
