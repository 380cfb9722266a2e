"""The dataset recipe: one YAML or JSON file that says everything a dataset is made from.

It is validated as a whole before any work starts, and every mistake is reported as one line
that names the place in the file (`scenes[1].damage[0].sampling: ...`) and what to write instead.
Relative paths are resolved against the recipe's own folder, so a recipe travels with its data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine import config
from engine.errors import InputError
from engine.geo.damage_classes import DISASTER_TYPES, XBD_DAMAGE_CODES

# Class names a damage source may give its polygons (the label raster's fixed code table).
DAMAGE_CLASSES = ("no-damage", "minor-damage", "major-damage", "destroyed", "un-classified",
                  "affected", "flood-trace", "flooded-area", "burnt-area")
BUILDING_GRADES = tuple(name for name in XBD_DAMAGE_CODES if name not in ("no-damage", "un-classified"))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())


def _class_name(value: str) -> str:
    name = str(value).strip().lower().replace("_", "-").replace(" ", "-")
    if name not in DAMAGE_CLASSES:
        raise ValueError(f"unknown class {value!r}; use one of {', '.join(DAMAGE_CLASSES)}")
    return name


class PolygonSource(_Strict):
    """Polygons from any vector file (GeoJSON, GPKG, Shapefile, zip, CEMS): a class per polygon."""

    kind: Literal["polygons"] = "polygons"
    path: Path
    class_field: str | None = Field(None, description="attribute holding each polygon's class (subtype, dmg, notation)")
    class_name: str | None = Field(None, description="one class for every polygon, when there is no class field")
    feature_type: str = "building"

    _check_class = field_validator("class_name")(lambda cls, v: None if v is None else _class_name(v))


class XbdSource(_Strict):
    """An xBD post-disaster label JSON: buildings with their xBD `subtype`."""

    kind: Literal["xbd"] = "xbd"
    path: Path


class SpaceNet8Source(_Strict):
    """SpaceNet 8 flood labels: buildings and road lines with `flooded`; roads are buffered to a width."""

    kind: Literal["spacenet8"] = "spacenet8"
    path: Path
    road_width_m: float = Field(6.0, gt=0, le=100)


class FootprintSource(_Strict):
    """Building footprints with damage drawn by a rule: the fraction of buildings per grade.

    `sampling` is {grade: fraction} for every disaster type, or {disaster_type: {grade: fraction}};
    buildings not drawn into a grade are no-damage.
    """

    kind: Literal["footprints"] = "footprints"
    path: Path
    sampling: dict[str, dict[str, float]] | dict[str, float]

    @field_validator("sampling")
    @classmethod
    def _fractions(cls, value):
        rules = value if all(isinstance(v, dict) for v in value.values()) else {"*": value}
        for disaster, fractions in rules.items():
            if disaster != "*" and disaster not in DISASTER_TYPES:
                raise ValueError(f"{disaster!r} is not a disaster type ({', '.join(DISASTER_TYPES)})")
            for grade, fraction in fractions.items():
                if grade not in BUILDING_GRADES:
                    raise ValueError(f"{grade!r} is not a damage grade to sample; use {', '.join(BUILDING_GRADES)}")
                if not 0 <= fraction <= 1:
                    raise ValueError(f"the fraction of {grade} must be from 0 to 1, not {fraction}")
            if sum(fractions.values()) > 1 + 1e-9:
                raise ValueError(f"the fractions {fractions} add up to more than 1")
        return rules


class ProceduralSource(_Strict):
    """Random blob-shaped areas (flood, burn, ...) placed on the scene; along `near` lines if given."""

    kind: Literal["procedural"] = "procedural"
    class_name: str = "flooded-area"
    count: int = Field(3, ge=1, le=1000, description="blobs per scene")
    radius_m: tuple[float, float] = Field((20.0, 80.0), description="blob radius range in metres")
    near: Path | None = Field(None, description="lines or polygons (rivers, low ground) the blobs are placed along")

    _check_class = field_validator("class_name")(lambda cls, v: _class_name(v))

    @field_validator("radius_m")
    @classmethod
    def _radii(cls, value):
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"radius_m is [smallest, largest] with 0 < smallest <= largest, not {list(value)}")
        return value


DamageSource = Annotated[
    Union[PolygonSource, XbdSource, SpaceNet8Source, FootprintSource, ProceduralSource], Field(discriminator="kind")
]


class SceneEntry(_Strict):
    """Pre-event rasters: a file, a folder (its .tif files), a glob, or a STAC ItemCollection/catalog JSON."""

    path: str
    date: dt.date | None = Field(None, description="acquisition date (default: read from the raster, as the other tasks do)")
    disaster_type: str | None = None
    disaster: str | None = Field(None, description="event name used in sample names (xBD: hurricane-florence)")
    damage: list[DamageSource] = Field(default_factory=list)

    @field_validator("disaster_type")
    @classmethod
    def _type(cls, value):
        if value is not None and value not in DISASTER_TYPES:
            raise ValueError(f"unknown disaster type {value!r}; use one of {', '.join(DISASTER_TYPES)}")
        return value


class SplitRule(_Strict):
    """Train/val/test fractions, assigned by whole scene or by ground area (blocks of `area_size_m`)."""

    by: Literal["scene", "area"] = "scene"
    train: float = Field(0.8, ge=0, le=1)
    val: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)
    area_size_m: float = Field(1000.0, gt=0, description="side of the square blocks that go whole into one split")

    @model_validator(mode="after")
    def _sum(self):
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, not {self.train + self.val + self.test:g}")
        return self

    @property
    def fractions(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


class Recipe(_Strict):
    """A whole dataset: scenes and their damage, the model and sampler, chips, splits and layout."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$", description="dataset name (letters, digits, - _ .)")
    description: str = ""
    license: str = Field("see the licences of the source scenes and labels", description="licence of the dataset and its sources")
    scenes: list[SceneEntry] = Field(..., min_length=1)
    damage: list[DamageSource] = Field(default_factory=list, description="damage sources applied to every scene")
    disaster_type: str | None = None
    class_prompts: dict[str, str] = Field(default_factory=dict)
    post_date_offset_days: tuple[int, int] = Field((1, 30), description="days after the scene date, drawn per sample")
    cloud_cover: float | None = Field(None, ge=0, le=1)
    model: str = Field(default_factory=config.default_inpaint_model,
                       description="inpainting model (default: the built-in one, GFM4D-mini-inpaint)")
    steps: int = Field(30, ge=1, le=1000)
    guidance_scale: float | None = Field(None, ge=0, le=100, description="default: the model's own")
    scheduler: str | None = None
    strength: float = Field(1.0, gt=0, le=1)
    dilation_m: float = Field(0.0, ge=0, le=1000)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    chip_size: int = Field(512, ge=64, le=4096, description="chip side in pixels (a multiple of 8)")
    chips_per_scene: int = Field(16, ge=1, le=100000, description="at most this many chips per scene")
    variants: int = Field(1, ge=1, le=100, description="post-event versions per chip, each with its own seed")
    min_damage_fraction: float = Field(0.005, ge=0, le=1, description="fraction of a chip a painted class must cover")
    split: SplitRule = Field(default_factory=SplitRule)
    layout: Literal["gfm4d", "xbd"] = "gfm4d"

    @field_validator("chip_size")
    @classmethod
    def _multiple_of_8(cls, value):
        if value % 8:
            raise ValueError(f"chip_size must be a multiple of 8 pixels, not {value}")
        return value

    @field_validator("disaster_type")
    @classmethod
    def _type(cls, value):
        if value is not None and value not in DISASTER_TYPES:
            raise ValueError(f"unknown disaster type {value!r}; use one of {', '.join(DISASTER_TYPES)}")
        return value

    @field_validator("class_prompts")
    @classmethod
    def _prompt_classes(cls, value):
        return {_class_name(k): v for k, v in value.items()}

    @field_validator("post_date_offset_days")
    @classmethod
    def _offsets(cls, value):
        if not 0 <= value[0] <= value[1]:
            raise ValueError(f"post_date_offset_days is [fewest, most] days with 0 <= fewest <= most, not {list(value)}")
        return value

    def fingerprint(self) -> str:
        """A short hash of everything that decides the samples' bytes (a dataset folder holds one recipe)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _where(location: tuple) -> str:
    parts = []
    for item in location:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        elif item not in ("polygons", "xbd", "spacenet8", "footprints", "procedural") or not parts:
            parts.append(str(item))
    return ".".join(parts) or "the recipe"


def parse_recipe(data: object, base_dir: Path | None = None, source: str = "the recipe") -> Recipe:
    """Validate recipe data (a dict); InputError with every problem, one per line, otherwise."""
    if not isinstance(data, dict):
        raise InputError(f"{source} must be a mapping of settings (name, scenes, damage, ...), not {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "is not a recipe setting (check the spelling)"
            elif error["type"] == "union_tag_invalid":
                message = "kind must be one of polygons, xbd, spacenet8, footprints, procedural"
            problems.append(f"{_where(error['loc'])}: {message}")
        raise InputError(f"{source} is not valid: " + "; ".join(problems)) from None
    return _resolve_paths(recipe, base_dir) if base_dir is not None else recipe


def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    def absolute(path):
        return path if path is None or Path(path).is_absolute() else (base / path)

    def fix_source(source):
        updates = {"path": absolute(source.path)} if hasattr(source, "path") else {}
        if isinstance(source, ProceduralSource) and source.near is not None:
            updates["near"] = absolute(source.near)
        return source.model_copy(update=updates)

    scenes = [
        scene.model_copy(update={"path": str(absolute(scene.path)), "damage": [fix_source(s) for s in scene.damage]})
        for scene in recipe.scenes
    ]
    return recipe.model_copy(update={"scenes": scenes, "damage": [fix_source(s) for s in recipe.damage]})


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (.yaml, .yml or .json)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"the recipe {path} does not exist; give a .yaml or .json recipe file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise InputError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    elif path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{path} is not valid JSON: {exc}") from None
    else:
        raise InputError(f"the recipe {path} must be a .yaml, .yml or .json file")
    return parse_recipe(data, path.resolve().parent, source=str(path))
