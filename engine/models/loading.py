"""Load a recognised model folder into memory, ready for a pipeline.

The UNet (and a ControlNet model's ControlNet) is built from its config and filled strictly from
its weight file (weights.py), so a DiffusionSat `.bin` and a diffusers safetensors go through the
same checks. The frozen components (VAE, text encoder, tokenizer) use their libraries'
`from_pretrained` on local folders only.

How the loaded model runs (engine.runtime) is decided here too: attention processor, VAE
precision, channels-last, torch.compile, the default scheduler, and the backend, torch or ONNX
Runtime (whose stand-ins take the place of the UNet, ControlNet, VAE decoder and text encoder).
"""

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import torch
from diffusers import AutoencoderKL, SchedulerMixin, UNet2DConditionModel
from diffusers.utils import is_accelerate_available
from transformers import CLIPTextModel, CLIPTokenizer
from transformers.utils import logging as transformers_logging

from engine import config
from engine.errors import ModelError
from engine.runtime import memory
from engine.runtime.device import RuntimeOptions, runtime_options
from engine.runtime.precision import compile_module, prepare_modules, vae_dtype
from engine.runtime.vae_decode import VaeDecoder, decode_size

from .backbones.base import UNetBackbone
from .controlnet_2d import MetadataControlNet
from .controlnet_3d import ControlNetModel3D
from .residual_vae import vae_class
from .layout import (
    CONTROLNET_2D,
    CONTROLNET_3D,
    CONTROLNET_KINDS,
    LOADABLE_KINDS,
    SATUNET,
    SD21_ENV_VAR,
    SETTINGS_FILE,
    ModelInfo,
    read_json,
    read_settings,
    recognise_unet_config,
)
from .lora import LoraSpec, apply_loras
from .satunet import SatUNet
from .schedulers import make_scheduler, scheduler_class
from .weights import load_into

_DEFAULT_VAE_SCALING = 0.18215  # SD's, for VAE configs written before diffusers stored it
_CONTROLNET_CLASSES = {CONTROLNET_2D: MetadataControlNet, CONTROLNET_3D: ControlNetModel3D}
# ControlNet config keys that must equal the UNet's for the residuals to line up.
_TRUNK_KEYS = ("in_channels", "block_out_channels", "layers_per_block", "down_block_types", "cross_attention_dim")


@dataclass
class DiffusionModel:
    """A loaded model: the networks on one device and dtype, and how to make its scheduler.

    With the ONNX backend, unet, controlnet, vae and text_encoder are engine.runtime.onnx_models
    stand-ins that are called like the torch modules and expose their config.
    """

    info: ModelInfo
    unet: UNet2DConditionModel  # a SatUNet for DiffusionSat models
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict  # prediction_type already set to info.prediction_type
    device: torch.device
    dtype: torch.dtype
    # ControlNet models (kinds controlnet-2d-metadata / controlnet-3d): a MetadataControlNet or a
    # ControlNetModel3D whose residuals go into `unet`; None for single-image models.
    controlnet: MetadataControlNet | ControlNetModel3D | None = None
    default_scheduler: str | None = None  # used when a request names none; None: the model's own
    backend: str = "torch"  # or "onnx"
    # How the sampling loop drives this family (prompt encoding, denoiser call, timesteps); SDXL, SD3
    # and FLUX backbones also hold their extra text encoders.
    backbone: UNetBackbone = field(default_factory=UNetBackbone)
    loras: tuple[LoraSpec, ...] = ()  # fused into the weights

    def make_scheduler(self, name: str | None = None) -> SchedulerMixin:
        """A fresh scheduler (schedulers keep per-run state): `name` (ddim/dpm++/euler/pndm/unipc or a class),
        else the runtime's default (DPM-Solver++ on CUDA), else the model's own."""
        name = name or self.default_scheduler
        if name and self.backbone.flow_matching and not scheduler_class(name).__name__.startswith("FlowMatch"):
            raise ModelError(
                f"model {self.info.name!r} is a rectified-flow model: the scheduler {name!r} does not apply; "
                "leave the scheduler unset (FlowMatchEulerDiscreteScheduler) or name another FlowMatch scheduler"
            )
        return make_scheduler(self.scheduler_config, name)

    @cached_property
    def vae_decoder(self) -> VaeDecoder:
        """Decodes latents: in half precision on a GPU, float32 where a block overflows (made at first use)."""
        return VaeDecoder.for_model(self.vae, self.device, self.dtype)

    def decode_size(self, margin: int, block: int | None = None) -> tuple[int, int]:
        """(cells per decoding block side, blocks per VAE call) on this model's device; see vae_decode.decode_size."""
        return decode_size(self.vae, self.device, margin, block)

    @property
    def vae_shift_factor(self) -> float:
        """Latent offset of SD3/FLUX VAEs (latents = (z - shift) * scale); 0 for SD."""
        return self.vae.config.get("shift_factor", None) or 0.0

    @property
    def patch_size(self) -> int:
        """Window sides in latent cells must be multiples of this (2 for SD3 and FLUX's patches)."""
        return self.backbone.patch_size

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def vae_scaling_factor(self) -> float:
        return self.vae.config.get("scaling_factor", _DEFAULT_VAE_SCALING)


def load_model(
    info: ModelInfo,
    device: torch.device | str,
    dtype: torch.dtype,
    sd21_dir: Path | None,
    options: RuntimeOptions | None = None,
    backend: str | None = None,
    loras: tuple[LoraSpec, ...] = (),
) -> DiffusionModel:
    """Load every part of a recognised model; ModelError when it cannot be loaded as it stands.

    `options` default to engine.runtime.device.runtime_options for the device and the model's
    gfm4d.json; `backend` ("torch" or "onnx") overrides theirs. `loras` are fused into the weights.
    """
    device = torch.device(device)
    _check_loadable(info, sd21_dir)
    settings = read_settings(info.path)
    if options is None:
        options = runtime_options(device, settings, backend, source=str(info.path / SETTINGS_FILE))
    offload = memory.switch("GFM4D_OFFLOAD", settings, "offload")
    _check_memory(info, device, dtype, offload)
    if info.family != "sd":
        return _load_backbone(info, device, dtype, options, loras, offload, settings)
    controlnet = None
    if info.kind in CONTROLNET_KINDS:
        unet_config = info.unet_path / "config.json"
        unet_kind = recognise_unet_config(read_json(unet_config), str(unet_config))
        unet = build_unet(info.unet_path, unet_kind, device, dtype)
        controlnet = build_controlnet(info.components["controlnet"], info.kind, device, dtype)
        check_controlnet_fits(controlnet, unet, info)
    else:
        unet = build_unet(info.unet_path, info.kind, device, dtype)
    # low_cpu_mem_usage needs `accelerate`; asking for it without only logs a warning.
    vae_config = read_json(info.components["vae"] / "config.json")
    vae = _from_pretrained(
        vae_class(vae_config), info, "vae", dtype=vae_dtype(dtype, vae_config), low_cpu_mem_usage=is_accelerate_available()
    ).to(device)
    text_encoder = _from_pretrained(CLIPTextModel, info, "text_encoder", dtype=dtype).to(device)
    tokenizer = _from_pretrained(CLIPTokenizer, info, "tokenizer")
    scheduler_config = dict(read_json(info.components["scheduler"] / "scheduler_config.json"))
    scheduler_config["prediction_type"] = info.prediction_type
    make_scheduler(scheduler_config)  # fail now, not in the middle of a job
    if options.scheduler:
        make_scheduler(scheduler_config, options.scheduler)
    for module in (unet, vae, text_encoder, controlnet):
        if module is not None:
            module.eval().requires_grad_(False)
    if loras:
        if options.backend == "onnx":
            raise ModelError("LoRAs run on the torch backend only; drop the LoRAs or the ONNX backend")
        apply_loras("StableDiffusionPipeline", {"unet": unet, "vae": vae, "text_encoder": text_encoder,
                                                "tokenizer": tokenizer, "scheduler": make_scheduler(scheduler_config)}, loras)
    prepare_modules(unet, controlnet, vae, dtype, _without_compile(options) if offload else options)
    if options.backend == "onnx":
        from engine.runtime.onnx_models import onnx_components

        sources = {"unet": info.unet_path, "controlnet": info.components.get("controlnet"),
                   "vae": info.components["vae"], "text_encoder": info.components["text_encoder"]}
        unet, controlnet, vae, text_encoder = onnx_components(
            unet, controlnet, vae, text_encoder, sources, device, options.onnx_cache or config.onnx_cache_dir()
        )
    _memory_switches(settings, [text_encoder, controlnet, unet, vae], vae, device, offload and options.backend == "torch")
    return DiffusionModel(info, unet, vae, text_encoder, tokenizer, scheduler_config, device, dtype, controlnet,
                          default_scheduler=options.scheduler, backend=options.backend, loras=tuple(loras))


def _load_backbone(info: ModelInfo, device, dtype, options: RuntimeOptions, loras, offload: bool,
                   settings: dict) -> DiffusionModel:
    """An SDXL, SD3 or FLUX model (engine.models.backbones); torch backend only."""
    from .backbones.loading import load_backbone_parts

    if options.backend == "onnx":
        raise ModelError(f"model {info.name!r} ({info.family}) runs on the torch backend only; unset GFM4D_BACKEND=onnx")
    if info.family in ("sd3", "flux") and dtype == torch.float16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
        # T5 and the MMDiT/FLUX transformers overflow float16 (NaN images); they are trained and run in bfloat16.
        dtype = torch.bfloat16
    # Offloaded networks are loaded into CPU memory: the GPU may not hold them all at once.
    parts = load_backbone_parts(info, torch.device("cpu") if offload and device.type == "cuda" else device, dtype)
    backbone = parts["backbone"]
    if loras:
        components = {key: value for key, value in parts.items() if key not in ("backbone", "scheduler_config", "unet")}
        components["unet" if info.family == "sdxl" else "transformer"] = parts["unet"]
        components["scheduler"] = make_scheduler(parts["scheduler_config"])
        apply_loras(backbone.pipeline_class, components, loras)
    if options.compile_backend and not offload:
        compile_module(parts["unet"], options.compile_backend, options.compile_mode)
    encoders = [parts.get(name) for name in ("text_encoder", "text_encoder_2", "text_encoder_3")]
    _memory_switches(settings, [*encoders, parts["unet"], parts["vae"]], parts["vae"], device, offload)
    # SDXL runs well with the runtime's default scheduler; flow models need their own.
    default = options.scheduler if info.family == "sdxl" else None
    return DiffusionModel(info, parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"],
                          parts["scheduler_config"], device, dtype, default_scheduler=default, backbone=backbone,
                          loras=tuple(loras))


def _without_compile(options: RuntimeOptions) -> RuntimeOptions:
    """Offloaded networks move their weights at every call, which compiled graphs cannot follow."""
    return replace(options, compile_backend=None, compile_mode=None)


def _check_memory(info: ModelInfo, device: torch.device, dtype: torch.dtype, offload: bool) -> None:
    """Say what the model needs, and refuse before loading when a GPU cannot hold it."""
    from .footprint import model_parameters

    counts = model_parameters(info)
    itemsize = torch.empty((), dtype=dtype).element_size()
    memory.check_fits(info.name, sum(counts.values()) * itemsize, max(counts.values(), default=0) * itemsize, device, offload)


def _memory_switches(settings: dict, modules: list, vae, device: torch.device, offload: bool) -> None:
    if memory.switch("GFM4D_VAE_TILING", settings, "vae_tiling") and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()
    if offload and device.type == "cuda":
        memory.enable_offload(modules, device)


def build_unet(
    folder: Path, kind: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> UNet2DConditionModel:
    """A UNet (SatUNet for DiffusionSat) from `folder/config.json` with the folder's weights."""
    return _build(SatUNet if kind == SATUNET else UNet2DConditionModel, folder, "UNet", device, dtype)


def build_controlnet(
    folder: Path, kind: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> MetadataControlNet | ControlNetModel3D:
    """A DiffusionSat ControlNet (kind controlnet-2d-metadata or controlnet-3d) from `folder`."""
    return _build(_CONTROLNET_CLASSES[kind], folder, "ControlNet", device, dtype)


def _build(cls, folder: Path, what: str, device, dtype: torch.dtype):
    config = read_json(folder / "config.json")
    try:
        # The meta device skips allocating and randomly initialising ~0.9 G parameters that the
        # checkpoint replaces anyway.
        with torch.device("meta"):
            model = cls.from_config(config)
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelError(f"{folder / 'config.json'} describes a {what} that cannot be built: {exc}") from exc
    load_into(model, folder, device=device, dtype=dtype)
    if any(tensor.is_meta for tensor in (*model.parameters(), *model.buffers())):
        raise ModelError(f"the weights in {folder} leave part of the {cls.__name__} uninitialised")
    return model


def check_controlnet_fits(controlnet, unet: UNet2DConditionModel, info: ModelInfo) -> None:
    """The ControlNet's residuals must match the UNet's skips, and both must agree on metadata."""
    differences = [
        f"{key} {_plain(controlnet.config.get(key))} != {_plain(unet.config.get(key))}"
        for key in _TRUNK_KEYS
        if _plain(controlnet.config.get(key)) != _plain(unet.config.get(key))
    ]
    unet_metadata = getattr(unet, "metadata_embedding", None)
    if (controlnet.metadata_embedding is None) != (unet_metadata is None) or (
        unet_metadata is not None and len(unet_metadata) != len(controlnet.metadata_embedding)
    ):
        differences.append("metadata fields (ControlNet vs UNet)")
    if differences:
        raise ModelError(
            f"the ControlNet of model {info.name!r} ({info.components['controlnet']}) does not fit the UNet in "
            f"{info.unet_path}: {'; '.join(differences)}. Use the UNet it was trained with: set "
            f'{{"base_model": "<that model>"}} in {info.path / SETTINGS_FILE}.'
        )


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _check_loadable(info: ModelInfo, sd21_dir: Path | None) -> None:
    if info.kind in CONTROLNET_KINDS and info.unet_path is None:
        raise ModelError(
            f"model {info.name!r} is a DiffusionSat ControlNet ({info.kind}) without its base UNet: "
            f"{info.path} has no unet/ or checkpoint-N/unet/. Put the single-image DiffusionSat model it was "
            f"trained on in the models directory and name it in {info.path / SETTINGS_FILE}, e.g. "
            '{"base_model": "diffusionsat-512"}.'
        )
    if info.kind not in LOADABLE_KINDS:
        raise ModelError(f"model {info.name!r} has kind {info.kind!r}, which GFM4D cannot load")
    if info.missing_components:
        missing = ", ".join(f"{name}/" for name in info.missing_components)
        if sd21_dir is None:
            where = (
                "and no SD-2.1 folder is configured to take them from. DiffusionSat reuses SD-2.1's frozen "
                "VAE, text encoder, tokenizer and scheduler: run `gfm4d models fetch sd21-components`, or put "
                "stabilityai/stable-diffusion-2-1 in diffusers layout on disk and set "
                f"{SD21_ENV_VAR}=/path/to/stable-diffusion-2-1 (or pass sd21_dir to ModelRegistry)."
            )
        else:
            where = (
                f"nor does the configured SD-2.1 folder {sd21_dir}. Point {SD21_ENV_VAR} (or sd21_dir) at a "
                "complete stable-diffusion-2-1 folder in diffusers layout."
            )
        raise ModelError(f"model {info.name!r} at {info.path} has no {missing} {where}")


def _from_pretrained(cls, info: ModelInfo, component: str, **kwargs):
    folder = info.components[component]
    try:
        with _no_transformers_progress_bar():
            return cls.from_pretrained(folder, local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot load the {component} of model {info.name!r} from {folder}: {exc}") from exc


@contextmanager
def _no_transformers_progress_bar():
    """transformers draws a "Loading weights" bar on stderr; the CLI and server report progress themselves."""
    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()
