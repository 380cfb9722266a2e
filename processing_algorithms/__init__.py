"""GFM4D's Processing provider and algorithms: the QGIS side of GFM4D.

Imports only what QGIS ships (qgis.core, PyQt, GDAL's Python bindings, the standard library);
everything heavy runs in the engine process, reached over HTTP (engine_client).
"""
