"""Every raster kind found in the wild (geodata.md) through every command that reads a raster.

Each kind (built small by `wild_rasters`) either works, with its output checked in numbers, or is
refused with one line that names the file and the fix. Commands: `generate --like` (only the grid
is read), `inpaint` (the post-event raster keeps the input's grid, bands, masks, scale/offset),
`predict` (a kind as a frame co-registered onto another grid, and as the reference grid) and
`superres` (Sentinel-2 scenes of the kinds that change geometry or masking). Expected values come
from plain rasterio/pyproj reads of the files, never from the code under test.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pyproj
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.windows import Window

import wild_rasters as wild
from engine.errors import InputError
from engine.geo.coregister import WarpedFrame, check_coverage, open_frames
from engine.geo.grid import OutputGrid
from engine.geo.raster import open_raster
from engine.geo.vectors import PolygonLayer
from engine.pipelines.inpaint import InpaintOutputs, InpaintRequest, avoid_value, inpaint
from engine.pipelines.predict import PredictRequest, predict
from engine.tasks.generate import GenerateParams, output_grid

USABLE = [k for k in wild.KINDS if k not in wild.REJECTED and k not in wild.NO_RGB and k not in wild.NO_VALID_PIXEL]


@pytest.fixture(scope="module")
def kinds(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("wild")
    return {name: str(build(folder)) for name, build in wild.KINDS.items()}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from engine.models.demo import build_demo_models
    from engine.models.registry import ModelRegistry

    path = tmp_path_factory.mktemp("wild-models")
    build_demo_models(path)
    return ModelRegistry(path)


def _one_line(error: pytest.ExceptionInfo, path: str) -> str:
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    assert Path(path).name in message  # names the file the user gave
    return message


def _plain(path: str):
    """Grid, bands and validity as plain rasterio sees the file (the independent reference)."""
    with rasterio.open(path) as src:
        data = src.read()
        valid = src.dataset_mask() > 0
        if np.issubdtype(data.dtype, np.floating):
            valid &= ~np.isnan(data).any(axis=0)
        if src.colorinterp[0] == ColorInterp.palette and src.nodata is not None:
            valid &= data[0] != src.nodata
        return dict(crs=src.crs, transform=src.transform, width=src.width, height=src.height, data=data, valid=valid,
                    colorinterp=src.colorinterp, scales=src.scales, offsets=src.offsets, nodata=src.nodata,
                    count=src.count, dtype=src.dtypes[0], gcps=src.gcps)


# --- opening: every kind -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(wild.KINDS))
def test_every_kind_opens_or_is_refused_in_one_line(kinds, kind):
    path = kinds[kind]
    refusal = {**wild.REJECTED, **wild.NO_VALID_PIXEL}.get(kind)
    if refusal is not None:
        with pytest.raises(InputError, match=refusal) as error:
            open_raster(path)
        _one_line(error, path)
        return
    with open_raster(path) as source:
        info = source.info
        plain = _plain(path)
        assert info.source_orientation == {"south-up": "south-up", "rotated": "rotated", "gcp-only": "gcps"}.get(kind, "north-up")
        if info.source_orientation == "north-up":
            assert (info.width, info.height, info.transform) == (plain["width"], plain["height"], plain["transform"])
            assert np.array_equal(source.valid_mask(), plain["valid"])


def test_subdataset_names_are_accepted_and_a_missing_container_is_named(kinds, tmp_path):
    name = kinds["netcdf-subdataset"]
    assert name.startswith("NETCDF:")
    with open_raster(name) as source:
        assert source.info.count == 3 and source.info.crs.is_geographic
    container = name.split(":")[1]
    with pytest.raises(InputError, match="container of 2 subdatasets") as error:
        open_raster(container)
    assert "NETCDF:" in str(error.value).upper()  # the advice names the subdataset syntax ...
    suggested = str(error.value).split("e.g. ")[1].split("'")[1]
    with open_raster(suggested) as source:  # ... and the name it suggests opens
        assert source.info.width == wild.N
    missing = f'NETCDF:"{tmp_path / "absent.nc"}":rgb'
    with pytest.raises(InputError, match="absent.nc, which does not exist"):
        open_raster(missing)


# --- generate --like: only the grid is read ------------------------------------------------------


@pytest.mark.parametrize("kind", list(wild.KINDS))
def test_generate_like_takes_the_grid_of_every_kind_or_says_why_not(kinds, kind):
    path = kinds[kind]
    params = GenerateParams(prompt="a fmow satellite image")
    if kind in wild.REJECTED:
        with pytest.raises(InputError, match=wild.REJECTED[kind]) as error:
            output_grid(params, {"like": Path(path)})
        _one_line(error, path)
        return
    if kind in ("rotated", "gcp-only"):
        with pytest.raises(InputError, match="no north-up output can line up with its pixels") as error:
            output_grid(params, {"like": Path(path)})
        assert "gdalwarp" in _one_line(error, path)
        return
    grid, _ = output_grid(params, {"like": Path(path)})
    plain = _plain(path)
    assert grid.crs == plain["crs"] and (grid.width, grid.height) == (plain["width"], plain["height"])
    if kind == "south-up":  # the same pixels, rows in north-up order
        t = plain["transform"]
        assert grid.transform == Affine(t.a, 0, t.c, 0, -t.e, t.f + t.e * plain["height"])
    else:  # all-nodata, gray and band-code rasters included: only the grid matters
        assert grid.transform == plain["transform"]


def test_generate_like_an_all_nodata_raster_runs_on_its_grid(registry, kinds, tmp_path):
    from engine.cli import main

    like = kinds["all-nodata"]
    out = tmp_path / "generated.tif"
    code = main(["--models-dir", str(registry.models_dir), "generate", "--like", like, "--prompt", "a farm",
                 "--steps", "1", "-o", str(out)])
    assert code == 0
    plain = _plain(like)
    with rasterio.open(out) as result:
        assert (result.crs, result.transform, result.width, result.height) == (
            plain["crs"], plain["transform"], plain["width"], plain["height"])


# --- inpaint ---------------------------------------------------------------------------------------

SQUARE = (20, 44)  # rows and columns of the painted square


def _square_polygon(plain) -> PolygonLayer:
    t = plain["transform"]
    a, b = SQUARE
    x0, y0 = t @ (a, a)
    x1, y1 = t @ (b, b)
    return PolygonLayer([shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))], [{}], plain["crs"], "square")


def _colours(colorinterp) -> list[str]:
    return ["gray" if c in (ColorInterp.gray, ColorInterp.undefined) else c.name for c in colorinterp]


@pytest.mark.parametrize("kind", list(wild.KINDS))
def test_inpaint_every_kind(registry, kinds, kind, tmp_path):
    path = kinds[kind]
    model = registry.load("demo-satunet")
    outputs = InpaintOutputs(tmp_path / "post.tif", tmp_path / "label.tif")
    refusal = {**wild.REJECTED, **wild.NO_RGB, **wild.NO_VALID_PIXEL}.get(kind)
    if kind in wild.NOT_NORTH_UP:
        refusal = "must be north-up: warp it first"
    if refusal is not None:
        layer = PolygonLayer([shapely.box(0, 0, 1, 1)], [{}], CRS.from_epsg(4326), "anything")
        with pytest.raises(InputError, match=refusal) as error:
            inpaint(model, InpaintRequest(image=path, polygons=layer, steps=1), outputs)
        _one_line(error, path)
        assert not any(tmp_path.iterdir())  # nothing half-written
        return
    plain = _plain(path)
    request = InpaintRequest(image=path, polygons=_square_polygon(plain), disaster_type="fire", steps=1,
                             guidance_scale=1.0, feather_m=0.0, window=64, overlap=16)
    inpaint(model, request, outputs)
    with rasterio.open(outputs.image) as out:
        post, post_valid = out.read(), out.dataset_mask() > 0
        # the input's grid, pixel for pixel
        assert (out.crs, out.transform, out.width, out.height) == (plain["crs"], plain["transform"], plain["width"], plain["height"])
        if kind == "palette":  # written as the colours it shows, masked where it showed nothing
            assert out.count == 3 and out.dtypes[0] == "uint8" and out.nodata is None
            assert list(out.colorinterp) == [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
            lut = np.array([wild.PALETTE[i][:3] for i in range(len(wild.PALETTE))], "uint8")
            pre = np.moveaxis(lut[plain["data"][0]], -1, 0)
        else:  # every band (alpha included), its type, colours, nodata, scale and offset
            assert out.count == plain["count"] and out.dtypes[0] == plain["dtype"]
            # (a TIFF cannot tell "undefined" from "gray" for its first band)
            assert _colours(out.colorinterp) == _colours(plain["colorinterp"])
            assert out.scales == plain["scales"] and out.offsets == plain["offsets"]
            assert out.nodata == plain["nodata"] or (np.isnan(out.nodata) and np.isnan(plain["nodata"]))
            pre = plain["data"]
    assert np.array_equal(post_valid, plain["valid"])  # the mask is the input's: nothing new is masked
    square = np.zeros(post_valid.shape, bool)
    square[SQUARE[0]:SQUARE[1], SQUARE[0]:SQUARE[1]] = True
    outside = ~square
    assert np.array_equal(post[:, outside], pre[:, outside], equal_nan=np.issubdtype(post.dtype, np.floating))
    painted = square & plain["valid"]
    assert (post[:, painted] != pre[:, painted]).any()
    if ColorInterp.alpha in plain["colorinterp"]:  # alpha stays alpha, graded values kept
        alpha = list(plain["colorinterp"]).index(ColorInterp.alpha)
        assert np.array_equal(post[alpha], pre[alpha])
    if plain["nodata"] is not None and kind != "palette":
        image_bands = [i for i, c in enumerate(plain["colorinterp"]) if c != ColorInterp.alpha]
        values = post[image_bands][:, painted]
        assert np.isfinite(values).all()
        if not np.isnan(plain["nodata"]):
            assert not (values == plain["nodata"]).any()  # painted pixels never turn into holes


def test_painted_values_step_off_the_nodata_value():
    values = np.array([[[0, 5, 0], [255, 0, 7]]], dtype="uint8")
    where = np.array([[True, True, False], [True, True, True]])
    moved = avoid_value(values, where, 0)
    assert moved.tolist() == [[[1, 5, 0], [255, 1, 7]]]  # only inside `where`
    assert avoid_value(np.array([[[255]]], "uint8"), np.array([[True]]), 255).tolist() == [[[254]]]
    floats = avoid_value(np.array([[[-9999.0, 1.0]]], "float32"), np.array([[True, True]]), -9999.0)
    assert floats[0, 0, 0] != -9999.0 and floats[0, 0, 0] == pytest.approx(-9999.0)
    same = np.array([[[1.0]]], "float32")
    assert avoid_value(same, np.array([[True]]), float("nan")) is same


def test_inpaint_of_a_dark_scene_with_nodata_zero_paints_no_holes(registry, tmp_path):
    """A dark scene (values 1-6) with nodata 0: the model's darkest output must not become holes."""
    data = np.clip(wild.pixels(low=1, high=6), 1, 6).astype("uint8")
    path = wild.write(tmp_path / "dark.tif", data, nodata=0, colorinterp=wild.RGB)
    plain = _plain(str(path))
    outputs = InpaintOutputs(tmp_path / "post.tif", tmp_path / "label.tif")
    request = InpaintRequest(image=path, polygons=_square_polygon(plain), prompt="a burnt dark field", steps=1,
                             guidance_scale=1.0, feather_m=0.0, window=64, overlap=16, strength=0.3)
    inpaint(registry.load("demo-satunet"), request, outputs)
    with rasterio.open(outputs.image) as out:
        post, valid = out.read(), out.dataset_mask() > 0
    assert valid.all()
    a, b = SQUARE
    assert (post[:, a:b, a:b] > 0).all()


# --- predict: each kind as a frame on another grid, and as the reference --------------------------


def _lonlat(crs, x, y):
    return pyproj.Transformer.from_crs(crs.to_wkt(), "EPSG:4326", always_xy=True).transform(x, y)


def _grid_around(path: str, plain) -> OutputGrid:
    """A north-up EPSG:4326 grid over the file's footprint and a margin (the geostationary disk: a
    part of it around its centre), at about the file's pixel size."""
    with open_raster(path) as source:
        info = source.info
    cx, cy = info.transform @ (info.width / 2, info.height / 2)
    lon, lat = _lonlat(info.crs, cx, cy)
    size_m = 1.3 * wild.N * min(info.pixel_size_m)
    if info.pixel_size_m[0] > 10000:  # the full disk: 2000 km around its centre
        size_m = 2_000_000
    n = 72
    dx = size_m / n / (111320 * math.cos(math.radians(lat)))
    dy = size_m / n / 110574
    return OutputGrid(CRS.from_epsg(4326), Affine(dx, 0, lon - dx * n / 2, 0, -dy, lat + dy * n / 2), n, n)


def _source_pixel(path: str, plain, lons, lats):
    """(row, col) of the file's pixel under each lon/lat, from its own georeference."""
    if plain["transform"].is_identity and plain["gcps"][0]:
        transform, crs = rasterio.transform.from_gcps(plain["gcps"][0]), plain["gcps"][1]  # exact: affine GCPs
    else:
        transform, crs = plain["transform"], plain["crs"]
    xs, ys = pyproj.Transformer.from_crs("EPSG:4326", crs.to_wkt(), always_xy=True).transform(lons, lats)
    cols, rows = ~transform @ (np.asarray(xs), np.asarray(ys))
    return np.floor(rows).astype(int), np.floor(cols).astype(int)


@pytest.mark.parametrize("kind", USABLE)
def test_every_usable_kind_is_coregistered_as_a_frame(kinds, kind):
    path = kinds[kind]
    plain = _plain(path)
    frames = open_frames([path], dates=["2021-06-01"])
    try:
        grid = _grid_around(path, plain)
        (fraction,) = check_coverage(frames, grid)
        warped = WarpedFrame(frames[0], grid, Resampling.nearest)
        unit = warped.read_unit(Window(0, 0, grid.width, grid.height))
        warped.close()
        got_valid = ~np.ma.getmaskarray(unit).any(axis=0)
        assert 0 < fraction <= 1 and got_valid.mean() == pytest.approx(fraction, abs=0.05)
        # Independently: the file's own pixel under each grid pixel centre.
        rows, cols = np.mgrid[0:grid.height, 0:grid.width]
        lons, lats = grid.transform @ (cols.ravel() + 0.5, rows.ravel() + 0.5)
        src_rows, src_cols = _source_pixel(path, plain, lons, lats)
        inside = (src_rows >= 0) & (src_rows < plain["height"]) & (src_cols >= 0) & (src_cols < plain["width"])
        expected_valid = np.zeros(inside.shape, bool)
        expected_valid[inside] = plain["valid"][src_rows[inside], src_cols[inside]]
        expected_valid = expected_valid.reshape(grid.height, grid.width)
        assert expected_valid.any()
        # nearest neighbour: identical except where a grid pixel centre falls on a file pixel edge
        assert (got_valid == expected_valid).mean() > 0.95
        both = got_valid.ravel() & expected_valid.ravel()
        raw = plain["data"]
        if kind == "palette":
            raw = np.moveaxis(np.array([wild.PALETTE[i][:3] for i in range(5)], "uint8")[raw[0]], -1, 0)
        bands = [b - 1 for b in frames[0].bands]
        expected = frames[0].stretch.to_unit(raw[bands][:, src_rows[both], src_cols[both]][:, None, :])[:, 0, :]
        got = np.ma.getdata(unit).reshape(len(bands), -1)[:, both]
        difference = np.abs(got - expected).max(axis=0)
        if kind == "gcp-only":  # resampled twice (GCPs -> its north-up view -> the grid): close, not equal
            assert difference.mean() < 0.03
        else:  # the geostationary disk: GDAL's approximate transformer over 2000 km moves a few edges
            assert (difference < 1e-4).mean() > (0.9 if kind == "geostationary" else 0.95)
    finally:
        for frame in frames:
            frame.close()


@pytest.mark.parametrize("kind", ["gray", "band-codes", "all-nodata", "truncated", "no-crs"])
def test_frames_that_cannot_be_used_say_so_in_one_line(kinds, kind):
    path = kinds[kind]
    words = {**wild.REJECTED, **wild.NO_RGB, **wild.NO_VALID_PIXEL}[kind]
    with pytest.raises(InputError, match=words) as error:
        open_frames([path], dates=["2021-06-01"])
    _one_line(error, path)


def test_band_codes_frame_is_used_with_explicit_bands(kinds):
    frames = open_frames([kinds["band-codes"], kinds["utm"]], dates=["2021-06-01", "2021-06-02"],
                         bands=[(3, 2, 1), None])
    try:
        assert frames[0].bands == (3, 2, 1) and frames[1].bands == (1, 2, 3)
    finally:
        for frame in frames:
            frame.close()
    with pytest.raises(InputError, match="3 band choices were given for 2 frames"):
        open_frames([kinds["band-codes"], kinds["utm"]], dates=["2021-06-01", "2021-06-02"],
                    bands=[(3, 2, 1), None, None])


def test_prediction_from_frames_of_every_troublesome_kind(registry, kinds, tmp_path):
    """Alpha, GCP-only, rotated, south-up, palette, NaN-nodata and geostationary frames in one stack
    (the full disk not being the reference): one run, on the reference grid, all frames counted."""
    names = ["utm", "alpha", "gcp-only", "rotated", "south-up", "palette", "nan-nodata", "geostationary"]
    frames = [kinds[name] for name in names]
    dates = [f"2021-0{1 + i % 9}-{10 + i:02d}" for i in range(len(frames))]
    result = predict(registry.load("demo-controlnet-3d"),
                     PredictRequest(frames=frames, dates=dates, target_date="2021-12-01", steps=1, window=64, overlap=16),
                     tmp_path / "predicted.tif")
    plain = _plain(kinds["utm"])
    with rasterio.open(tmp_path / "predicted.tif") as out:
        assert (out.crs, out.transform, out.width, out.height) == (plain["crs"], plain["transform"], plain["width"], plain["height"])
        assert out.read().std() > 0
    coverage = {Path(name).name: fraction for name, _, fraction in result.frames}
    assert coverage["utm.tif"] == pytest.approx(1.0)
    assert coverage["full_disk.tif"] == pytest.approx(1.0)  # the disk covers the grid with valid pixels
    assert coverage["rgba.tif"] == pytest.approx(1 - 10 / wild.N, abs=0.02)  # its alpha-0 columns
    assert 0.5 < coverage["rotated.tif"] < 1.0  # a rotated footprint cannot cover a north-up grid
    assert coverage["palette.tif"] == pytest.approx(1 - 4 / wild.N, abs=0.02)  # its nodata rows


@pytest.mark.parametrize("kind", ["alpha", "rotated", "south-up", "gcp-only", "palette", "geostationary"])
def test_each_kind_as_the_reference_gives_its_north_up_grid(registry, kinds, kind, tmp_path):
    path = kinds[kind]
    with open_raster(path) as source:
        info = source.info
    out = tmp_path / "predicted.tif"
    predict(registry.load("demo-prepost"),
            PredictRequest(frames=[path], dates=["2021-06-01"], target_date="2021-07-01", steps=1, window=64, overlap=16),
            out)
    with rasterio.open(out) as result:
        assert (result.crs, result.transform, result.width, result.height) == (info.crs, info.transform, info.width, info.height)
        assert result.transform.b == 0 and result.transform.d == 0 and result.transform.e < 0


def test_real_rgba_uint16_frame_predicts(registry, rasters_dir, tmp_path):
    """The file the crash was found with (blue, green, red, alpha): as the only frame and reference."""
    path = rasters_dir / "RGBA.uint16.tif"
    with rasterio.open(path) as src:
        grid = OutputGrid(src.crs, src.transform @ Affine.translation(200, 150), 64, 64)
    result = predict(registry.load("demo-prepost"),
                     PredictRequest(frames=[path], dates=["2015-06-01"], target_date="2015-07-01", reference=grid,
                                    steps=1, window=64, overlap=16),
                     tmp_path / "predicted.tif")
    with rasterio.open(path) as src:
        alpha = src.read(4, window=Window(200, 150, 64, 64))
    assert result.frames[0][2] == pytest.approx((alpha > 0).mean(), abs=0.02)


# --- the command line: one line, never a traceback -------------------------------------------------


def _cli(capsys, argv):
    from engine.cli import main

    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    # What the user reads after the job's size line (printed once the inputs opened) and the wiped
    # progress bar: the error, which must be one line.
    lines = [line.split("\r")[-1] for line in err.split("\n") if not line.startswith(("gfm4d: generate with",
             "gfm4d: inpaint with", "gfm4d: predict with", "gfm4d: superres with"))]
    return code, "\n".join(line for line in lines if line.strip())


@pytest.mark.parametrize("command", ["inpaint", "predict", "generate-like", "superres"])
def test_a_cut_off_geotiff_is_one_line_in_every_command(registry, kinds, command, tmp_path, capsys, vectors_dir):
    path = kinds["truncated"]
    models = ["--models-dir", str(registry.models_dir)]
    out = str(tmp_path / "out.tif")
    argv = {
        "inpaint": ["inpaint", path, "--polygons", str(vectors_dir / "xview2_deploy_joplin" / "intersect_polys.shp"), "-o", out],
        "predict": ["predict", path, "--dates", "2020-01-01", "--target-date", "2020-02-01", "-o", out],
        "generate-like": ["generate", "--like", path, "--prompt", "x", "-o", out],
        "superres": ["superres", path, "-o", out],
    }[command]
    code, err = _cli(capsys, models + argv)
    assert code == 2
    assert err.count("\n") == 0 and "is incomplete" in err and "truncated.tif" in err
    assert not any(tmp_path.iterdir())


def test_a_damaged_block_inside_a_geotiff_is_one_line(registry, tmp_path, capsys, vectors_dir):
    """Data that is there but cannot be decoded (a corrupt tile in the middle) fails at the read."""
    path = wild.write(tmp_path / "damaged.tif", wild.pixels(n=256), colorinterp=wild.RGB, tiled=True, blockxsize=64,
                      blockysize=64, compress="deflate")
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_2_2", "TIFF", bidx=1))
        length = int(src.get_tag_item("BLOCK_SIZE_2_2", "TIFF", bidx=1))
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * length)
    with rasterio.open(path) as src:
        crs, transform = src.crs, src.transform
    x0, y0 = transform @ (100, 100)
    x1, y1 = transform @ (180, 180)
    polygons = tmp_path / "square.geojson"
    polygons.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
                        "geometry": shapely.geometry.mapping(shapely.box(x0, y1, x1, y0))}]}))
    crs_polygons = tmp_path / "square_utm.gpkg"
    from engine.geo.vectors import read_polygons, write_polygons

    layer = read_polygons(polygons)
    write_polygons(PolygonLayer(layer.geometries, layer.attributes, crs, "square"), crs_polygons)
    out = tmp_path / "out" / "post.tif"
    out.parent.mkdir()
    code, err = _cli(capsys, ["--models-dir", str(registry.models_dir), "inpaint", str(path), "--polygons",
                              str(crs_polygons), "--steps", "1", "--window", "64", "-o", str(out)])
    assert code == 2 and err.count("\n") == 0
    assert "damaged.tif cannot be read" in err and "damaged or incomplete" in err
    assert not any(out.parent.iterdir())


def test_predict_takes_bands_on_the_command_line(registry, kinds, tmp_path, capsys):
    out = tmp_path / "predicted.tif"
    base = ["--models-dir", str(registry.models_dir), "predict", kinds["band-codes"], "--dates", "2021-06-01",
            "--target-date", "2021-07-01", "--model", "demo-prepost", "--steps", "1", "--window", "64", "-o", str(out)]
    code, err = _cli(capsys, base)
    assert code == 2 and "--bands R G B" in err and "rgb_bands=" not in err and err.count("\n") == 0
    code, err = _cli(capsys, base + ["--bands", "3", "2", "1"])
    assert code == 0, err
    assert out.exists()


# --- superres: Sentinel-2 scenes whose geometry or masking is odd --------------------------------

S2_BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")


def _sentinel2(folder: Path, kind: str) -> Path:
    n = 16
    data = wild.pixels(count=len(S2_BANDS), dtype="uint16", low=300, high=4000, n=n)
    transform = Affine(10, 0, wild.X0, 0, -10, wild.Y0)
    extra: dict = {}
    if kind == "south-up":
        data = np.ascontiguousarray(data[:, ::-1, :])
        transform = Affine(10, 0, wild.X0, 0, 10, wild.Y0 - n * 10)
    elif kind == "rotated":
        a = math.radians(15)
        transform = Affine(10 * math.cos(a), 10 * math.sin(a), wild.X0, 10 * math.sin(a), -10 * math.cos(a), wild.Y0)
    elif kind == "alpha":
        alpha = np.full((1, n, n), 65535, "uint16")
        alpha[:, :, :4] = 0
        data = np.concatenate([data, alpha])
        extra = dict(photometric="MINISBLACK")
    elif kind == "nodata":
        data[:, :, :4] = 0
        extra = dict(nodata=0)

    def describe(dst):
        for index, name in enumerate(S2_BANDS, start=1):
            dst.set_band_description(index, name)

    path = wild.write(folder / f"s2_{kind}.tif", data, transform=transform, after=describe, **extra)
    if kind == "alpha":  # the last band is the alpha band (GDAL's ALPHA=YES would take the second)
        with rasterio.open(path, "r+") as dst:
            dst.colorinterp = [ColorInterp.gray] + [ColorInterp.undefined] * (len(S2_BANDS) - 1) + [ColorInterp.alpha]
        with rasterio.open(path) as check:
            assert check.colorinterp[-1] == ColorInterp.alpha
    return path


@pytest.mark.parametrize("kind", ["south-up", "rotated", "alpha", "nodata"])
def test_superres_of_odd_sentinel2_scenes(registry, kind, tmp_path):
    from engine.pipelines.superres import SuperresRequest, superres

    scene = _sentinel2(tmp_path, kind)
    with open_raster(scene, min_size=2) as source:
        info = source.info
    result = superres(registry.load("demo-superres"),
                      SuperresRequest(image=scene, date=dt.date(2021, 6, 1), steps=1, window=64, overlap=16),
                      tmp_path / "sr.tif")
    with rasterio.open(result.path) as out:
        assert out.crs == info.crs
        assert out.bounds == pytest.approx(tuple(info.bounds), abs=1e-6)  # the scene's north-up footprint
        assert out.res == pytest.approx((info.transform.a / 8, -info.transform.e / 8))
        assert out.read().std() > 0


@pytest.mark.parametrize("name, file", [
    ('NETCDF:"/data/a b.nc":sst', "/data/a b.nc"),
    ("NETCDF:/data/a.nc:sst", "/data/a.nc"),
    ('HDF5:"/data/a.h5"://group/var', "/data/a.h5"),
    ("HDF5:/data/a.h5://group/var", "/data/a.h5"),
    ('HDF4_SDS:UNKNOWN:"/data/a.hdf":0', "/data/a.hdf"),
    ("GTIFF_DIR:2:/data/a.tif", "/data/a.tif"),
    ("/data/a.tif", None),
    ("C:\\data\\a.tif", None),
    ("https://example.org/a.tif", None),
])
def test_subdataset_names_name_their_file(name, file):
    from engine.geo.raster import subdataset_file

    assert subdataset_file(name) == file


def test_inpaint_on_the_command_line_takes_a_subdataset_name(registry, kinds, tmp_path, capsys):
    name = kinds["netcdf-subdataset"]
    plain = _plain(name)
    polygons = tmp_path / "square.geojson"
    layer = _square_polygon(plain)
    polygons.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(layer.geometries[0])}]}))
    out = tmp_path / "post.tif"
    code, err = _cli(capsys, ["--models-dir", str(registry.models_dir), "inpaint", name, "--polygons", str(polygons),
                              "--steps", "1", "--window", "64", "--overlap", "16", "-o", str(out)])
    assert code == 0, err
    with rasterio.open(out) as result:
        assert result.count == 3 and result.transform == plain["transform"]
