"""Copy a model folder or a released zip into the models directory, atomically (or convert a single file).

Only what the model uses is copied: the root components, `model_index.json`, `gfm4d.json` and the
chosen network folders (at the same relative path, e.g. `checkpoint-150000/unet`), not the training
state beside it (optimizer states, other checkpoints: several GB). A ControlNet whose gfm4d.json
names a `base_model` is checked against that model in the destination models directory, and the
base's UNet is not copied. Everything is staged in a hidden folder of the models directory and
renamed into place at the end, so a model folder is either complete or absent. A single-file
`.safetensors` checkpoint is converted into such a folder the same way (single_file.py).
"""

import json
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from engine.errors import ModelError

from .layout import COMPONENTS, SETTINGS_FILE, inspect_model_folder

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_EXTRA_FILES = ("model_index.json", SETTINGS_FILE)
_CHECKPOINT_DIR = re.compile(r"checkpoint-\d+")
STAGING_PREFIX = ".import-"  # hidden: the registry does not list half-imported folders


def check_model_name(name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise ModelError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' (up to 100), "
            "starting with a letter or digit"
        )
    return name


def import_model(source: Path, models_dir: Path, name: str | None = None, unet: str | None = None,
                 settings: dict | None = None, config: Path | None = None) -> Path:
    """Copy `source` (a model folder or a zip holding one) to `models_dir/<name>`; return that folder.

    `unet` picks the network subfolder explicitly (e.g. "checkpoint-150000/unet_ema") and is
    recorded in the copy's gfm4d.json. `settings` (gfm4d.json entries, e.g. a catalogue's
    native_resolution or base_model) are merged into the copy's gfm4d.json, and into what the
    zip's folder is recognised as, so a `base_model` there decides which UNet is copied.
    """
    source = Path(source)
    models_dir = Path(models_dir)
    if not source.exists():
        raise ModelError(f"cannot import {source}: it does not exist")
    if source.is_file() and source.suffix.lower() in (".safetensors", ".ckpt", ".pt", ".pth"):
        return import_single_file(source, models_dir, name, config)
    if config is not None:
        raise ModelError(f"--config applies to single-file .safetensors checkpoints; {source} is not one")
    is_zip = source.is_file() and zipfile.is_zipfile(source)
    if source.is_file() and not is_zip and source.suffix.lower() == ".zip":
        raise ModelError(f"cannot import {source}: it is not a readable zip archive (damaged or incompletely downloaded?); download it again")
    if not (is_zip or source.is_dir()):
        raise ModelError(f"cannot import {source}: give a model folder or a .zip holding one")
    name = check_model_name(name or (source.stem if is_zip else source.name))
    target = models_dir / name
    if target.exists():
        raise ModelError(f"a model named {name!r} already exists at {target}; choose another name or remove it")

    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=models_dir))
    except OSError as exc:
        raise ModelError(
            f"cannot write to the models folder {models_dir} ({exc.strerror}); choose a writable one with "
            "--models-dir or GFM4D_MODELS"
        ) from None
    try:
        root = _extract_zip(source, staging / "zip") if is_zip else source
        if settings and is_zip:
            _merge_settings(root, settings)  # our own extraction: recognise it as it will be installed
        # Refuse anything unrecognisable before copying; a base_model must be in the destination.
        try:
            info = inspect_model_folder(root, unet=unet, models_dir=models_dir)
        except ModelError as exc:  # name the user's zip, not the hidden folder it was extracted to
            raise ModelError(str(exc).replace(str(staging / "zip"), f"{source.name}:")) from None
        staged = staging / "model"
        staged.mkdir()
        try:
            for relative in _paths_to_copy(root, info):
                _copy(root / relative, staged / relative, move=is_zip)
            if unet:
                _record_unet_choice(staged, unet)
            if settings:
                _merge_settings(staged, settings)
        except OSError as exc:
            raise ModelError(f"cannot copy {source} into {models_dir}: {exc.strerror} (disk full?)") from None
        try:
            inspect_model_folder(staged, models_dir=models_dir)
        except ModelError as exc:
            raise ModelError(str(exc).replace(str(staged), str(source))) from None
        try:
            staged.rename(target)
        except OSError as exc:
            raise ModelError(f"cannot create {target}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def import_single_file(source: Path, models_dir: Path, name: str | None = None, config: Path | None = None) -> Path:
    """Convert a single-file checkpoint into `models_dir/<name>` (see single_file.py); return that folder.

    `config` is a local diffusers-layout folder of the same family; without it, a model of that
    family in `models_dir` lends its configs.
    """
    from .single_file import find_config, inspect_checkpoint, missing_config_error, stage_conversion

    checkpoint = inspect_checkpoint(source)
    name = check_model_name(name or source.stem)
    target = Path(models_dir) / name
    if target.exists():
        raise ModelError(f"a model named {name!r} already exists at {target}; choose another name with --name or remove it")
    if config is not None and not Path(config).is_dir():
        raise ModelError(f"--config {config}: no such folder; give a local diffusers-layout model folder")
    config = Path(config) if config is not None else find_config(checkpoint, models_dir)
    if config is None:
        raise missing_config_error(checkpoint, models_dir)
    try:
        Path(models_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot write to the models folder {models_dir} ({exc.strerror}); choose a writable one "
                         "with --models-dir or GFM4D_MODELS") from None
    return stage_conversion(checkpoint, config, Path(models_dir), name, STAGING_PREFIX)


def _extract_zip(archive: Path, destination: Path) -> Path:
    """Extract, then find the run folder: the archive root or its single top-level folder."""
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(destination)  # zipfile drops absolute paths and '..' from member names
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as exc:
        raise ModelError(f"cannot extract {archive}: it is damaged ({exc}); download it again") from None
    except OSError as exc:
        raise ModelError(f"cannot extract {archive}: {exc.strerror or exc} (disk full?)") from None
    entries = [e for e in destination.iterdir() if not e.name.startswith((".", "__MACOSX"))]
    folders = [e for e in entries if e.is_dir()]
    if len(entries) == 1 and len(folders) == 1 and not _looks_like_model(destination):
        return folders[0]
    return destination


def _looks_like_model(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("unet", "controlnet", *_EXTRA_FILES)) or any(
        folder.glob("checkpoint-*")
    )


def _paths_to_copy(root: Path, info) -> list[Path]:
    paths = [Path(component) for component in COMPONENTS if (root / component).is_dir()]
    paths += [Path(name) for name in _EXTRA_FILES if (root / name).is_file()]
    for network in (info.unet_path, info.components.get("controlnet")):
        if network is not None and network.is_relative_to(root):  # not a base model's UNet
            paths.append(network.relative_to(root))
    return paths


def _copy(source: Path, destination: Path, move: bool) -> None:
    """Copy from a user's folder; move out of our own extraction (no second copy on disk)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if move:
        shutil.move(source, destination)
    elif source.is_dir():
        shutil.copytree(source, destination)
    else:
        shutil.copy2(source, destination)


def _record_unet_choice(folder: Path, unet: str) -> None:
    path = folder / SETTINGS_FILE
    settings = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    settings["unet"] = unet
    path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def describe_import(info, sd21_dir: Path | None, source: Path | None = None) -> list[str]:
    """What `gfm4d models import` tells: where the model went, which network was taken, what is missing."""
    lines = [f"imported {info.name} ({info.kind}: {info.description}) into {info.path}"]
    found = []
    if source is not None and Path(source).is_dir():
        found = sorted((p.name for p in Path(source).iterdir() if _CHECKPOINT_DIR.fullmatch(p.name) and p.is_dir()),
                       key=lambda name: int(name.split("-")[1]))
    for label, network in (("UNet", info.unet_path), ("ControlNet", info.components.get("controlnet"))):
        if network is None or not Path(network).is_relative_to(info.path):
            continue
        relative = Path(network).relative_to(info.path)
        line = f"  {label}: {relative.as_posix()}"
        if relative.parts[0].startswith("checkpoint-"):
            among = f" of {', '.join(found)}" if len(found) > 1 else ""
            line += (
                f" (the highest checkpoint{among}; choose another with {{\"{label.lower()}\": \"checkpoint-N/"
                f"{label.lower()}\"}} in {SETTINGS_FILE} or `gfm4d models import` of a folder holding only it)"
            )
        lines.append(line)
    if info.missing_components:
        where = f"the SD-2.1 folder {sd21_dir} lacks them too" if sd21_dir else "no SD-2.1 folder is set"
        lines.append(
            f"  not ready: {', '.join(info.missing_components)} missing ({where}). They are Stable Diffusion 2.1's "
            "own: pass --sd21-dir FOLDER or set GFM4D_SD21_DIR to a local stable-diffusion-2-1 folder in diffusers "
            "layout (vae/, text_encoder/, tokenizer/, scheduler/)"
        )
    else:
        lines.append("  ready")
    return lines


def _merge_settings(folder: Path, settings: dict) -> None:
    path = folder / SETTINGS_FILE
    merged = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    merged.update(settings)
    path.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
