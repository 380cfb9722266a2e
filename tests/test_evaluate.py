"""Evaluating a result raster against a reference: real rasters, scikit-image's numbers, exact masks,
co-registration, the error map on the result's grid, the CLI and the task."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.warp import Resampling, reproject
from rasterio.windows import Window
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from engine.cli import main
from engine.errors import InputError
from engine.evaluate.pixels import compare
from engine.evaluate.run import PairOptions, evaluate_pair
from engine.geo.vectors import PolygonLayer, write_polygons

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NAIP = SHARED / "train" / "naip_m_4709963_se_14_1_{}.tif"


def _crop(src_path, dst_path, col, row, width, height, bands=None, **changes):
    with rasterio.open(src_path) as src:
        window = Window(col, row, width, height)
        bands = bands or list(range(1, src.count + 1))
        profile = {**src.profile, "count": len(bands), "width": width, "height": height,
                   "transform": src.window_transform(window), **changes}
        data = src.read(bands, window=window)
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
    return Path(dst_path)


@pytest.fixture(scope="module")
def naip(tmp_path_factory):
    """Two dates of one real NAIP scene (R, G, B), 200 x 160 px, no nodata inside the crop. The dates'
    grids are offset by a few metres, so the 2019 image is resampled onto the 2018 crop's grid once
    here: evaluate's own warp onto that grid is then the identity, and numbers can be checked on the
    files' pixels."""
    if not (SHARED / "train").is_dir():
        pytest.skip(f"the NAIP time series is not at {SHARED / 'train'}")
    folder = tmp_path_factory.mktemp("naip")
    early = _crop(str(NAIP).format("20180716"), folder / "naip_2018.tif", 300, 250, 200, 160, [1, 2, 3])
    with rasterio.open(early) as grid, rasterio.open(str(NAIP).format("20190904")) as src:
        late = np.zeros((3, grid.height, grid.width), np.uint8)
        reproject(src.read([1, 2, 3]), late, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=grid.transform, dst_crs=grid.crs, resampling=Resampling.bilinear)
        profile = grid.profile
    assert (late > 0).all(axis=0).mean() > 0.99
    with rasterio.open(folder / "naip_2019_on_2018.tif", "w", **profile) as dst:
        dst.write(late)
    return early, folder / "naip_2019_on_2018.tif"


def _outputs(folder: Path, stem: str = "eval") -> dict[str, Path]:
    return {"report": folder / f"{stem}.json", "table": folder / f"{stem}.csv", "plot": folder / f"{stem}.png",
            "error_map": folder / f"{stem}_error.tif"}


def _read(path):
    with rasterio.open(path) as src:
        return src.read()


def test_each_pixel_metric_equals_scikit_image_on_real_rasters(naip):
    early, late = naip
    a, b = _read(early), _read(late)
    metrics = compare(a, b)
    assert metrics.pixels == a.shape[1] * a.shape[2]
    assert metrics.mse == pytest.approx(mean_squared_error(b, a), rel=1e-12)
    assert metrics.psnr == pytest.approx(peak_signal_noise_ratio(b, a, data_range=255), rel=1e-12)
    assert metrics.ssim == pytest.approx(structural_similarity(b, a, data_range=255, channel_axis=0), rel=1e-9)
    for band in range(3):
        assert metrics.mse_per_band[band] == pytest.approx(mean_squared_error(b[band], a[band]), rel=1e-12)
        assert metrics.psnr_per_band[band] == pytest.approx(peak_signal_noise_ratio(b[band], a[band], data_range=255))
        assert metrics.ssim_per_band[band] == pytest.approx(structural_similarity(b[band], a[band], data_range=255))
    assert 0 < metrics.ssim < 1 and metrics.mse > 0


def test_a_raster_against_itself_is_mse_0_psnr_inf_ssim_1(naip, tmp_path):
    early, _ = naip
    report = evaluate_pair(early, early, _outputs(tmp_path))
    overall = report["overall"]
    assert overall["mse"] == 0 and math.isinf(overall["psnr"]) and overall["ssim"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "eval.json").read_text())["overall"]["psnr"] == "inf"
    error = _read(tmp_path / "eval_error.tif")
    assert (error[0] == 0).all() and np.allclose(error[1], 1.0)


def test_the_error_map_lines_up_with_the_result_to_the_pixel(naip, tmp_path):
    early, late = naip
    report = evaluate_pair(early, late, _outputs(tmp_path), PairOptions(window=64))
    with rasterio.open(early) as res, rasterio.open(tmp_path / "eval_error.tif") as err:
        assert (err.crs, err.transform, err.shape) == (res.crs, res.transform, res.shape)
        assert err.descriptions[0].startswith("absolute error") and err.descriptions[1].startswith("local SSIM")
        error = err.read()
    expected = np.abs(_read(early).astype(float) - _read(late).astype(float)).mean(axis=0)
    np.testing.assert_allclose(error[0], expected, rtol=1e-6)
    assert np.nanmean(error[1][3:-3, 3:-3]) == pytest.approx(report["overall"]["ssim"], rel=1e-5)
    # Per-window numbers are scikit-image's on the window's pixels.
    window = report["windows"][1]
    cut = (slice(None), slice(window["row_off"], window["row_off"] + 64), slice(window["col_off"], window["col_off"] + 64))
    assert window["mse"] == pytest.approx(mean_squared_error(_read(late)[cut], _read(early)[cut]))
    assert len(report["windows"]) == math.ceil(200 / 64) * math.ceil(160 / 64)
    rows = (tmp_path / "eval.csv").read_text().splitlines()
    assert rows[0] == "scope,col_off,row_off,width,height,band,mse,psnr,ssim,pixels"
    assert rows[1].startswith("overall,,,,,all,")
    assert (tmp_path / "eval.png").read_bytes()[:4] == b"\x89PNG"


def test_a_reprojected_reference_gives_the_numbers_of_a_pre_aligned_one(tmp_path):
    """The real xView2 post tile is EPSG:4326; warped onto the pre tile's UTM grid beforehand with
    rasterio.warp.reproject, or on the fly by evaluate: the same numbers."""
    pre, post = SHARED / "rasters" / "xv2deploy_pre_tile_1361-10160.tif", SHARED / "rasters" / "xv2deploy_post_tile_32524-5137.tif"
    result = _crop(pre, tmp_path / "pre.tif", 0, 400, 512, 400)
    with rasterio.open(result) as res, rasterio.open(post) as src:
        aligned = np.zeros((3, res.height, res.width), np.uint8)
        reproject(src.read(), aligned, src_transform=src.transform, src_crs=src.crs, dst_transform=res.transform,
                  dst_crs=res.crs, resampling=Resampling.bilinear, dst_nodata=0)
        covered = np.zeros((res.height, res.width), np.uint8)
        reproject(np.full((src.height, src.width), 255, np.uint8), covered, src_transform=src.transform,
                  src_crs=src.crs, dst_transform=res.transform, dst_crs=res.crs, resampling=Resampling.nearest,
                  dst_nodata=0)
        profile = {**res.profile, "nodata": None}
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(tmp_path / "post_aligned.tif", "w", **profile) as dst:
            dst.write(aligned)
            dst.write_mask(covered)
    on_the_fly = evaluate_pair(result, post, {"report": tmp_path / "a.json"})
    pre_aligned = evaluate_pair(result, tmp_path / "post_aligned.tif", {"report": tmp_path / "b.json"})
    assert 0.2 < on_the_fly["overlap"]["fraction_of_grid"] < 0.95
    assert on_the_fly["overlap"]["pixels"] == pytest.approx(pre_aligned["overlap"]["pixels"], rel=0.01)
    for metric in ("mse", "psnr", "ssim"):
        assert on_the_fly["overall"][metric] == pytest.approx(pre_aligned["overall"][metric], rel=0.01)


def test_reverse_compares_on_the_references_grid(tmp_path):
    pre, post = SHARED / "rasters" / "xv2deploy_pre_tile_1361-10160.tif", SHARED / "rasters" / "xv2deploy_post_tile_32524-5137.tif"
    result = _crop(pre, tmp_path / "pre.tif", 0, 400, 512, 400)
    report = evaluate_pair(result, post, _outputs(tmp_path), PairOptions(reverse=True))
    with rasterio.open(post) as ref, rasterio.open(tmp_path / "eval_error.tif") as err:
        assert (err.crs, err.transform, err.shape) == (ref.crs, ref.transform, ref.shape)
        assert int(np.isfinite(err.read(1)).sum()) == report["overlap"]["pixels"]
    assert report["grid"]["on"] == "reference" and report["overlap"]["crs"] == "EPSG:4326"


def _pixel_box(path, col0, row0, col1, row1):
    with rasterio.open(path) as src:
        left, top = src.transform @ (col0, row0)
        right, bottom = src.transform @ (col1, row1)
        return shapely.box(left, bottom, right, top), src.crs


def test_masks_restrict_the_count_exactly_and_split_inside_from_outside(naip, tmp_path):
    """An inpainting-like result: the reference with a block repainted. Identical outside the polygon,
    changed inside it; the polygon's pixels are counted exactly, as polygons or as a label raster."""
    early, _ = naip
    data = _read(early)
    changed = data.copy()
    changed[:, 40:90, 60:140] = 255 - changed[:, 40:90, 60:140]
    with rasterio.open(early) as src:
        profile = src.profile
    with rasterio.open(tmp_path / "inpainted.tif", "w", **profile) as dst:
        dst.write(changed)
    box, crs = _pixel_box(early, 50, 30, 150, 100)  # covers the repainted block with a margin
    polygons = write_polygons(PolygonLayer([box], [{"id": 1}], crs, "test"), tmp_path / "damage.gpkg")
    label = np.zeros(data.shape[1:], np.uint8)
    label[30:100, 50:150] = 3
    with rasterio.open(tmp_path / "label.tif", "w", **{**profile, "count": 1, "nodata": None}) as dst:
        dst.write(label[None])
    for mask in (polygons, tmp_path / "label.tif"):
        report = evaluate_pair(tmp_path / "inpainted.tif", early, {"report": tmp_path / "r.json"}, PairOptions(mask=mask))
        assert report["mask"]["pixels_inside"] == 100 * 70
        assert report["mask"]["pixels_outside"] == data.shape[1] * data.shape[2] - 100 * 70
        assert report["outside_mask"]["mse"] == 0 and report["outside_mask"]["ssim"] == pytest.approx(1.0)
        inside = label > 0
        assert report["inside_mask"]["mse"] == pytest.approx(mean_squared_error(data[:, inside], changed[:, inside]))
        assert report["inside_mask"]["ssim"] < 0.9


def test_only_pixels_valid_in_both_count(naip, tmp_path):
    early, late = naip
    with rasterio.open(late) as src:
        profile, data = src.profile, src.read()
    data[:, :, :50] = 0  # a nodata strip on the left of the reference
    with rasterio.open(tmp_path / "holes.tif", "w", **{**profile, "nodata": 0}) as dst:
        dst.write(data)
    report = evaluate_pair(early, tmp_path / "holes.tif", _outputs(tmp_path))
    assert report["overlap"]["pixels"] == 150 * 160
    a, b = _read(early)[:, :, 50:], _read(late)[:, :, 50:]
    assert report["overall"]["mse"] == pytest.approx(mean_squared_error(b, a))
    assert np.isnan(_read(tmp_path / "eval_error.tif")[:, :, :50]).all()


def _one_line_error(call, words):
    with pytest.raises(InputError, match=words) as error:
        call()
    assert "\n" not in str(error.value)


def test_bad_pairs_get_one_clear_line_and_leave_no_file(naip, tmp_path):
    early, late = naip
    outputs = _outputs(tmp_path)
    _one_line_error(lambda: evaluate_pair(early, SHARED / "rasters" / "cogeo.tif", outputs), "do not overlap")
    _one_line_error(lambda: evaluate_pair(str(NAIP).format("20180716"), late, outputs),
                    r"4 bands and the reference 3.*bands 1 2 3")
    with rasterio.open(late) as src:
        profile, data = src.profile, src.read()
    data[:] = 0
    data[:, :20, :20] = 9  # valid only where the result is not
    with rasterio.open(tmp_path / "empty_overlap.tif", "w", **{**profile, "nodata": 0}) as dst:
        dst.write(data)
    shifted = _crop(early, tmp_path / "shifted.tif", 0, 0, 200, 160)
    with rasterio.open(shifted, "r+") as dst:
        dst.nodata = 0
        block = dst.read()
        block[:, :30, :30] = 0
        dst.write(block)
    _one_line_error(lambda: evaluate_pair(shifted, tmp_path / "empty_overlap.tif", outputs), "no pixel of the overlap is valid")
    floats = _crop(early, tmp_path / "float.tif", 0, 0, 200, 160, dtype="float32")
    _one_line_error(lambda: evaluate_pair(floats, floats, outputs), "floating point.*give it")
    _one_line_error(lambda: evaluate_pair(early, late, {"report": tmp_path / "no" / "r.json"}), "does not exist")
    _one_line_error(lambda: evaluate_pair(early, late, outputs, PairOptions(learned=["lpips"])), "lpips net network")
    _one_line_error(lambda: evaluate_pair(early, late, outputs, PairOptions(learned=["clip"])), "give the prompt")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("eval")) == []


def test_cli_writes_report_table_plot_and_error_map(naip, tmp_path, capsys):
    early, late = naip
    assert main(["evaluate", str(early), str(late), "-o", str(tmp_path / "e.json"), "--window", "100"]) == 0
    printed = capsys.readouterr().out
    assert "overall: MSE" in printed and "SSIM" in printed
    for name in ("e.json", "e.csv", "e.png", "e_error.tif"):
        assert (tmp_path / name).is_file()
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["overall"]["mse"] == pytest.approx(mean_squared_error(_read(late), _read(early)))
    assert "scikit-image" in report["library"]


def test_cli_bad_input_is_one_line_and_status_2(naip, tmp_path, capsys):
    early, _ = naip
    code = main(["evaluate", str(early), str(SHARED / "rasters" / "cogeo.tif"), "-o", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    shown = err.split("\r")[-1]  # what the terminal shows: the progress bar is wiped, the error stays
    assert code == 2 and err.count("\n") == 1 and shown.startswith("gfm4d: error:") and "do not overlap" in shown
    assert not list(tmp_path.iterdir())


def test_the_task_runs_in_process_like_on_the_engine(naip, tmp_path):
    from engine.tasks import DeviceRegistry, get_task, run_task_locally

    early, late = naip
    assert "evaluate" in get_task("evaluate").name
    outputs = {"report": tmp_path / "t.json", "error_map": tmp_path / "t.tif"}
    written = run_task_locally(DeviceRegistry(tmp_path, device="cpu"), {"task": "evaluate", "window": 80},
                               {"result": early, "reference": late}, outputs)
    assert set(written) == {"report", "error_map"}
    assert json.loads(outputs["report"].read_text())["window"] == 80
    with pytest.raises(InputError, match="not a path"):
        run_task_locally(DeviceRegistry(tmp_path, device="cpu"), {"task": "evaluate", "networks": "../etc"},
                         {"result": early, "reference": late}, outputs)
    with pytest.raises(InputError, match="both a result and a reference"):
        run_task_locally(DeviceRegistry(tmp_path, device="cpu"), {"task": "evaluate"}, {"result": early}, outputs)
