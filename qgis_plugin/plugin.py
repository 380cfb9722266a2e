"""Plugin lifecycle: register the provider on start, remove it on unload.

The provider is kept as an attribute: QGIS holds it only weakly from Python's side, and a
provider that Python garbage-collects disappears from the toolbox.
"""

from qgis.core import QgsApplication


class GFM4DPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # noqa: N802 (QGIS's name)
        from processing_algorithms.provider import GFM4DProvider

        self.provider = GFM4DProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
