"""gfm4d:dataset through processing.run on a real engine: a recipe and the files it names -> a dataset folder."""

import json
import shutil

import pytest

pytest.importorskip("qgis.core")

from helpers import raster_grid  # noqa: E402

import processing  # noqa: E402


def test_recipe_with_a_shapefile_builds_a_dataset_folder(provider, rasters_dir, vectors_dir, tmp_path):
    project = tmp_path / "project"
    (project / "labels").mkdir(parents=True)
    for part in (vectors_dir / "xview2_deploy_joplin").glob("damage.*"):
        shutil.copy(part, project / "labels" / part.name)
    (project / "recipe.yaml").write_text(
        "name: joplin-qgis\nsteps: 1\nguidance_scale: 1.0\nchip_size: 128\nchips_per_scene: 1\n"
        "min_damage_fraction: 0.02\ndisaster_type: wind\nsplit: {by: scene, train: 1, val: 0, test: 0}\n"
        f"scenes:\n  - path: {rasters_dir / 'xv2deploy_pre_tile_1361-10160.tif'}\n    date: 2011-05-20\n"
        "    damage:\n      - {kind: polygons, path: labels/damage.shp, class_field: dmg}\n"
    )
    out = tmp_path / "dataset"
    result = processing.run("gfm4d:dataset", {"RECIPE": str(project / "recipe.yaml"), "MODEL": "demo-satunet",
                                              "SEED": 4, "OUTPUT": str(out)})
    assert result["OUTPUT"] == str(out) and result["CARD"] == str(out / "README.md")
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()][1:]
    assert len(records) == 1 and records[0]["split"] == "train"
    files = {name: out / rel for name, rel in records[0]["files"].items()}
    pre, post, label = raster_grid(files["pre"]), raster_grid(files["post"]), raster_grid(files["label"])
    assert pre.epsg == post.epsg == label.epsg == "EPSG:26915"
    assert pre.origin == post.origin == label.origin and (pre.width, pre.height) == (post.width, post.height) == (128, 128)
    assert "destroyed" in records[0]["class_pixels"] or "major-damage" in records[0]["class_pixels"]
    assert (out / "preview.png").is_file() and (out / "stac" / "catalog.json").is_file()
    assert "seed: 4" in (out / "README.md").read_text()


def test_a_recipe_naming_a_missing_file_is_explained(provider, tmp_path):
    from qgis.core import QgsProcessingException

    (tmp_path / "recipe.json").write_text(json.dumps({"name": "x", "scenes": [{"path": "nowhere.tif"}]}))
    with pytest.raises(QgsProcessingException, match="nowhere.tif"):
        processing.run("gfm4d:dataset", {"RECIPE": str(tmp_path / "recipe.json"), "OUTPUT": str(tmp_path / "out")})
