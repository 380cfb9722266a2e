"""The dataset task: a recipe + the files it names -> a zipped synthetic disaster dataset, its card and preview.

Over HTTP a recipe can only name files that come with the job: every scene and label path in it
must be a bare file name of one of the uploaded `files` (Shapefiles with their .dbf/.prj/.shx), so
a request never makes the engine read a path of the engine's own choosing.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from pydantic import Field

from . import Input, TaskParams, task, inputs_named

_PLAIN_NAME = re.compile(r"^[^/\\*?\[\]]+$")


class DatasetParams(TaskParams):
    """Overrides of the uploaded recipe (the recipe's own values otherwise)."""

    model: str | None = Field(None, description="inpainting model (default: the recipe's)")

    steps: int | None = Field(None, ge=1, le=1000, description="denoising steps (default: the recipe's)")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="base seed (default: the recipe's)")


def _recipe_paths(data: dict) -> list[str]:
    paths = []
    for scene in data.get("scenes") or []:
        if isinstance(scene, dict):
            paths.append(scene.get("path"))
            paths += [s.get("path") for s in scene.get("damage") or [] if isinstance(s, dict)]
            paths += [s.get("near") for s in scene.get("damage") or [] if isinstance(s, dict)]
    paths += [s.get("path") for s in data.get("damage") or [] if isinstance(s, dict)]
    paths += [s.get("near") for s in data.get("damage") or [] if isinstance(s, dict)]
    return [p for p in paths if p is not None]


def _read_recipe_data(path: Path) -> dict:
    import json

    from engine.errors import InputError

    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml and json raise different errors for the same mistake
        raise InputError(f"the recipe is not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError("the recipe must be a mapping of settings (name, scenes, damage, ...)")
    return data


@task(
    "dataset",
    DatasetParams,
    inputs={
        "recipe": Input("file", "dataset recipe (YAML or JSON); its paths are file names of the uploaded files"),
        "files": Input("file", "the scenes and label files the recipe names", many=True),
    },
    summary="recipe + scenes + damage labels -> a labelled synthetic disaster dataset (results: dataset zip, card, preview)",
    model_task="inpaint",
)
def run(registry, params: DatasetParams, inputs, out_dir: Path, progress, cancel) -> dict[str, Path]:
    from engine.dataset import build_dataset, parse_recipe
    from engine.errors import InputError

    if "recipe" not in inputs:
        raise InputError("the dataset task needs a `recipe` file")
    data = _read_recipe_data(inputs["recipe"])
    for value in _recipe_paths(data):
        if not isinstance(value, str) or not _PLAIN_NAME.match(value) or value in (".", ".."):
            raise InputError(
                f"the recipe names {value!r}; over the engine's API a recipe names only uploaded files, by file name "
                "(upload them as `files`)"
            )
    staged = out_dir / "inputs"
    staged.mkdir()
    for path in inputs_named(inputs, "files"):
        target = staged / Path(path).name
        if not target.exists():
            os.symlink(Path(path).resolve(), target)
    missing = sorted({v for v in _recipe_paths(data) if not (staged / v).exists()})
    if missing:
        raise InputError(f"the recipe names {', '.join(missing)}, which were not uploaded with it; add them to `files`")
    overrides = {k: v for k, v in (("steps", params.steps), ("seed", params.seed)) if v is not None}
    if params.model is not None:
        overrides["model"] = params.model
    recipe = parse_recipe({**data, **overrides}, staged, source="the recipe")
    root = out_dir / "dataset"
    summary = build_dataset(recipe, root, registry=registry, progress=progress, cancel=cancel,
                            ray_address=getattr(registry, "ray_address", None), ray_workers=getattr(registry, "ray_workers", None))
    archive = Path(shutil.make_archive(str(out_dir / recipe.name), "zip", root_dir=root))
    # results are files directly in out_dir: the card and preview move out of the zipped folder
    results = {"dataset": archive, "card": Path(shutil.move(summary.outputs["card"], out_dir / "README.md"))}
    if "preview" in summary.outputs:
        results["preview"] = Path(shutil.move(summary.outputs["preview"], out_dir / "preview.png"))
    shutil.rmtree(root)
    shutil.rmtree(staged)
    return results
