"""The "GFM4D" Processing provider: one algorithm per engine task, engine status and xBD import."""

from __future__ import annotations

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .dataset import DatasetAlgorithm
from .engine_status import EngineStatusAlgorithm
from .evaluate import EvaluateAlgorithm
from .generate import GenerateAlgorithm
from .import_xbd import ImportXbdLabelsAlgorithm
from .inpaint import InpaintAlgorithm
from .model_catalog import CATALOG
from .models_fetch import ModelsFetchAlgorithm
from .predict import PredictAlgorithm
from .superres import SuperresAlgorithm
from .train import TrainAlgorithm

ICON = os.path.join(os.path.dirname(__file__), "icon.svg")


class GFM4DProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "gfm4d"

    def name(self) -> str:
        return "GFM4D"

    def longName(self) -> str:
        return self.tr("GFM4D: diffusion models for satellite imagery")

    def icon(self):
        return QIcon(ICON)

    def svgIconPath(self) -> str:
        return ICON

    def loadAlgorithms(self) -> None:
        for algorithm in self.algorithms_to_register():
            self.addAlgorithm(algorithm)

    @staticmethod
    def algorithms_to_register() -> list:
        return [
            GenerateAlgorithm(),
            InpaintAlgorithm(),
            PredictAlgorithm(),
            SuperresAlgorithm(),
            EvaluateAlgorithm(),
            EngineStatusAlgorithm(),
            ImportXbdLabelsAlgorithm(),
            ModelsFetchAlgorithm(),
            DatasetAlgorithm(),
            TrainAlgorithm(),
        ]

    def refresh_models(self) -> None:
        """Ask the engine for its models again and rebuild the algorithms' MODEL choices."""
        CATALOG.invalidate()
        self.refreshAlgorithms()
