"""Build the installable QGIS plugin zip: one folder `gfm4d/` with everything QGIS needs.

    python scripts/build_plugin.py [--output-dir dist]   ->  dist/gfm4d-<version>.zip

Layout: the plugin shell (qgis_plugin/*) at the folder's top, the algorithms as the subpackage
`gfm4d/processing_algorithms/`, metadata.txt, the icon, and LICENSE / README.md when the project
has them. Only source files go in: no tests, no sample data, no engine, no caches. The metadata
is checked for the fields plugins.qgis.org requires before anything is written.
"""

from __future__ import annotations

import argparse
import configparser
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN_FOLDER = "gfm4d"
REQUIRED_METADATA = ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository")
SOURCE_SUFFIXES = {".py", ".svg", ".png", ".ui", ".qm"}
TOP_LEVEL_DOCS = ("LICENSE", "LICENSE.txt", "LICENSE.md", "README.md")


def read_metadata(path: Path) -> dict[str, str]:
    """The [general] section of metadata.txt; ValueError naming any required field that is missing."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive (qgisMinimumVersion)
    parser.read(path, encoding="utf-8")
    if not parser.has_section("general"):
        raise ValueError(f"{path} has no [general] section")
    metadata = dict(parser["general"])
    missing = [key for key in REQUIRED_METADATA if not metadata.get(key, "").strip()]
    if missing:
        raise ValueError(f"{path} lacks the fields plugins.qgis.org requires: {', '.join(missing)}")
    if metadata.get("hasProcessingProvider", "").lower() != "yes":
        raise ValueError(f"{path} must say hasProcessingProvider=yes (the plugin is a Processing provider)")
    return metadata


def plugin_files(repo: Path = REPO) -> dict[str, Path]:
    """Archive name -> source file, for every file the plugin zip holds."""
    files: dict[str, Path] = {}
    for package, target in (("qgis_plugin", PLUGIN_FOLDER), ("processing_algorithms", f"{PLUGIN_FOLDER}/processing_algorithms")):
        root = repo / package
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix in SOURCE_SUFFIXES and "__pycache__" not in path.parts:
                files[f"{target}/{path.relative_to(root).as_posix()}"] = path
    files[f"{PLUGIN_FOLDER}/metadata.txt"] = repo / "metadata.txt"
    files[f"{PLUGIN_FOLDER}/icon.svg"] = repo / "processing_algorithms" / "icon.svg"
    for name in TOP_LEVEL_DOCS:
        if (repo / name).is_file():
            files[f"{PLUGIN_FOLDER}/{name}"] = repo / name
    return files


def build(output_dir: Path, repo: Path = REPO) -> Path:
    """Write gfm4d-<version>.zip into `output_dir`; its path."""
    metadata = read_metadata(repo / "metadata.txt")
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / f"{PLUGIN_FOLDER}-{metadata['version']}.zip"
    partial = target.with_suffix(".zip.part")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, path in sorted(plugin_files(repo).items()):
            archive.write(path, name)
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the GFM4D QGIS plugin zip.")
    parser.add_argument("--output-dir", type=Path, default=REPO / "dist", help="where to write the zip (default: dist/)")
    args = parser.parse_args(argv)
    try:
        path = build(args.output_dir)
    except (OSError, ValueError) as exc:
        print(f"build_plugin: error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
