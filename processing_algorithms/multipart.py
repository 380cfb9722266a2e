"""multipart/form-data bodies for job submissions, built by hand.

QgsBlockingNetworkRequest posts a QByteArray, so the body is assembled in memory: the inputs are
windows the algorithms clipped to what the task needs, not whole archives. Built here rather than
with QHttpMultiPart so that the exact bytes are testable and the module has no Qt dependency.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Iterable, Sequence, Tuple

FilePart = Tuple[str, str]  # (form field = the task's input slot, path on disk)


def _header(boundary: str, name: str, filename: str | None, content_type: str) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        safe = "".join("_" if ch in '"\r\n\\' else ch for ch in filename)
        disposition += f'; filename="{safe}"'
    return f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n".encode("utf-8")


def job_body(params: dict, files: Sequence[FilePart], boundary: str | None = None) -> Tuple[str, bytes]:
    """(content type, body) of a job: a `params` JSON part, then one part per file in order.

    A task input that takes several files (e.g. predict's `frames`) gets one part per file under
    the same field name; the engine numbers them in the order they come.
    """
    boundary = boundary or f"gfm4d-{uuid.uuid4().hex}"
    pieces = [_header(boundary, "params", None, "application/json"), json.dumps(params).encode("utf-8"), b"\r\n"]
    for field, path in files:
        with open(path, "rb") as handle:
            content = handle.read()
        pieces += [_header(boundary, field, os.path.basename(path), "application/octet-stream"), content, b"\r\n"]
    pieces.append(f"--{boundary}--\r\n".encode("ascii"))
    return f"multipart/form-data; boundary={boundary}", b"".join(pieces)


def total_size(files: Iterable[FilePart]) -> int:
    return sum(os.path.getsize(path) for _, path in files)
