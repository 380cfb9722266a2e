"""What a training run shows: a loss curve, sample grids at fixed seeds and places, a model card."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine.evaluate.report import write_atomically


def _atomic_png(image: Image.Image, path: Path) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, format="png")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, buffer.getvalue())


def loss_curve_png(history: list[dict], path: Path, title: str) -> Path:
    """Loss per step and its running mean, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([h["step"] for h in history])
    losses = np.array([h["loss"] for h in history])
    window = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    axis.plot(steps, losses, color="0.8", linewidth=0.5, label="loss")
    axis.plot(steps[window - 1:], smooth, color="C0", label=f"mean of {window}")
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, buffer.getvalue())


def grid_png(tiles: list[np.ndarray], labels: list[str], columns: int, path: Path, tile: int = 128) -> Path:
    """Tiles (H, W, 3) uint8 in a grid with a caption under each."""
    rows = math.ceil(len(tiles) / columns)
    label_h = 28
    sheet = Image.new("RGB", (columns * tile, rows * (tile + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (array, label) in enumerate(zip(tiles, labels)):
        x, y = (index % columns) * tile, (index // columns) * (tile + label_h)
        sheet.paste(Image.fromarray(array).resize((tile, tile), Image.LANCZOS), (x, y))
        for line, text in enumerate(_wrap(label, tile // 6)[:2]):
            draw.text((x + 2, y + tile + 2 + 12 * line), text, fill="black")
    return _atomic_png(sheet, path)


def _wrap(text: str, width: int) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    return lines + ([current] if current else [])
