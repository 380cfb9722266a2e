"""`gfm4d train`: train GFM4D's own models, or fine-tune one (full or LoRA), on georeferenced rasters."""

from __future__ import annotations

import sys
from pathlib import Path

from engine.cli_args import add_threads_argument
from engine.errors import InputError


def add_train_parser(sub) -> None:
    train = sub.add_parser(
        "train", help="train a SatUNet (and its VAE) on georeferenced rasters, or fine-tune a model (full or LoRA)",
        description="Cut chips from the rasters at several ground resolutions, with the metadata inference uses; "
                    "train; write a model folder (or a LoRA) with its model card. Run the same command again to resume.",
    )
    train.add_argument("data", nargs="+", help="raster files, folders, STAC item .json files, or a sources .yaml "
                       "(paths or STAC items, bands, land cover, polygons with classes, licence)")
    train.add_argument("-o", "--output", required=True, help="the model folder to write (or the LoRA folder with --mode lora)")
    train.add_argument("--recipe", help="a recipe .yaml (chip size, scales, VAE and UNet settings, sample places)")
    train.add_argument("--run-dir", help="where checkpoints, chips and samples are kept (default: OUTPUT.run)")
    train.add_argument("--mode", choices=("scratch", "full", "lora"), help="default: the recipe's, else scratch")
    train.add_argument("--base", help="the model to fine-tune (--mode full or lora), from the models folder")
    train.add_argument("--vae-from", help="with --mode scratch: reuse this model's VAE instead of training one")
    train.add_argument("--steps", type=int, help="SatUNet steps (default: the recipe's)")
    train.add_argument("--vae-steps", type=int, help="VAE steps (default: the recipe's)")
    train.add_argument("--decoder-steps", type=int,
                       help="then train the VAE's decoder alone against a patch discriminator (sharper; latents unchanged)")
    train.add_argument("--batch", type=int, help="SatUNet batch size")
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--lora-rank", type=int)
    train.add_argument("--labelled-share", type=float, metavar="SHARE",
                       help="share of the draws given to chips with a class caption (a few labelled events among many chips)")
    train.add_argument("--event-chips", type=float, metavar="SHARE",
                       help="add chips centred on event polygons (burn scars, floods) where events cover at least SHARE of the chip")
    train.add_argument("--inpainting", action="store_true", default=None,
                       help="train an inpainting UNet (9 input channels), event polygons as its masks (mode full or scratch)")
    train.add_argument("--chip-size", type=int, help="chip side in pixels (default 128)")
    train.add_argument("--scales", type=int, nargs="+", help="pooling factors, e.g. 1 2 4 (native, x2, x4 coarser)")
    train.add_argument("--seed", type=int)
    train.add_argument("--time-limit", type=float, metavar="MINUTES", help="stop (with a checkpoint) after this long")
    add_threads_argument(train)
    train.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    output = Path(args.output)
    if args.mode in ("full", "lora") and not args.base:
        raise InputError(f"--mode {args.mode} fine-tunes a model: name it with --base")
    from engine.training.recipe import load_recipe, run_training
    from engine.training.sources import load_sources

    sources = load_sources(args.data)
    recipe = load_recipe(
        Path(args.recipe) if args.recipe else None, name=output.name, mode=args.mode, base_model=args.base,
        vae_from=args.vae_from, chip_size=args.chip_size, scales=args.scales, event_chips=args.event_chips, **{
            "unet.steps": args.steps, "unet.batch": args.batch, "unet.learning_rate": args.learning_rate,
            "unet.lora_rank": args.lora_rank, "unet.labelled_share": args.labelled_share, "unet.seed": args.seed,
            "unet.inpainting": args.inpainting,
            "vae.steps": args.vae_steps, "vae.seed": args.seed,
            "decoder.steps": args.decoder_steps, "decoder.seed": args.seed,
        })
    from engine.runtime.threads import apply_threads

    apply_threads(args.threads)
    registry = None
    if recipe.base_model or recipe.vae_from:
        from engine.models.registry import ModelRegistry

        registry = ModelRegistry(Path(args.models_dir), Path(args.sd21_dir) if args.sd21_dir else None)
    run_dir = Path(args.run_dir) if args.run_dir else output.with_name(output.name + ".run")
    bar = _StageBars()
    try:
        from engine import config

        device = args.device or str(config.device())
        bar.write(f"training on {device}")
        result = run_training(sources, recipe, run_dir, output, registry=registry, log=bar.write, progress=bar,
                              time_limit_s=args.time_limit * 60 if args.time_limit else None, device=device)
    finally:
        bar.close()
    if result.steps and (output / "README.md").is_file() or (output / "pytorch_lora_weights.safetensors").is_file():
        print(f"wrote {output} (model card: {output / 'README.md'})")
    return 0


class _StageBars:
    """One tqdm bar per stage (vae, unet, decoder) with the running loss and an ETA."""

    def __init__(self) -> None:
        self.bars = {}

    def __call__(self, stage: str, done: int, total: int, record: dict) -> None:
        from tqdm import tqdm

        if stage not in self.bars:
            self.bars[stage] = tqdm(total=total, initial=done - 1, desc=stage, unit="step", dynamic_ncols=True)
        bar = self.bars[stage]
        bar.update(done - bar.n)
        bar.set_postfix_str(f"loss {record['loss']:.4f}", refresh=False)

    def write(self, line: str) -> None:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
