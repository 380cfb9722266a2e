"""Small metric networks the evaluation tests build (no weights can be downloaded)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


class TinyFeatures(torch.nn.Module):
    """Images in [0, 1] -> 16 features: a convolution, pooling and a linear layer."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.head = torch.nn.Linear(8 * 4 * 4, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4)
        return self.head(x.flatten(1))


class TinyStyleGANInception(torch.nn.Module):
    """The calling convention of the StyleGAN/clean-fid Inception TorchScript: uint8 images,
    `return_features=True` -> features, else class probabilities."""

    def __init__(self):
        super().__init__()
        self.body = TinyFeatures()
        self.classes = torch.nn.Linear(16, 5)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        features = self.body(torch.nn.functional.interpolate(img.float() / 255, size=(32, 32), mode="bilinear"))
        if return_features:
            return features
        return torch.softmax(self.classes(features), dim=1)


class TinyBackbone(torch.nn.Module):
    """An LPIPS backbone: the list of its layers' feature maps."""

    def __init__(self):
        super().__init__()
        self.one = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.two = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = torch.relu(self.one(x))
        return [a, torch.relu(self.two(a))]


class IdentityBackbone(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x]


def save_script(module: torch.nn.Module, path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


def save_export(module: torch.nn.Module, path: Path, size: int = 32, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(module.eval(), (torch.rand(2, 3, size, size),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def save_lpips_weights(path: Path, channels: list[int], seed: int = 0) -> Path:
    generator = torch.Generator().manual_seed(seed)
    state = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator) for i, c in enumerate(channels)}
    torch.save(state, str(path))
    return path


def save_tiny_clip(folder: Path, words: list[str]) -> Path:
    """A CLIP model folder in transformers layout (random weights, a vocabulary of `words`)."""
    from transformers import CLIPConfig, CLIPModel

    from engine.models.demo import BOS, EOS, PAD, _write_tokenizer, clip_bpe_vocabulary

    vocab, merges = clip_bpe_vocabulary(words + [PAD])
    _write_tokenizer(folder, vocab, merges)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab[BOS],
                         eos_token_id=vocab[EOS], pad_token_id=vocab[PAD]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    return folder
