"""Single-file checkpoints (the one `.safetensors` of Civitai and the model cards) of SD 1.x/2.x, SDXL, SD3 and FLUX.

What a file is comes from its tensor names and shapes, read from the safetensors header alone:
SD/SDXL keep the original LDM names (`model.diffusion_model.input_blocks.*`; SDXL adds `label_emb`
and `conditioner.embedders.*`), SD3 its MMDiT `joint_blocks.*`, FLUX `double_blocks.*` (often the
transformer only). 4 or 9 (inpainting), 64 or 384 (FLUX Fill) input channels tell the variant.

The file carries weights, not configs: the configs, tokenizers and scheduler come from a local
diffusers-layout folder of the same family (`--config FOLDER`, or a model of that family already
in the models folder), never from the network. Components the file lacks (FLUX's VAE and text
encoders, SD3's T5) are taken from that folder's own weights; SD3 runs without T5 when neither has it.

A file is converted once, by diffusers' own single-file converters, into a diffusers folder in the
models folder (staged in a hidden folder, renamed into place): loading it afterwards takes seconds,
not a key-by-key conversion each time, and every other part of GFM4D (recognition, size check,
LoRAs, offload, ONNX) applies to it unchanged. The converted folder keeps the file's precision.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ModelError

from .layout import (
    FLUX_FILL_TRANSFORMER,
    FLUX_TRANSFORMER,
    SD3_TRANSFORMER,
    SD_INPAINT_UNET,
    SD_UNET,
    SDXL_INPAINT_UNET,
    SDXL_UNET,
    ModelInfo,
    _DESCRIPTIONS,
    read_json,
    recognise_unet_config,
)

CONFIG_FLAG = "--config FOLDER"
_UNET_PREFIX = "model.diffusion_model."
_FLUX_MARK = "double_blocks.0.img_attn.norm.key_norm.scale"
_SD3_MARK = "joint_blocks.0.context_block.adaLN_modulation.1.bias"
_LORA_MARKS = ("lora_A", "lora_B", "lora_down", "lora_up", "lora_unet_", "lora_te")
# safetensors dtypes -> the torch dtype the converted folder is saved in (8-bit floats widen to bfloat16).
_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "bfloat16", "F8_E5M2": "bfloat16",
           "F64": "float32"}
_PIPELINES = {SD_UNET: "StableDiffusionPipeline", SD_INPAINT_UNET: "StableDiffusionInpaintPipeline",
              SDXL_UNET: "StableDiffusionXLPipeline", SDXL_INPAINT_UNET: "StableDiffusionXLInpaintPipeline",
              SD3_TRANSFORMER: "StableDiffusion3Pipeline", FLUX_TRANSFORMER: "FluxPipeline",
              FLUX_FILL_TRANSFORMER: "FluxFillPipeline"}
_FAMILIES = {SD_UNET: "sd", SD_INPAINT_UNET: "sd", SDXL_UNET: "sdxl", SDXL_INPAINT_UNET: "sdxl",
             SD3_TRANSFORMER: "sd3", FLUX_TRANSFORMER: "flux", FLUX_FILL_TRANSFORMER: "flux"}
_FAMILY_NAMES = {"sd": "Stable Diffusion 1.x/2.x", "sdxl": "SDXL", "sd3": "SD3/SD3.5", "flux": "FLUX.1"}
_NATIVE_RESOLUTION = {"sd": 512, "sdxl": 1024, "sd3": 1024, "flux": 1024}
# Components a model may run without when neither the file nor the config folder has them.
_OPTIONAL_COMPONENTS = ("text_encoder_3", "tokenizer_3", "safety_checker", "feature_extractor", "image_encoder")


@dataclass(frozen=True)
class Checkpoint:
    """What a single-file checkpoint holds, from its header."""

    path: Path
    kind: str  # a layout.py kind: sd-unet, sdxl-inpaint-unet, flux-transformer, ...
    dtype: str  # torch dtype name the converted folder is saved in
    overrides: dict  # denoiser config entries the file decides (input channels, layer counts, guidance)
    context_dim: int | None  # cross-attention width of an SD/SDXL UNet (768: SD 1.x, 1024: SD 2.x)

    @property
    def family(self) -> str:
        return _FAMILIES[self.kind]

    @property
    def pipeline(self) -> str:
        return _PIPELINES[self.kind]

    @property
    def denoiser(self) -> str:
        return "unet" if self.family in ("sd", "sdxl") else "transformer"

    def describe(self) -> str:
        return f"{_FAMILY_NAMES[self.family]} checkpoint ({self.kind})"


def read_header(path: Path) -> dict[str, dict]:
    """Tensor name -> {"dtype", "shape"} from a .safetensors header; ModelError for anything else."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ModelError(
            f"cannot import {path.name}: GFM4D reads single-file checkpoints as .safetensors only (a pickled "
            ".ckpt/.pt can run code when loaded); download the .safetensors version of the model"
        )
    try:
        with open(path, "rb") as handle:
            size = path.stat().st_size
            (length,) = struct.unpack("<Q", handle.read(8))
            if not 2 <= length <= min(size - 8, 100 * 2**20):
                raise ValueError(f"header length {length}")
            header = json.loads(handle.read(length))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
        tensors = {key: value for key, value in header.items() if key != "__metadata__"}
        end = max((value["data_offsets"][1] for value in tensors.values()), default=0)
        if end > size - 8 - length:
            raise ValueError(f"the header describes {end} bytes of tensors, the file holds {size - 8 - length}")
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (struct.error, ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path.name} is not a readable .safetensors file ({exc}): damaged or incompletely "
                         "downloaded? Download it again") from None
    return tensors


def inspect_checkpoint(path: Path) -> Checkpoint:
    """Recognise a single-file checkpoint; ModelError saying what it is not, otherwise."""
    path = Path(path)
    header = read_header(path)
    keys = set(header)

    def shape(key: str) -> list[int]:
        return header[key]["shape"]

    dtypes = [entry.get("dtype") for entry in header.values()]
    dtype = _DTYPES.get(max(set(dtypes), key=dtypes.count) if dtypes else "F32", "float32")
    if any(mark in key for key in keys for mark in _LORA_MARKS):
        raise ModelError(f"{path.name} is a LoRA, not a model: put it in the models folder's loras/ and pass "
                         "--lora NAME[:SCALE] with a model of its family")
    flux = next((key[: -len(_FLUX_MARK)] for key in keys if key.endswith(_FLUX_MARK)), None)
    if flux is not None:
        channels = shape(flux + "img_in.weight")[1]
        if channels not in (64, 384):
            raise ModelError(f"{path.name} is a FLUX.1 checkpoint with {channels} input channels (Depth/Canny?); "
                             "GFM4D runs FLUX.1 dev, schnell and Fill (64 or 384)")
        overrides = {"in_channels": channels, "guidance_embeds": flux + "guidance_in.in_layer.bias" in keys,
                     "num_layers": _count(keys, flux + "double_blocks."),
                     "num_single_layers": _count(keys, flux + "single_blocks.")}
        kind = FLUX_FILL_TRANSFORMER if channels == 384 else FLUX_TRANSFORMER
        return Checkpoint(path, kind, dtype, overrides, None)
    sd3 = next((key[: -len(_SD3_MARK)] for key in keys if key.endswith(_SD3_MARK)), None)
    if sd3 is not None:
        return Checkpoint(path, SD3_TRANSFORMER, dtype, {"num_layers": _count(keys, sd3 + "joint_blocks.")}, None)
    conv_in = _UNET_PREFIX + "input_blocks.0.0.weight"
    if conv_in in keys:
        channels = shape(conv_in)[1]
        xl = _UNET_PREFIX + "label_emb.0.0.weight" in keys
        if xl and "conditioner.embedders.1.model.positional_embedding" not in keys and any(
                key.startswith("conditioner.embedders.0.model.") for key in keys):
            raise ModelError(f"{path.name} is an SDXL refiner (an image-to-image second stage); import an SDXL "
                             "base or inpainting checkpoint")
        if channels not in (4, 9):
            raise ModelError(f"{path.name} is a Stable Diffusion UNet with {channels} input channels; GFM4D runs "
                             "text-to-image (4) and inpainting (9) checkpoints")
        kind = {(False, 4): SD_UNET, (False, 9): SD_INPAINT_UNET, (True, 4): SDXL_UNET, (True, 9): SDXL_INPAINT_UNET}[xl, channels]
        context = next((shape(key)[1] for key in sorted(keys) if key.startswith(_UNET_PREFIX) and key.endswith("attn2.to_k.weight")), None)
        return Checkpoint(path, kind, dtype, {"in_channels": channels}, context)
    raise ModelError(
        f"{path.name} is not a checkpoint GFM4D knows: none of Stable Diffusion/SDXL's "
        f"{_UNET_PREFIX}input_blocks, SD3's joint_blocks or FLUX.1's double_blocks tensors are in it"
    )


def _count(keys: set[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({match.group(1) for key in keys if (match := pattern.match(key))})


def config_family(folder: Path) -> tuple[str, str, int | None]:
    """(family, kind, cross-attention width) of a diffusers-layout folder's configs; ModelError when it has none usable."""
    from .backbones.recognise import backbone_kind, family_of_kind

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise ModelError(f"{folder} is not a diffusers-layout model folder (no model_index.json); pass {CONFIG_FLAG} "
                         "with a folder saved by diffusers' save_pretrained")
    found = backbone_kind(folder, {})
    if found is not None:
        kind, denoiser = found
    else:
        denoiser = folder / "unet"
        if not (denoiser / "config.json").is_file():
            raise ModelError(f"{folder} has no unet/config.json or transformer/config.json to take configs from")
        kind = recognise_unet_config(read_json(denoiser / "config.json"), str(denoiser / "config.json"))
        if kind not in (SD_UNET, SD_INPAINT_UNET):
            raise ModelError(f"{folder} holds a {kind}; single-file checkpoints take their configs from a Stable "
                             "Diffusion, SDXL, SD3 or FLUX.1 folder")
    return family_of_kind(kind), kind, read_json(denoiser / "config.json").get("cross_attention_dim")


def check_config(checkpoint: Checkpoint, folder: Path) -> None:
    """The config folder must be of the checkpoint's family (and SD version); ModelError naming the flag otherwise."""
    family, _, context = config_family(folder)
    if family != checkpoint.family:
        raise ModelError(
            f"{checkpoint.path.name} is a {checkpoint.describe()}, but {folder} holds {_FAMILY_NAMES[family]} configs; "
            f"pass {CONFIG_FLAG} with a diffusers-layout {_FAMILY_NAMES[checkpoint.family]} model"
        )
    if checkpoint.context_dim and context and context != checkpoint.context_dim:
        raise ModelError(
            f"{checkpoint.path.name} has {checkpoint.context_dim}-wide text conditioning, the UNet config in {folder} "
            f"{context} (SD 1.x is 768, SD 2.x 1024); pass {CONFIG_FLAG} with a model of the same version"
        )


def find_config(checkpoint: Checkpoint, models_dir: Path) -> Path | None:
    """A model folder in `models_dir` whose configs fit the checkpoint: the same kind first, then the same family."""
    candidates = []
    root = Path(models_dir)
    for folder in sorted(root.iterdir()) if root.is_dir() else ():
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        try:
            check_config(checkpoint, folder)
            _, kind, _ = config_family(folder)
        except ModelError:
            continue
        candidates.append((kind != checkpoint.kind, folder.name.startswith("_"), folder))
    return min(candidates)[2] if candidates else None


def missing_config_error(checkpoint: Checkpoint, models_dir: Path | None) -> ModelError:
    where = f" and {models_dir} has no {_FAMILY_NAMES[checkpoint.family]} model to take them from" if models_dir else ""
    return ModelError(
        f"{checkpoint.path.name} is a {checkpoint.describe()} without configs{where}: pass {CONFIG_FLAG} "
        f"(`gfm4d models import {checkpoint.path} {CONFIG_FLAG}`), a local diffusers-layout "
        f"{_FAMILY_NAMES[checkpoint.family]} model (its model_index.json, configs and tokenizers are used)"
    )


def single_file_info(checkpoint: Checkpoint, config: Path | None) -> ModelInfo:
    """How `models list` shows a checkpoint dropped in the models folder before its first use converts it."""
    inpaint_only = checkpoint.kind in (SD_INPAINT_UNET, SDXL_INPAINT_UNET, FLUX_FILL_TRANSFORMER)
    return ModelInfo(
        name=checkpoint.path.stem,
        path=checkpoint.path,
        kind=checkpoint.kind,
        unet_path=None,
        components={},
        native_resolution=_NATIVE_RESOLUTION[checkpoint.family],
        uses_metadata=False,
        num_metadata=0,
        prediction_type="flow" if checkpoint.family in ("sd3", "flux") else "epsilon",
        tasks=("inpaint",) if inpaint_only else ("generate", "inpaint"),
        display_name=checkpoint.path.stem,
        description=f"{_DESCRIPTIONS[checkpoint.kind]}; single file, converted on first use",
        missing_components=() if config is not None else ("config",),
        family=checkpoint.family,
        metadata_caption=checkpoint.family != "sd",
    )


def convert_checkpoint(checkpoint: Checkpoint, config: Path, destination: Path) -> None:
    """Write the checkpoint as a diffusers folder at `destination` (which must not exist), configs from `config`."""
    import diffusers
    import torch
    from diffusers import pipelines
    from diffusers.loaders.single_file import load_single_file_sub_model
    from diffusers.loaders.single_file_utils import SingleFileComponentError
    from safetensors.torch import load_file

    check_config(checkpoint, config)
    dtype = getattr(torch, checkpoint.dtype)
    index = read_json(Path(config) / "model_index.json")
    hint = f"pass {CONFIG_FLAG} with a complete diffusers-layout model of the same variant"
    try:
        state = load_file(str(checkpoint.path))
    except Exception as exc:  # safetensors raises its own error type for damaged files
        raise ModelError(f"cannot read the tensors of {checkpoint.path.name} ({exc}); download it again") from None
    components = {}
    for name, entry in sorted(index.items()):
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or entry[0] is None:
            continue
        library, class_name = entry
        overrides = checkpoint.overrides if name == checkpoint.denoiser else {}
        try:
            components[name] = load_single_file_sub_model(
                library_name=library, class_name=class_name, name=name, checkpoint=state, pipelines=pipelines,
                is_pipeline_module=hasattr(pipelines, library), cached_model_config_path=str(config),
                local_files_only=True, torch_dtype=dtype, **overrides)
        except SingleFileComponentError:
            components[name] = _from_config_folder(getattr(__import__(library), class_name), config, name, dtype)
            if components[name] is None and name not in _OPTIONAL_COMPONENTS:
                raise ModelError(f"{checkpoint.path.name} has no {name} weights and {config} has none either; "
                                 f"{hint} (with its weights)") from None
        except (ValueError, RuntimeError, KeyError, TypeError, OSError, AttributeError) as exc:
            raise ModelError(f"cannot convert the {name} of {checkpoint.path.name} with the configs in {config}: "
                             f"{_first_line(exc)}; {hint}") from None
        module = components[name]
        if callable(getattr(module, "tie_weights", None)):
            # Files hold shared weights once (T5's `shared`, not `encoder.embed_tokens`); diffusers' loader leaves
            # the other name empty, and transformers' own tying is what fills it.
            module.tie_weights()
        if isinstance(module, torch.nn.Module) and any(t.is_meta for t in (*module.parameters(), *module.buffers())):
            raise ModelError(f"{checkpoint.path.name} does not fill the {name} described in {config} (the file is "
                             f"another variant or incomplete); {hint}")
    del state
    if "text_encoder_3" in components and components["text_encoder_3"] is None:
        components["tokenizer_3"] = None  # SD3 without T5: both or neither
    pipeline_cls = getattr(diffusers, checkpoint.pipeline)
    expected, optional = pipeline_cls._get_signature_keys(pipeline_cls)
    arguments = {name: components.get(name) for name in expected}
    if "requires_safety_checker" in optional:
        arguments["requires_safety_checker"] = False
    if "force_zeros_for_empty_prompt" in optional and "force_zeros_for_empty_prompt" in index:
        arguments["force_zeros_for_empty_prompt"] = index["force_zeros_for_empty_prompt"]
    pipeline_cls(**arguments).save_pretrained(destination, safe_serialization=True)


def _from_config_folder(cls, config: Path, name: str, dtype):
    """A component the file lacks, from the config folder's weights; None when it has no weights either.

    Weights under diffusers' names (diffusion_pytorch_model.*) or transformers' (model.safetensors, a text
    encoder's), whole or sharded.
    """
    folder = Path(config) / name
    weights = ("*.safetensors", "*.bin", "*.safetensors.index.json")
    if not folder.is_dir() or not any(any(folder.glob(pattern)) for pattern in weights):
        return None
    try:
        return cls.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot load {name} from {folder}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def stage_conversion(checkpoint: Checkpoint, config: Path, models_dir: Path, name: str, staging_prefix: str) -> Path:
    """Convert into a hidden folder of `models_dir`, then rename it to `name`: the folder is complete or absent."""
    from .layout import SETTINGS_FILE, inspect_model_folder

    target = Path(models_dir) / name
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix, dir=models_dir))
    try:
        staged = staging / "model"
        try:
            convert_checkpoint(checkpoint, Path(config), staged)
            settings = {"description": f"{_DESCRIPTIONS[checkpoint.kind]}; converted from {checkpoint.path.name}"}
            (staged / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise ModelError(f"cannot write the converted {checkpoint.path.name} into {models_dir}: "
                             f"{exc.strerror or exc} (disk full?)") from None
        inspect_model_folder(staged, models_dir=models_dir)
        if target.exists():
            raise ModelError(f"a model named {name!r} already exists at {target}; choose another name or remove it")
        staged.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
