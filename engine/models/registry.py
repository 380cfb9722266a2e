"""The models directory: which models there are, what they are, and loaded copies of them.

Every sub-folder of the models directory is one model, named after the folder and recognised
from its config files (layout.py). A single-file `.safetensors` checkpoint dropped there is a model
too, named after the file and recognised from its tensor names (single_file.py); its first load
converts it into a folder of that name, which is the model from then on. Folders that are not usable models are skipped with the reason
logged, so one broken download does not hide the others. Loaded models are cached per
(name, device, dtype, backend): loading a real checkpoint takes seconds to minutes.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import ModelError

from .importing import check_model_name, import_model
from .layout import FETCHED_SD21_FOLDER, SD21_ENV_VAR, ModelInfo, inspect_model_folder

if TYPE_CHECKING:  # loading needs torch; listing, checking and importing models do not
    import torch

    from .loading import DiffusionModel
from .lora import LORA_DIR, LoraSpec, find_loras, is_lora_file, resolve_lora

__all__ = ["DiffusionModel", "ModelInfo", "ModelRegistry", "Scan"]


def __getattr__(name: str):
    if name == "DiffusionModel":  # kept importable from here without importing torch up front
        from .loading import DiffusionModel

        return DiffusionModel
    raise AttributeError(name)

log = logging.getLogger(__name__)

# Models shipped inside the package (GFM4D-mini): found after the models directory's own folders,
# so a folder of the same name in the models directory wins.
BUILTIN_DIR = Path(__file__).parent / "builtin"


@dataclass
class Scan:
    """One look at the models directory."""

    models: list[ModelInfo] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # folder name -> why it is not a model


class ModelRegistry:
    """Local models in diffusers layout under `models_dir`.

    `sd21_dir` (default: the GFM4D_SD21_DIR environment variable, else the `_sd21` folder that
    `gfm4d models fetch` fills, when there is one) is an SD-2.1 folder in diffusers layout that
    supplies the VAE, text encoder, tokenizer or scheduler a model folder lacks.
    `backend` ("torch" or "onnx") runs every model on that backend, whatever GFM4D_BACKEND and the
    models' gfm4d.json say (engine.runtime.device).
    """

    def __init__(self, models_dir: Path, sd21_dir: Path | None = None, backend: str | None = None):
        self.models_dir = Path(models_dir)
        env_sd21 = os.environ.get(SD21_ENV_VAR)
        self._sd21_dir = Path(sd21_dir) if sd21_dir else (Path(env_sd21) if env_sd21 else None)
        self.backend = backend
        # Whether LoRAs may be given as file paths (local use), not only by name from the models folder.
        self.allow_lora_paths = False
        self._loaded: dict[tuple, DiffusionModel] = {}
        self._lock = threading.Lock()

    def _folders(self) -> list[Path]:
        """Model folders: the models directory's, then built-in ones it does not shadow."""
        own = sorted(self.models_dir.iterdir()) if self.models_dir.is_dir() else []
        names = {folder.name for folder in own}
        builtin = sorted(BUILTIN_DIR.iterdir()) if BUILTIN_DIR.is_dir() else []
        return own + [folder for folder in builtin if folder.name not in names]

    def _folder(self, name: str) -> Path | None:
        for root in (self.models_dir, BUILTIN_DIR):
            if (root / name).is_dir():
                return root / name
        return None

    @property
    def sd21_dir(self) -> Path | None:
        """The configured SD-2.1 folder, else the fetched one (looked up each time: a fetch may add it)."""
        if self._sd21_dir is not None:
            return self._sd21_dir
        fetched = self.models_dir / FETCHED_SD21_FOLDER
        return fetched if fetched.is_dir() else None

    @sd21_dir.setter
    def sd21_dir(self, value: Path | None) -> None:
        self._sd21_dir = Path(value) if value else None

    def scan(self) -> Scan:
        """Recognise every model folder and single-file checkpoint; hidden folders (staged imports) are not looked at."""
        scan = Scan()
        folders = self._folders()
        for folder in folders:
            if not folder.is_dir() or folder.name.startswith((".", "_")) or folder.name == LORA_DIR:
                continue
            try:
                scan.models.append(inspect_model_folder(folder, self.sd21_dir, models_dir=self.models_dir))
            except ModelError as exc:
                scan.skipped[folder.name] = str(exc)
        names = {folder.name for folder in folders}
        for path in self._checkpoint_files():
            if path.stem in names:  # converted already: the folder is the model
                continue
            try:
                scan.models.append(self._inspect_file(path))
            except ModelError as exc:
                scan.skipped[path.name] = str(exc)
        return scan

    def _checkpoint_files(self) -> list[Path]:
        """Single-file checkpoints dropped in the models folder (LoRA files are not models)."""
        if not self.models_dir.is_dir():
            return []
        return [path for path in sorted(self.models_dir.glob("*.safetensors"))
                if path.is_file() and not path.name.startswith(".") and not is_lora_file(path)]

    def _inspect_file(self, path: Path) -> ModelInfo:
        from .single_file import find_config, inspect_checkpoint, single_file_info

        checkpoint = inspect_checkpoint(path)
        return single_file_info(checkpoint, find_config(checkpoint, self.models_dir))

    def list(self) -> list[ModelInfo]:
        """The usable models, by name; unrecognisable folders are skipped and logged."""
        scan = self.scan()
        for name, reason in scan.skipped.items():
            log.warning("skipping %s in %s: %s", name, self.models_dir, reason)
        return scan.models

    def get(self, name: str) -> ModelInfo:
        """The model called `name`; ModelError lists the available names otherwise."""
        folder = self._folder(name) if name and not name.startswith((".", "_")) and Path(name).name == name else None
        if folder is not None:
            return inspect_model_folder(folder, self.sd21_dir, models_dir=self.models_dir)
        file = self.models_dir / f"{name}.safetensors" if folder is None and name and Path(name).name == name else None
        if file is not None and file.is_file() and not name.startswith(".") and not is_lora_file(file):
            return self._inspect_file(file)
        names = [info.name for info in self.scan().models]
        available = ", ".join(names) if names else f"none (put model folders in {self.models_dir}, or run `gfm4d demo`)"
        raise ModelError(f"unknown model {name!r}; available models: {available}")

    def load(self, name: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
             backend: str | None = None, loras: tuple[LoraSpec, ...] = ()) -> DiffusionModel:
        """The loaded model, from the cache when this (name, device, dtype, backend, loras) was loaded before.

        `dtype` defaults to float32; `backend` overrides the registry's, the environment's and the
        model's own choice; `loras` (see `lora_specs`) are fused into a copy of their own.
        """
        import torch

        from .loading import load_model

        dtype = torch.float32 if dtype is None else dtype
        backend = backend or self.backend
        key = (name, str(torch.device(device)), dtype, backend)
        if loras:
            key += (tuple(loras),)
        with self._lock:
            if key not in self._loaded:
                info = self.get(name)
                if info.path.is_file():  # a dropped single-file checkpoint: converted once, then a folder like any other
                    info = self.import_model(info.path, name=info.name)
                self._loaded[key] = load_model(info, device, dtype, self.sd21_dir, backend=backend,
                                               loras=tuple(loras))
            return self._loaded[key]

    def loras(self) -> dict[str, Path]:
        """LoRA files in the models folder (top level and loras/), by name."""
        return find_loras(self.models_dir)

    def lora_specs(self, entries) -> tuple[LoraSpec, ...]:
        """Requested LoRAs ({"name": ..., "scale": ...} or (name, scale) items) -> resolved LoraSpecs."""
        specs = []
        for entry in entries or ():
            name, scale = (entry["name"], entry.get("scale", 1.0)) if isinstance(entry, dict) else entry
            specs.append(resolve_lora(str(name), float(scale), self.models_dir, self.allow_lora_paths))
        return tuple(specs)

    def unload(self, name: str | None = None) -> None:
        """Drop cached models (all, or those of one name) so their memory can be freed."""
        with self._lock:
            for key in [key for key in self._loaded if name is None or key[0] == name]:
                del self._loaded[key]

    def import_model(self, source: Path, name: str | None = None, unet: str | None = None,
                     config: Path | None = None) -> ModelInfo:
        """Copy a model folder or released zip, or convert a single-file checkpoint (with the diffusers
        configs of `config`), into the models directory (see importing.py)."""
        if name is not None:
            check_model_name(name)
        target = import_model(source, self.models_dir, name, unet=unet, config=config)
        return self.get(target.name)
