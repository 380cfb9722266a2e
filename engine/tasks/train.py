"""The train task: uploaded rasters -> a new model (or LoRA) in the engine's models folder.

Results: the model card, the loss curve and the last sample grid. The model itself is installed
under `name` in the models folder (refused when the name is taken), so QGIS and scripts can use it
right after the job.
"""

from __future__ import annotations

from itertools import accumulate
from pathlib import Path

from pydantic import Field

from . import Input, TaskParams, inputs_named, task


class TrainParams(TaskParams):
    """What to train on and how; see `gfm4d train --help` for the meaning of each field."""

    name: str = Field(..., min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="name of the new model folder")
    model: str | None = Field(None, description="base model for mode full/lora (default: the engine's default model, "
                                                "or its inpainting model with `inpainting`)")
    mode: str = Field("lora", pattern="^(scratch|full|lora)$", description="scratch, full fine-tune, or lora")
    land_cover: str | None = Field(None, max_length=100, description="caption words for the imagery, e.g. farm, forest, town")
    country: str | None = Field(None, max_length=100)
    licence: str = Field("unknown", max_length=200, description="licence of the imagery, for the model card")
    class_field: str | None = Field(None, max_length=100, description="the polygons' class attribute (notation, subtype, dmg)")
    polygon_class: str | None = Field(None, max_length=100, description="the class of every polygon without a class_field, e.g. burnt-area")
    disaster_type: str | None = Field(None, max_length=100, description="fire, flooding, ... for the captions of damage classes")
    chip_size: int = Field(128, ge=32, le=1024, multiple_of=8)
    scales: list[int] = Field([1, 2, 4], min_length=1, max_length=6)
    holdout: float = Field(0.2, gt=0, lt=0.9)
    event_chips: float | None = Field(None, gt=0, le=1, description="extra chips centred on event polygons where "
                                      "events cover at least this share of the chip (e.g. 0.5); empty: none")
    steps: int = Field(2000, ge=1, le=1_000_000, description="SatUNet steps")
    vae_steps: int = Field(1500, ge=1, le=1_000_000, description="VAE steps (mode scratch)")
    batch: int = Field(8, ge=1, le=1024)
    learning_rate: float | None = Field(None, gt=0, le=1)
    lora_rank: int = Field(8, ge=1, le=256)
    inpainting: bool = Field(False, description="train an inpainting UNet (9 input channels) with the event polygons "
                             "as its masks (mode full or scratch; a fine-tune of an inpainting model is one anyway)")
    seed: int = Field(0, ge=0, le=2**32 - 1)


@task(
    "train",
    TrainParams,
    inputs={"rasters": Input("raster", "georeferenced RGB training rasters", many=True, required=True),
            "polygons": Input("vector", "optional: polygons with classes over every raster; the chips they cover are "
                                        "captioned with their class as inpainting prompts it")},
    summary="rasters -> a SatUNet trained or fine-tuned on them, installed in the models folder (results: card, loss_curve, samples)",
    model_task=("generate", "inpaint"),  # a fine-tune starts from a generation model or an inpainting one
)
def run(registry, params: TrainParams, inputs, out_dir: Path, progress, cancel) -> dict[str, Path]:
    from engine.errors import InputError
    from engine.pipelines.sampling import Progress
    from engine.training.recipe import load_recipe, run_training
    from engine.training.sources import SourceList, TrainingSource

    rasters = inputs_named(inputs, "rasters")
    if not rasters:
        raise InputError("the train task needs `rasters` (one or more georeferenced RGB rasters)")
    from engine.models.lora import LORA_DIR

    models_dir = Path(registry.models_dir)
    target = models_dir / LORA_DIR / f"{params.name}.safetensors" if params.mode == "lora" else models_dir / params.name
    if target.exists() or (models_dir / params.name).exists():
        raise InputError(f"a model named {params.name!r} exists already; choose another name")
    polygons = inputs.get("polygons")
    if not polygons and (params.class_field or params.polygon_class or params.disaster_type):
        raise InputError("class_field, polygon_class and disaster_type describe `polygons`: upload the polygons too")
    from engine.geo.damage_classes import normalise_disaster_type

    sources = SourceList(tuple(
        TrainingSource(paths=(Path(p),), land_cover=params.land_cover, country=params.country, licence=params.licence,
                       polygons=Path(polygons) if polygons else None, class_field=params.class_field,
                       polygon_class=params.polygon_class, disaster_type=normalise_disaster_type(params.disaster_type))
        for p in rasters
    ))
    from engine import config

    default_base = config.default_inpaint_model() if params.inpainting else config.default_model()
    base_model = None if params.mode == "scratch" else params.model or default_base
    recipe = load_recipe(None, name=params.name, mode=params.mode, base_model=base_model, chip_size=params.chip_size,
                         scales=params.scales, holdout=params.holdout,
                         event_chips=params.event_chips, **{
                             "unet.steps": params.steps, "unet.batch": params.batch, "unet.seed": params.seed,
                             "unet.lora_rank": params.lora_rank, "unet.learning_rate": params.learning_rate,
                             "unet.inpainting": params.inpainting,
                             "vae.steps": params.vae_steps, "vae.seed": params.seed})
    stage_steps = {"vae": recipe.vae.steps if recipe.mode == "scratch" else 0, "unet": recipe.unet.steps,
                   "decoder": recipe.decoder.steps}
    total = sum(stage_steps.values())
    offsets = dict(zip(stage_steps, accumulate(stage_steps.values(), initial=0)))  # steps of the stages before

    def report(stage: str, done: int, _total: int, record: dict) -> None:
        progress(Progress(offsets[stage] + done, total, f"{stage} step {done}, loss {record['loss']:.4f}"))

    result = run_training(sources, recipe, out_dir / "run", target, registry=registry, log=lambda line: None,
                          progress=report, cancel=cancel, device=getattr(registry, "device", None))
    import shutil

    results = {}
    card = target.with_suffix(".md") if params.mode == "lora" else target / "README.md"
    if card.is_file():
        results["card"] = Path(shutil.copyfile(card, out_dir / "card.md"))
    for name, path in result.files.items():  # results live directly in the job's folder, not in its run
        results[name] = Path(shutil.copyfile(path, out_dir / Path(path).name))
    samples = sorted((out_dir / "run" / "samples").glob("*.png"))
    if samples:
        results["samples"] = Path(shutil.copyfile(samples[-1], out_dir / "samples.png"))
    return results
