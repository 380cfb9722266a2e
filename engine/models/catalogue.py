"""The models `gfm4d models fetch` knows: where each comes from, its size, licence and purpose.

The list is data (catalogue.json beside this module). An operator can add or override entries
with a JSON file of the same layout named by GFM4D_CATALOGUE (a mirror inside a closed network,
a lab's own fine-tune): that file, not the request, decides where the engine downloads from.

Three kinds of entry:
- `archive`: a released DiffusionSat run, one zip at `url`; its checksum comes from the record
  JSON at `record_url` (Zenodo publishes name, size and md5 per file) or is pinned (`sha256`/`md5`);
  `settings` go into the installed folder's gfm4d.json, `requires` are fetched first;
- `components`: Stable Diffusion 2.1's vae/, text_encoder/, tokenizer/ and scheduler/ only, from a
  Hugging Face repo (`repo_id`), a URL of a zip, or a local folder;
- `snapshot`: a diffusers pipeline repository on the Hugging Face Hub (SDXL, SD3, FLUX.1).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ModelError

from .importing import check_model_name

CATALOGUE_FILE = Path(__file__).with_name("catalogue.json")
CATALOGUE_ENV_VAR = "GFM4D_CATALOGUE"
KINDS = ("archive", "components", "snapshot")
_CHECKSUMS = ("sha256", "md5")


@dataclass(frozen=True)
class Entry:
    """One fetchable model."""

    name: str
    kind: str
    title: str
    purpose: str
    licence: str
    size_bytes: int  # expected download size; the source's own figure wins when fetching
    url: str | None = None  # archive: the zip
    record_url: str | None = None  # archive: JSON listing the files with size and checksum
    checksum: tuple[str, str] | None = None  # pinned (algorithm, hex digest)
    repo_id: str | None = None  # components / snapshot: Hugging Face repository
    components: tuple[str, ...] = ()
    needs_sd21: bool = False  # a DiffusionSat run whose frozen SD-2.1 parts are not in the archive
    requires: tuple[str, ...] = ()  # entries to install first (a ControlNet's base model)
    settings: dict = field(default_factory=dict)  # merged into the installed folder's gfm4d.json
    gated: bool = False  # the Hub asks users to accept a licence and log in first

    @property
    def source(self) -> str:
        """Where it comes from, for listings and for fetching by hand."""
        if self.kind == "archive":
            return self.url or ""
        return f"https://huggingface.co/{self.repo_id}"


def load_catalogue(extra: Path | None = None) -> dict[str, Entry]:
    """The built-in catalogue with the entries of `extra` (default: $GFM4D_CATALOGUE) added or overriding."""
    entries = _read(CATALOGUE_FILE)
    extra = extra or (Path(os.environ[CATALOGUE_ENV_VAR]).expanduser() if os.environ.get(CATALOGUE_ENV_VAR) else None)
    if extra is not None:
        entries.update(_read(Path(extra)))
    return dict(sorted(entries.items(), key=lambda item: (KINDS.index(item[1].kind), item[0])))


def get_entry(name: str, catalogue: dict[str, Entry] | None = None) -> Entry:
    """The entry called `name`; ModelError lists the names there are otherwise."""
    catalogue = load_catalogue() if catalogue is None else catalogue
    if name not in catalogue:
        raise ModelError(
            f"the catalogue has no model {name!r}; fetchable models: {', '.join(catalogue)} "
            "(`gfm4d models available` describes them; `gfm4d models import` takes a file you downloaded yourself)"
        )
    return catalogue[name]


def _read(path: Path) -> dict[str, Entry]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read the model catalogue {path}: {exc}") from exc
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ModelError(f"{path}: a model catalogue is a JSON object with a \"models\" object (name -> entry)")
    return {name: _entry(name, value, path) for name, value in models.items()}


def _entry(name: str, value: dict, path: Path) -> Entry:
    where = f"{path}: entry {name!r}"
    try:
        check_model_name(name)
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from None
    if not isinstance(value, dict) or value.get("kind") not in KINDS:
        raise ModelError(f"{where} needs a \"kind\": one of {', '.join(KINDS)}")
    kind = value["kind"]
    for key in ("title", "purpose", "licence"):
        if not isinstance(value.get(key), str) or not value[key]:
            raise ModelError(f"{where} needs a \"{key}\" text")
    size = value.get("size_bytes")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ModelError(f"{where}: size_bytes must be a positive integer, got {size!r}")
    if kind == "archive" and not (isinstance(value.get("url"), str) and value["url"].startswith(("http://", "https://"))):
        raise ModelError(f"{where}: an archive needs an http(s) \"url\"")
    if kind != "archive" and not isinstance(value.get("repo_id"), str):
        raise ModelError(f"{where}: a {kind} needs a Hugging Face \"repo_id\"")
    checksum = None
    for algorithm in _CHECKSUMS:
        if value.get(algorithm):
            checksum = (algorithm, str(value[algorithm]).lower())
            break
    settings = value.get("settings", {})
    if not isinstance(settings, dict):
        raise ModelError(f"{where}: settings must be a JSON object (gfm4d.json entries)")
    return Entry(
        name=name,
        kind=kind,
        title=value["title"],
        purpose=value["purpose"],
        licence=value["licence"],
        size_bytes=size,
        url=value.get("url"),
        record_url=value.get("record_url"),
        checksum=checksum,
        repo_id=value.get("repo_id"),
        components=tuple(value.get("components", ())),
        needs_sd21=bool(value.get("needs_sd21", False)),
        requires=tuple(value.get("requires", ())),
        settings=settings,
        gated=bool(value.get("gated", False)),
    )
