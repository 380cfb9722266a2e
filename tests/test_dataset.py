"""`gfm4d dataset`: recipes, damage sources, leak-free splits, byte-identical and resumable samples, xBD layout.

Real rasters and polygons from tests/data, the tiny demo model, one or two denoising steps.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pyproj
import pytest
import rasterio
import shapely
import shapely.ops
from PIL import Image
from rasterio.features import rasterize

from engine.dataset import build_dataset, load_recipe, parse_recipe
from engine.dataset.damage import scene_damage
from engine.dataset.plan import plan_dataset
from engine.dataset.scenes import resolve_scenes
from engine.errors import Cancelled, InputError
from engine.geo.grid import OutputGrid

DATA = Path(__file__).resolve().parent / "data"
PRE_TILE = DATA / "rasters" / "xv2deploy_pre_tile_1361-10160.tif"  # Joplin, 0.6 m, EPSG:26915
NAIP = DATA / "rasters" / "m_3607824_se_17_1_20160620_sub.tif"
JOPLIN = DATA / "vectors" / "xview2_deploy_joplin"


@pytest.fixture(scope="module")
def model(models_dir):
    from engine.models.registry import ModelRegistry

    return ModelRegistry(models_dir).load("demo-satunet")


def recipe_data(**overrides) -> dict:
    data = {
        "name": "joplin-test",
        "model": "demo-satunet",
        "steps": 1,
        "guidance_scale": 1.0,
        "chip_size": 128,
        "chips_per_scene": 2,
        "min_damage_fraction": 0.02,
        "disaster_type": "wind",
        "split": {"by": "scene", "train": 0.5, "val": 0.5, "test": 0.0},
        "scenes": [
            {"path": str(PRE_TILE), "date": "2011-05-20", "disaster": "joplin-tornado",
             "damage": [{"kind": "polygons", "path": str(JOPLIN / "damage.shp"), "class_field": "dmg"}]},
            {"path": str(NAIP), "disaster_type": "flooding",
             "damage": [{"kind": "procedural", "class_name": "flooded-area", "count": 4, "radius_m": [20, 50]}]},
        ],
    }
    data.update(overrides)
    return data


def _sample_files(root: Path) -> dict[str, bytes]:
    manifest = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()][1:]
    return {rel: (root / rel).read_bytes() for record in manifest for rel in record["files"].values()}


def _records(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()][1:]


@pytest.fixture(scope="module")
def built(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("built") / "ds"
    summary = build_dataset(parse_recipe(recipe_data()), root, model=model)
    return root, summary


# --- recipes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, words",
    [
        ({"chip_size": 100}, ["chip_size", "multiple of 8"]),
        ({"split": {"train": 0.5}}, ["split", "must be 1"]),
        ({"colour": "red"}, ["colour", "not a recipe setting"]),
        ({"scenes": [{"path": "x.tif", "damage": [{"kind": "polygon", "path": "a.shp"}]}]}, ["scenes[0].damage[0]", "kind"]),
        ({"scenes": [{"path": "x.tif", "damage": [{"kind": "footprints", "path": "a.gpkg", "sampling": {"destroyed": 1.5}}]}]},
         ["scenes[0].damage[0].sampling", "from 0 to 1"]),
        ({"disaster_type": "meteor"}, ["disaster_type", "flooding"]),
    ],
)
def test_recipe_mistakes_are_named_with_their_place(change, words):
    with pytest.raises(InputError) as error:
        parse_recipe(recipe_data(**change))
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_yaml_recipe_paths_are_relative_to_the_recipe(tmp_path):
    folder = tmp_path / "project"
    (folder / "labels").mkdir(parents=True)
    shutil.copy(PRE_TILE, folder / "pre.tif")
    for part in JOPLIN.glob("damage.*"):
        shutil.copy(part, folder / "labels" / part.name)
    (folder / "recipe.yaml").write_text(
        "name: rel\nscenes:\n  - path: pre.tif\n    date: 2011-05-20\n    damage:\n"
        "      - {kind: polygons, path: labels/damage.shp, class_field: dmg}\n"
    )
    recipe = load_recipe(folder / "recipe.yaml")
    assert Path(recipe.scenes[0].path) == folder / "pre.tif"
    assert recipe.scenes[0].damage[0].path == folder / "labels" / "damage.shp"
    (folder / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML at line 2"):
        load_recipe(folder / "broken.yaml")


def test_scene_without_a_date_is_refused_with_the_fix(tmp_path):
    undated = tmp_path / "scene.tif"
    shutil.copy(PRE_TILE, undated)
    data = recipe_data()
    data["scenes"] = [dict(data["scenes"][0], path=str(undated), date=None)]
    with pytest.raises(InputError, match=r"scenes\[0\]\.date"):
        resolve_scenes(parse_recipe(data))


# --- damage sources ---------------------------------------------------------------------------------


def _grid(path: Path) -> OutputGrid:
    with rasterio.open(path) as src:
        return OutputGrid(src.crs, src.transform, src.width, src.height)


def test_footprint_sampling_rule_draws_grades_per_disaster_type():
    rule = {"wind": {"destroyed": 0.5, "major-damage": 0.2}, "flooding": {"minor-damage": 1.0}}
    data = recipe_data(scenes=[{"path": str(PRE_TILE), "date": "2011-05-20", "disaster_type": "wind",
                                "damage": [{"kind": "footprints", "path": str(JOPLIN / "bldg_polys.gpkg"), "sampling": rule}]}])
    recipe = parse_recipe(data)
    scene = resolve_scenes(recipe)[0]
    layer = scene_damage(recipe, scene, _grid(PRE_TILE))
    names = [a["subtype"] for a in layer.attributes]
    assert len(names) == 77 and set(names) <= {"destroyed", "major-damage", "no-damage"}
    assert 25 <= names.count("destroyed") <= 52  # 77 draws at 0.5 (binomial, > 4 sigma)
    assert names == [a["subtype"] for a in scene_damage(recipe, scene, _grid(PRE_TILE)).attributes]
    other = parse_recipe({**data, "seed": 7})
    assert names != [a["subtype"] for a in scene_damage(other, resolve_scenes(other)[0], _grid(PRE_TILE)).attributes]
    flooding = parse_recipe({**data, "scenes": [dict(data["scenes"][0], disaster_type="flooding")]})
    flood_names = {a["subtype"] for a in scene_damage(flooding, resolve_scenes(flooding)[0], _grid(PRE_TILE)).attributes}
    assert flood_names == {"minor-damage"}


def test_spacenet8_roads_are_buffered_to_their_width(tmp_path):
    with rasterio.open(NAIP) as src:
        to_lonlat = pyproj.Transformer.from_crs(src.crs.to_wkt(), "EPSG:4326", always_xy=True)
        x0, y0 = src.transform @ (50, 150)
        x1, y1 = src.transform @ (250, 150)  # a 200 m east-west road (1 m pixels)
    road = shapely.LineString([to_lonlat.transform(x0, y0), to_lonlat.transform(x1, y1)])
    bx, by = src.transform @ (100, 60)
    building = shapely.box(*to_lonlat.transform(bx, by), *to_lonlat.transform(bx + 20, by + 20))
    labels = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"highway": "primary", "flooded": "yes"}, "geometry": shapely.geometry.mapping(road)},
        {"type": "Feature", "properties": {"building": "yes", "flooded": None}, "geometry": shapely.geometry.mapping(building)},
    ]}
    path = tmp_path / "sn8.geojson"
    path.write_text(json.dumps(labels))
    data = recipe_data(scenes=[{"path": str(NAIP), "damage": [{"kind": "spacenet8", "path": str(path), "road_width_m": 8}]}])
    recipe = parse_recipe(data)
    layer = scene_damage(recipe, resolve_scenes(recipe)[0], _grid(NAIP))
    kinds = {a["feature_type"]: (g, a["subtype"]) for g, a in zip(layer.geometries, layer.attributes)}
    road_polygon, road_class = kinds["road"]
    assert road_class == "flooded-area" and kinds["building"][1] == "no-damage"
    # 200 m x 8 m plus round caps (pi * 4^2): the buffer is 8 m wide on the ground
    assert road_polygon.area == pytest.approx(200 * 8 + np.pi * 16, rel=0.02)


def test_xbd_labels_keep_their_subtypes(xbd_dir):
    from engine.geo.xbd import xbd_png_to_geotiff

    stem = "santa-rosa-wildfire_00000273_post_disaster"
    labels = xbd_dir / f"{stem}.json"
    tif = xbd_png_to_geotiff(xbd_dir / f"{stem}.png", labels, Path(pytest.importorskip("tempfile").mkdtemp()) / "post.tif")
    data = recipe_data(scenes=[{"path": str(tif), "date": "2017-05-21", "damage": [{"kind": "xbd", "path": str(labels)}]}])
    recipe = parse_recipe(data)
    layer = scene_damage(recipe, resolve_scenes(recipe)[0], _grid(tif))
    names = [a["subtype"] for a in layer.attributes]
    assert (names.count("destroyed"), names.count("major-damage"), names.count("no-damage")) == (9, 1, 2)
    pre_labels = parse_recipe({**data, "scenes": [dict(data["scenes"][0], damage=[
        {"kind": "xbd", "path": str(xbd_dir / "santa-rosa-wildfire_00000273_pre_disaster.json")}])]})
    with pytest.raises(InputError, match="post_disaster"):
        scene_damage(pre_labels, resolve_scenes(pre_labels)[0], _grid(tif))


# --- plan and splits --------------------------------------------------------------------------------


def _footprint_lonlat(recipe, spec) -> shapely.Polygon:
    scene = resolve_scenes(recipe)[spec.scene_index]
    with rasterio.open(scene.path) as src:
        transform = src.window_transform(spec.window)
        crs = src.crs
    corners = [transform @ c for c in ((0, 0), (spec.size, 0), (spec.size, spec.size), (0, spec.size))]
    forward = pyproj.Transformer.from_crs(crs.to_wkt(), "EPSG:4326", always_xy=True)
    return shapely.Polygon([forward.transform(x, y) for x, y in corners])


def test_split_by_area_never_lets_two_splits_share_ground():
    data = recipe_data(chips_per_scene=64, min_damage_fraction=0.001,
                       split={"by": "area", "train": 0.4, "val": 0.3, "test": 0.3, "area_size_m": 150})
    # a second scene over the same ground (the same tile): its chips must follow the same blocks
    data["scenes"].append(dict(data["scenes"][0], disaster="joplin-again"))
    recipe = parse_recipe(data)
    plan = plan_dataset(recipe)
    footprints = {spec.sample_id: (spec.split, _footprint_lonlat(recipe, spec)) for spec in plan.samples}
    assert len({split for split, _ in footprints.values()}) == 3
    assert sum(p.chips_dropped_at_split_borders for p in plan.scene_plans) > 0
    items = list(footprints.values())
    for i, (split_a, a) in enumerate(items):
        for split_b, b in items[i + 1 :]:
            if split_a != split_b:
                assert a.intersection(b).area < 1e-14, (split_a, split_b)


def test_split_by_scene_puts_every_chip_of_a_scene_in_one_split():
    data = recipe_data(split={"by": "scene", "train": 0.5, "val": 0.5, "test": 0.0})
    plan = plan_dataset(parse_recipe(data))
    splits = {}
    for spec in plan.samples:
        splits.setdefault(spec.scene_index, set()).add(spec.split)
    assert all(len(s) == 1 for s in splits.values())
    assert {next(iter(s)) for s in splits.values()} == {"train", "val"}


# --- samples ----------------------------------------------------------------------------------------


def test_samples_are_chips_of_the_scene_on_one_grid(built):
    root, summary = built
    assert summary.planned == 4 and summary.made == 4
    for record in _records(root):
        files = {name: root / rel for name, rel in record["files"].items()}
        meta = json.loads(files["metadata"].read_text())
        with rasterio.open(files["pre"]) as pre, rasterio.open(files["post"]) as post, rasterio.open(files["label"]) as label:
            assert pre.crs == post.crs == label.crs and pre.transform == post.transform == label.transform
            assert pre.shape == post.shape == label.shape == (128, 128)
            assert label.nodata == 255 and label.dtypes[0] == "uint8"
            scene = PRE_TILE if meta["source_scene"] == PRE_TILE.name else NAIP
            window = rasterio.windows.Window(meta["window"]["col"], meta["window"]["row"], 128, 128)
            with rasterio.open(scene) as src:
                assert np.array_equal(pre.read(), src.read(window=window))
                assert pre.transform == src.window_transform(window)
            codes = label.read(1)
            painted = np.isin(codes, [2, 3, 4, 8])
            # the feathered edge reaches a few pixels beyond the polygons and closes their small holes
            forward = pyproj.Transformer.from_crs("EPSG:4326", label.crs.to_wkt(), always_xy=True)
            features = json.loads(files["labels"].read_text())["features"]
            outlines = [shapely.Polygon(shapely.ops.transform(forward.transform, part).exterior)
                        for f in features if f["properties"]["class_code"] in (2, 3, 4, 8)
                        for part in shapely.get_parts(shapely.geometry.shape(f["geometry"]))]
            near = rasterize([o for o in outlines if not o.is_empty], out_shape=codes.shape, transform=label.transform,
                             all_touched=True).astype(bool)
            assert near[painted].all()
            for shift in range(1, 8):
                for axis in (0, 1):
                    near |= np.roll(painted, shift, axis) | np.roll(painted, -shift, axis)
            a, b = pre.read([1, 2, 3]), post.read([1, 2, 3])
            # a few pixels change beyond: the feather also closes the small holes of the stair-step
            # damage polygons (the inpaint tests check the mask itself exactly)
            assert ((a != b).any(axis=0) & ~near).mean() < 0.02
            assert (a[:, painted] != b[:, painted]).mean() > 0.5
        assert meta["synthetic"] is True and meta["model"] == "demo-satunet" and meta["steps"] == 1
        assert meta["post_date"] > meta["pre_date"] and meta["gfm4d_version"]
        assert set(record["class_pixels"]) <= {"background", "no-damage", "minor-damage", "major-damage", "destroyed", "flooded-area"}


def test_label_geojson_rasterises_to_the_label_raster(built):
    root, _ = built
    for record in _records(root):
        files = {name: root / rel for name, rel in record["files"].items()}
        collection = json.loads(files["labels"].read_text())
        with rasterio.open(files["label"]) as label:
            codes, crs, transform = label.read(1), label.crs, label.transform
        forward = pyproj.Transformer.from_crs("EPSG:4326", crs.to_wkt(), always_xy=True)
        shapes = sorted(
            ((shapely.ops.transform(forward.transform, shapely.geometry.shape(f["geometry"])), f["properties"]["class_code"])
             for f in collection["features"]), key=lambda s: s[1])
        assert {f["properties"]["subtype"] for f in collection["features"]} <= {"no-damage", "minor-damage", "major-damage",
                                                                              "destroyed", "flooded-area"}
        burnt = rasterize(shapes, out_shape=codes.shape, transform=transform, fill=0, dtype="uint8")
        assert (burnt != codes).mean() < 0.002


def test_same_recipe_gives_byte_identical_samples(built, model, tmp_path):
    root, _ = built
    again = tmp_path / "again"
    build_dataset(parse_recipe(recipe_data()), again, model=model)
    first, second = _sample_files(root), _sample_files(again)
    assert first.keys() == second.keys() and len(first) == 20
    assert all(first[k] == second[k] for k in first)
    assert (root / "preview.png").read_bytes() == (again / "preview.png").read_bytes()


def test_interrupted_run_is_finished_without_duplicates(built, model, tmp_path):
    reference, _ = built
    root = tmp_path / "resumed"
    seen = []

    def cancel():
        return len(seen) >= 2

    with pytest.raises(Cancelled):
        build_dataset(parse_recipe(recipe_data()), root, model=model, cancel=cancel, on_record=seen.append)
    assert [r["id"] for r in _records(root)] == [r["id"] for r in seen]
    # a crash in the middle of the next sample: its scratch folder and half a manifest line
    (root / ".scratch" / "joplin-tornado_00000002-dead").mkdir(parents=True)
    (root / ".scratch" / "joplin-tornado_00000002-dead" / "post.tif").write_bytes(b"II*\x00half")
    with open(root / "manifest.jsonl", "a") as handle:
        handle.write('{"id": "joplin-tornado_00000002", "files": {"pre"')
    summary = build_dataset(parse_recipe(recipe_data()), root, model=model)
    assert summary.made == 2 and summary.already_done == 2
    ids = [r["id"] for r in _records(root)]
    assert len(ids) == len(set(ids)) == 4
    assert not (root / ".scratch").exists()
    assert _sample_files(root) == _sample_files(reference)
    # running it once more changes nothing
    assert build_dataset(parse_recipe(recipe_data()), root, model=model).made == 0
    with pytest.raises(InputError, match="another recipe"):
        build_dataset(parse_recipe(recipe_data(seed=5)), root, model=model)


def test_stac_catalog_describes_every_sample_with_the_label_extension(built):
    import pystac

    root, _ = built
    catalog = pystac.Catalog.from_file(str(root / "stac" / "catalog.json"))
    items = list(catalog.get_items(recursive=True))
    assert sorted(i.id for i in items) == sorted(r["id"] for r in _records(root))
    for item in items:
        assert any("label" in uri for uri in item.stac_extensions)
        assert item.properties["label:type"] == "raster"
        assert item.properties["gfm4d:synthetic"] is True
        for asset in item.assets.values():
            assert Path(asset.get_absolute_href()).is_file()
        assert item.properties["proj:shape"] == [128, 128]


def test_card_counts_samples_per_split_and_class(built):
    root, _ = built
    card = (root / "README.md").read_text()
    assert "train 2, val 2, test 0" in card
    assert "| flooded-area | 0 | 2 | 0 |" in card or "| flooded-area | 2 | 0 | 0 |" in card
    assert "![preview](preview.png)" in card and "Synthetic data" in card and "steps: 1" in card
    with Image.open(root / "preview.png") as preview:
        assert preview.format == "PNG" and preview.width > 3 * 128


# --- xBD layout -------------------------------------------------------------------------------------


def test_xbd_layout_is_read_back_by_an_independent_reader(model, tmp_path):
    data = recipe_data(layout="xbd", scenes=recipe_data()["scenes"][:1], split={"by": "scene", "train": 1, "val": 0, "test": 0})
    root = tmp_path / "xbd"
    build_dataset(parse_recipe(data), root, model=model)
    posts = sorted((root / "train" / "labels").glob("*_post_disaster.json"))
    assert len(posts) == 2
    for post_json in posts:
        stem = post_json.name.removesuffix("_post_disaster.json")
        assert stem.startswith("joplin-tornado_") and len(stem.split("_")[-1]) == 8
        labels = json.loads(post_json.read_text())
        pre_labels = json.loads((root / "train" / "labels" / f"{stem}_pre_disaster.json").read_text())
        assert all("subtype" not in f["properties"] for f in pre_labels["features"]["xy"])
        assert labels["metadata"]["width"] == labels["metadata"]["height"] == 128
        assert labels["metadata"]["img_name"] == f"{stem}_post_disaster.png"
        shapes = sorted(((shapely.from_wkt(f["wkt"]), {"minor-damage": 2, "major-damage": 3, "destroyed": 4,
                                                          "no-damage": 1}[f["properties"]["subtype"]])
                         for f in labels["features"]["xy"]), key=lambda s: s[1])
        burnt = rasterize(shapes, out_shape=(128, 128), transform=rasterio.Affine.identity(), fill=0, dtype="uint8")
        target = np.asarray(Image.open(root / "train" / "targets" / f"{stem}_post_disaster_target.png"))
        with rasterio.open(root / "train" / "geotiffs" / f"{stem}_post_disaster_label.tif") as label:
            codes = label.read(1)
            transform = label.transform
        assert np.array_equal(target, np.where(codes == 255, 0, codes))
        assert (burnt != target).mean() < 0.002
        # lng_lat and xy describe the same image: the georeference fitted from them is the chip's
        from engine.geo.xbd import fit_xbd_georeference, read_xbd_labels

        fitted = fit_xbd_georeference(read_xbd_labels(post_json))
        forward = pyproj.Transformer.from_crs(label.crs.to_wkt(), fitted.crs.to_wkt(), always_xy=True)
        for col, row in ((0, 0), (128, 128)):
            expected = forward.transform(*(transform @ (col, row)))
            assert np.allclose(fitted.transform @ (col, row), expected, atol=0.01)
        png = np.asarray(Image.open(root / "train" / "images" / f"{stem}_post_disaster.png"))
        with rasterio.open(root / "train" / "geotiffs" / f"{stem}_post_disaster.tif") as post:
            assert np.array_equal(np.moveaxis(png, -1, 0), post.read([1, 2, 3]))


# --- CLI and HTTP task ------------------------------------------------------------------------------


def test_cli_builds_and_explains_a_bad_recipe(models_dir, tmp_path, capsys):
    from engine.cli import main

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(recipe_data(scenes=recipe_data()["scenes"][1:], chips_per_scene=1)))
    assert main(["--models-dir", str(models_dir), "--device", "cpu", "dataset", str(recipe), "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "1 samples" in out and "made 1 now" in out and "preview.png" in out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(recipe_data(chip_size=100)))
    assert main(["--models-dir", str(models_dir), "dataset", str(bad), "-o", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gfm4d: error:") and "chip_size" in err and "\n" not in err


def test_http_task_reads_only_the_uploaded_files(models_dir, tmp_path):
    import zipfile

    from engine.tasks import DeviceRegistry, run_task_locally

    registry = DeviceRegistry(models_dir, device="cpu")
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    shutil.copy(NAIP, uploads / NAIP.name)
    data = recipe_data(chips_per_scene=1, scenes=[dict(recipe_data()["scenes"][1], path=NAIP.name)])
    (uploads / "recipe.json").write_text(json.dumps(data))
    outputs = {"dataset": tmp_path / "ds.zip", "card": tmp_path / "README.md"}
    written = run_task_locally(registry, {"task": "dataset"}, {"recipe": uploads / "recipe.json", "files.0": uploads / NAIP.name},
                               outputs)
    with zipfile.ZipFile(written["dataset"]) as archive:
        names = archive.namelist()
    assert "manifest.jsonl" in names and any(n.endswith("post.tif") for n in names)
    assert "1 of 1 planned samples" in written["card"].read_text()
    sneaky = recipe_data(scenes=[dict(recipe_data()["scenes"][1], path=str(NAIP))])
    (uploads / "sneaky.json").write_text(json.dumps(sneaky))
    with pytest.raises(InputError, match="uploaded files"):
        run_task_locally(registry, {"task": "dataset"}, {"recipe": uploads / "sneaky.json"}, outputs)


@pytest.mark.parametrize("interrupt, code, word", [("sigterm", 143, "terminated"), ("ctrl-c", 130, "cancelled")])
def test_an_interrupted_cli_run_says_its_samples_are_kept_with_the_signals_exit_status(
        models_dir, tmp_path, capsys, monkeypatch, interrupt, code, word):
    import engine.dataset
    from engine.cli import Terminated, main

    def interrupted(*args, **kwargs):
        raise Terminated() if interrupt == "sigterm" else KeyboardInterrupt()

    monkeypatch.setattr(engine.dataset, "build_dataset", interrupted)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(recipe_data()))
    assert main(["--models-dir", str(models_dir), "--device", "cpu", "dataset", str(recipe), "-o", str(tmp_path / "out")]) == code
    assert capsys.readouterr().err.strip().endswith(
        f"gfm4d: {word}; finished samples are kept; run the same command again to make the rest")
