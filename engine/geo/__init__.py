"""Geospatial core: rasters, grids, windows, metadata, writers.

GDAL's block cache defaults to 5 % of the machine's RAM, so a job that streams a large raster
would grow the process by gigabytes for no benefit (every block is read or written once). A fixed
cache keeps memory flat whatever the raster size; set GDAL_CACHEMAX yourself to override.
"""

import os

os.environ.setdefault("GDAL_CACHEMAX", "64")
