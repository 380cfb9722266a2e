"""`gfm4d dataset RECIPE -o FOLDER [--ray [ADDRESS]]`: build or finish a synthetic disaster dataset.

Running the same command again after an interruption (crash, Ctrl-C) makes only the samples that
are missing; the progress bar counts samples and shows the time left.
"""

from __future__ import annotations

from pathlib import Path

from engine.cli_args import add_ray_arguments, add_threads_argument


class _SampleBar:
    """A tqdm bar over samples, starting at the samples already made, so its rate and ETA are this run's."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, progress) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=progress.total, initial=progress.done, desc="dataset", unit="sample", dynamic_ncols=True)
        self.bar.update(progress.done - self.bar.n)
        self.bar.set_postfix_str(progress.message, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_dataset(args) -> int:
    from engine.dataset import build_dataset, load_recipe, parse_recipe
    from engine.runtime.threads import apply_threads
    from engine.tasks import DeviceRegistry

    recipe = load_recipe(Path(args.recipe))
    overrides = {k: v for k, v in (("model", args.model), ("steps", args.steps), ("seed", args.seed)) if v is not None}
    if overrides:
        recipe = parse_recipe({**recipe.model_dump(mode="json"), **overrides}, source=args.recipe)
    apply_threads(args.threads)  # Ray actors, when used, take this count too (engine.scaleout.cluster)
    registry = DeviceRegistry(Path(args.models_dir), Path(args.sd21_dir) if args.sd21_dir else None, device=args.device)
    bar = _SampleBar()
    try:
        summary = build_dataset(recipe, Path(args.output), registry=registry, progress=bar,
                                ray_address=args.ray, ray_workers=args.workers)
    except KeyboardInterrupt as interrupt:  # Ctrl-C exits 130 and SIGTERM 143, as for every command
        interrupt.outcome = "finished samples are kept; run the same command again to make the rest"
        raise
    finally:
        bar.close()
    for line in summary.lines():
        print(line)
    return 0


def add_dataset_parser(sub) -> None:
    """Register the `dataset` subcommand on the gfm4d parser's subparsers."""
    parser = sub.add_parser("dataset", help="build a labelled synthetic disaster dataset from a recipe (YAML/JSON)")
    parser.add_argument("recipe", help="recipe file: scenes, damage sources, model, chips, splits, layout")
    parser.add_argument("-o", "--output", required=True, help="dataset folder (created; re-run to resume)")
    add_ray_arguments(parser, "make samples")
    parser.add_argument("--model", help="override the recipe's model")
    parser.add_argument("--steps", type=int, help="override the recipe's denoising steps")
    parser.add_argument("--seed", type=int, help="override the recipe's base seed")
    add_threads_argument(parser)
    parser.set_defaults(func=cmd_dataset)
