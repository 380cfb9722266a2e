"""Training an inpainting SatUNet: SD-inpainting's nine input channels, with disaster polygons as masks.

An inpainting UNet sees, beside the noisy latents, the mask (one channel, on latent cells) and the
latents of the image with the masked pixels greyed out (four channels): the inputs
`engine.pipelines.inpaint` gives a 9-channel UNet. A masked-latent-blending model paints its usual
land cover in a damage polygon whatever the caption says, because its context decides the scene;
an inpainting UNet is trained on exactly the question inpainting asks. A chip whose caption names
an event (a flood, a burn scar) is masked with its event polygons, so the caption and the mask
together say "paint this here"; every other chip gets random blobs (and now and then the whole
chip), so the model keeps inpainting any land cover and generating from nothing.

A fine-tune widens the base UNet's first convolution from 4 to 9 input channels with zero weights
for the new ones, as SD's inpainting models were made from SD: it starts as the base model.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

INPAINTING_CHANNELS = 9  # noisy latents (4), mask (1), masked image latents (4)


def widen_conv_in(unet) -> None:
    """Give a 4-channel UNet the inpainting inputs, in place; the new input weights start at zero."""
    conv = unet.conv_in
    if conv.in_channels == INPAINTING_CHANNELS:
        return
    wide = torch.nn.Conv2d(INPAINTING_CHANNELS, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           dtype=conv.weight.dtype, device=conv.weight.device)
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[:, :conv.in_channels] = conv.weight
        wide.bias.copy_(conv.bias)
    unet.conv_in = wide
    unet.register_to_config(in_channels=INPAINTING_CHANNELS)


def random_masks(count: int, size: int, generator: torch.Generator, whole_share: float = 0.1) -> torch.Tensor:
    """(count, 1, size, size) masks of 1 to 3 random ellipses (10-60% of the chip), or the whole chip
    `whole_share` of the time: shapes like a polygon rasterised, never aligned to latent cells."""
    rows, cols = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    masks = torch.zeros(count, 1, size, size)
    for i in range(count):
        if float(torch.rand(1, generator=generator)) < whole_share:
            masks[i] = 1.0
            continue
        for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
            centre = torch.rand(2, generator=generator) * size
            radii = (0.15 + 0.3 * torch.rand(2, generator=generator)) * size
            angle = float(torch.rand(1, generator=generator)) * np.pi
            dy, dx = rows - centre[0], cols - centre[1]
            u = dx * np.cos(angle) + dy * np.sin(angle)
            v = -dx * np.sin(angle) + dy * np.cos(angle)
            masks[i, 0][(u / radii[1]) ** 2 + (v / radii[0]) ** 2 <= 1] = 1.0
    return masks


def inpainting_inputs(vae, images: torch.Tensor, masks: torch.Tensor, scaling: float) -> torch.Tensor:
    """The 5 extra channels for images (N, 3, S, S) in [-1, 1] and pixel masks (N, 1, S, S), as
    inference builds them: the mask on latent cells (a cell is repainted if any of its pixels is)
    and the latents of the image with the masked pixels at 0 (the posterior mean, scaled)."""
    with torch.no_grad():
        masked = vae.encode((images * (masks == 0)).to(vae.device, vae.dtype)).latent_dist.mean.float().cpu()
    cell_mask = F.max_pool2d(masks, images.shape[-1] // masked.shape[-1])
    return torch.cat([cell_mask, masked * scaling], dim=1)


def batch_inputs(vae, images: torch.Tensor, event_masks: list, codes: torch.Tensor, scaling: float,
                 generator: torch.Generator, whole_share: float, turned_encodings: bool) -> torch.Tensor:
    """The extra channels of a batch of chips (as stored, unturned) drawn in orientations `codes`:
    each chip's event mask where it has one (else random blobs). They must be turned exactly as the
    chips' target latents are: encodings of the turned chip when the bank encoded every orientation
    (`turned_encodings`), else the stored encoding turned in latent space, so here the unturned
    chip's inputs, turned afterwards (the masked latents then equal the target's where nothing is masked)."""
    from .batches import dihedral

    masks = random_masks(len(images), images.shape[-1], generator, whole_share)
    for row, event in enumerate(event_masks):
        if event is not None:
            masks[row, 0] = torch.from_numpy(np.asarray(event, dtype=np.float32))
    if turned_encodings:
        return inpainting_inputs(vae, dihedral(images, codes), dihedral(masks, codes), scaling)
    return dihedral(inpainting_inputs(vae, images, masks, scaling), codes)
