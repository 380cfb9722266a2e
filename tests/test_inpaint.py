"""Inpainting with disaster masks on real rasters and polygons, with the demo models."""

import json
import shutil

import numpy as np
import pyproj
import pytest
import rasterio
import shapely
from rasterio.crs import CRS

from engine.errors import Cancelled, InputError
from engine.geo.masks import place_on_grid, soft_mask
from engine.geo.vectors import PolygonLayer, read_polygons
from engine.pipelines.inpaint import LABEL_NODATA, InpaintOutputs, InpaintRequest, inpaint


@pytest.fixture(scope="module")
def satunet(models_dir):
    from engine.models.registry import ModelRegistry

    return ModelRegistry(models_dir).load("demo-satunet")


@pytest.fixture(scope="module")
def inpainting_unet_model(models_dir):
    """A 9-channel inpainting UNet in diffusers layout, built from the demo SD model's config."""
    from diffusers import UNet2DConditionModel

    from engine.models.registry import ModelRegistry

    target = models_dir / "demo-sd-inpaint"
    if not target.exists():
        shutil.copytree(models_dir / "demo-sd", target)
        config = json.loads((target / "unet" / "config.json").read_text())
        config["in_channels"] = 9
        shutil.rmtree(target / "unet")
        import torch

        torch.manual_seed(0)
        UNet2DConditionModel.from_config(config).save_pretrained(target / "unet")
    registry = ModelRegistry(models_dir)
    assert registry.get("demo-sd-inpaint").kind == "sd-inpaint-unet"
    return registry.load("demo-sd-inpaint")


def _outputs(tmp_path, polygons=False):
    return InpaintOutputs(tmp_path / "post.tif", tmp_path / "label.tif", tmp_path / "label.gpkg" if polygons else None)


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src.profile, src.dataset_mask(), src.tags()


def _independent_labels(polygon_path, field, raster_path, codes):
    """Pixel-centre test with pyproj + shapely.contains_xy, higher code wins: no engine code involved."""
    layer = read_polygons(polygon_path)
    with rasterio.open(raster_path) as src:
        crs, transform, shape = src.crs, src.transform, (src.height, src.width)
    forward = pyproj.Transformer.from_crs(layer.crs.to_wkt(), crs.to_wkt(), always_xy=True)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    xs, ys = transform @ (cols + 0.5, rows + 0.5)
    labels = np.zeros(shape, np.uint8)
    order = sorted(range(len(layer.geometries)), key=lambda i: codes(layer.attributes[i][field]))
    for i in order:
        geometry = shapely.make_valid(shapely.transform(layer.geometries[i], lambda c: np.column_stack(forward.transform(c[:, 0], c[:, 1]))))
        code = codes(layer.attributes[i][field])
        minx, miny, maxx, maxy = geometry.bounds
        near = (xs >= minx) & (xs <= maxx) & (ys >= miny) & (ys <= maxy)
        if near.any():
            inside = shapely.contains_xy(geometry, xs[near], ys[near])
            target = labels[near]
            target[inside] = code
            labels[near] = target
    return labels


def test_joplin_damage_polygons_in_another_crs(satunet, rasters_dir, vectors_dir, tmp_path):
    raster = rasters_dir / "xv2deploy_pre_tile_1361-10160.tif"
    polygons = vectors_dir / "xview2_deploy_joplin" / "damage.shp"
    request = InpaintRequest(image=raster, polygons=polygons, class_field="dmg", disaster_type="wind",
                             date="2011-05-23", steps=2, guidance_scale=2.0, seed=3, feather_m=2.0)
    result = inpaint(satunet, request, _outputs(tmp_path, polygons=True))

    pre, pre_profile, pre_mask, _ = _read(raster)
    post, post_profile, post_mask, tags = _read(result.outputs.image)
    labels, label_profile, _, label_tags = _read(result.outputs.label)
    for profile in (post_profile, label_profile):
        assert profile["crs"] == pre_profile["crs"] and profile["transform"] == pre_profile["transform"]
        assert (profile["width"], profile["height"]) == (pre_profile["width"], pre_profile["height"])
    assert post.dtype == pre.dtype and post.shape == pre.shape

    # The label raster matches an independent rasterisation, class by class.
    expected = _independent_labels(polygons, "dmg", raster, int)
    assert np.array_equal(labels[0], expected)
    for code in (1, 2, 3, 4):
        assert int((labels[0] == code).sum()) == int((expected == code).sum())
    assert int((labels[0] > 0).sum()) > 10000

    # Outside the feathered mask of the inpainted classes (2..4) the output is the input, bit for bit.
    layer = read_polygons(polygons)
    with rasterio.open(raster) as src:
        only = [a["dmg"] >= 2 for a in layer.attributes]
        soft = soft_mask(place_on_grid(layer, src), src, None, 2.0, only=only)
    assert np.array_equal(post[:, soft == 0], pre[:, soft == 0])
    changed = (post != pre).any(axis=0)
    assert changed[soft > 0].mean() > 0.5
    assert not changed[soft == 0].any()
    # No-damage buildings are labelled but not repainted.
    assert not changed[(expected == 1) & (soft == 0)].any()
    assert result.windows < result.windows_total
    assert "wind" in tags["GFM4D_PROMPTS"] and tags["GFM4D_METHOD"] == "masked-latent-blending"
    assert "4=destroyed" in label_tags["GFM4D_LABEL_CLASSES"]

    written = read_polygons(result.outputs.polygons)
    assert written.crs == CRS.from_epsg(26915)
    assert len(written.geometries) == result.polygons_used == 192
    assert {a["class_name"] for a in written.attributes} >= {"no-damage", "destroyed"}


def test_xbd_santa_rosa_destroyed_buildings_onto_the_georeferenced_pre_image(satunet, xbd_dir, tmp_path):
    from engine.geo.xbd import xbd_png_to_geotiff

    pre = xbd_png_to_geotiff(xbd_dir / "santa-rosa-wildfire_00000273_pre_disaster.png",
                             xbd_dir / "santa-rosa-wildfire_00000273_pre_disaster.json", tmp_path / "pre.tif")
    labels_json = xbd_dir / "santa-rosa-wildfire_00000273_post_disaster.json"
    request = InpaintRequest(image=pre, polygons=labels_json, class_field="subtype", date="2017-10-11",
                             steps=2, guidance_scale=1.0, seed=1)
    result = inpaint(satunet, request, _outputs(tmp_path))
    labels, _, _, _ = _read(result.outputs.label)
    before, _, _, _ = _read(pre)
    after, _, _, tags = _read(result.outputs.image)
    destroyed, major = labels[0] == 4, labels[0] == 3
    assert destroyed.sum() > 1000 and major.sum() > 0
    changed = (after != before).any(axis=0)
    assert changed[destroyed].mean() > 0.9
    # The two no-damage buildings and everything far from the buildings stay as they were.
    assert changed.mean() < 0.5 * (labels[0] > 0).mean() + destroyed.mean() + major.mean() + 0.2
    assert "fire" in tags["GFM4D_PROMPTS"]


def test_uint16_raster_keeps_untouched_pixels_bit_for_bit_and_its_alpha_band(satunet, rasters_dir, tmp_path):
    raster = rasters_dir / "RGBA.uint16.tif"  # blue, green, red, alpha
    with rasterio.open(raster) as src:
        crs, transform = src.crs, src.transform
        x0, y0 = transform @ (300, 200)
        x1, y1 = transform @ (340, 240)
        pre = src.read()
        pre_interp = src.colorinterp
    square = shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    layer = PolygonLayer([square], [{}], crs, "square")
    request = InpaintRequest(image=raster, polygons=layer, disaster_type="flooding", steps=2, guidance_scale=1.0,
                             feather_m=0.0)
    result = inpaint(satunet, request, _outputs(tmp_path))
    post, profile, post_mask, tags = _read(result.outputs.image)
    with rasterio.open(result.outputs.image) as out:
        assert out.colorinterp == pre_interp  # blue, green, red, alpha: the alpha band stays a band
        assert out.mask_flag_enums[0] != [rasterio.enums.MaskFlags.per_dataset]  # no internal mask instead
    assert profile["dtype"] == "uint16" and post.shape == pre.shape == (4, 411, 634)
    assert np.array_equal(post[3], pre[3])  # the alpha band, bit for bit
    assert np.array_equal(post_mask > 0, pre[3] > 0)
    inside = np.zeros(pre.shape[1:], bool)
    inside[200:240, 300:340] = True
    assert np.array_equal(post[:, ~inside], pre[:, ~inside])
    assert (post[:3, inside] != pre[:3, inside]).any()
    assert post[:3, inside].max() > 255  # mapped back to the uint16 range, not left at 0..255
    assert tags["GFM4D_SYNTHESISED_BANDS"] == "3,2,1"


def test_nir_band_is_left_unchanged_and_said_so(satunet, rasters_dir, tmp_path):
    raster = rasters_dir / "m_3607824_se_17_1_20160620_sub.tif"  # R, G, B, NIR
    with rasterio.open(raster) as src:
        crs, transform = src.crs, src.transform
        pre = src.read()
    x0, y0 = transform @ (100, 100)
    x1, y1 = transform @ (160, 160)
    layer = PolygonLayer([shapely.box(x0, y1, x1, y0)], [{}], crs, "burn scar")
    result = inpaint(satunet, InpaintRequest(image=raster, polygons=layer, disaster_type="fire", steps=2,
                                             guidance_scale=1.0), _outputs(tmp_path))
    post, _, _, tags = _read(result.outputs.image)
    assert np.array_equal(post[3], pre[3])
    assert (post[:3, 100:160, 100:160] != pre[:3, 100:160, 100:160]).any()
    assert tags["GFM4D_UNCHANGED_BANDS"].startswith("4")


def test_nine_channel_inpainting_unet_is_used_for_its_layout(inpainting_unet_model, rasters_dir, tmp_path):
    raster = rasters_dir / "m_3607824_se_17_1_20160620_sub.tif"
    with rasterio.open(raster) as src:
        crs, transform = src.crs, src.transform
        pre = src.read([1, 2, 3])
    x0, y0 = transform @ (50, 50)
    x1, y1 = transform @ (90, 90)
    layer = PolygonLayer([shapely.box(x0, y1, x1, y0)], [{}], crs, "flood")
    result = inpaint(inpainting_unet_model, InpaintRequest(image=raster, polygons=layer, disaster_type="flooding",
                                                           steps=2, guidance_scale=1.0, feather_m=0.0), _outputs(tmp_path))
    post, _, _, tags = _read(result.outputs.image)
    assert tags["GFM4D_METHOD"] == "inpainting-unet"
    outside = np.ones(pre.shape[1:], bool)
    outside[50:90, 50:90] = False
    assert np.array_equal(post[:3, outside], pre[:, outside])
    assert (post[:3, 50:90, 50:90] != pre[:, 50:90, 50:90]).any()


def test_polygons_that_miss_the_raster_are_a_clear_error(satunet, rasters_dir, vectors_dir, tmp_path):
    raster = rasters_dir / "m_3607824_se_17_1_20160620_sub.tif"
    flood = vectors_dir / "cems_EMSR332_flood" / "EMSR332_08PORDENONE_DEL_v1_observed_event_a.shp"
    with pytest.raises(InputError, match="overlaps the raster: the raster covers"):
        inpaint(satunet, InpaintRequest(image=raster, polygons=flood, steps=1), _outputs(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_only_no_damage_polygons_is_a_clear_error(satunet, rasters_dir, tmp_path):
    raster = rasters_dir / "m_3607824_se_17_1_20160620_sub.tif"
    with rasterio.open(raster) as src:
        crs, transform = src.crs, src.transform
    x0, y0 = transform @ (10, 10)
    layer = PolygonLayer([shapely.box(x0, y0 - 20, x0 + 20, y0)], [{"subtype": "no-damage"}], crs, "buildings")
    with pytest.raises(InputError, match="no-damage"):
        inpaint(satunet, InpaintRequest(image=raster, polygons=layer, class_field="subtype", steps=1), _outputs(tmp_path))


def test_cancel_leaves_no_output(satunet, rasters_dir, tmp_path):
    raster = rasters_dir / "m_3607824_se_17_1_20160620_sub.tif"
    with rasterio.open(raster) as src:
        crs, transform = src.crs, src.transform
    x0, y0 = transform @ (100, 100)
    layer = PolygonLayer([shapely.box(x0, y0 - 40, x0 + 40, y0)], [{}], crs, "square")
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(Cancelled):
        inpaint(satunet, InpaintRequest(image=raster, polygons=layer, steps=4), _outputs(tmp_path), cancel=cancel)
    assert list(tmp_path.iterdir()) == []


def test_input_raster_is_not_modified(satunet, rasters_dir, tmp_path):
    raster = tmp_path / "in.tif"
    shutil.copy(rasters_dir / "m_3607824_se_17_1_20160620_sub.tif", raster)
    before = raster.read_bytes()
    with rasterio.open(raster) as src:
        crs, transform = src.crs, src.transform
    x0, y0 = transform @ (100, 100)
    layer = PolygonLayer([shapely.box(x0, y0 - 40, x0 + 40, y0)], [{}], crs, "square")
    out = tmp_path / "out"
    out.mkdir()
    inpaint(satunet, InpaintRequest(image=raster, polygons=layer, steps=1, guidance_scale=1.0), _outputs(out))
    assert raster.read_bytes() == before
    assert LABEL_NODATA == 255
