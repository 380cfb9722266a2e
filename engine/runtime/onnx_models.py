"""Stand-ins for the UNet, ControlNet, VAE decoder and text encoder that run exported ONNX graphs.

Each one is called exactly like the torch module it replaces (the sampling loop and the
pipelines do not know which backend runs), exports a graph the first time it is called with a new
kind of input (the UNet with or without ControlNet residuals, a ControlNet with or without
conditioning metadata, a number of frames) and keeps that graph's session. Anything else
(`config`, `dtype`, the VAE's encoder, a ControlNet's `condition_factor`) comes from the torch module.

What the graphs leave out, the stand-ins do in torch: the scheduler's timestep becomes a float32
(1,) tensor (the sinusoid is the same for integer and float timesteps), and a ControlNet's
`conditioning_scale` multiplies its residuals after the graph (diffusers does the same inside).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from torch import nn

from engine.errors import ModelError

from .onnx import OnnxGraph, cached_graph, export_graph, folder_fingerprint, graph_key, static_signature

BATCH = {0: "batch"}


def spatial(height: str, width: str, ndim: int = 4) -> dict[int, str]:
    """Dynamic axes of an image-like input: batch and the last two (spatial) axes."""
    return {0: "batch", ndim - 2: height, ndim - 1: width}


def timestep_input(timestep, device: torch.device) -> torch.Tensor:
    """A scheduler timestep as the graphs take it: float32, shape (1,)."""
    t = torch.as_tensor(timestep, device=device)
    if t.numel() != 1:
        raise ValueError(f"the ONNX backend takes one timestep per call, got shape {tuple(t.shape)}")
    return t.reshape(1).to(torch.float32)


def export_examples(inputs: Sequence[torch.Tensor], names: Sequence[str], axes: dict) -> list[torch.Tensor]:
    """The call's own inputs, with a batch of one repeated to two: a graph traced at batch 1 may not generalise."""
    examples = []
    for name, tensor in zip(names, inputs):
        if 0 in axes.get(name, {}) and tensor.shape[0] == 1:
            tensor = tensor.repeat(2, *([1] * (tensor.ndim - 1)))
        examples.append(tensor)
    return examples


class OnnxComponent:
    """A torch module's stand-in running its exported graphs; other attributes are the module's."""

    def __init__(self, module: nn.Module, component: str, source: Path, device: torch.device, cache_dir: Path):
        self.module = module
        self.component = component
        self.fingerprint = folder_fingerprint(source)
        self.device = torch.device(device)
        self.cache_dir = Path(cache_dir)
        self.graphs: dict[str, OnnxGraph] = {}

    def __getattr__(self, name: str):
        module = self.__dict__.get("module")
        if module is None:
            raise AttributeError(name)
        return getattr(module, name)

    def run(self, wrapper: Callable[[], nn.Module], inputs: Sequence[torch.Tensor], names: Sequence[str],
            outputs: Sequence[str], axes: dict) -> list[torch.Tensor]:
        """Run the graph for this kind of input, exporting it (once, to the cache) when new."""
        signature = static_signature(inputs, names, axes)
        key = graph_key(self.component, self.fingerprint, [*signature, str(self.module.dtype)], self.device)
        graph = self.graphs.get(key)
        if graph is None:
            examples = export_examples(inputs, names, axes)
            path = cached_graph(
                self.cache_dir, key, lambda folder: export_graph(wrapper().eval(), examples, names, outputs, axes, folder)
            )
            graph = self.graphs[key] = OnnxGraph(path, self.device)
        return graph(*inputs)


class _UNetGraph(nn.Module):
    """The UNet with positional tensor inputs: sample, timestep, text, [metadata], [residuals..., mid]."""

    def __init__(self, unet: nn.Module, metadata: bool, residuals: int):
        super().__init__()
        self.unet, self.metadata, self.residuals = unet, metadata, residuals

    def forward(self, sample, timestep, encoder_hidden_states, *rest):
        kwargs = {}
        if self.metadata:
            kwargs["metadata"], rest = rest[0], rest[1:]
        if self.residuals:
            kwargs["down_block_additional_residuals"] = tuple(rest[: self.residuals])
            kwargs["mid_block_additional_residual"] = rest[self.residuals]
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False, **kwargs)[0]


class OnnxUNet(OnnxComponent):
    def __call__(self, sample, timestep, encoder_hidden_states, metadata=None, down_block_additional_residuals=None,
                 mid_block_additional_residual=None, return_dict: bool = True, **unsupported):
        if unsupported:
            raise ValueError(f"the ONNX UNet does not take {', '.join(unsupported)}")
        inputs = [sample, timestep_input(timestep, sample.device), encoder_hidden_states]
        names = ["sample", "timestep", "encoder_hidden_states"]
        axes = {"sample": spatial("height", "width"), "encoder_hidden_states": BATCH, "out_sample": spatial("height", "width")}
        if metadata is not None:
            inputs.append(metadata.to(torch.float32))
            names.append("metadata")
            axes["metadata"] = BATCH
        residuals = list(down_block_additional_residuals or ())
        if residuals:
            inputs += [*residuals, mid_block_additional_residual]
            for index in range(len(residuals)):
                names.append(f"down_residual_{index}")
                axes[names[-1]] = spatial(f"down_{index}_height", f"down_{index}_width")
            names.append("mid_residual")
            axes["mid_residual"] = spatial("mid_height", "mid_width")
        def wrapper():
            return _UNetGraph(self.module, metadata is not None, len(residuals))

        out = self.run(wrapper, inputs, names, ["out_sample"], axes)[0]
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)


class _ControlNetGraph(nn.Module):
    """A DiffusionSat ControlNet with positional inputs, returning its residuals unscaled."""

    def __init__(self, controlnet: nn.Module, metadata: bool, cond_metadata: bool):
        super().__init__()
        self.controlnet, self.metadata, self.cond_metadata = controlnet, metadata, cond_metadata

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, *rest):
        metadata = cond_metadata = None
        if self.metadata:
            metadata, rest = rest[0], rest[1:]
        if self.cond_metadata:
            cond_metadata = rest[0]
        down, mid = self.controlnet(sample, timestep, encoder_hidden_states, controlnet_cond, metadata=metadata,
                                    cond_metadata=cond_metadata, conditioning_scale=1.0)
        return (*down, mid)


class OnnxControlNet(OnnxComponent):
    def __call__(self, sample, timestep, encoder_hidden_states, controlnet_cond, metadata=None, cond_metadata=None,
                 conditioning_scale: float = 1.0, **unsupported):
        if unsupported:
            raise ValueError(f"the ONNX ControlNet does not take {', '.join(unsupported)}")
        inputs = [sample, timestep_input(timestep, sample.device), encoder_hidden_states, controlnet_cond]
        names = ["sample", "timestep", "encoder_hidden_states", "controlnet_cond"]
        axes = {
            "sample": spatial("height", "width"),
            "encoder_hidden_states": BATCH,
            "controlnet_cond": spatial("cond_height", "cond_width", controlnet_cond.ndim),
        }
        for name, value in (("metadata", metadata), ("cond_metadata", cond_metadata)):
            if value is not None:
                inputs.append(value.to(torch.float32))
                names.append(name)
                axes[name] = BATCH
        count = len(self.module.controlnet_down_blocks)
        outputs = [f"down_residual_{i}" for i in range(count)] + ["mid_residual"]
        for index, name in enumerate(outputs):
            axes[name] = spatial(f"{name}_height", f"{name}_width")
        def wrapper():
            return _ControlNetGraph(self.module, metadata is not None, cond_metadata is not None)

        *down, mid = self.run(wrapper, inputs, names, outputs, axes)
        if conditioning_scale != 1.0:
            down = [residual * conditioning_scale for residual in down]
            mid = mid * conditioning_scale
        return tuple(down), mid


class _DecoderGraph(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        return self.vae.decode(latents).sample


class OnnxVAE(OnnxComponent):
    """The VAE whose decoder runs in onnxruntime; `encode` (inpainting's input) stays in torch."""

    def decode(self, latents: torch.Tensor, return_dict: bool = True):
        axes = {"latents": spatial("height", "width"), "images": spatial("image_height", "image_width")}
        images = self.run(lambda: _DecoderGraph(self.module), [latents], ["latents"], ["images"], axes)[0]
        return DecoderOutput(sample=images) if return_dict else (images,)


class _TextGraph(nn.Module):
    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        return self.text_encoder(input_ids)[0]


class OnnxTextEncoder(OnnxComponent):
    """The text encoder's last hidden state (what the UNet's cross-attention reads), as `output[0]`."""

    def __call__(self, input_ids: torch.Tensor, **unsupported):
        if unsupported:
            raise ValueError(f"the ONNX text encoder does not take {', '.join(unsupported)}")
        axes = {"input_ids": BATCH, "last_hidden_state": BATCH}
        hidden = self.run(lambda: _TextGraph(self.module), [input_ids], ["input_ids"], ["last_hidden_state"], axes)[0]
        return (hidden,)


def onnx_components(unet, controlnet, vae, text_encoder, sources: dict[str, Path], device: torch.device,
                    cache_dir: Path) -> tuple:
    """(unet, controlnet, vae, text_encoder) stand-ins over the loaded torch modules; `sources` names each one's folder."""
    if unet.dtype not in (torch.float32, torch.float16):
        raise ModelError(f"the ONNX backend runs float16 or float32, not {unet.dtype}: set GFM4D_DTYPE=float16 (or use the torch backend)")
    return (
        OnnxUNet(unet, "unet", sources["unet"], device, cache_dir),
        OnnxControlNet(controlnet, "controlnet", sources["controlnet"], device, cache_dir) if controlnet is not None else None,
        OnnxVAE(vae, "vae-decoder", sources["vae"], device, cache_dir),
        OnnxTextEncoder(text_encoder, "text-encoder", sources["text_encoder"], device, cache_dir),
    )
