"""Write a trained model as a folder the registry loads: diffusers components plus gfm4d.json.

The layout is a finished DiffusionSat training run's (`unet/` a SatUNet, root `vae/`,
`text_encoder/`, `tokenizer/`, `scheduler/`), weights as half-precision safetensors to keep the
folder small. The folder is assembled beside the target and renamed into place, so an
interrupted export never leaves half a model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import safetensors.torch
import torch

from engine.evaluate.report import write_atomically
from engine.models.demo import _write_shared_components
from engine.models.layout import SETTINGS_FILE

TEXT_COMPONENTS = ("text_encoder", "tokenizer", "scheduler")


def _save_half(module: torch.nn.Module, folder: Path, weights_name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    module.save_config(folder) if hasattr(module, "save_config") else module.config.save_pretrained(folder)
    _drop_source_path(folder / "config.json")
    tensors = {k: (v.half() if v.is_floating_point() else v).cpu().contiguous() for k, v in module.state_dict().items()}
    safetensors.torch.save_file(tensors, str(folder / weights_name), metadata={"format": "pt"})


def write_text_components(folder: Path, seed: int) -> None:
    """GFM4D's own tokenizer, frozen text encoder and DDIM v-prediction scheduler (no download)."""
    _write_shared_components(folder, seed)
    shutil.rmtree(folder / "vae")
    (folder / "model_index.json").unlink(missing_ok=True)


def export_model(
    target: Path,
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    components_from: Path,
    settings: dict,
    model_card: str,
    extra_files: dict[str, Path] | None = None,
    text_encoder: torch.nn.Module | None = None,
) -> Path:
    """Write the model folder `target` atomically; `components_from` supplies tokenizer, scheduler and, unless
    a trained `text_encoder` is given, the text encoder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    try:
        folder = staging / target.name
        folder.mkdir()
        _save_half(unet, folder / "unet", "diffusion_pytorch_model.safetensors")
        _save_half(vae, folder / "vae", "diffusion_pytorch_model.safetensors")
        for name in TEXT_COMPONENTS:
            if name != "text_encoder" or text_encoder is None:
                shutil.copytree(Path(components_from) / name, folder / name)
        if text_encoder is not None:
            _save_half(text_encoder, folder / "text_encoder", "model.safetensors")
        else:
            _half_text_encoder(folder / "text_encoder")
        _write_json(folder / "model_index.json", {
            "_class_name": "DiffusionSatPipeline",
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusionsat", "SatUNet"],
            "vae": ["diffusers", "AutoencoderKL"],
        })
        _write_json(folder / SETTINGS_FILE, settings)
        (folder / "README.md").write_text(model_card, encoding="utf-8")
        for name, path in (extra_files or {}).items():
            shutil.copyfile(path, folder / name)
        if target.exists():
            old = staging / ".old"
            target.rename(old)
        folder.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def write_card(target: Path, model_card: str) -> None:
    """Replace an exported model's card (README.md) atomically: scores measured on the exported
    model go into its card without writing the weights again."""
    write_atomically(Path(target) / "README.md", model_card.encode("utf-8"))


def _drop_source_path(config: Path) -> None:
    """A module loaded from a folder records that folder (`_name_or_path`): a path on the machine that
    exported it, which a shipped model must not carry."""
    values = json.loads(config.read_text(encoding="utf-8"))
    if values.pop("_name_or_path", None) is not None:
        _write_json(config, values)


def _half_text_encoder(folder: Path) -> None:
    path = folder / "model.safetensors"
    tensors = safetensors.torch.load_file(str(path))
    safetensors.torch.save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()},
                                str(path), metadata={"format": "pt"})


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
