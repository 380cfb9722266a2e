"""Train or fine-tune a model: raster layers (and optional class polygons) become a model on the engine.

The engine's train task fits a LoRA (default), fine-tunes a whole model or trains one from scratch,
and installs the result in its models folder under the name given, so Generate and Inpaint can use
it as soon as the job ends. What comes back here is the model card, the loss curve and, when the
run drew one, the last sample grid; the model itself stays on the engine's machine.
"""

from __future__ import annotations

import os
import re

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsRectangle,
)

from .base import MAX_SEED, EngineAlgorithm, advanced, explained, is_unset
from .compat import (
    FIELD_ANY,
    NUMBER_DOUBLE,
    NUMBER_INTEGER,
    RASTER_CAPABILITY_SIZE,
    SOURCE_RASTER,
    SOURCE_VECTOR_POLYGON,
    has_capability,
)
from .damage_classes import CLASS_FIELDS, CLASS_NAMES, find_class_field
from .engine_client import MENU
from .inpaint import DISASTER_TYPES
from .layer_export import export_features, export_raster, region_in_layer_crs
from .model_catalog import CATALOG
from .outputs import open_vector

MODES = ["lora", "full", "scratch"]
MODEL_TASK = ("generate", "inpaint")  # a fine-tune starts from a generation model or an inpainting one
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # the engine's rule for the new model's folder


def parse_scales(text: str) -> list[int]:
    """'1, 2, 4' -> [1, 2, 4]: the pooling scales the chips are cut at."""
    try:
        scales = [int(part) for part in re.split(r"[,; ]+", text or "") if part]
    except ValueError:
        raise QgsProcessingException(f"Scales: write whole numbers separated by commas, e.g. 1, 2, 4 (not {text!r}).") from None
    if not 1 <= len(scales) <= 6 or min(scales) < 1:
        raise QgsProcessingException(f"Scales: give one to six whole numbers of 1 or more, e.g. 1, 2, 4 (not {text!r}).")
    return scales


def upload_name(layer_name: str) -> str:
    """A file name for an exported layer, so that the model card names the layer the chips came from."""
    return (re.sub(r"[^A-Za-z0-9_.-]", "_", layer_name).strip("._")[:100] or "raster") + ".tif"


class TrainAlgorithm(EngineAlgorithm):
    TASK = "train"
    INPUTS = "INPUTS"
    NAME = "NAME"
    MODE = "MODE"
    INPAINTING = "INPAINTING"
    POLYGONS = "POLYGONS"
    CLASS_FIELD = "CLASS_FIELD"
    POLYGON_CLASS = "POLYGON_CLASS"
    DISASTER_TYPE = "DISASTER_TYPE"
    LAND_COVER = "LAND_COVER"
    COUNTRY = "COUNTRY"
    LICENCE = "LICENCE"
    CHIP_SIZE = "CHIP_SIZE"
    SCALES = "SCALES"
    HOLDOUT = "HOLDOUT"
    EVENT_CHIPS = "EVENT_CHIPS"
    VAE_STEPS = "VAE_STEPS"
    LEARNING_RATE = "LEARNING_RATE"
    LORA_RANK = "LORA_RANK"
    CARD = "CARD"
    LOSS_CURVE = "LOSS_CURVE"
    SAMPLES = "SAMPLES"
    MODEL_NAME = "MODEL_NAME"

    HELP_ANCHOR = "train-or-fine-tune-a-model"
    TAGS = ("train, training, fine-tune, fine tune, finetune, lora, adapter, custom model, own model, transfer learning, "
            "model card, loss, satunet, diffusionsat, stable diffusion, diffusion, wildfire, burn scar, flood, inpainting, mask")
    INTRO = (
        "Trains a model on your raster layers on the GFM4D engine: a LoRA on top of a base model (the default: small, "
        "quick), a full fine-tune of the base model, or a new model from scratch. The rasters (georeferenced RGB, any "
        "CRS) are cut into chips captioned with their place, ground resolution and land cover; the east part of each "
        "raster is held out to score the result.\n\n"
        "Class polygons (burn scars, flood extents, damaged buildings) caption the chips they cover as inpainting "
        "prompts that class, so the model learns to paint it.\n\n"
        "The model is installed in the engine's models folder under Model name (a LoRA in its loras folder) when the "
        "job ends; a full or scratch model is then offered as Model by Generate and Inpaint. The model card, the loss "
        "curve and the last sample grid come back here. Training runs for minutes to hours: the progress bar follows "
        "the training steps, and Cancel stops the job."
    )

    def name(self) -> str:
        return "train"

    def displayName(self) -> str:
        return self.tr("Train or fine-tune a model")

    # --- parameters --------------------------------------------------------------------------------

    def add_inputs(self) -> None:
        self.addParameter(explained(QgsProcessingParameterMultipleLayers(
            self.INPUTS, self.tr("Training rasters"), SOURCE_RASTER), self.tr(
            "Georeferenced RGB rasters with pixels of their own (GeoTIFFs and other files, WCS, PostGIS rasters), in "
            "any CRS; each is sent whole.")))
        self.addParameter(explained(QgsProcessingParameterString(self.NAME, self.tr("Model name")), self.tr(
            "The new model's name in the engine's models folder: letters, digits, '.', '_' and '-', not yet taken.")))
        self.addParameter(explained(QgsProcessingParameterEnum(
            self.MODE, self.tr("Mode"), MODES, False, MODES[0], False, True), self.tr(
            "lora: a small adapter on the base model (fast, little data); full: fine-tune all of the base model; "
            "scratch: a new model, its own VAE included (much data, long).")))
        self.addParameter(explained(QgsProcessingParameterBoolean(
            self.INPAINTING, self.tr("Inpainting model"), False), self.tr(
            "Trains the model Inpaint uses to paint events: the chips under the Class polygons (burn scars, flood "
            "extents) are masked with them, other chips with random blobs. Empty Base model: the engine's inpainting "
            "model. A LoRA needs an inpainting base model; mode full also turns a generation model into one. A base "
            "model that is an inpainting model trains as one whether this is ticked or not.")))
        self.addParameter(explained(QgsProcessingParameterFeatureSource(
            self.POLYGONS, self.tr("Class polygons"), [SOURCE_VECTOR_POLYGON], optional=True), self.tr(
            "Optional: polygons with classes over the rasters, in any CRS. The chips they cover are captioned as "
            "inpainting prompts their class. 'Selected features only' sends just the selected ones.")))
        self.addParameter(explained(QgsProcessingParameterField(
            self.CLASS_FIELD, self.tr("Class field"), None, self.POLYGONS, FIELD_ANY, optional=True), self.tr(
            "The attribute with each polygon's class (an xBD subtype, dmg grade, Copernicus EMS notation, or a land "
            "cover such as forest). Without it and without Polygon class: the first of {0} that the polygons fill, "
            "else every polygon is 'affected'.").format(", ".join(CLASS_FIELDS))))
        self.addParameter(explained(QgsProcessingParameterEnum(
            self.POLYGON_CLASS, self.tr("Polygon class"), list(CLASS_NAMES.values()), False, None, True, True), self.tr(
            "The class of every polygon, when they have no class field, e.g. burnt-area for burn perimeters.")))
        self.addParameter(explained(QgsProcessingParameterEnum(
            self.DISASTER_TYPE, self.tr("Disaster type"), DISASTER_TYPES, False, None, True, True), self.tr(
            "Worded into the captions of damage classes. Empty: the polygons' disaster_type or event_type "
            "attribute, if they share one.")))
        self.addParameter(explained(QgsProcessingParameterString(self.LAND_COVER, self.tr("Land cover"), optional=True),
                                    self.tr("Caption words for the imagery, e.g. forest, farm, town.")))
        self.addParameter(explained(QgsProcessingParameterString(self.COUNTRY, self.tr("Country"), optional=True),
                                    self.tr("Caption words for where the imagery is, e.g. the united states.")))
        self.addParameter(explained(QgsProcessingParameterString(self.LICENCE, self.tr("Licence"), optional=True),
                                    self.tr("The imagery's licence, e.g. CC BY 4.0, written into the model card. "
                                            "Empty: unknown.")))

    def add_prompt_and_sampling(self) -> None:
        # Training has no prompt or sampler: the base model and the training settings take their place.
        self.addParameter(self.model_parameter())
        self.addParameter(explained(QgsProcessingParameterNumber(
            self.STEPS, self.tr("Training steps"), NUMBER_INTEGER, 2000, False, 1, 1_000_000),
            self.tr("Optimiser steps of the SatUNet (the engine's default: 2000). Time grows with steps x batch size.")))
        self.addParameter(advanced(explained(QgsProcessingParameterNumber(
            self.BATCH_SIZE, self.tr("Batch size"), NUMBER_INTEGER, None, True, 1, 1024),
            self.tr("Chips per training step. Empty: the engine's default (8)."))))
        self.addParameter(advanced(explained(QgsProcessingParameterNumber(
            self.CHIP_SIZE, self.tr("Chip size (px)"), NUMBER_INTEGER, 128, False, 32, 1024),
            self.tr("Pixels across each training chip, a multiple of 8; use the window size you will generate at."))))
        self.addParameter(advanced(explained(QgsProcessingParameterString(
            self.SCALES, self.tr("Scales"), "1, 2, 4"),
            self.tr("Pooling factors the chips are cut at (1: the rasters' own resolution, 2: half of it...), "
                    "comma-separated, up to six."))))
        self.addParameter(advanced(explained(QgsProcessingParameterNumber(
            self.HOLDOUT, self.tr("Held-out share"), NUMBER_DOUBLE, 0.2, False, 0.01, 0.89),
            self.tr("The share of each raster (its east strip) kept out of training to score the model."))))
        self.addParameter(advanced(explained(QgsProcessingParameterNumber(
            self.EVENT_CHIPS, self.tr("Event chips"), NUMBER_DOUBLE, None, True, 0.01, 1.0),
            self.tr("Adds chips centred on each damage or event polygon (burn scar, flood) where such classes cover at "
                    "least this share of the chip, e.g. 0.5, so the model sees the event fill the chip with its "
                    "caption. Empty: only the regular chip grid."))))
        self.addParameter(advanced(explained(QgsProcessingParameterNumber(
            self.LEARNING_RATE, self.tr("Learning rate"), NUMBER_DOUBLE, None, True, 1e-8, 1.0),
            self.tr("The optimiser's learning rate. Empty: the engine's default for the mode."))))
        self.addParameter(advanced(explained(QgsProcessingParameterNumber(
            self.LORA_RANK, self.tr("LoRA rank"), NUMBER_INTEGER, 8, False, 1, 256),
            self.tr("The adapter's rank (mode lora): higher learns more, and makes a larger file."))))
        self.addParameter(advanced(explained(QgsProcessingParameterNumber(
            self.VAE_STEPS, self.tr("VAE steps"), NUMBER_INTEGER, 1500, False, 1, 1_000_000),
            self.tr("Training steps of the new model's VAE (mode scratch only)."))))
        self.addParameter(advanced(explained(QgsProcessingParameterNumber(
            self.SEED, self.tr("Seed"), NUMBER_INTEGER, 0, False, 0, MAX_SEED),
            self.tr("The same seed with the same data and settings trains the same model."))))
        self.addParameter(advanced(explained(QgsProcessingParameterString(
            self.ENGINE_URL, self.tr("Engine URL"), optional=True),
            self.tr("The engine to train on, e.g. http://gpu-box:8765. Empty: the one in {0} > Settings.").format(MENU))))

    def model_parameter(self):
        """MODEL: the engine's generation models, the ones a LoRA or a fine-tune can start from."""
        return self.model_choice(MODEL_TASK, self.tr("Base model"), self.tr(
            "The model a LoRA or a full fine-tune starts from (a generation or an inpainting model in the engine's "
            "models directory). Empty: the engine's default model (its inpainting model when Inpainting model is "
            "ticked). Not used from scratch."))

    def add_outputs(self) -> None:
        self.addParameter(explained(QgsProcessingParameterFileDestination(
            self.CARD, self.tr("Model card"), self.tr("Markdown files (*.md)")), self.tr(
            "The model card: training data and licences, recipe, held-out scores, captions learnt.")))
        self.addParameter(explained(QgsProcessingParameterFileDestination(
            self.LOSS_CURVE, self.tr("Loss curve"), self.tr("PNG files (*.png)"), optional=True, createByDefault=True),
            self.tr("The training loss per step, as a PNG plot.")))
        self.addParameter(explained(QgsProcessingParameterFileDestination(
            self.SAMPLES, self.tr("Sample grid"), self.tr("PNG files (*.png)"), optional=True, createByDefault=False),
            self.tr("The last grid of samples the run drew (none when it ended before its first sample).")))
        self.addOutput(QgsProcessingOutputString(self.MODEL_NAME, self.tr("Installed model")))

    # --- running -----------------------------------------------------------------------------------

    def engine_client(self, parameters, context):
        """The base model is checked against the generation and inpainting models: no model does `train` itself."""
        client = super().engine_client(parameters, context)
        require_model = client.require_model
        client.require_model = lambda task, model, **kwargs: require_model(MODEL_TASK, model, **kwargs)
        return client

    def sampling_params(self, parameters, context) -> dict:
        return {}

    def prepare(self, parameters, context, feedback, folder):
        mode = self.parameterAsEnumString(parameters, self.MODE, context) or MODES[0]
        self.check_base_model(mode, self.optional_string(parameters, self.MODEL, context))
        name = self.new_model_name(parameters, context)
        chip_size = self.parameterAsInt(parameters, self.CHIP_SIZE, context)
        if chip_size % 8:
            raise QgsProcessingException(
                self.tr("Chip size must be a multiple of 8 (e.g. 64, 128, 256), not {0}.").format(chip_size))
        layers = self.training_layers(parameters, context)
        params = {
            "name": name,
            "mode": mode,
            "chip_size": chip_size,
            "scales": parse_scales(self.parameterAsString(parameters, self.SCALES, context)),
            "holdout": self.parameterAsDouble(parameters, self.HOLDOUT, context),
            "steps": self.parameterAsInt(parameters, self.STEPS, context),
            "vae_steps": self.parameterAsInt(parameters, self.VAE_STEPS, context),
            "lora_rank": self.parameterAsInt(parameters, self.LORA_RANK, context),
            "seed": self.parameterAsInt(parameters, self.SEED, context),
        }
        if self.parameterAsBool(parameters, self.INPAINTING, context):  # sent only when asked: an older engine knows none
            params["inpainting"] = True
        optional = {
            "batch": self.optional_number(parameters, self.BATCH_SIZE, context, integer=True),
            "learning_rate": self.optional_number(parameters, self.LEARNING_RATE, context),
            "event_chips": self.optional_number(parameters, self.EVENT_CHIPS, context),
            "land_cover": self.optional_string(parameters, self.LAND_COVER, context),
            "country": self.optional_string(parameters, self.COUNTRY, context),
            "licence": self.optional_string(parameters, self.LICENCE, context),
        }
        files = []  # the polygons first: their mistakes are found before any raster is written
        optional.update(self.polygon_params(parameters, context, feedback, folder, layers, files))
        for index, layer in enumerate(layers):
            if feedback.isCanceled():
                break
            os.makedirs(os.path.join(folder, str(index)))
            path = export_raster(layer, os.path.join(folder, str(index), upload_name(layer.name())), None, context, feedback)
            files.append(("rasters", self.name_upload(path, layer, f"raster {index + 1}")))
        params.update({key: value for key, value in optional.items() if value is not None})
        feedback.pushInfo(self.tr("Training {0} {1!r} on {2} raster(s)").format(mode, name, len(layers)))
        return params, files

    def check_base_model(self, mode: str, model: str | None) -> None:
        if mode == "scratch" and model is not None:
            raise QgsProcessingException(self.tr(
                "Mode scratch trains a new model and uses no base model: leave Base model empty, or choose mode lora "
                "or full to start from {0!r}.").format(model))

    def new_model_name(self, parameters, context) -> str:
        """The name to install under, refused here when the engine's models already use it (nothing uploaded)."""
        name = (self.parameterAsString(parameters, self.NAME, context) or "").strip()
        if not NAME_PATTERN.fullmatch(name):
            raise QgsProcessingException(self.tr(
                "Model name {0!r} cannot name a model folder: use up to 100 letters, digits, '.', '_' and '-', "
                "starting with a letter or digit (e.g. forest-lora).").format(name))
        taken = {model.get("name") for model in self.engine_client(parameters, context).models()}
        if name in taken:
            raise QgsProcessingException(self.tr(
                "The engine already has a model named {0!r}: choose another Model name (nothing was sent).").format(name))
        return name

    def training_layers(self, parameters, context) -> list:
        """The raster layers to train on; refused before any upload when one cannot give its own pixels."""
        layers = self.parameterAsLayerList(parameters, self.INPUTS, context)
        if not layers:
            raise QgsProcessingException(self.tr("Choose one or more raster layers to train on (Training rasters)."))
        for layer in layers:
            provider = layer.dataProvider()
            if not has_capability(provider, RASTER_CAPABILITY_SIZE) or provider.xSize() <= 0:
                raise QgsProcessingException(self.tr(
                    "The raster layer {0!r} has no pixels of its own (a web map or tile service): a model learns the "
                    "ground resolution of its pixels, so train on files. Save the area as a GeoTIFF first (Export > "
                    "Save As, at the resolution you want) and use that. Nothing was sent.").format(layer.name()))
        return layers

    def polygon_params(self, parameters, context, feedback, folder, layers, files) -> dict:
        """The class polygons over the rasters (appended to `files`) and the params that describe them."""
        class_field = self.field_name(parameters, self.CLASS_FIELD, context)
        polygon_class = self.optional_string(parameters, self.POLYGON_CLASS, context)
        disaster_type = self.optional_string(parameters, self.DISASTER_TYPE, context)
        if is_unset(parameters.get(self.POLYGONS)):
            given = [label for label, value in ((self.tr("Class field"), class_field), (self.tr("Polygon class"), polygon_class),
                                                (self.tr("Disaster type"), disaster_type)) if value]
            if given:
                raise QgsProcessingException(self.tr(
                    "No Class polygons were given, so there is nothing for {0} to describe: choose the polygons, or "
                    "clear {0}.").format(" and ".join(given)))
            return {}
        if class_field and polygon_class:
            raise QgsProcessingException(self.tr(
                "Give either a Class field (each polygon's own class) or a Polygon class (one class for all), not both."))
        source = self.parameterAsSource(parameters, self.POLYGONS, context)
        if source is None:
            raise QgsProcessingException(self.tr("The Class polygons layer cannot be read."))
        polygons = os.path.join(folder, "polygons.gpkg")
        count = export_features(source, polygons, context, feedback, self.rasters_bounds(layers, source, context),
                                source.sourceCrs())
        if count == 0:
            raise QgsProcessingException(self.tr(
                "None of the class polygons lies over the training rasters: choose polygons over them (or clear "
                "'selected features only')."))
        feedback.pushInfo(self.tr("{0} class polygon(s) over the rasters").format(count))
        files.append(("polygons", polygons))
        if class_field is None and polygon_class is None:
            class_field = self.found_class_field(polygons, feedback)
        return {"class_field": class_field, "polygon_class": polygon_class, "disaster_type": disaster_type}

    @staticmethod
    def rasters_bounds(layers, source, context) -> QgsRectangle:
        """The rasters' extents together, in the polygons' CRS: only polygons there are sent."""
        bounds = QgsRectangle()
        bounds.setMinimal()
        for layer in layers:
            bounds.combineExtentWith(region_in_layer_crs(layer.extent(), layer.crs(), source.sourceCrs(),
                                                         context.transformContext()))
        return bounds

    def found_class_field(self, polygons: str, feedback) -> str | None:
        """The class field found by name, as Inpaint finds it (Class field and Polygon class left empty)."""
        found = find_class_field(open_vector(polygons, "polygons"))
        if found is not None:
            feedback.pushInfo(self.tr("Class field: {0} (found by name; set Class field to use another)").format(found))
        else:
            feedback.pushInfo(self.tr("No class field ({0}) among the polygons' attributes: every polygon is one class, "
                                      "'affected'. Set Class field or Polygon class to classify them.").format(", ".join(CLASS_FIELDS)))
        return found

    def deliver(self, client, job, parameters, context, feedback, folder, written):
        sent = job.get("params") or {}
        name = sent.get("name") or self.parameterAsString(parameters, self.NAME, context).strip()
        mode = sent.get("mode", MODES[0])
        results = {self.MODEL_NAME: name}
        available = {result["name"] for result in job.get("results", [])}
        for parameter, result in ((self.CARD, "card"), (self.LOSS_CURVE, "loss_curve"), (self.SAMPLES, "samples")):
            target = self.parameterAsFileOutput(parameters, parameter, context)
            if is_unset(target):
                continue
            if result not in available:
                feedback.pushInfo(self.tr("The job made no {0} (it made: {1}).").format(result, ", ".join(sorted(available))))
                continue
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            written.append(target)
            client.download(job["id"], result, target, feedback)
            results[parameter] = target
        CATALOG.invalidate()  # a full or scratch model is new on the engine: the MODEL lists ask again
        if mode == "lora":
            feedback.pushInfo(self.tr("Installed as LoRA {0!r} in the engine's models folder (loras/{0}.safetensors); "
                                      "Generate, Inpaint, Predict and Super-resolve use it on its base model through LoRAs "
                                      "(e.g. {0}:0.8).").format(name))
        else:
            feedback.pushInfo(self.tr("Installed as model {0!r} in the engine's models folder: choose it as Model in "
                                      "Generate or Inpaint ({1} > Refresh model lists).").format(name, MENU))
        return results
