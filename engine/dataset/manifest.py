"""The dataset's manifest: one JSON line per finished sample, the record of what is done.

A sample is done when its line is in the file; lines are appended and flushed to disk one at a
time, so a crash loses at most the sample being recorded (it is made again, to the same bytes).
The first line names the recipe, so a folder never mixes the samples of two recipes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine import __version__
from engine.errors import InputError

MANIFEST = "manifest.jsonl"


class Manifest:
    def __init__(self, root: Path, fingerprint: str) -> None:
        self.path = Path(root) / MANIFEST
        self.fingerprint = fingerprint
        self.records: dict[str, dict] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            self._append({"recipe": self.fingerprint, "gfm4d_version": __version__})
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # a line cut by a crash: drop it, its sample is made again
            data = data[: data.rfind(b"\n") + 1]
            with open(self.path, "r+b") as handle:
                handle.truncate(len(data))
        lines = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
        if not lines or lines[0].get("recipe") != self.fingerprint:
            raise InputError(
                f"{self.path.parent} holds a dataset made from another recipe (or another version of it); "
                "give a new output folder, or delete that folder to start again"
            )
        for record in lines[1:]:
            self.records.setdefault(record["id"], record)

    def _append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def add(self, record: dict) -> bool:
        """Record a finished sample; False (and nothing written) when it is recorded already."""
        if record["id"] in self.records:
            return False
        self._append(record)
        self.records[record["id"]] = record
        return True

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self.records
