"""LPIPS and CLIP score, on networks loaded from local files (see `engine.evaluate.networks`).

LPIPS follows the `lpips` package (Zhang et al. 2018, v0.1): images in [-1, 1], shifted and scaled
per channel, passed through the backbone; each layer's features are unit-normalised along channels,
their squared difference is weighted by the layer's non-negative 1x1 linear weights, averaged over
space and summed over layers. 0 for identical images; larger is less similar.

CLIP score follows torchmetrics' `CLIPScore` (Hessel et al. 2021): 100 x max(cos(image, text), 0)
with the embeddings of a transformers CLIP model, averaged over the images.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from engine.errors import InputError
from engine.evaluate.networks import load_module, missing

_LPIPS_SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
_LPIPS_SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
_LIN_KEY = re.compile(r"(?:^|\.)lin(\d+)\.model\.1\.weight$")
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class LPIPS:
    """LPIPS distance with a backbone module and the per-layer linear weights."""

    def __init__(self, backbone, linear_weights: list[torch.Tensor]):
        self.backbone = backbone
        self.linear = [w.float().clamp_min(0) for w in linear_weights]

    @classmethod
    def load(cls, backbone_path: Path | None, weights_path: Path | None) -> "LPIPS":
        backbone = load_module(backbone_path, "lpips_net", "LPIPS")
        if weights_path is None or not Path(weights_path).is_file():
            raise missing("lpips_weights", weights_path, "LPIPS")
        try:
            state = torch.load(str(weights_path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"{weights_path} cannot be read as LPIPS linear weights ({type(exc).__name__}); "
                             "give the lpips package's weights file, e.g. alex.pth") from None
        layers = sorted((int(m.group(1)), v) for k, v in state.items() if (m := _LIN_KEY.search(k)))
        if not layers:
            raise InputError(f"{weights_path} holds no LPIPS linear layers (keys like lin0.model.1.weight); "
                             "give the lpips package's weights file, e.g. alex.pth")
        return cls(backbone, [v for _, v in layers])

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per-image LPIPS of two (N, 3, rows, cols) RGB batches in [0, 1]."""
        x, y = (torch.as_tensor(np.asarray(v, dtype=np.float32)) for v in (a, b))
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"LPIPS compares two (N, 3, rows, cols) RGB batches of one shape, not {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")
        with torch.inference_mode():
            fx = self.backbone((x * 2 - 1 - _LPIPS_SHIFT) / _LPIPS_SCALE)
            fy = self.backbone((y * 2 - 1 - _LPIPS_SHIFT) / _LPIPS_SCALE)
            if len(fx) != len(self.linear):
                raise InputError(f"the LPIPS backbone returns {len(fx)} feature maps but the linear weights have "
                                 f"{len(self.linear)} layers; use the weights made for this backbone")
            total = torch.zeros(len(x))
            for feat_x, feat_y, weight in zip(fx, fy, self.linear):
                nx = feat_x / (feat_x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
                ny = feat_y / (feat_y.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
                weighted = torch.nn.functional.conv2d((nx - ny) ** 2, weight)
                total += weighted.mean(dim=(1, 2, 3))
        return total.numpy().astype(np.float64)


class CLIPScore:
    """CLIP score of images against a prompt, with a CLIP model folder in transformers layout."""

    def __init__(self, model, tokenizer, image_size: int, mean=_CLIP_MEAN, std=_CLIP_STD):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    @classmethod
    def load(cls, folder: Path | None) -> "CLIPScore":
        if folder is None or not (Path(folder) / "config.json").is_file():
            raise missing("clip", folder, "CLIP score")
        import json

        from transformers import CLIPModel, CLIPTokenizer

        try:
            model = CLIPModel.from_pretrained(str(folder), local_files_only=True)
            tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InputError(f"{folder} is not a complete CLIP model folder ({str(exc).splitlines()[0]}); "
                             "it needs config.json, the weights and the tokenizer files (vocab.json, merges.txt)") from None
        mean, std = _CLIP_MEAN, _CLIP_STD
        processor = Path(folder) / "preprocessor_config.json"
        if processor.is_file():
            settings = json.loads(processor.read_text())
            mean, std = settings.get("image_mean", mean), settings.get("image_std", std)
        return cls(model, tokenizer, model.config.vision_config.image_size, mean, std)

    def __call__(self, images: np.ndarray, prompt: str) -> np.ndarray:
        """Per-image CLIP score of (N, 3, rows, cols) RGB images in [0, 1] against one prompt."""
        if not prompt or not prompt.strip():
            raise InputError("the CLIP score compares images with a prompt: give the prompt")
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))
        x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic",
                                            align_corners=False, antialias=True).clamp(0, 1)
        x = (x - self.mean) / self.std
        tokens = self.tokenizer([prompt], padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            image = self.model.get_image_features(pixel_values=x)
            text = self.model.get_text_features(**tokens)
            image = getattr(image, "pooler_output", image)
            text = getattr(text, "pooler_output", text)
            image = image / image.norm(dim=-1, keepdim=True)
            text = text / text.norm(dim=-1, keepdim=True)
            scores = 100 * (image @ text.T).squeeze(1).clamp_min(0)
        return scores.numpy().astype(np.float64)
