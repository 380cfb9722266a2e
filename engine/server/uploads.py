"""Request bodies read as they arrive: file parts go straight to disk, nothing is held whole.

A multipart body is parsed chunk by chunk (python-multipart's push parser); each file part is
written to its own file under the job's staging folder as its bytes come in. The body's size
is checked against the engine's limit before reading (Content-Length) and while reading (for
chunked bodies), so an oversized upload is refused with 413 without filling the disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from .errors import PayloadTooLarge, RequestRefused

FIELD_LIMIT_BYTES = 1024 * 1024  # a non-file field (the params JSON) is small
MAX_PARTS = 64
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_SUFFIX = re.compile(r"\.[a-z0-9]{1,10}")


@dataclass(frozen=True)
class UploadedFile:
    field: str  # the form field (input slot) it was sent under
    path: Path  # where it is on disk
    filename: str  # the client's name for it, for messages


@dataclass
class ReceivedForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)  # in body order


def too_large(size: int | None, limit: int) -> PayloadTooLarge:
    """413 for a body of `size` bytes (None: not known, only that it passed the limit)."""
    what = f"is {size} bytes" if size is not None else "is larger than that"
    return PayloadTooLarge(
        f"this engine accepts request bodies up to {limit} bytes ({limit / 2**20:.3g} MiB) and this one {what}; "
        "clip the raster to the area you need, or start the engine with a larger --max-upload-mb"
    )


def check_declared_length(request: Request, limit: int) -> None:
    """Refuse at once when the client announces a body over the limit."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise RequestRefused(f"Content-Length {declared!r} is not a number of bytes")
    if int(declared) > limit:
        raise too_large(int(declared), limit)


async def _limited_stream(request: Request, limit: int):
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise too_large(None, limit)
        yield chunk


async def receive_json_text(request: Request, limit: int = FIELD_LIMIT_BYTES) -> str:
    """A JSON body as text, refusing bodies over `limit`."""
    body = bytearray()
    async for chunk in _limited_stream(request, limit):
        body.extend(chunk)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestRefused("the JSON body is not UTF-8 text") from None


def _safe_suffix(filename: str) -> str:
    """The file's extension when it is a plain one (.tif, .geojson, .zip); it tells GDAL/OGR the format."""
    suffix = Path(filename.replace("\\", "/")).suffix.lower()
    return suffix if _SUFFIX.fullmatch(suffix) else ""


def _safe_name(filename: str, fallback: str) -> str:
    """The upload's own file name, reduced to safe characters: acquisition dates are often only in
    the name (NAIP, Sentinel-2, Landsat), so the task must see it as the user's file had it."""
    stem = Path(filename.replace("\\", "/")).stem
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).strip("._")[:120]
    return (stem or fallback) + _safe_suffix(filename)


class _FormWriter:
    """Callbacks of the push parser: fields into memory (small), files onto disk."""

    def __init__(self, dest: Path):
        self.dest = dest
        self.form = ReceivedForm()
        self.finished = False
        self._headers: dict[bytes, bytes] = {}
        self._header_name = b""
        self._header_value = b""
        self._name = ""
        self._data: bytearray | None = None
        self._file = None
        self._parts = 0

    def on_part_begin(self) -> None:
        self._headers, self._name, self._data, self._file = {}, "", None, None
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise RequestRefused(f"a job takes at most {MAX_PARTS} form fields and files")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if not _FIELD_NAME.fullmatch(name):
            raise RequestRefused(
                f"form field name {name!r} is not usable: name fields with a letter followed by letters, digits or _"
            )
        self._name = name
        if b"filename" in options:
            filename = options[b"filename"].decode("utf-8", "replace")
            index = sum(1 for upload in self.form.files if upload.field == name)
            folder = self.dest / f"{name}.{index}"
            folder.mkdir()
            path = folder / _safe_name(filename, name)
            self._file = open(path, "wb")
            self.form.files.append(UploadedFile(name, path, Path(filename.replace("\\", "/")).name))
        else:
            self._data = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._file.write(data[start:end])
            return
        self._data.extend(data[start:end])
        if len(self._data) > FIELD_LIMIT_BYTES:
            raise RequestRefused(f"form field {self._name!r} is over {FIELD_LIMIT_BYTES} bytes; send files as file parts")

    def on_part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self._data is not None:
            if self._name in self.form.fields:
                raise RequestRefused(f"form field {self._name!r} is given twice")
            try:
                self.form.fields[self._name] = self._data.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestRefused(f"form field {self._name!r} is not UTF-8 text") from None

    def on_end(self) -> None:
        self.finished = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def callbacks(self) -> dict:
        names = ("on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
                 "on_part_data", "on_part_end", "on_end")
        return {name: getattr(self, name) for name in names}


async def receive_multipart(request: Request, dest: Path, limit: int) -> ReceivedForm:
    """Parse a multipart/form-data body, writing its files into `dest` as they arrive."""
    _, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if not boundary:
        raise RequestRefused("the multipart/form-data body has no boundary in its Content-Type header")
    dest.mkdir(parents=True, exist_ok=True)
    writer = _FormWriter(dest)
    parser = MultipartParser(boundary, writer.callbacks())
    try:
        async for chunk in _limited_stream(request, limit):
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise RequestRefused(f"the multipart body could not be read ({exc}); send a multipart/form-data request") from None
    finally:
        writer.close()
    if not writer.finished:
        raise RequestRefused("the multipart body ended before its closing boundary; send the whole request again")
    return writer.form
