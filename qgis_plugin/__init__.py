"""QGIS plugin shell for GFM4D: registers the Processing provider."""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    from .plugin import GFM4DPlugin

    return GFM4DPlugin(iface)
