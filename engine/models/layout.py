"""Recognise what a local model folder holds, from its config files (spec §3).

Two layouts are understood:

- a diffusers pipeline folder: `unet/` (or `controlnet/`), `vae/`, `text_encoder/`, `tokenizer/`,
  `scheduler/`;
- a DiffusionSat training-run folder (the released checkpoints): the same root components, some
  possibly missing, and the network only under `checkpoint-N/unet/` (plus `checkpoint-N/unet_ema/`).

The kind comes from `unet/config.json` / `controlnet/config.json`, never from `model_index.json`:
DiffusionSat's `model_index.json`, when present, names classes of its own package.

Which network folder is used (first match):
1. an explicit choice: the `unet` / `controlnet` key of the folder's `gfm4d.json` (a path relative
   to the model folder, e.g. "checkpoint-150000/unet_ema");
2. the root `unet/` (`controlnet/`), i.e. the pipeline a finished training run saves;
3. the highest `checkpoint-N/` that has one: its `unet/` before its `unet_ema/`. The authors' own
   notebook loads `checkpoint-N/unet`, so that is the default; the EMA copy is one `gfm4d.json`
   line away.

A ControlNet folder (`controlnet/` at the root or under `checkpoint-N/`) also needs the base
UNet it was trained with. DiffusionSat's training script saves a finished ControlNet run as a
whole pipeline, so the folder's own `unet/` (found by the rules above) is that UNet; the authors'
notebook instead loads the UNet from the single-image model's run folder. Both are supported:
1. `gfm4d.json` {"base_model": "<name>"} names a single-image model (satunet) in the same models
   directory; its UNet is used, whatever the ControlNet folder holds (explicit beats implicit);
2. otherwise the ControlNet folder's own UNet;
3. otherwise the model is listed but not ready, and loading it says to add `base_model`.

Missing root components (vae, text_encoder, tokenizer, scheduler) are the frozen SD-2.1 ones in
DiffusionSat, so they are taken from the base model (for a ControlNet) and then from a configured
SD-2.1 folder when the model folder lacks them.
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ModelError

from .weights import describe_folder, has_weights_file

SATUNET = "satunet"
SD_UNET = "sd-unet"
SD_INPAINT_UNET = "sd-inpaint-unet"
CONTROLNET_2D = "controlnet-2d-metadata"
CONTROLNET_3D = "controlnet-3d"
UNET_KINDS = (SATUNET, SD_UNET, SD_INPAINT_UNET)
CONTROLNET_KINDS = (CONTROLNET_2D, CONTROLNET_3D)
# Modern backbones (engine.models.backbones): recognised before the kinds above.
SDXL_UNET = "sdxl-unet"
SDXL_INPAINT_UNET = "sdxl-inpaint-unet"
SD3_TRANSFORMER = "sd3-transformer"
FLUX_TRANSFORMER = "flux-transformer"
FLUX_FILL_TRANSFORMER = "flux-fill-transformer"
BACKBONE_KINDS = (SDXL_UNET, SDXL_INPAINT_UNET, SD3_TRANSFORMER, FLUX_TRANSFORMER, FLUX_FILL_TRANSFORMER)
LOADABLE_KINDS = UNET_KINDS + CONTROLNET_KINDS + BACKBONE_KINDS

COMPONENTS = ("vae", "text_encoder", "tokenizer", "scheduler")
# A component folder counts as present when it has one of these files.
_COMPONENT_MARKERS = {
    "vae": ("config.json",),
    "text_encoder": ("config.json",),
    "tokenizer": ("vocab.json", "tokenizer.json"),
    "scheduler": ("scheduler_config.json",),
}
TASKS = ("generate", "inpaint", "predict", "superres")
DEFAULT_GUIDANCE = 7.5  # DiffusionSat's and Stable Diffusion's
SETTINGS_FILE = "gfm4d.json"
SD21_ENV_VAR = "GFM4D_SD21_DIR"
# Where `gfm4d models fetch` puts Stable Diffusion 2.1's components inside a models directory; the
# leading "_" keeps it out of the model list, and a registry uses it when no SD-2.1 folder is set.
FETCHED_SD21_FOLDER = "_sd21"
# The released 3D ControlNet ("Texas housing") was trained on 3 conditioning frames.
DEFAULT_CONTROLNET_FRAMES = 3

# DiffusionSat configs keep SD-2.1-768's sample_size (96 latents = 768 px) although the models were
# fine-tuned at 512 and 256 px, so the config cannot tell; 512 is the authors' default and a
# model's gfm4d.json says otherwise (e.g. {"native_resolution": 256}).
DIFFUSIONSAT_DEFAULT_RESOLUTION = 512
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")

_DESCRIPTIONS = {
    SATUNET: "DiffusionSat single-image model (text + 7 metadata numbers)",
    SD_UNET: "Stable Diffusion text-to-image UNet",
    SD_INPAINT_UNET: "Stable Diffusion inpainting UNet (9 input channels)",
    CONTROLNET_2D: "DiffusionSat 2D ControlNet with metadata",
    CONTROLNET_3D: "DiffusionSat 3D (temporal) ControlNet",
    SDXL_UNET: "Stable Diffusion XL text-to-image UNet (location, resolution and date as text)",
    SDXL_INPAINT_UNET: "Stable Diffusion XL inpainting UNet (9 input channels)",
    SD3_TRANSFORMER: "Stable Diffusion 3 MMDiT, rectified flow (location, resolution and date as text)",
    FLUX_TRANSFORMER: "FLUX.1 transformer, rectified flow, packed latents (location, resolution and date as text)",
    FLUX_FILL_TRANSFORMER: "FLUX.1 Fill inpainting transformer",
}


@dataclass(frozen=True)
class ModelInfo:
    """What a model folder is and where its parts are; reading it loads no weights."""

    name: str
    path: Path
    kind: str
    unet_path: Path | None
    components: dict[str, Path]  # vae, text_encoder, tokenizer, scheduler (+ controlnet) folders
    native_resolution: int  # pixels of the square the model was trained on
    uses_metadata: bool
    num_metadata: int
    prediction_type: str
    tasks: tuple[str, ...]
    display_name: str = ""
    description: str = ""
    missing_components: tuple[str, ...] = field(default=())  # found neither here nor in SD-2.1
    base_model: str | None = None  # the models-directory model whose UNet a ControlNet runs on
    num_frames: int = 0  # conditioning frames a 3D ControlNet was trained with (0: not a 3D ControlNet)
    default_guidance: float = 7.5  # guidance scale when a request names none (gfm4d.json "default_guidance")
    family: str = "sd"  # sd (SD 1.x/2.x, DiffusionSat), sdxl, sd3, flux: how the sampling loop drives it
    metadata_caption: bool = False  # location, resolution and date appended to the prompt as text

    @property
    def ready(self) -> bool:
        """Whether `ModelRegistry.load` can load it as it stands."""
        if self.kind in CONTROLNET_KINDS and self.unet_path is None:
            return False
        return self.kind in LOADABLE_KINDS and not self.missing_components


def read_json(path: Path) -> dict:
    """A JSON object from a config file, or ModelError naming the file."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}. Copy the model folder again.") from exc
    if not isinstance(value, dict):
        raise ModelError(f"{path} must hold a JSON object, not {type(value).__name__}")
    return value


def recognise_unet_config(config: dict, source: str = "unet/config.json") -> str:
    """The kind of UNet a diffusers config describes, or ModelError saying why it is not usable."""
    class_name = config.get("_class_name")
    if class_name == "SatUNet":
        # DiffusionSat's SatUNet defaults use_metadata to True when the key is absent.
        if config.get("use_metadata", True):
            return SATUNET
        class_name = "UNet2DConditionModel"  # a SatUNet without metadata is a plain UNet
    if class_name != "UNet2DConditionModel":
        raise ModelError(
            f"{source}: _class_name {class_name!r} is not a UNet GFM4D can run "
            "(expected SatUNet or UNet2DConditionModel)"
        )
    in_channels = config.get("in_channels", 4)
    if in_channels == 4:
        return SD_UNET
    if in_channels == 9:
        return SD_INPAINT_UNET
    raise ModelError(
        f"{source}: a UNet2DConditionModel with in_channels={in_channels} is not supported "
        "(4: text-to-image, 9: inpainting)"
    )


def recognise_controlnet_config(config: dict, source: str = "controlnet/config.json") -> str:
    """The kind of DiffusionSat ControlNet a config describes, or ModelError."""
    class_name = config.get("_class_name")
    if class_name == "ControlNetModel3D":
        return CONTROLNET_3D
    if class_name == "ControlNetModel":
        extra = ("use_metadata", "conditioning_in_channels", "conditioning_scale")
        absent = [key for key in extra if key not in config]
        if not absent:
            return CONTROLNET_2D
        raise ModelError(
            f"{source}: a plain diffusers ControlNetModel (no {', '.join(absent)}) is not supported; "
            "GFM4D runs DiffusionSat's metadata ControlNets"
        )
    raise ModelError(
        f"{source}: _class_name {class_name!r} is not a ControlNet GFM4D knows "
        "(expected ControlNetModel with metadata keys, or ControlNetModel3D)"
    )


def find_network_folder(root: Path, name: str, explicit: str | None = None) -> Path | None:
    """The `unet`/`controlnet` folder to use in a model folder (rules in the module docstring)."""
    root = Path(root)
    if explicit:
        chosen = root / explicit
        if not (chosen / "config.json").is_file():
            raise ModelError(
                f"{chosen} (chosen as the {name} of {root}) has no config.json; "
                f"fix the '{name}' entry of {root / SETTINGS_FILE}. {describe_folder(root)}"
            )
        return chosen
    if (root / name / "config.json").is_file():
        return root / name
    checkpoints = []
    for entry in root.iterdir():
        match = _CHECKPOINT.fullmatch(entry.name)
        if match and entry.is_dir():
            checkpoints.append((int(match.group(1)), entry))
    for _, checkpoint in sorted(checkpoints, reverse=True):
        for candidate in (checkpoint / name, checkpoint / f"{name}_ema"):
            if (candidate / "config.json").is_file():
                return candidate
    return None


def read_settings(root: Path) -> dict:
    """The optional gfm4d.json of a model folder, with its known keys checked."""
    path = Path(root) / SETTINGS_FILE
    if not path.is_file():
        return {}
    settings = read_json(path)
    resolution = settings.get("native_resolution")
    if resolution is not None and (
        not isinstance(resolution, int) or isinstance(resolution, bool) or resolution <= 0 or resolution % 8
    ):
        raise ModelError(f"{path}: native_resolution must be a positive multiple of 8, got {resolution!r}")
    for key in ("display_name", "description", "unet", "controlnet", "base_model"):
        if key in settings and not isinstance(settings[key], str):
            raise ModelError(f"{path}: {key} must be a string, got {settings[key]!r}")
    base_model = settings.get("base_model")
    if base_model is not None and (not base_model or Path(base_model).name != base_model or base_model.startswith(".")):
        raise ModelError(
            f"{path}: base_model must be the name of a model folder in the same models directory "
            f"(e.g. \"diffusionsat-512\"), not a path; got {base_model!r}"
        )
    guidance = settings.get("default_guidance")
    if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance <= 100):
        raise ModelError(f"{path}: default_guidance must be a number from 0 to 100, got {guidance!r}")
    frames = settings.get("num_frames")
    if frames is not None and (not isinstance(frames, int) or isinstance(frames, bool) or frames < 1):
        raise ModelError(f"{path}: num_frames must be a positive integer, got {frames!r}")
    tasks = settings.get("tasks")
    if tasks is not None and (not isinstance(tasks, list) or not set(tasks) <= set(TASKS) or not tasks):
        raise ModelError(f"{path}: tasks must be a non-empty list drawn from {list(TASKS)}, got {tasks!r}")
    return settings


def find_components(
    root: Path, sd21_dir: Path | None, base_dir: Path | None = None
) -> tuple[dict[str, Path], tuple[str, ...]]:
    """Component folders, from the model folder, then the base model's, then SD-2.1; and those found nowhere."""
    found, missing = {}, []
    for component in COMPONENTS:
        for base in (Path(root), base_dir, Path(sd21_dir) if sd21_dir else None):
            if base is not None and _has_component(Path(base) / component, component):
                found[component] = base / component
                break
        else:
            missing.append(component)
    return found, tuple(missing)


def _has_component(folder: Path, component: str) -> bool:
    return any((folder / marker).is_file() for marker in _COMPONENT_MARKERS[component])


def inspect_model_folder(
    root: Path, sd21_dir: Path | None = None, unet: str | None = None, models_dir: Path | None = None
) -> ModelInfo:
    """Recognise a model folder; ModelError says why when it is not a model GFM4D can use.

    `unet` overrides the folder's own choice of network subfolder (see the module docstring).
    `models_dir` is where a ControlNet's `base_model` is looked up (default: the folder's parent).
    """
    root = Path(root)
    if not root.is_dir():
        raise ModelError(f"{root} is not a folder")
    try:
        return _inspect(root, sd21_dir, unet, Path(models_dir) if models_dir else root.parent)
    except OSError as exc:  # unreadable folders or files
        raise ModelError(f"cannot read the model folder {root}: {exc}") from exc


def _inspect(root: Path, sd21_dir: Path | None, unet: str | None, models_dir: Path | None) -> ModelInfo:
    """`models_dir` None: do not follow `base_model` (when inspecting a base model itself)."""
    settings = read_settings(root)
    from .backbones.recognise import inspect_backbone  # imports this module

    backbone = inspect_backbone(root, settings)
    if backbone is not None:
        return backbone
    unet_choice = unet or settings.get("unet")
    controlnet_dir = find_network_folder(root, "controlnet", settings.get("controlnet"))
    base = None
    if controlnet_dir is not None:
        network_dir = controlnet_dir
        config = read_json(controlnet_dir / "config.json")
        kind = recognise_controlnet_config(config, str(controlnet_dir / "config.json"))
        uses_metadata = bool(config.get("use_metadata", True))
        base_name = settings.get("base_model")
        if base_name and unet_choice:
            raise ModelError(
                f"{root / SETTINGS_FILE}: give either base_model (the UNet of another model) or unet "
                "(a UNet in this folder), not both"
            )
        if base_name and models_dir is not None:
            base = _base_model(root, base_name, uses_metadata, sd21_dir, models_dir)
            unet_dir = base.unet_path
        else:
            unet_dir = find_network_folder(root, "unet", unet_choice)
            if unet_dir is not None:
                unet_kind = recognise_unet_config(read_json(unet_dir / "config.json"), str(unet_dir / "config.json"))
                _check_base_unet_kind(unet_kind, uses_metadata, unet_dir)
    else:
        unet_dir = find_network_folder(root, "unet", unet_choice)
        if unet_dir is None:
            raise ModelError(
                f"{root} is not a model folder: no unet/config.json, controlnet/config.json or "
                f"checkpoint-N/unet/config.json. {describe_folder(root)}"
            )
        network_dir = unet_dir
        config = read_json(unet_dir / "config.json")
        kind = recognise_unet_config(config, str(unet_dir / "config.json"))
        uses_metadata = kind == SATUNET
    if not has_weights_file(network_dir):
        raise ModelError(f"{network_dir} has a config.json but no weights. {describe_folder(network_dir)}")

    components, missing = find_components(root, sd21_dir, base.path if base else None)
    if controlnet_dir is not None:
        components["controlnet"] = controlnet_dir
    return ModelInfo(
        name=root.name,
        path=root,
        kind=kind,
        unet_path=unet_dir,
        components=components,
        native_resolution=settings.get("native_resolution") or _default_resolution(kind, config, components),
        uses_metadata=uses_metadata,
        num_metadata=int(config.get("num_metadata", 7)) if uses_metadata else 0,
        prediction_type=_prediction_type(kind, components),
        tasks=tuple(settings.get("tasks") or _default_tasks(kind, config)),
        display_name=settings.get("display_name") or root.name,
        description=settings.get("description") or _DESCRIPTIONS[kind],
        default_guidance=float(settings.get("default_guidance", DEFAULT_GUIDANCE)),
        missing_components=missing,
        base_model=base.name if base else None,
        num_frames=settings.get("num_frames", DEFAULT_CONTROLNET_FRAMES) if kind == CONTROLNET_3D else 0,
        metadata_caption=bool(settings.get("metadata_caption", False)),
    )


def _base_model(root: Path, name: str, uses_metadata: bool, sd21_dir: Path | None, models_dir: Path) -> ModelInfo:
    """The single-image model a ControlNet's gfm4d.json names as its base."""
    folder = models_dir / name
    where = f"{root / SETTINGS_FILE} names base_model {name!r}"
    if folder.resolve() == root.resolve():
        raise ModelError(f"{where}, which is this ControlNet itself; name the DiffusionSat model it was trained on")
    if not folder.is_dir():
        raise ModelError(
            f"{where}, but {models_dir} has no folder {name!r}. Put the DiffusionSat single-image model the "
            "ControlNet was trained on there (e.g. with `gfm4d models import`), or fix the name."
        )
    try:
        base = _inspect(folder, sd21_dir, None, None)
    except ModelError as exc:
        raise ModelError(f"{where}, which is not usable: {exc}") from exc
    if base.kind not in UNET_KINDS:
        raise ModelError(f"{where}, a {base.kind}; the base must be a single-image model (kind {SATUNET})")
    _check_base_unet_kind(base.kind, uses_metadata, base.unet_path)
    return base


def _check_base_unet_kind(unet_kind: str, uses_metadata: bool, unet_dir: Path) -> None:
    """A metadata ControlNet needs a SatUNet beside it (and a plain one a plain SD UNet)."""
    expected = SATUNET if uses_metadata else SD_UNET
    if unet_kind != expected:
        raise ModelError(
            f"the UNet in {unet_dir} is a {unet_kind}, but this ControlNet needs a {expected} base; "
            f"name the model it was trained on as base_model in the ControlNet's {SETTINGS_FILE}"
        )


def _default_resolution(kind: str, config: dict, components: dict[str, Path]) -> int:
    if kind in (SATUNET, *CONTROLNET_KINDS):
        return DIFFUSIONSAT_DEFAULT_RESOLUTION
    # Plain SD: diffusers' own default, sample_size latents times the VAE's downsampling.
    sample_size = config.get("sample_size")
    if not isinstance(sample_size, int) or "vae" not in components:
        return DIFFUSIONSAT_DEFAULT_RESOLUTION
    vae_config = read_json(components["vae"] / "config.json")
    return sample_size * 2 ** (len(vae_config.get("block_out_channels", (0, 0, 0, 0))) - 1)


def _prediction_type(kind: str, components: dict[str, Path]) -> str:
    # Every DiffusionSat network is fine-tuned from SD-2.1-768, a v-prediction model (spec §4),
    # whatever scheduler config sits beside it (the 512 "base" SD-2.1 one says epsilon).
    if kind in (SATUNET, *CONTROLNET_KINDS):
        return "v_prediction"
    if "scheduler" not in components:
        return "epsilon"
    return read_json(components["scheduler"] / "scheduler_config.json").get("prediction_type", "epsilon")


def _default_tasks(kind: str, config: dict) -> tuple[str, ...]:
    if kind in (SATUNET, SD_UNET):
        return ("generate", "inpaint")
    if kind == SD_INPAINT_UNET:
        return ("inpaint",)
    if kind == CONTROLNET_3D:
        return ("predict",)
    # A 2D ControlNet on an RGB image is pre <-> post prediction; on other bands, super-resolution.
    return ("predict",) if config.get("conditioning_in_channels") == 3 else ("superres",)
