"""Layers as the files the engine takes: only the window a task needs, in the layer's own CRS.

Rasters: a local GDAL file is cut with gdal.Translate on whole source pixels (the window keeps the
source's grid, data type, nodata, masks, band names and metadata); a whole GeoTIFF is sent as it
is. Any other raster (WMS, WCS, PostGIS, virtual rasters, GDAL sources that are not local files)
goes through QgsRasterFileWriter. Vectors: the features (only the selected ones when the
parameter says so, only those inside the window) are written to a GeoPackage in their own CRS.
"""

from __future__ import annotations

import math

from qgis.core import (
    QgsCoordinateTransform,
    QgsFeatureRequest,
    QgsProcessingException,
    QgsRasterFileWriter,
    QgsRasterLayer,
    QgsRasterPipe,
    QgsRectangle,
    QgsVectorFileWriter,
)

from .compat import RASTER_CAPABILITY_SIZE, RASTER_WRITER_OK, VECTOR_WRITER_OK, has_capability
from .dates import layer_file

# Pixels across the longest side when a raster has no pixels of its own (WMS, XYZ tiles).
RENDERED_SIZE_PX = 2048
_GTIFF_OPTIONS = ["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"]


def region_in_layer_crs(extent: QgsRectangle, extent_crs, layer_crs, transform_context, margin: float = 0.0) -> QgsRectangle:
    """An extent (in any CRS) as a rectangle in a layer's CRS, grown by `margin` layer units."""
    region = QgsRectangle(extent)
    if extent_crs is not None and extent_crs.isValid() and extent_crs != layer_crs:
        region = QgsCoordinateTransform(extent_crs, layer_crs, transform_context).transformBoundingBox(region)
    if margin:
        region.grow(margin)
    return region


def _pixel_window(geotransform, width: int, height: int, region: QgsRectangle | None) -> tuple[int, int, int, int] | None:
    """(col, row, cols, rows) of the whole source pixels that cover `region`; None when none do."""
    x0, dx, _, y0, _, dy = geotransform
    if region is None:
        return 0, 0, width, height
    col0 = max(0, math.floor((region.xMinimum() - x0) / dx + 1e-9))
    col1 = min(width, math.ceil((region.xMaximum() - x0) / dx - 1e-9))
    row0 = max(0, math.floor((region.yMaximum() - y0) / dy + 1e-9))
    row1 = min(height, math.ceil((region.yMinimum() - y0) / dy - 1e-9))
    if col1 <= col0 or row1 <= row0:
        return None
    return col0, row0, col1 - col0, row1 - row0


def _no_overlap(layer: QgsRasterLayer) -> QgsProcessingException:
    return QgsProcessingException(
        f"The extent does not overlap the raster layer {layer.name()!r}: choose an extent inside it, or leave the extent empty."
    )


def export_raster(layer: QgsRasterLayer, path: str, region: QgsRectangle | None, context, feedback) -> str:
    """A GeoTIFF (or the layer's own GeoTIFF) covering `region` (layer CRS; None: all of it).

    Returns the file to send: `path` when one was written, the layer's file when it can go as it is.
    """
    if region is not None and not region.intersects(layer.extent()):
        raise _no_overlap(layer)
    source = layer_file(layer)
    if source is not None:
        written = _translate_window(source, path, region, layer)
        if written is not None:
            return written
    return _write_with_qgis(layer, path, region, context, feedback)


def _translate_window(source: str, path: str, region: QgsRectangle | None, layer: QgsRasterLayer) -> str | None:
    """gdal.Translate on whole pixels; None when GDAL cannot cut this file (rotated, unreadable)."""
    from osgeo import gdal

    dataset = gdal.Open(source)
    if dataset is None:
        return None
    geotransform = dataset.GetGeoTransform(can_return_null=True)
    if geotransform is None or geotransform[2] != 0 or geotransform[4] != 0 or geotransform[5] >= 0:
        return None
    window = _pixel_window(geotransform, dataset.RasterXSize, dataset.RasterYSize, region)
    if window is None:
        raise _no_overlap(layer)
    whole = window == (0, 0, dataset.RasterXSize, dataset.RasterYSize)
    if whole and dataset.GetDriver().ShortName == "GTiff":
        return source
    options = gdal.TranslateOptions(format="GTiff", srcWin=list(window), creationOptions=_GTIFF_OPTIONS)
    result = gdal.Translate(path, dataset, options=options)
    if result is None:
        raise QgsProcessingException(f"Could not write a window of {source} to {path}: {gdal.GetLastErrorMsg()}")
    result = None  # closes (and flushes) the file
    return path


def _write_with_qgis(layer: QgsRasterLayer, path: str, region: QgsRectangle | None, context, feedback) -> str:
    provider = layer.dataProvider()
    extent = layer.extent() if region is None else region.intersect(layer.extent())
    if has_capability(provider, RASTER_CAPABILITY_SIZE) and provider.xSize() > 0:
        size_x, size_y = layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY()
        full = layer.extent()
        # Snap outwards to the layer's own pixel grid, so the window keeps its pixels unresampled.
        col0 = math.floor((extent.xMinimum() - full.xMinimum()) / size_x + 1e-9)
        col1 = math.ceil((extent.xMaximum() - full.xMinimum()) / size_x - 1e-9)
        row0 = math.floor((full.yMaximum() - extent.yMaximum()) / size_y + 1e-9)
        row1 = math.ceil((full.yMaximum() - extent.yMinimum()) / size_y - 1e-9)
        extent = QgsRectangle(full.xMinimum() + col0 * size_x, full.yMaximum() - row1 * size_y,
                              full.xMinimum() + col1 * size_x, full.yMaximum() - row0 * size_y)
        cols, rows = col1 - col0, row1 - row0
    else:
        scale = RENDERED_SIZE_PX / max(extent.width(), extent.height())
        cols, rows = max(1, round(extent.width() * scale)), max(1, round(extent.height() * scale))
        feedback.pushInfo(f"{layer.name()} has no pixels of its own: it is rendered at {cols} x {rows} px for the engine.")
    pipe = QgsRasterPipe()
    if not pipe.set(provider.clone()):
        raise QgsProcessingException(f"Cannot read the raster layer {layer.name()!r} ({layer.source()}).")
    writer = QgsRasterFileWriter(path)
    writer.setOutputFormat("GTiff")
    writer.setCreateOptions(_GTIFF_OPTIONS)
    error = writer.writeRaster(pipe, cols, rows, extent, layer.crs(), context.transformContext())
    if error != RASTER_WRITER_OK:
        raise QgsProcessingException(
            f"Could not write the raster layer {layer.name()!r} to a GeoTIFF for the engine (error {error}); "
            "save it as a GeoTIFF first (Export > Save As) and use that."
        )
    return path


def export_features(source, path: str, context, feedback, region: QgsRectangle | None = None, region_crs=None) -> int:
    """Write a feature source (its CRS, every field) to a GeoPackage; the number of features written.

    With `region` (in `region_crs`), only features whose bounding box meets it are written.
    """
    request = QgsFeatureRequest()
    if region is not None:
        request.setFilterRect(region_in_layer_crs(region, region_crs, source.sourceCrs(), context.transformContext()))
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = "polygons"
    options.layerOptions = ["FID=gfm4d_fid"]  # keeps a source field called "fid" an ordinary field
    writer = QgsVectorFileWriter.create(path, source.fields(), source.wkbType(), source.sourceCrs(),
                                        context.transformContext(), options)
    if writer.hasError() != VECTOR_WRITER_OK:
        raise QgsProcessingException(f"Could not create {path} for the engine: {writer.errorMessage()}")
    count = 0
    for feature in source.getFeatures(request):
        if feedback.isCanceled():
            break
        if feature.hasGeometry() and writer.addFeature(feature):
            count += 1
    error, message = writer.hasError(), writer.errorMessage()
    del writer  # closes the GeoPackage
    if error != VECTOR_WRITER_OK:
        raise QgsProcessingException(f"Could not write the polygons for the engine: {message}")
    return count
