"""`gfm4d models available` and `gfm4d models fetch`: the catalogue, and installing from it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_fetch_parsers(models_subparsers) -> None:
    """The `available` and `fetch` subcommands of `gfm4d models`."""
    available = models_subparsers.add_parser("available", help="list the models `models fetch` can install")
    available.add_argument("--json", action="store_true")
    fetch = models_subparsers.add_parser(
        "fetch", help="download, verify and install a model from the catalogue",
        description="Download a catalogue model with resume, checksum and free-space checks, and install it. "
                    "Proxies come from HTTPS_PROXY/HTTP_PROXY/NO_PROXY; Hugging Face logins from HF_TOKEN.")
    fetch.add_argument("name", help="a name from `gfm4d models available`")
    fetch.add_argument("--sd21-source", metavar="SOURCE",
                       help="where Stable Diffusion 2.1's vae/text_encoder/tokenizer/scheduler come from: a Hugging Face "
                            "repo id, an http(s) URL of a zip, or a local folder (env GFM4D_SD21_SOURCE)")
    fetch.add_argument("--no-components", action="store_true",
                       help="do not fetch the SD-2.1 components a DiffusionSat run lacks")
    fetch.add_argument("--archive", metavar="FILE.zip", help="install this zip, downloaded by hand, instead of downloading it")


def run_models_command(args: argparse.Namespace) -> int:
    if args.models_command == "available":
        return _available(args)
    return _fetch(args)


def _available(args) -> int:
    from engine.models.catalogue import load_catalogue

    models_dir = Path(args.models_dir)
    catalogue = load_catalogue()
    if args.json:
        print(json.dumps([{**_entry_dict(e), "installed": _installed(e, models_dir)} for e in catalogue.values()], indent=2))
        return 0
    for entry in catalogue.values():
        state = "installed" if _installed(entry, models_dir) else ""
        print(f"{entry.name:28} {_size(entry.size_bytes):>9}  {entry.kind:10} {state}")
        print(f"    {entry.title}: {entry.purpose}")
        print(f"    licence: {entry.licence}")
        print(f"    source: {entry.source}")
    return 0


def _fetch(args) -> int:
    from engine.models.fetch import Fetcher

    bar = _ByteBar()
    fetcher = Fetcher(Path(args.models_dir), sd21_dir=Path(args.sd21_dir) if args.sd21_dir else None,
                      sd21_source=args.sd21_source, progress=bar)
    try:
        done = fetcher.fetch(args.name, with_components=not args.no_components,
                             archive=Path(args.archive) if args.archive else None)
    finally:
        bar.close()
    for item in done:
        print(f"{'installed' if item.installed else 'already installed'}: {item.name} in {item.path}"
              + (f"\n  {item.note}" if item.note else ""))
    from engine.models.registry import ModelRegistry

    registry = ModelRegistry(Path(args.models_dir), Path(args.sd21_dir) if args.sd21_dir else None)
    for model in registry.list():
        if model.name in {item.name for item in done}:
            print(f"{model.name}: {readiness(model)}")
    return 0


def readiness(info) -> str:
    """'ready', or what a model still lacks and how to get it."""
    if Path(info.path).is_file():  # a single-file checkpoint in the models folder
        if info.ready:
            return "ready (converted into a model folder on first use)"
        return f"not ready: no configs; run `gfm4d models import {info.path} --config FOLDER`"
    if info.ready:
        return "ready"
    if info.missing_components:
        return f"not ready: no {', '.join(info.missing_components)} (run `gfm4d models fetch sd21-components`)"
    return "not ready: no base UNet (set base_model in its gfm4d.json)"


class _ByteBar:
    """A tqdm bar in bytes; one bar per stage (downloading, verifying, unpacking)."""

    def __init__(self) -> None:
        self.bar = None
        self.stage = None

    def __call__(self, done: int, total: int, what: str) -> None:
        from tqdm import tqdm

        if what != self.stage:
            self.close()
            self.stage = what
            self.bar = tqdm(total=total, desc=what, unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _entry_dict(entry) -> dict:
    return {"name": entry.name, "kind": entry.kind, "title": entry.title, "purpose": entry.purpose,
            "licence": entry.licence, "size_bytes": entry.size_bytes, "source": entry.source,
            "requires": list(entry.requires), "gated": entry.gated}


def _installed(entry, models_dir: Path) -> bool:
    from engine.models.layout import FETCHED_SD21_FOLDER

    return (models_dir / (FETCHED_SD21_FOLDER if entry.kind == "components" else entry.name)).is_dir()


def _size(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"
