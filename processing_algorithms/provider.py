"""The "GFM4D" Processing provider.

Its algorithms (one per engine task) join as each engine task gains its HTTP API; the provider
itself is what QGIS lists in the toolbox and what the plugin registers.
"""

from qgis.core import QgsProcessingProvider


class GFM4DProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "gfm4d"

    def name(self) -> str:
        return "GFM4D"

    def longName(self) -> str:
        return self.tr("GFM4D: diffusion models for satellite imagery")

    def loadAlgorithms(self) -> None:
        for algorithm in self.algorithms_to_register():
            self.addAlgorithm(algorithm)

    @staticmethod
    def algorithms_to_register() -> list:
        return []
