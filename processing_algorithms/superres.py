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

from .base import EngineAlgorithm, advanced, is_unset
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

    def name(self) -> str:
        return "superres"

    def displayName(self) -> str:
        return self.tr("Super-resolve Sentinel-2")

    def shortHelpString(self) -> str:
        return self.tr(
            "Makes an RGB image about 8 times finer than a Sentinel-2 multiband raster (DiffusionSat's "
            "super-resolution ControlNet). Bands names the Sentinel-2 band of each raster band in order "
            "(e.g. B02,B03,B04,B08,...) when the raster's band descriptions do not. Extent (any CRS) limits the "
            "output; Resolution defaults to the scene's pixel size / 8; the date defaults to the layer's."
        )

    def add_inputs(self) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Sentinel-2 raster")))
        self.addParameter(QgsProcessingParameterString(
            self.BANDS, self.tr("Sentinel-2 band of each raster band (comma-separated; empty: from the raster)"), optional=True))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, self.tr("Only this extent (empty: the whole raster)"), optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.RESOLUTION, self.tr("Output resolution in metres (empty: the scene's / 8)"), NUMBER_DOUBLE, None, True, 0.01, 1000.0))
        self.addParameter(self.date_parameter(self.DATE, self.tr("Acquisition date (empty: the layer's)")))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.CLOUD_COVER, self.tr("Cloud cover (0 to 1)"), NUMBER_DOUBLE, None, True, 0.0, 1.0)))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.CONTROL_SCALE, self.tr("Conditioning scale"), NUMBER_DOUBLE, 1.0, False, 0.0, 10.0)))

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
        image = export_raster(layer, os.path.join(folder, "image.tif"), window, context, feedback)
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
