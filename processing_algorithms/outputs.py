"""Engine results into Processing's destinations (files the user chose, or temporary outputs).

The engine answers with GeoTIFFs and GeoPackages. A GeoTIFF destination receives the file as it
is (the engine's tiled, compressed, georeferenced file); another raster format is converted by
GDAL; vector results are copied feature by feature into the algorithm's feature sink, so any
format or a temporary layer works and the modeler can chain them.
"""

from __future__ import annotations

import os
import shutil

from qgis.core import QgsProcessingException, QgsRasterFileWriter, QgsVectorLayer

from .compat import FAST_INSERT

_GEOTIFF_SUFFIXES = (".tif", ".tiff")


def place_raster(downloaded: str, destination: str) -> str:
    """Move a downloaded GeoTIFF to `destination`, converting when its extension asks for another format."""
    folder = os.path.dirname(destination)
    if folder:
        os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(destination)[1].lower()
    if suffix in _GEOTIFF_SUFFIXES or not suffix:
        shutil.move(downloaded, destination)
        return destination
    from osgeo import gdal

    driver = QgsRasterFileWriter.driverForExtension(suffix.lstrip("."))
    if not driver or driver == "VRT":  # a VRT would point at a temporary file that is about to go
        raise QgsProcessingException(
            f"No raster format writes {suffix} files: save the output as a GeoTIFF (.tif) instead."
        )
    if gdal.Translate(destination, downloaded, format=driver) is None:
        raise QgsProcessingException(
            f"Could not convert the result to {driver} ({gdal.GetLastErrorMsg()}): save it as a GeoTIFF (.tif) instead."
        )
    os.remove(downloaded)
    return destination


def open_vector(path: str, name: str = "result") -> QgsVectorLayer:
    layer = QgsVectorLayer(path, name, "ogr")
    if not layer.isValid():
        raise QgsProcessingException(f"The engine's vector result {os.path.basename(path)} cannot be read by QGIS.")
    return layer


def copy_features(layer: QgsVectorLayer, sink, feedback) -> int:
    """Every feature of `layer` into `sink` (created with the layer's fields, type and CRS)."""
    count = 0
    for feature in layer.getFeatures():
        if feedback.isCanceled():
            break
        if not sink.addFeature(feature, FAST_INSERT):
            raise QgsProcessingException("Could not write a polygon to the output layer: check that its format takes polygons.")
        count += 1
    return count
