"""Recognise a diffusers folder of a modern backbone: SDXL (base, inpainting), SD3/3.5, FLUX.1 (dev, schnell, fill).

The kind comes from the denoiser's config, like the other kinds (layout.py): a `transformer/` with
`SD3Transformer2DModel` or `FluxTransformer2DModel` (384 input channels: FLUX Fill), or a `unet/`
whose added conditioning is SDXL's `text_time`. `model_index.json` is not needed. Every component
must be in the folder itself: unlike DiffusionSat, these models share nothing with SD-2.1.
"""

from __future__ import annotations

from pathlib import Path

from engine.models.layout import (
    SDXL_INPAINT_UNET,
    SDXL_UNET,
    SD3_TRANSFORMER,
    FLUX_TRANSFORMER,
    FLUX_FILL_TRANSFORMER,
    ModelInfo,
    _DESCRIPTIONS,
    _has_component,
    read_json,
)
from engine.models.weights import has_weights_file
from engine.errors import ModelError

# Components each family needs (tokenizers are checked by their own markers).
_NEEDS = {
    "sdxl": ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
    "sd3": ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
    "flux": ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
}
_OPTIONAL = {"sd3": ("text_encoder_3", "tokenizer_3")}
FLUX_FILL_CHANNELS = 384
DEFAULT_FLUX_RESOLUTION = 1024


def family_of_kind(kind: str) -> str:
    return {SDXL_UNET: "sdxl", SDXL_INPAINT_UNET: "sdxl", SD3_TRANSFORMER: "sd3",
            FLUX_TRANSFORMER: "flux", FLUX_FILL_TRANSFORMER: "flux"}.get(kind, "sd")


def backbone_kind(root: Path, settings: dict) -> tuple[str, Path] | None:
    """(kind, denoiser folder) when `root` holds an SDXL, SD3 or FLUX model; None otherwise."""
    transformer = root / "transformer" / "config.json"
    if transformer.is_file():
        config = read_json(transformer)
        name = config.get("_class_name")
        if name == "SD3Transformer2DModel":
            return SD3_TRANSFORMER, transformer.parent
        if name == "FluxTransformer2DModel":
            kind = FLUX_FILL_TRANSFORMER if config.get("in_channels") == FLUX_FILL_CHANNELS else FLUX_TRANSFORMER
            return kind, transformer.parent
        raise ModelError(
            f"{transformer}: _class_name {name!r} is not a transformer GFM4D can run "
            "(expected SD3Transformer2DModel or FluxTransformer2DModel)"
        )
    unet = root / (settings.get("unet") or "unet") / "config.json"
    if unet.is_file():
        config = read_json(unet)
        if config.get("addition_embed_type") == "text_time":
            in_channels = config.get("in_channels", 4)
            if in_channels not in (4, 9):
                raise ModelError(f"{unet}: an SDXL UNet with in_channels={in_channels} is not supported (4 or 9)")
            return (SDXL_INPAINT_UNET if in_channels == 9 else SDXL_UNET), unet.parent
    return None


def _present(folder: Path, component: str) -> bool:
    marker = "tokenizer" if component.startswith("tokenizer") else "text_encoder" if component.startswith("text_encoder") else component
    if marker == "tokenizer":
        return any((folder / name).is_file() for name in ("vocab.json", "tokenizer.json", "spiece.model"))
    return _has_component(folder, marker)


def inspect_backbone(root: Path, settings: dict) -> ModelInfo | None:
    """The ModelInfo of an SDXL/SD3/FLUX folder, or None when the folder is none of them."""
    found = backbone_kind(root, settings)
    if found is None:
        return None
    kind, denoiser = found
    if not has_weights_file(denoiser) and not any(denoiser.glob("*.safetensors.index.json")):
        raise ModelError(f"{denoiser} has a config.json but no weights")
    family = family_of_kind(kind)
    components = {name: root / name for name in _NEEDS[family] + _OPTIONAL.get(family, ()) if _present(root / name, name)}
    missing = tuple(name for name in _NEEDS[family] if name not in components)
    config = read_json(denoiser / "config.json")
    inpaint_only = kind in (SDXL_INPAINT_UNET, FLUX_FILL_TRANSFORMER)
    return ModelInfo(
        name=root.name,
        path=root,
        kind=kind,
        unet_path=denoiser,
        components=components,
        native_resolution=settings.get("native_resolution") or _native_resolution(family, config, components),
        uses_metadata=False,
        num_metadata=0,
        prediction_type="flow" if family in ("sd3", "flux") else _scheduler_prediction(components),
        tasks=tuple(settings.get("tasks") or (("inpaint",) if inpaint_only else ("generate", "inpaint"))),
        display_name=settings.get("display_name") or root.name,
        description=settings.get("description") or _DESCRIPTIONS[kind],
        missing_components=missing,
        family=family,
        metadata_caption=bool(settings.get("metadata_caption", True)),
    )


def _native_resolution(family: str, config: dict, components: dict[str, Path]) -> int:
    sample_size = config.get("sample_size")
    if family == "flux" or not isinstance(sample_size, int) or "vae" not in components:
        return DEFAULT_FLUX_RESOLUTION
    vae_config = read_json(components["vae"] / "config.json")
    return sample_size * 2 ** (len(vae_config.get("block_out_channels", (0, 0, 0, 0))) - 1)


def _scheduler_prediction(components: dict[str, Path]) -> str:
    if "scheduler" not in components:
        return "epsilon"
    return read_json(components["scheduler"] / "scheduler_config.json").get("prediction_type", "epsilon")
