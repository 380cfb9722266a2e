"""Damage classes: a code per polygon, a prompt per class, and whether a class is inpainted.

Codes are what the label raster stores; 0 means no change. Building damage follows xBD
(no-damage 1, minor-damage 2, major-damage 3, destroyed 4, un-classified 5); xView2's numeric
`dmg` 1..4 is the same scale and Copernicus EMS damage grading is mapped onto it. Area classes
(CEMS observed-event notations such as "Flooded area") and the constant class used when no field
is given come after, and any other text value gets a code from 10 up in alphabetical order. Where
polygons overlap the higher code wins, so within each scale the more severe grade does.

Prompts follow DiffusionSat's xBD caption ("a fmow satellite image after being affected by a
{disaster_type} natural disaster") with the class's damage wording appended.

Not inpainted by default: "no-damage" — it is labelled (the label raster says "looked at, not
damaged"), but synthesising "undamaged" pixels would only replace real pre-event pixels with
invented ones — and "un-classified" — its damage is unknown, so no post-event look can be
claimed as ground truth. Both stay as in the pre-event image; `inpaint={...}` overrides this.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from engine.errors import InputError

if TYPE_CHECKING:
    from engine.geo.vectors import PolygonLayer

NO_CHANGE = 0
NO_DAMAGE, MINOR_DAMAGE, MAJOR_DAMAGE, DESTROYED, UNCLASSIFIED = 1, 2, 3, 4, 5
AFFECTED, FLOOD_TRACE, FLOODED_AREA, BURNT_AREA = 6, 7, 8, 9
FIRST_OTHER_CODE = 10
MAX_CODE = 255

XBD_DAMAGE_CODES = {
    "no-damage": NO_DAMAGE,
    "minor-damage": MINOR_DAMAGE,
    "major-damage": MAJOR_DAMAGE,
    "destroyed": DESTROYED,
    "un-classified": UNCLASSIFIED,
}
DISASTER_TYPES = ("flooding", "fire", "wind", "earthquake", "tsunami", "volcano")
CAPTION = "a fmow satellite image after being affected by a {disaster_type} natural disaster"
CAPTION_NO_TYPE = "a fmow satellite image after being affected by a natural disaster"

# code: (name, wording appended to the caption, inpainted by default)
_KNOWN = {
    NO_DAMAGE: ("no-damage", "with undamaged buildings", False),
    MINOR_DAMAGE: ("minor-damage", "with slightly damaged buildings", True),
    MAJOR_DAMAGE: ("major-damage", "with heavily damaged buildings", True),
    DESTROYED: ("destroyed", "with destroyed buildings", True),
    UNCLASSIFIED: ("un-classified", "", False),
    AFFECTED: ("affected", "", True),
    FLOOD_TRACE: ("flood-trace", "with traces of flooding", True),
    FLOODED_AREA: ("flooded-area", "with flooded areas", True),
    BURNT_AREA: ("burnt-area", "with burnt areas", True),
}
_WORDING_BY_NAME = {name: (wording, inpainted) for name, wording, inpainted in _KNOWN.values()}
# Text values (normalised: lower case, words joined by '-') -> code.
_ALIASES = {
    **{name: code for code, (name, _, _) in _KNOWN.items()},
    "unclassified": UNCLASSIFIED,
    # Copernicus EMS damage grading
    "not-affected": NO_DAMAGE,
    "no-visible-damage": NO_DAMAGE,
    "negligible-to-slight-damage": MINOR_DAMAGE,
    "possibly-damaged": MINOR_DAMAGE,
    "moderately-damaged": MAJOR_DAMAGE,
    "highly-damaged": MAJOR_DAMAGE,
    "damaged": MAJOR_DAMAGE,
    "completely-destroyed": DESTROYED,
    # Copernicus EMS observed event notations
    "flooded-area": FLOODED_AREA,
    "flood-trace": FLOOD_TRACE,
    "burned-area": BURNT_AREA,
    "affected-area": AFFECTED,
}
# Keywords of free-text disaster descriptions (CEMS event_type "5-Flood", "Riverine flood", ...).
_DISASTER_KEYWORDS = (
    ("tsunami", "tsunami"),
    ("flood", "flooding"),
    ("fire", "fire"),
    ("volcan", "volcano"),
    ("earthquake", "earthquake"),
    ("wind", "wind"),
    ("storm", "wind"),
    ("hurricane", "wind"),
    ("tornado", "wind"),
    ("cyclone", "wind"),
    ("typhoon", "wind"),
)
# Attributes that carry a class, in the order they are looked for.
CLASS_FIELDS = ("subtype", "dmg", "damage_code", "damage", "grading", "notation")


@dataclass(frozen=True)
class LabelClass:
    """One class of the label raster."""

    code: int
    name: str
    prompt: str
    inpaint: bool


@dataclass(frozen=True)
class PolygonClasses:
    """A class code per polygon (aligned with the layer) and the classes they refer to."""

    codes: np.ndarray
    classes: dict[int, LabelClass]
    field: str | None

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def inpainted_codes(self) -> tuple[int, ...]:
        return tuple(code for code, c in sorted(self.classes.items()) if c.inpaint)

    def prompt(self, code: int) -> str:
        return self.classes[code].prompt


def _normalise(text: str) -> str:
    return re.sub(r"[\s_\-]+", "-", str(text).strip().lower())


def normalise_disaster_type(text: str | None) -> str | None:
    """One of DISASTER_TYPES from a type or a free description ("5-Flood", "wildfire", "hurricane")."""
    if text is None or not str(text).strip():
        return None
    lowered = str(text).strip().lower()
    if lowered in DISASTER_TYPES:
        return lowered
    for keyword, disaster_type in _DISASTER_KEYWORDS:
        if keyword in lowered:
            return disaster_type
    raise InputError(f"unknown disaster type {text!r}: give one of {', '.join(DISASTER_TYPES)}")


def caption(disaster_type: str | None, wording: str = "") -> str:
    """DiffusionSat xBD-style caption with optional damage wording."""
    kind = normalise_disaster_type(disaster_type)
    base = CAPTION.format(disaster_type=kind) if kind else CAPTION_NO_TYPE
    return f"{base} {wording}" if wording else base


def guess_class_field(attributes: Sequence[Mapping[str, Any]]) -> str | None:
    """The first attribute of CLASS_FIELDS that some polygon fills, or None."""
    for name in CLASS_FIELDS:
        if any(a.get(name) is not None for a in attributes):
            return name
    return None


def _code_of_number(value: float, field: str) -> int:
    if not math.isfinite(value) or value != int(value) or not NO_CHANGE <= value <= MAX_CODE:
        raise InputError(
            f"the class field {field!r} has the value {value!r}; numeric classes must be whole numbers "
            f"from 0 (no change) to {MAX_CODE} — map other values with value_codes"
        )
    return int(value)


def _check_code(code: Any, what: str) -> int:
    if isinstance(code, bool) or not isinstance(code, (int, np.integer)) or not NO_CHANGE <= code <= MAX_CODE:
        raise InputError(f"{what}: class codes are whole numbers from 0 to {MAX_CODE}, not {code!r}")
    return int(code)


def _resolve_class_key(key: int | str, names: Mapping[int, str]) -> int | None:
    """A code from a code or a class name (known or present in this layer)."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return int(key)
    normalised = _normalise(key)
    for code, name in names.items():
        if _normalise(name) == normalised:
            return code
    return _ALIASES.get(normalised)


def _codes_from_field(
    attributes: Sequence[Mapping[str, Any]], field: str, value_codes: Mapping[Any, int], ids: Sequence[Any], source: str
) -> tuple[list[int], dict[int, str]]:
    available = sorted({k for a in attributes for k in a})
    if field not in available:
        raise InputError(f"{source} has no attribute {field!r}; its attributes are {available}")
    values = [a.get(field) for a in attributes]
    missing = [ids[i] for i, v in enumerate(values) if v is None and None not in value_codes]
    if missing and len(missing) == len(values):
        raise InputError(
            f"the class field {field!r} of {source} is empty in every polygon (xBD pre-disaster labels "
            "carry no damage): use the post-disaster labels, another field, or no field for one class"
        )
    if missing:
        raise InputError(
            f"{len(missing)} polygons of {source} have no {field!r} value (ids {missing[:5]}); give them "
            "one, or say which class they are with value_codes={None: code}"
        )
    others = sorted(
        {
            _normalise(v)
            for v in values
            if isinstance(v, str) and v not in value_codes and not v.strip().isdigit() and _normalise(v) not in _ALIASES
        }
    )
    if FIRST_OTHER_CODE + len(others) - 1 > MAX_CODE:
        raise InputError(
            f"the class field {field!r} has {len(others)} distinct unknown values; map them with value_codes"
        )
    other_codes = {name: FIRST_OTHER_CODE + i for i, name in enumerate(others)}
    codes, names = [], {}
    for value in values:
        if value in value_codes:
            code = _check_code(value_codes[value], f"value_codes[{value!r}]")
        elif isinstance(value, str) and value.strip().isdigit():
            code = _code_of_number(float(value), field)  # a number stored as text (dBase character field)
            if code > UNCLASSIFIED:
                names.setdefault(code, f"class-{code}")
        elif isinstance(value, str):
            key = _normalise(value)
            code = _ALIASES.get(key, other_codes.get(key))
            if code >= FIRST_OTHER_CODE:
                names.setdefault(code, str(value).strip())
        elif isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            code = _code_of_number(float(value), field)
            if code > UNCLASSIFIED:
                names.setdefault(code, f"class-{code}")  # numbers above xBD's scale carry no meaning here
        else:
            raise InputError(f"the class field {field!r} has the value {value!r}, which is neither text nor a number")
        codes.append(code)
    return codes, names


def classify_polygons(
    layer: PolygonLayer,
    field: str | None = None,
    *,
    disaster_type: str | None = None,
    constant: int | str = AFFECTED,
    value_codes: Mapping[Any, int] | None = None,
    prompts: Mapping[int | str, str] | None = None,
    inpaint: Mapping[int | str, bool] | None = None,
) -> PolygonClasses:
    """Class codes of a PolygonLayer's polygons, from `field`, or `constant` when no field is given.

    `value_codes` maps raw field values to codes (it wins over the built-in names); `prompts` and
    `inpaint` override the defaults per class, keyed by code or class name. Without a
    `disaster_type`, one shared by all polygons' `disaster_type` / `event_type` attribute is used.
    """
    value_codes = dict(value_codes or {})
    ids = layer.feature_ids
    if disaster_type is None:
        disaster_type = _shared_disaster_type(layer.attributes)
    if field is None:
        code = _resolve_class_key(constant, {})
        if code is None:
            known = ", ".join(sorted(_ALIASES))
            raise InputError(f"unknown class {constant!r}: give a code (1..{MAX_CODE}) or one of {known}")
        codes, names = [_check_code(code, "the constant class")] * len(layer.attributes), {}
    else:
        codes, names = _codes_from_field(layer.attributes, field, value_codes, ids, layer.source)
    for code in set(codes) - {NO_CHANGE}:
        names.setdefault(code, _KNOWN[code][0] if code in _KNOWN else f"class-{code}")

    prompt_overrides = _overrides(prompts, names, "prompts")
    inpaint_overrides = _overrides(inpaint, names, "inpaint")
    classes = {}
    for code, name in sorted(names.items()):
        wording, inpainted = _WORDING_BY_NAME.get(name, ("", True))
        classes[code] = LabelClass(
            code=code,
            name=name,
            prompt=prompt_overrides.get(code, caption(disaster_type, wording)),
            inpaint=bool(inpaint_overrides.get(code, inpainted)),
        )
    return PolygonClasses(np.asarray(codes, dtype=np.uint8), classes, field)


def _shared_disaster_type(attributes: Sequence[Mapping[str, Any]]) -> str | None:
    for name in ("disaster_type", "event_type"):
        values = {a.get(name) for a in attributes}
        if len(values) == 1 and None not in values:
            try:
                return normalise_disaster_type(values.pop())
            except InputError:
                return None  # a type the captions do not know: leave it out rather than fail
    return None


def _overrides(mapping: Mapping[int | str, Any] | None, names: Mapping[int, str], what: str) -> dict[int, Any]:
    resolved = {}
    for key, value in (mapping or {}).items():
        code = _resolve_class_key(key, names)
        if code is None:
            raise InputError(
                f"{what} names the class {key!r}, which is neither a code nor a known class; "
                f"the classes here are {sorted(names.values())}"
            )
        resolved[code] = value
    return resolved
