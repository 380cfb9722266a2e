"""Build synthetic disaster dataset: a recipe (YAML/JSON) and the files it names -> a dataset folder.

The recipe is read here only to find the files it names (scenes: files, folders or globs; damage
sources: polygon files with their Shapefile sidecars, xBD JSONs, SpaceNet 8 labels). They are sent
to the engine with the recipe rewritten to name them by file name, as the engine's API requires;
the finished dataset comes back as a zip and is unpacked into the output folder.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import zipfile

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from .base import MAX_SEED, EngineAlgorithm, advanced
from .compat import NUMBER_INTEGER

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
MODEL_TASK = "inpaint"  # the task whose models make the samples
SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix")


def _safe_name(path: str) -> str:
    """The name the engine stores an upload under (engine.server.uploads: safe characters, lower-case suffix)."""
    stem, suffix = os.path.splitext(os.path.basename(path))
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).strip("._")[:120] or "file"
    return stem + suffix.lower()


def read_recipe(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        if path.lower().endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml and json raise different errors for the same mistake
        raise QgsProcessingException(f"The recipe {path} is not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("scenes"), list):
        raise QgsProcessingException(f"The recipe {path} has no list of scenes; see the README's 'Build a training dataset'.")
    return data


def _scene_files(entry: str, base: str) -> list[str]:
    path = entry if os.path.isabs(entry) else os.path.join(base, entry)
    if any(ch in entry for ch in "*?["):
        return sorted(p for p in glob.glob(path, recursive=True) if p.lower().endswith(RASTER_SUFFIXES))
    if os.path.isdir(path):
        return sorted(os.path.join(path, p) for p in os.listdir(path) if p.lower().endswith(RASTER_SUFFIXES))
    if not os.path.isfile(path):
        raise QgsProcessingException(f"The recipe's scene {entry} does not exist (relative paths are read from the recipe's folder).")
    return [path]


def stage_recipe(data: dict, recipe_path: str, folder: str) -> tuple[str, list[str]]:
    """Copy the recipe's files into `folder` under their upload names; (rewritten recipe path, files)."""
    base = os.path.dirname(os.path.abspath(recipe_path))
    staged: dict[str, str] = {}

    def add(path: str) -> str:
        path = path if os.path.isabs(path) else os.path.join(base, path)
        if not os.path.isfile(path):
            raise QgsProcessingException(f"The recipe names {path}, which does not exist.")
        name = _safe_name(path)
        if name in staged and os.path.realpath(staged[name]) != os.path.realpath(path):
            raise QgsProcessingException(f"Two files of the recipe are both called {name}; rename one of them.")
        staged[name] = path
        if name.endswith(".shp"):
            for part in SHAPEFILE_PARTS[1:]:
                sidecar = os.path.splitext(path)[0] + part
                if os.path.isfile(sidecar):
                    staged[_safe_name(sidecar)] = sidecar
        return name

    def sources(entries):
        out = []
        for source in entries or []:
            source = dict(source)
            for key in ("path", "near"):
                if source.get(key):
                    source[key] = add(source[key])
            out.append(source)
        return out

    scenes = []
    for entry in data["scenes"]:
        for raster in _scene_files(str(entry.get("path", "")), base):
            scenes.append({**entry, "path": add(raster), "damage": sources(entry.get("damage"))})
    rewritten = {**data, "scenes": scenes, "damage": sources(data.get("damage"))}
    for name, path in staged.items():
        shutil.copyfile(path, os.path.join(folder, name))
    recipe = os.path.join(folder, "recipe.json")
    with open(recipe, "w", encoding="utf-8") as handle:
        json.dump(rewritten, handle, default=str)  # YAML dates -> ISO text
    return recipe, [os.path.join(folder, name) for name in staged]


class DatasetAlgorithm(EngineAlgorithm):
    TASK = "dataset"
    RECIPE = "RECIPE"
    OUTPUT = "OUTPUT"
    CARD = "CARD"
    DEFAULT_STEPS = 30

    def name(self) -> str:
        return "dataset"

    def displayName(self) -> str:
        return self.tr("Build synthetic disaster dataset")

    def tags(self):
        return self.tr("dataset,training,synthetic,xbd,xview2,spacenet,damage,flood,labels,stac,diffusion").split(",")

    def shortHelpString(self) -> str:
        return self.tr(
            "Builds a labelled training dataset of synthetic disaster imagery from a recipe (YAML or JSON): "
            "pre-event scenes, damage sources (polygon files, xBD labels, SpaceNet 8 flood labels, building "
            "footprints with a damage rule, procedural flood/burn shapes), chip size and count, model and seeds, "
            "train/val/test split by scene or by area, and the layout (GFM4D or xBD/xView2).\n\n"
            "Each sample has a pre chip, a synthetic post chip (same grid), a label raster (class codes, 255 nodata), "
            "label polygons with xBD-style subtypes and a metadata record; the folder also gets a STAC catalog, a "
            "dataset card (README.md) with counts per class and split, and a preview mosaic.\n\n"
            "The files the recipe names (relative paths are read from the recipe's folder) are sent to the engine "
            "with it. Steps and seed, when set, override the recipe's. Running again into the same folder with the "
            "same recipe makes the same bytes."
        )

    def add_inputs(self) -> None:
        self.addParameter(QgsProcessingParameterFile(
            self.RECIPE, self.tr("Recipe (YAML or JSON)"), fileFilter=self.tr("Recipes (*.yaml *.yml *.json)")))

    def add_prompt_and_sampling(self) -> None:
        # The recipe holds prompts, classes and sampler settings; only its model, steps and seed can be overridden here.
        self.addParameter(self.model_parameter())
        self.addParameter(QgsProcessingParameterNumber(
            self.STEPS, self.tr("Denoising steps (empty: the recipe's)"), NUMBER_INTEGER, None, True, 1, 1000))
        self.addParameter(QgsProcessingParameterNumber(
            self.SEED, self.tr("Base seed (empty: the recipe's)"), NUMBER_INTEGER, None, True, 0, MAX_SEED))
        self.addParameter(advanced(QgsProcessingParameterString(
            self.ENGINE_URL, self.tr("Engine URL (empty: the plugin's setting)"), optional=True)))

    def model_parameter(self):
        """MODEL: the engine's inpainting models (a dataset's samples are inpainted)."""
        return self.model_choice(MODEL_TASK, self.tr("Model (empty: the recipe's)"),
                                 self.tr("Name of an inpainting model folder in the engine's models directory."))

    def engine_client(self, parameters, context):
        client = super().engine_client(parameters, context)
        require_model = client.require_model
        client.require_model = lambda task, model, **options: require_model(MODEL_TASK, model, **options)  # listed by what they do
        return client

    def add_outputs(self) -> None:
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, self.tr("Dataset folder")))
        self.addOutput(QgsProcessingOutputFile(self.CARD, self.tr("Dataset card (README.md)")))

    def sampling_params(self, parameters, context) -> dict:
        values = {"steps": self.optional_number(parameters, self.STEPS, context, integer=True),
                  "seed": self.optional_number(parameters, self.SEED, context, integer=True)}
        return {key: value for key, value in values.items() if value is not None}

    def prepare(self, parameters, context, feedback, folder):
        recipe_path = self.parameterAsFile(parameters, self.RECIPE, context)
        if not recipe_path or not os.path.isfile(recipe_path):
            raise QgsProcessingException(self.tr("Choose a recipe file (.yaml or .json)."))
        staging = os.path.join(folder, "inputs")
        os.makedirs(staging)
        recipe, files = stage_recipe(read_recipe(recipe_path), recipe_path, staging)
        feedback.pushInfo(self.tr("The recipe names {0} files").format(len(files)))
        return {}, [("recipe", recipe)] + [("files", path) for path in files]

    def deliver(self, client, job, parameters, context, feedback, folder, written):
        destination = self.parameterAsString(parameters, self.OUTPUT, context)
        archive = client.download(job["id"], "dataset", os.path.join(folder, "dataset.zip"), feedback)
        os.makedirs(destination, exist_ok=True)
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.namelist():
                target = os.path.realpath(os.path.join(destination, member))
                if not target.startswith(os.path.realpath(destination) + os.sep):
                    raise QgsProcessingException(self.tr("The engine's dataset archive holds a path outside the folder: {0}").format(member))
            bundle.extractall(destination)
        card = os.path.join(destination, "README.md")
        feedback.pushInfo(self.tr("Dataset written to {0}").format(destination))
        return {self.OUTPUT: destination, self.CARD: card}
