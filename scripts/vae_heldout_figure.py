"""docs/img/gfm4d_mini_vae_heldout.png: held-out chips, the shrink-8x-and-enlarge baseline, and the VAE
(after its own stage, and with the decoder stage's decoder where the run has one: the shipped VAE).

    .venv/bin/python scripts/vae_heldout_figure.py [--run-dir .gfm4d/train/gfm4d-mini] [--output docs/img/...]

Reads the run folder `make gfm4d-mini` keeps (its chip bank and the VAE's last checkpoint), so the
figure shows the VAE exactly as trained, on chips it never saw.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.training.chips import ChipBank, bicubic_baseline  # noqa: E402
from engine.training.report import grid_png  # noqa: E402
from engine.training.state import load_latest  # noqa: E402
from engine.training.vae import VAEConfig, build_vae, heldout_scores, reconstruct  # noqa: E402

CHIPS = (0, 16, 40, 48)  # held-out chips of four different scenes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=REPO / ".gfm4d" / "train" / "gfm4d-mini")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "img" / "gfm4d_mini_vae_heldout.png")
    args = parser.parse_args()
    bank = ChipBank(args.run_dir / "bank")
    state = load_latest(args.run_dir / "vae" / "checkpoints")
    heldout = np.asarray(bank.images[bank.indices("heldout")])
    chips = heldout[list(CHIPS)]
    stages = [(state, "GFM4D-mini VAE")]
    decoder = load_latest(args.run_dir / "decoder" / "checkpoints")
    if decoder is not None:
        stages.append((decoder, "with the decoder stage"))
    reconstructions = []
    for stage, name in stages:
        vae = build_vae(VAEConfig(**state["config"]))
        vae.load_state_dict(stage["model"])
        vae.eval()
        scores = heldout_scores(vae, heldout)
        reconstructions.append((reconstruct(vae, chips), f"{name} ({scores['psnr']:.1f} dB mean)"))
    baseline = np.clip(np.round(bicubic_baseline(chips)), 0, 255).astype(np.uint8)
    versions = [(chips, "real chip, held out"),
                (baseline, f"shrink 8x, enlarge ({scores['baseline_psnr']:.1f} dB mean)"), *reconstructions]
    tiles, labels = [], []
    for k in range(len(CHIPS)):
        for images, label in versions:
            tiles.append(np.asarray(Image.fromarray(np.moveaxis(images[k], 0, -1)).resize((256, 256), Image.NEAREST)))
            labels.append(label)
    print(grid_png(tiles, labels, len(versions), args.output, tile=256))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
