"""Acquisition date and cloud cover of a raster, from every place they are found in the wild.

DiffusionSat conditions on the date an image was *taken* and on its cloud cover. Both are scattered
across STAC items, GDAL's IMAGERY metadata domain and file names; each field is taken from the most
trustworthy source that has it. ``TIFFTAG_DATETIME`` is never read: it is the time the file was last
written, not when the image was acquired.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any

from engine.errors import InputError

DATE_SOURCES = ("explicit", "stac", "imagery-metadata", "filename", "none")

# GDAL's IMAGERY domain (gdal_mdreader.h): CLOUDCOVER is a percentage, "999" means not available.
_IMAGERY_DATE_KEY = "ACQUISITIONDATETIME"
_IMAGERY_CLOUD_KEY = "CLOUDCOVER"
_IMAGERY_CLOUD_UNKNOWN = 999.0


@dataclass(frozen=True)
class Acquisition:
    """When an image was taken and how cloudy it was; ``None`` where no source knows.

    ``source`` names where the date came from (one of ``DATE_SOURCES``); the cloud cover may
    come from another source, recorded in ``cloud_source``.
    """

    date: date | None
    cloud_cover: float | None  # fraction 0..1
    source: str
    cloud_source: str = "none"


# --- dates -------------------------------------------------------------------------------------


def parse_date(value: str | date | datetime) -> date:
    """The calendar date (UTC) of an ISO 8601 date/datetime, a ``YYYYMMDD`` string or a date object.

    Datetimes with a ``Z`` or an offset are converted to UTC first, since that is the calendar
    DiffusionSat's training metadata used; naive datetimes are taken as UTC.
    """
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    return _utc_moment(value).date()


# ISO 8601 calendar dates and datetimes, extended (2016-06-20T16:27:47.5+05:30) or basic
# (20160620T162747Z); a space may replace the T as GDAL writes it. Parsed here rather than by
# datetime.fromisoformat, which before Python 3.11 refuses 'Z', basic forms and nanoseconds.
_ISO_8601 = re.compile(
    r"(?P<year>\d{4})(?P<dash>-?)(?P<month>\d{2})(?P=dash)(?P<day>\d{2})"
    r"(?:[T ](?P<hour>\d{2})(?::?(?P<minute>\d{2})(?::?(?P<second>\d{2})(?:[.,](?P<fraction>\d+))?)?)?"
    r"\s*(?P<zone>Z|[+-]\d{2}(?::?\d{2})?)?)?",
    re.IGNORECASE,
)


def _utc_moment(value: str | datetime) -> datetime:
    """An aware UTC datetime from an ISO 8601 string or a datetime (naive = UTC)."""
    if isinstance(value, str):
        value = _parse_iso_8601(value)
    if not isinstance(value, datetime):
        raise InputError(
            f"cannot read a date from {value!r} (a {type(value).__name__}): "
            "give an ISO 8601 date such as '2016-06-20' or '2016-06-20T16:27:47Z', or 'YYYYMMDD'"
        )
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _parse_iso_8601(text: str) -> datetime:
    match = _ISO_8601.fullmatch(text.strip())
    try:
        if match is None:
            raise ValueError("not ISO 8601")
        parts = match.groupdict()
        return datetime(
            int(parts["year"]),
            int(parts["month"]),
            int(parts["day"]),
            int(parts["hour"] or 0),
            int(parts["minute"] or 0),
            int(parts["second"] or 0),
            int((parts["fraction"] or "0")[:6].ljust(6, "0")),
            tzinfo=_zone(parts["zone"]),
        )
    except ValueError:
        raise InputError(
            f"cannot read a date from {text!r}: give an ISO 8601 date such as '2016-06-20' or "
            "'2016-06-20T16:27:47Z', or 'YYYYMMDD'"
        ) from None


def _zone(text: str | None) -> timezone | None:
    if text is None:
        return None
    if text.upper() == "Z":
        return timezone.utc
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0)))


# An 8-digit date, compact or with dashes, not part of a longer run of digits.
_DATE_IN_NAME = re.compile(r"(?<!\d)(\d{4})(-?)(\d{2})\2(\d{2})(?!\d)")
# Old Sentinel-2 product names (before Dec 2016) start with the production date; sensing is after _V.
_S2_OLD_SENSING = re.compile(r"_V(\d{8})T\d{6}_")
# Pre-collection Landsat scene ids: LC80420342017167LGN00 = sensor, path, row, year, day of year.
_LANDSAT_SCENE_ID = re.compile(r"^L[A-Z]\d\d{6}(\d{4})(\d{3})[A-Z]{3}\d{2}")
_PLAUSIBLE_YEARS = range(1900, 2101)


def date_from_filename(name: str | Path) -> date | None:
    """The acquisition date written in a file name (NAIP, Sentinel-1/2, Landsat, Planet...), or None.

    The first date-like group decides: Landsat and Sentinel put the acquisition (sensing) date
    before the processing date. A group that is not a real date (``20161340``) gives None rather
    than falling through to a later date that would be the processing time. Digit groups whose
    year is implausible (xBD ids such as ``00000273``) are not dates at all.
    """
    filename = Path(name).name
    old_s2 = _S2_OLD_SENSING.search(filename)
    if old_s2:
        return _valid_date(old_s2.group(1)[:4], old_s2.group(1)[4:6], old_s2.group(1)[6:])
    landsat = _LANDSAT_SCENE_ID.match(filename)
    if landsat:
        return _date_from_day_of_year(int(landsat.group(1)), int(landsat.group(2)))
    for match in _DATE_IN_NAME.finditer(filename):
        year, _, month, day = match.groups()
        if int(year) in _PLAUSIBLE_YEARS:
            return _valid_date(year, month, day)
    return None


def _valid_date(year: str, month: str, day: str) -> date | None:
    try:
        return date(int(year), int(month), int(day))
    except ValueError:
        return None


def _date_from_day_of_year(year: int, day_of_year: int) -> date | None:
    try:
        return datetime.strptime(f"{year:04d}{day_of_year:03d}", "%Y%j").date()
    except ValueError:
        return None


# --- cloud cover -------------------------------------------------------------------------------


def cloud_fraction_from_percent(percent: float) -> float:
    """Cloud cover given in percent (0..100, as STAC and GDAL store it) as the fraction 0..1."""
    value = finite_number(percent, "cloud cover (percent)")
    if not 0.0 <= value <= 100.0:
        raise InputError(f"cloud cover {percent!r} % is outside 0..100: give a percentage between 0 and 100")
    return value / 100.0


def check_cloud_fraction(fraction: float) -> float:
    """A cloud-cover fraction, validated to 0..1 (a percentage is refused, not guessed)."""
    value = finite_number(fraction, "cloud cover")
    if not 0.0 <= value <= 1.0:
        hint = (
            " — it looks like a percentage: convert it with cloud_fraction_from_percent()"
            if 1.0 < value <= 100.0
            else ""
        )
        raise InputError(f"cloud cover {fraction!r} is outside 0..1: give a fraction between 0 and 1{hint}")
    return value


def finite_number(value: Any, what: str) -> float:
    """A user's value as a finite float, or an InputError naming what it was for."""
    if isinstance(value, bool):
        raise InputError(f"{what} must be a number, not {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise InputError(f"{what} must be a finite number, not {value!r}")
    return number


# --- GDAL IMAGERY domain -----------------------------------------------------------------------


def acquisition_from_imagery_tags(tags: Mapping[str, str]) -> Acquisition | None:
    """Date and cloud cover from GDAL's IMAGERY metadata domain, or None when it has neither."""
    when = _imagery_date(tags)
    cloud = _imagery_cloud(tags)
    if when is None and cloud is None:
        return None
    return Acquisition(
        date=when,
        cloud_cover=cloud,
        source="imagery-metadata" if when is not None else "none",
        cloud_source="imagery-metadata" if cloud is not None else "none",
    )


def _imagery_value(tags: Mapping[str, str], key: str) -> str | None:
    for name, value in tags.items():
        if name.upper() == key and value is not None and str(value).strip():
            return str(value).strip()
    return None


def _imagery_date(tags: Mapping[str, str]) -> date | None:
    text = _imagery_value(tags, _IMAGERY_DATE_KEY)
    if text is None:
        return None
    try:
        return parse_date(text)
    except InputError:
        raise InputError(
            f"the raster's IMAGERY metadata has {_IMAGERY_DATE_KEY}={text!r}, which is not a date GDAL "
            "writes ('YYYY-MM-DD HH:MM:SS' or ISO 8601): give the acquisition date explicitly"
        ) from None


def _imagery_cloud(tags: Mapping[str, str]) -> float | None:
    text = _imagery_value(tags, _IMAGERY_CLOUD_KEY)
    if text is None:
        return None
    try:
        percent = float(text)
    except ValueError:
        raise InputError(
            f"the raster's IMAGERY metadata has {_IMAGERY_CLOUD_KEY}={text!r}, which is not a number: "
            "give the cloud cover explicitly"
        ) from None
    if percent < 0 or percent == _IMAGERY_CLOUD_UNKNOWN or math.isnan(percent):
        return None
    if percent > 100:
        raise InputError(
            f"the raster's IMAGERY metadata has {_IMAGERY_CLOUD_KEY}={text!r}, outside 0..100 % "
            f"(and not the 'unknown' value 999): give the cloud cover explicitly"
        )
    return percent / 100.0


# --- STAC --------------------------------------------------------------------------------------


def acquisition_from_stac(item: Mapping) -> Acquisition:
    """Date (UTC) and cloud cover of a STAC item (a dict, or anything with ``to_dict()``)."""
    properties = _stac_properties(item)
    when = _stac_date(properties)
    cloud = _stac_cloud(properties)
    return Acquisition(
        date=when,
        cloud_cover=cloud,
        source="stac" if when is not None else "none",
        cloud_source="stac" if cloud is not None else "none",
    )


def _stac_properties(item: Any) -> Mapping:
    if hasattr(item, "to_dict") and not isinstance(item, Mapping):
        item = item.to_dict()
    if not isinstance(item, Mapping):
        raise InputError(f"a STAC item must be a JSON object (dict), not {type(item).__name__}")
    properties = item.get("properties")
    if not isinstance(properties, Mapping):
        raise InputError("the STAC item has no 'properties' object: is it a STAC Item (GeoJSON Feature)?")
    return properties


def _stac_date(properties: Mapping) -> date | None:
    if properties.get("datetime"):
        return parse_date(properties["datetime"])
    start, end = properties.get("start_datetime"), properties.get("end_datetime")
    if not start and not end:
        return None
    if not (start and end):
        raise InputError(
            f"the STAC item has datetime null and an open range (start_datetime={start!r}, "
            f"end_datetime={end!r}): give the acquisition date explicitly"
        )
    begin, finish = _utc_moment(start), _utc_moment(end)
    if finish < begin:
        raise InputError(f"the STAC item's end_datetime {end!r} is before its start_datetime {start!r}")
    return (begin + (finish - begin) / 2).date()


def _stac_cloud(properties: Mapping) -> float | None:
    percent = properties.get("eo:cloud_cover")
    if percent is None:
        return None
    return cloud_fraction_from_percent(percent)


def _sidecar_stac_item(path: Path) -> Mapping | None:
    """A STAC item saved next to the raster as ``<stem>.json`` or ``<name>.json``, if there is one.

    Other JSON files with the same stem (xBD labels, for instance) are not STAC items and ignored.
    """
    for candidate in (path.with_suffix(".json"), path.with_name(path.name + ".json")):
        if candidate == path or not candidate.is_file():
            continue
        try:
            document = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(
                f"cannot read {candidate.name} next to the raster as JSON ({error}): fix or move it, "
                "or pass the STAC item explicitly"
            ) from None
        if isinstance(document, Mapping) and document.get("type") == "Feature" and "stac_version" in document:
            return document
    return None


# --- one raster, all sources -------------------------------------------------------------------


def acquisition_for_raster(
    path: str | Path,
    imagery_tags: Mapping[str, str] | None = None,
    explicit_date: str | date | datetime | None = None,
    explicit_cloud: float | None = None,
    stac_item: Mapping | None = None,
) -> Acquisition:
    """Acquisition date and cloud cover of a raster, each from the best source that has it.

    Precedence per field: explicit > STAC item (argument, else a sidecar ``<name>.json``) > GDAL
    IMAGERY metadata (read from the file when ``imagery_tags`` is None) > file name (date only).
    Sources are consulted only while a field is still missing, so a broken lower-ranked source
    never blocks a user who gave the value explicitly.
    """
    path = Path(path)

    @cache
    def stac() -> Mapping | None:
        item = stac_item if stac_item is not None else _sidecar_stac_item(path)
        return _stac_properties(item) if item is not None else None

    @cache
    def imagery() -> Mapping[str, str]:
        return imagery_tags if imagery_tags is not None else _read_imagery_tags(path)

    date_sources: list[tuple[str, Callable[[], date | None]]] = [
        ("explicit", lambda: parse_date(explicit_date) if explicit_date is not None else None),
        ("stac", lambda: _stac_date(stac()) if stac() is not None else None),
        ("imagery-metadata", lambda: _imagery_date(imagery())),
        ("filename", lambda: date_from_filename(path.name)),
    ]
    cloud_sources: list[tuple[str, Callable[[], float | None]]] = [
        ("explicit", lambda: check_cloud_fraction(explicit_cloud) if explicit_cloud is not None else None),
        ("stac", lambda: _stac_cloud(stac()) if stac() is not None else None),
        ("imagery-metadata", lambda: _imagery_cloud(imagery())),
    ]
    when, date_source = _first_known(date_sources)
    cloud, cloud_source = _first_known(cloud_sources)
    return Acquisition(date=when, cloud_cover=cloud, source=date_source, cloud_source=cloud_source)


def _first_known(sources):
    for name, read in sources:
        value = read()
        if value is not None:
            return value, name
    return None, "none"


def _read_imagery_tags(path: Path) -> Mapping[str, str]:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as dataset:
                return dataset.tags(ns="IMAGERY")
    except RasterioIOError as error:
        raise InputError(
            f"cannot open {path} to read its acquisition metadata ({error}): check the path, "
            "or give the acquisition date and cloud cover explicitly"
        ) from None
