"""When a raster layer was acquired, from what QGIS knows about it.

Looked for in this order: the layer's temporal properties (a fixed range set in its Temporal
tab: the user said so), the date in its file name (NAIP, Sentinel, Planet... 20160620 or
2016-06-20), then GDAL's IMAGERY metadata (ACQUISITIONDATETIME, from the sensor's sidecar files).
The layer's file name and sidecars do not travel with the window sent to the engine, so the date
is found here and sent explicitly. TIFFTAG_DATETIME is never used: it is when the file was written.
"""

from __future__ import annotations

import datetime as dt
import os
import re

from qgis.core import QgsProviderRegistry, QgsRasterLayer

from .compat import RASTER_FIXED_TEMPORAL_RANGE

# An 8-digit date, compact or with dashes, not part of a longer run of digits (the engine's rule).
_DATE_IN_NAME = re.compile(r"(?<!\d)(\d{4})(-?)(\d{2})\2(\d{2})(?!\d)")
_PLAUSIBLE_YEARS = range(1900, 2101)


def parse_iso_date(text: str) -> dt.date:
    """A calendar date from 'YYYY-MM-DD', an ISO datetime (its date part) or 'YYYYMMDD'; ValueError otherwise."""
    text = text.strip()
    match = re.fullmatch(r"(\d{4})-?(\d{2})-?(\d{2})(?:[T ].*)?", text)
    if match is None:
        raise ValueError(f"{text!r} is not a date: write it as YYYY-MM-DD")
    return dt.date(int(match.group(1)), int(match.group(2)), int(match.group(3)))


def date_from_name(name: str) -> dt.date | None:
    """The first plausible date written in a file or layer name, or None."""
    for match in _DATE_IN_NAME.finditer(os.path.basename(name)):
        year, _, month, day = match.groups()
        if int(year) in _PLAUSIBLE_YEARS:
            try:
                return dt.date(int(year), int(month), int(day))
            except ValueError:
                return None  # a date-like group that is no date: do not fall through to a later one
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
    for name in ([path] if path else []) + [layer.name()]:
        found = date_from_name(name)
        if found is not None:
            return found, "file name" if name == path else "layer name"
    if path:
        found = _imagery_date(path)
        if found is not None:
            return found, "imagery metadata"
    return None, "none"
