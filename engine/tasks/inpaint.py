"""The inpaint task: an `image` raster + `polygons` -> image.tif, label.tif (+ polygons.gpkg) + preview.png."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydantic import Field, field_validator

from engine import config

from . import Input, task
from .base import SamplingParams, date_field

DISASTER_TYPES = ("flooding", "fire", "wind", "earthquake", "tsunami", "volcano")


class InpaintParams(SamplingParams):
    """Classes, post-event metadata, mask shape and sampler settings of an inpainting job."""

    model: str = Field(default_factory=config.default_inpaint_model,
                       description="name of a model folder in the engine's models directory (default: gfm4d-mini-inpaint, "
                                   "the built-in inpainting model)")

    prompt: str | None = Field(None, max_length=2000, description="one prompt for every class (default: a prompt per class)")
    class_field: str | None = Field(None, description="attribute with each polygon's class (xBD subtype, dmg, notation)")
    class_prompts: dict[str, str] | None = Field(None, description="prompt per class name or code")
    inpaint_classes: dict[str, bool] | None = Field(None, description="switch classes on/off, e.g. {'no-damage': true}")
    disaster_type: str | None = Field(None, description=f"one of {', '.join(DISASTER_TYPES)}")
    date: dt.date | None = Field(None, description="post-event date for the metadata (ISO 8601)")
    strength: float = Field(1.0, gt=0, le=1, description="1 repaints the mask fully; lower keeps more of the input")
    dilation_m: float = Field(0.0, ge=0, le=10000, description="grow the mask by this many metres")
    feather_m: float | None = Field(None, ge=0, le=10000, description="feathered edge in metres (default: three pixels)")
    rgb_bands: tuple[int, int, int] | None = Field(None, description="1-based red, green, blue bands (default: by colour interpretation)")
    label_polygons: bool = Field(False, description="also return the label polygons as a GeoPackage")

    _parse_date = field_validator("date", mode="before")(date_field)


def _classes(mapping: dict | None) -> dict | None:
    """Class keys as given on the wire: digits are class codes, anything else a class name."""
    if mapping is None:
        return None
    return {int(k) if k.isdigit() else k: v for k, v in mapping.items()}


def output_size(params: InpaintParams, inputs) -> tuple[int, int]:
    """The output has the input raster's grid."""
    from engine.geo.raster import open_raster

    with open_raster(inputs["image"]) as source:
        return source.info.width, source.info.height


@task(
    "inpaint",
    InpaintParams,
    inputs={
        "image": Input("raster", "pre-event raster", required=True),
        "polygons": Input("vector", "disaster polygons: GeoJSON, GPKG, zipped Shapefile or xBD label JSON", required=True),
    },
    size=lambda params, inputs: output_size(params, inputs),
    summary="pre-event raster + disaster polygons -> post-event raster and its label mask (results: image, label, polygons, preview)",
)
def run(registry, params: InpaintParams, inputs, out_dir: Path, progress, cancel) -> dict[str, Path]:
    from engine.errors import InputError
    from engine.geo.writer import write_preview_png
    from engine.pipelines.inpaint import InpaintOutputs, InpaintRequest, inpaint

    if "image" not in inputs or "polygons" not in inputs:
        raise InputError("the inpaint task needs an `image` raster and a `polygons` file")
    request = InpaintRequest(
        image=inputs["image"], polygons=inputs["polygons"], class_field=params.class_field,
        class_prompts=_classes(params.class_prompts), inpaint_classes=_classes(params.inpaint_classes),
        disaster_type=params.disaster_type, prompt=params.prompt, date=params.date, strength=params.strength,
        dilation_m=params.dilation_m, feather_m=params.feather_m, rgb_bands=params.rgb_bands, **params.sampler_fields(),
    )
    outputs = InpaintOutputs(out_dir / "image.tif", out_dir / "label.tif",
                             out_dir / "polygons.gpkg" if params.label_polygons else None)
    if getattr(registry, "ray_address", None) is not None:
        from engine.scaleout.regions import inpaint_on_ray

        loras = registry.lora_specs([entry.model_dump() for entry in params.lora or ()])
        inpaint_on_ray(registry, params.model, request, outputs, address=registry.ray_address,
                       workers=registry.ray_workers, loras=loras, progress=progress, cancel=cancel)
    else:
        inpaint(params.load_model(registry), request, outputs, progress=progress, cancel=cancel)
    results = {"image": outputs.image, "label": outputs.label}
    if outputs.polygons is not None:
        results["polygons"] = outputs.polygons
    results["preview"] = write_preview_png(outputs.image, out_dir / "preview.png")
    return results
