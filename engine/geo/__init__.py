"""Geospatial core: rasters, grids, windows, metadata, writers."""
