"""When a raster layer was acquired, from what QGIS knows about it.

Looked for in this order: the layer's temporal properties (a fixed range set in its Temporal
tab: the user said so), then as the engine does (engine/geo/dates.py): a STAC item beside the
file (<stem>.json or <name>.json), GDAL's IMAGERY metadata (ACQUISITIONDATETIME, from the
sensor's sidecar files), the date in its file name (NAIP, Sentinel, Planet... 20160620 or
2016-06-20; old Sentinel-2 product names; Landsat scene ids), and last the layer's name. The
file name and sidecars do not travel with the window sent to the engine, so the date is found
here and sent explicitly. TIFFTAG_DATETIME is never used: it is when the file was written.
Datetimes with a zone count in UTC, as DiffusionSat's metadata does.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re

from qgis.core import QgsProviderRegistry, QgsRasterLayer

from .compat import RASTER_FIXED_TEMPORAL_RANGE

# An 8-digit date, compact or with dashes, not part of a longer run of digits (the engine's rule).
_DATE_IN_NAME = re.compile(r"(?<!\d)(\d{4})(-?)(\d{2})\2(\d{2})(?!\d)")
# Old Sentinel-2 product names (before Dec 2016) start with the production date; sensing is after _V.
_S2_OLD_SENSING = re.compile(r"_V(\d{4})(\d{2})(\d{2})T\d{6}_")
# Pre-collection Landsat scene ids: LC80420342017167LGN00 = sensor, path, row, year, day of year.
_LANDSAT_SCENE_ID = re.compile(r"^L[A-Z]\d\d{6}(\d{4})(\d{3})[A-Z]{3}\d{2}")
_PLAUSIBLE_YEARS = range(1900, 2101)
_ISO_8601 = re.compile(
    r"(\d{4})-?(\d{2})-?(\d{2})(?:[T ](\d{2})(?::?(\d{2})(?::?(\d{2})(?:[.,]\d+)?)?)?\s*(Z|[+-]\d{2}(?::?\d{2})?)?)?",
    re.IGNORECASE,
)


def parse_iso_date(text: str) -> dt.date:
    """The calendar date (UTC) of 'YYYY-MM-DD', an ISO 8601 datetime or 'YYYYMMDD'; ValueError otherwise."""
    text = text.strip()
    match = _ISO_8601.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a date: write it as YYYY-MM-DD")
    year, month, day, hour, minute, second, zone = match.groups()
    try:
        moment = dt.datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0))
    except ValueError:
        raise ValueError(f"{text!r} is not a date: write it as YYYY-MM-DD") from None
    if zone and zone.upper() != "Z":
        digits = zone[1:].replace(":", "")
        offset = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
        moment -= offset if zone[0] == "+" else -offset
    return moment.date()


def date_from_name(name: str) -> dt.date | None:
    """The acquisition date written in a file or layer name, or None."""
    filename = os.path.basename(name)
    old_s2 = _S2_OLD_SENSING.search(filename)
    if old_s2:
        return _valid_date(*old_s2.groups())
    landsat = _LANDSAT_SCENE_ID.match(filename)
    if landsat:
        try:
            return dt.datetime.strptime(landsat.group(1) + landsat.group(2), "%Y%j").date()
        except ValueError:
            return None
    for match in _DATE_IN_NAME.finditer(filename):
        year, _, month, day = match.groups()
        if int(year) in _PLAUSIBLE_YEARS:
            return _valid_date(year, month, day)  # a date-like group that is no date: do not fall through
    return None


def _valid_date(year: str, month: str, day: str) -> dt.date | None:
    try:
        return dt.date(int(year), int(month), int(day))
    except ValueError:
        return None


def _stac_date(path: str) -> dt.date | None:
    """The date of a STAC item saved beside the raster (<stem>.json or <name>.json), if there is one."""
    for candidate in (os.path.splitext(path)[0] + ".json", path + ".json"):
        if candidate == path or not os.path.isfile(candidate):
            continue
        try:
            with open(candidate, encoding="utf-8") as handle:
                item = json.load(handle)
        except (OSError, ValueError):
            continue  # not JSON: not a STAC item (the engine would not get it either)
        if not (isinstance(item, dict) and item.get("type") == "Feature" and "stac_version" in item):
            continue  # e.g. an xBD label file with the same stem
        properties = item.get("properties") or {}
        text = properties.get("datetime") or properties.get("start_datetime")
        if isinstance(text, str):
            try:
                return parse_iso_date(text)
            except ValueError:
                return None
    return None


def layer_file(layer: QgsRasterLayer) -> str | None:
    """The local file behind a layer, if there is one."""
    parts = QgsProviderRegistry.instance().decodeUri(layer.providerType(), layer.source())
    path = parts.get("path") or ""
    return path if path and os.path.isfile(path) else None


def _imagery_date(path: str) -> dt.date | None:
    from osgeo import gdal

    dataset = gdal.Open(path)
    if dataset is None:
        return None
    value = dataset.GetMetadataItem("ACQUISITIONDATETIME", "IMAGERY")
    if not value:
        return None
    try:
        return parse_iso_date(value)
    except ValueError:
        return None


def acquisition_date(layer: QgsRasterLayer) -> tuple[dt.date | None, str]:
    """(date, where it came from) for a raster layer; (None, "none") when nothing says."""
    properties = layer.temporalProperties()
    if properties is not None and properties.isActive() and properties.mode() == RASTER_FIXED_TEMPORAL_RANGE:
        begin = properties.fixedTemporalRange().begin()
        if begin.isValid():
            qdate = begin.date()
            return dt.date(qdate.year(), qdate.month(), qdate.day()), "temporal properties"
    path = layer_file(layer)
    sources = [(lambda: _stac_date(path), "STAC item"), (lambda: _imagery_date(path), "imagery metadata"),
               (lambda: date_from_name(path), "file name")] if path else []
    for read, source in sources + [(lambda: date_from_name(layer.name()), "layer name")]:
        found = read()
        if found is not None:
            return found, source
    return None, "none"
