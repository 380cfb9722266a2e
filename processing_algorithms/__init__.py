"""GFM4D's Processing provider and algorithms (QGIS side: qgis.core, PyQt5 and requests only)."""
