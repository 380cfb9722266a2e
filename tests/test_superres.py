"""Sentinel-2 super-resolution: band mapping, spec normalisation, output grid on the same footprint."""

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from engine.errors import InputError
from engine.geo.sentinel2 import ALL_BANDS, CONDITION_BANDS, MEAN, STD, Sentinel2Normalisation, band_name, condition_band_indices
from engine.pipelines.superres import SuperresRequest, superres


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from engine.models.demo import build_demo_models
    from engine.models.registry import ModelRegistry

    path = tmp_path_factory.mktemp("sr-models")
    build_demo_models(path)
    return ModelRegistry(path).load("demo-superres")


def _scene(path, bands=ALL_BANDS, descriptions=True, size=32):
    rng = np.random.default_rng(0)
    profile = dict(driver="GTiff", width=size, height=size, count=len(bands), dtype="uint16", crs="EPSG:32633",
                   transform=from_origin(500000, 4100320, 10, 10))
    with rasterio.open(path, "w", **profile) as dst:
        for i, name in enumerate(bands, start=1):
            dst.write(rng.integers(int(MEAN[name] * 0.5), int(MEAN[name] * 1.5), (size, size)).astype(np.uint16), i)
            if descriptions:
                dst.set_band_description(i, f"{name.replace('B', 'B0') if len(name) == 2 else name} reflectance")
    return path


def test_band_names_and_condition_order():
    assert [band_name(t) for t in ("B04", "b4", "B8A", "B8a (narrow nir)", "B12", "red", None)] == ["B4", "B4", "B8A", "B8A", "B12", None, None]
    ten = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
    assert condition_band_indices(ten) == [3, 2, 1, 4, 5, 6, 7, 8, 9, 10]
    assert condition_band_indices([None] * 13) == [4, 3, 2, 5, 6, 7, 8, 9, 12, 13]  # fMoW-Sentinel order
    with pytest.raises(InputError, match="band list explicitly"):
        condition_band_indices([None] * 10)
    with pytest.raises(InputError, match="B11, B12"):
        condition_band_indices(["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A"])


def test_normalisation_follows_the_spec_and_quantises_to_8_bits():
    values = np.array([MEAN[b] for b in CONDITION_BANDS], np.float32)[:, None, None]
    # At the mean: (2 sigma) / (4 sigma) * 255 = 127.5 -> uint8 127 -> 127/255.
    assert np.allclose(Sentinel2Normalisation().to_unit(values), 127 / 255)
    low = np.array([MEAN[b] - 3 * STD[b] for b in CONDITION_BANDS], np.float32)[:, None, None]
    assert np.all(Sentinel2Normalisation().to_unit(low) == 0.0)


def test_superres_output_covers_the_scene_at_an_eighth_of_its_pixel(model, tmp_path):
    scene = _scene(tmp_path / "S2B_MSIL1C_20200601T100559_N0209_R022_T33SVB_20200601T121210.tif")
    result = superres(model, SuperresRequest(image=scene, steps=2, guidance_scale=1.0), tmp_path / "sr.tif")
    with rasterio.open(result.path) as out, rasterio.open(scene) as src:
        assert out.crs == src.crs and out.bounds == src.bounds
        assert out.res == (1.25, 1.25) and (out.width, out.height) == (256, 256)
        assert out.count == 3 and out.tags()["GFM4D_TASK"] == "superres"
        assert out.tags()["GFM4D_DATE"] == "2020-06-01"


def test_the_condition_changes_the_result_and_ten_band_scenes_work(model, tmp_path):
    ten = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
    a = _scene(tmp_path / "a.tif", bands=ten)
    request = SuperresRequest(image=a, date="2020-06-01", steps=2, guidance_scale=1.0, resolution_m=5.0)
    superres(model, request, tmp_path / "a_sr.tif")
    b = tmp_path / "b.tif"
    with rasterio.open(a) as src:
        profile, data = src.profile, src.read()
        descriptions = src.descriptions
    with rasterio.open(b, "w", **profile) as dst:
        dst.write((data // 2).astype(np.uint16))
        for i, d in enumerate(descriptions, start=1):
            dst.set_band_description(i, d)
    request.image = b
    superres(model, request, tmp_path / "b_sr.tif")
    with rasterio.open(tmp_path / "a_sr.tif") as ra, rasterio.open(tmp_path / "b_sr.tif") as rb:
        assert ra.res == (5.0, 5.0) and (ra.width, ra.height) == (64, 64)
        assert not np.array_equal(ra.read(), rb.read())


def test_explicit_band_list_and_models_that_cannot_superres(model, tmp_path):
    scene = _scene(tmp_path / "nodesc.tif", bands=["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"], descriptions=False)
    with pytest.raises(InputError, match="band list"):
        superres(model, SuperresRequest(image=scene, date="2020-06-01", steps=1), tmp_path / "x.tif")
    bands = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
    result = superres(model, SuperresRequest(image=scene, bands=bands, date="2020-06-01", steps=1, guidance_scale=1.0,
                                             resolution_m=10.0), tmp_path / "ok.tif")
    assert result.grid.width == 32
