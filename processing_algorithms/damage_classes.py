"""The engine's damage classes as the plugin needs them: where a polygon's class is found, and its name.

The same rules as the engine's engine/geo/damage_classes.py (the plugin cannot import the
engine): the attributes that carry a class, looked for in the same order, and the codes of the
label raster (0: no change; xBD's grades 1-5; Copernicus EMS area classes 6-9; other values from
10 up, named in the label's GFM4D_LABEL_CLASSES metadata).
"""

from __future__ import annotations

from qgis.core import QgsFeatureRequest

from .compat import FEATURE_NO_GEOMETRY

# Attributes that carry a class, in the order they are looked for (engine: CLASS_FIELDS).
CLASS_FIELDS = ("subtype", "dmg", "damage_code", "damage", "grading", "notation")

NO_CHANGE = 0
LABEL_NODATA = 255
CLASS_NAMES = {
    1: "no-damage",
    2: "minor-damage",
    3: "major-damage",
    4: "destroyed",
    5: "un-classified",
    6: "affected",
    7: "flood-trace",
    8: "flooded-area",
    9: "burnt-area",
}


def is_filled(value) -> bool:
    """Whether an attribute value says something (not NULL, not blank text)."""
    if value is None or (hasattr(value, "isNull") and value.isNull()):
        return False
    return not (isinstance(value, str) and not value.strip())


def find_class_field(layer) -> str | None:
    """The first attribute of CLASS_FIELDS (any letter case) that some feature of `layer` fills, or None.

    An attribute that no feature fills (xBD pre-disaster labels' subtype) is passed over, as the
    engine's guess does, so a later one can be found.
    """
    by_lower = {field.name().lower(): field.name() for field in layer.fields()}
    for wanted in CLASS_FIELDS:
        name = by_lower.get(wanted)
        if name is None:
            continue
        request = QgsFeatureRequest().setFlags(FEATURE_NO_GEOMETRY).setSubsetOfAttributes([name], layer.fields())
        if any(is_filled(feature[name]) for feature in layer.getFeatures(request)):
            return name
    return None


def parse_class_table(text: str | None) -> dict[int, str]:
    """{code: name} from a label's GFM4D_LABEL_CLASSES metadata ("1=no-damage;4=destroyed"); {} when absent."""
    classes = {}
    for entry in (text or "").split(";"):
        code, _, name = entry.partition("=")
        if code.strip().isdigit() and name.strip():
            classes[int(code)] = name.strip()
    return classes
