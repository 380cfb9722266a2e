"""The networks behind the learned metrics, loaded only from local files the user names.

Nothing is downloaded. Each learned metric names the file or folder it needs:

- FID, KID, Inception Score: a feature network saved with TorchScript (`.pt`, `.pth`, `.ts`) or
  torch.export (`.pt2`). Two calling conventions are understood:
  * the Inception-v3 TorchScript used by StyleGAN2-ADA/StyleGAN3 and clean-fid
    (`inception-2015-12-05.pt`; its `forward(img, return_features=...)` takes uint8-range images
    of any size): features with `return_features=True` (2048), class probabilities without;
  * any other module: float RGB in [0, 1], (N, 3, S, S) with S = `input_size` (default 299), returning
    (N, D) features; for the Inception Score, (N, C) logits or probabilities.
  A torchvision model is used by saving it once as TorchScript where torchvision is installed:
  `torch.jit.save(torch.jit.script(torchvision.models.inception_v3(weights="DEFAULT").eval()), "inception.pt")`.
- LPIPS (Zhang et al. 2018): a backbone (TorchScript/export module taking LPIPS-scaled images and
  returning the list of its feature maps, e.g. AlexNet's five ReLU outputs) plus the LPIPS linear
  layer weights (`alex.pth` from the `lpips` package: keys `lin0.model.1.weight` ...).
- CLIP score: a CLIP model folder in Hugging Face transformers layout (config.json, weights,
  tokenizer files), e.g. `openai/clip-vit-base-patch16` saved with `save_pretrained`.

A metrics folder (`networks`) gathers them under fixed names: `inception.pt` (or `.pt2`),
`lpips_net.pt` (or `.pt2`), `lpips_weights.pth` and `clip/`; a server finds it by name in its models
folder, so HTTP clients never name server paths.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import InputError

WHERE_TO_GET = {
    "inception": "the Inception-v3 TorchScript of StyleGAN2-ADA/clean-fid "
                 "(https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt), "
                 "or any feature network saved with torch.jit.save / torch.export.save",
    "lpips_net": "an AlexNet/VGG feature backbone saved with torch.jit.save that returns its LPIPS layers' "
                 "feature maps (see the lpips package, https://github.com/richzhang/PerceptualSimilarity)",
    "lpips_weights": "the LPIPS linear weights, e.g. lpips/weights/v0.1/alex.pth from the lpips package on PyPI",
    "clip": "a CLIP model folder in transformers layout, e.g. openai/clip-vit-base-patch16 saved with "
            "CLIPModel.save_pretrained and CLIPTokenizer.save_pretrained on a machine with internet",
}


def missing(what: str, path: Path | None, metric: str) -> InputError:
    """The error for a network that was not given or not found: what, where it was looked for, where to get it."""
    where = f" (looked for {path})" if path is not None else ""
    option = {"clip": "clip/", "lpips_weights": "lpips_weights.pth"}.get(what, f"{what}.pt")
    return InputError(f"{metric} needs the {what.replace('_', ' ')} network, which was not found{where}; nothing is "
                      f"downloaded: get {WHERE_TO_GET[what]}, and name it (CLI --{what.replace('_', '-')}, or "
                      f"{option} in the networks folder)")


@dataclass(frozen=True)
class NetworkPaths:
    """Where each learned metric's network is; None where not given."""

    inception: Path | None = None
    lpips_net: Path | None = None
    lpips_weights: Path | None = None
    clip: Path | None = None

    @classmethod
    def from_folder(cls, folder: Path) -> "NetworkPaths":
        """The networks of a metrics folder laid out as the module docstring says."""
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"the metrics networks folder {folder} does not exist; create it with the networks "
                             "it should hold (inception.pt, lpips_net.pt, lpips_weights.pth, clip/)")

        def first(*names: str) -> Path | None:
            return next((folder / n for n in names if (folder / n).exists()), None)

        return cls(first("inception.pt", "inception.pt2", "inception.pth", "inception.ts"),
                   first("lpips_net.pt", "lpips_net.pt2", "lpips_net.ts"), first("lpips_weights.pth", "lpips_weights.pt"),
                   first("clip"))


def load_module(path: Path | None, what: str, metric: str) -> torch.nn.Module:
    """A TorchScript (.pt/.pth/.ts) or torch.export (.pt2) module from a local file, in eval mode."""
    if path is None or not Path(path).is_file():
        raise missing(what, path, metric)
    try:
        if Path(path).suffix == ".pt2":
            return torch.export.load(str(path)).module()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # a pickle or state dict is not a module: say what would be
        raise InputError(f"{path} is not a TorchScript (.pt) or torch.export (.pt2) module ({type(exc).__name__}); "
                         f"{metric} needs the network itself, not only its weights: save it with torch.jit.save "
                         "or torch.export.save") from None


def _takes_return_features(module) -> bool:
    forward = getattr(module, "forward", None)
    schema = getattr(forward, "schema", None)
    if schema is not None:
        return any(argument.name == "return_features" for argument in schema.arguments)
    try:
        return "return_features" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


class FeatureNetwork:
    """Images -> features (FID/KID) or class probabilities (IS), batch by batch."""

    def __init__(self, module: torch.nn.Module, input_size: int = 299, batch_size: int = 16, device: str = "cpu"):
        self.module = module.to(device) if hasattr(module, "to") else module
        self.nvidia = _takes_return_features(module)
        self.input_size = input_size
        self.batch_size = batch_size
        self.device = device

    @classmethod
    def load(cls, path: Path | None, metric: str = "FID", **kwargs) -> "FeatureNetwork":
        return cls(load_module(path, "inception", metric), **kwargs)

    def _prepare(self, images: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(images, dtype=np.float32), device=self.device)
        if self.nvidia:  # StyleGAN/clean-fid Inception: uint8 range, resizes inside
            return (x * 255).round().clamp(0, 255).to(torch.uint8)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = torch.nn.functional.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                                align_corners=False, antialias=True)
        return x

    def _run(self, images: np.ndarray, features: bool) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"feature networks take (N, 3, rows, cols) RGB images, not shape {images.shape}")
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                x = self._prepare(images[start : start + self.batch_size])
                y = self.module(x, return_features=features) if self.nvidia else self.module(x)
                out.append(y.float().reshape(len(x), -1).cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    def features(self, images: np.ndarray) -> np.ndarray:
        """(N, D) features of (N, 3, rows, cols) RGB images in [0, 1]."""
        return self._run(images, features=True)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, C) class probabilities (softmax of the outputs unless they already are probabilities)."""
        out = self._run(images, features=False)
        if (out >= 0).all() and np.allclose(out.sum(axis=1), 1.0, atol=1e-4):
            return out
        return torch.softmax(torch.from_numpy(out), dim=1).numpy()
