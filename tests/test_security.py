"""Attacks on a real engine process on 127.0.0.1: files that point elsewhere, web pages, tokens, leaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import requests
from rasterio.transform import Affine

from engine.server.launcher import start_engine

UTM = "EPSG:32632"
ORIGIN = (600000.0, 5100000.0)
SECRET_VALUE = 213
PROMPT = "a fmow satellite image of a farm in italy"


def write_raster(path: Path, value: int | None = None, size: int = 64) -> Path:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (3, size, size), dtype=np.uint8) if value is None else np.full((3, size, size), value, np.uint8)
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=UTM,
                   transform=Affine(2.0, 0.0, ORIGIN[0], 0.0, -2.0, ORIGIN[1] + 2 * size))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    return path


def vrt_of(source: Path, size: int = 64) -> str:
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="0">{source}</SourceFilename>'
        f"<SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
        for b in (1, 2, 3)
    )
    return (f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>{UTM}</SRS>'
            f"<GeoTransform>{ORIGIN[0]}, 2, 0, {ORIGIN[1] + 2 * size}, 0, -2</GeoTransform>{bands}</VRTDataset>")


def polygons_geojson(path: Path) -> Path:
    x, y = ORIGIN[0] + 20, ORIGIN[1] + 20
    ring = [[x, y], [x + 60, y], [x + 60, y + 60], [x, y + 60], [x, y]]
    path.write_text(json.dumps({
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32632"}},
        "features": [{"type": "Feature", "properties": {"damage": "destroyed"}, "geometry": {"type": "Polygon", "coordinates": [ring]}}],
    }))
    return path


def post(url: str, params: dict, files: dict | None = None, **kw) -> requests.Response:
    if files is None:
        return requests.post(f"{url}/v1/jobs", json=params, timeout=30, **kw)
    opened = {name: (Path(p).name, open(p, "rb")) for name, p in files.items()}
    try:
        return requests.post(f"{url}/v1/jobs", data={"params": json.dumps(params)}, files=opened, timeout=30, **kw)
    finally:
        for _, handle in opened.values():
            handle.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("files")
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    secret = write_raster(outside / "secret.tif", SECRET_VALUE)
    (root / "vrt").mkdir()
    vrt = root / "vrt" / "pointer.vrt"
    vrt.write_text(vrt_of(secret))
    disguised = root / "vrt" / "pointer.tif"  # a VRT under a GeoTIFF's name
    disguised.write_text(vrt_of(secret))
    (allowed / "pointer.vrt").write_text(vrt_of(secret))
    # A real GeoTIFF whose .aux.xml sidecar swaps in "overviews" read from a file outside every allowed folder.
    write_raster(allowed / "with_sidecar.tif")
    (allowed / "with_sidecar.tif.aux.xml").write_text(
        f'<PAMDataset><Metadata domain="OVERVIEWS"><MDI key="OVERVIEW_FILE">{vrt}</MDI></Metadata></PAMDataset>')
    write_raster(allowed / "plain.tif")
    (allowed / "escape.tif").symlink_to(secret)
    polygons = polygons_geojson(root / "polygons.geojson")
    ogr_vrt = root / "vrt" / "polygons.vrt"
    ogr_vrt.write_text(f'<OGRVRTDataSource><OGRVRTLayer name="p"><SrcDataSource>{polygons}</SrcDataSource></OGRVRTLayer></OGRVRTDataSource>')
    zipped = root / "vrt" / "polygons.zip"
    with zipfile.ZipFile(zipped, "w") as bundle:
        bundle.write(ogr_vrt, "polygons.vrt")
    escaping_zip = root / "vrt" / "escape.zip"
    with zipfile.ZipFile(escaping_zip, "w") as bundle:
        bundle.writestr("../../polygons.geojson", polygons.read_text())
    return SimpleNamespace(root=root, allowed=allowed, outside=outside, secret=secret, vrt=vrt, disguised=disguised,
                           polygons=polygons, ogr_vrt=ogr_vrt, zipped=zipped, escaping_zip=escaping_zip,
                           image=write_raster(root / "image.tif"))


@pytest.fixture(scope="module")
def engine(models_dir, files, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    process = start_engine(models_dir, work, allowed_dirs=[files.allowed], env={"GFM4D_DEVICE": "cpu"})
    yield SimpleNamespace(url=process.url, port=process.port, work=work, models=models_dir)
    process.stop()


def job_count(url: str) -> int:
    return requests.get(f"{url}/v1/jobs", timeout=10).json()["total"]


# --- files that point at other files ------------------------------------------------------------------


def test_a_vrt_upload_pointing_outside_every_allowed_folder_is_refused(engine, files):
    with rasterio.open(files.vrt) as dataset:  # what GDAL would have handed the job: the secret's pixels
        assert dataset.read().max() == SECRET_VALUE
    before = job_count(engine.url)
    inpaint = {"task": "inpaint", "steps": 2}
    for image in (files.vrt, files.disguised):
        response = post(engine.url, inpaint, files={"image": image, "polygons": files.polygons})
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert "hold their own data" in detail and f"the uploaded image file {image.name!r}" in detail, detail
        assert str(files.secret) not in detail and str(engine.work) not in detail
    like = {"task": "generate", "prompt": PROMPT, "steps": 2}
    response = post(engine.url, like, files={"like": files.vrt})
    assert response.status_code == 422 and "hold their own data" in response.json()["detail"], response.text
    assert job_count(engine.url) == before, "nothing was queued"
    assert not any((engine.work / ".incoming").iterdir()), "refused uploads are removed"


def test_vector_files_that_point_elsewhere_are_refused(engine, files):
    inpaint = {"task": "inpaint", "steps": 2}
    for polygons, words in ((files.ogr_vrt, "hold their own data"), (files.zipped, "hold their own data"),
                            (files.escaping_zip, "outside the zip")):
        response = post(engine.url, inpaint, files={"image": files.image, "polygons": polygons})
        assert response.status_code == 422, response.text
        assert words in response.json()["detail"], response.text


def test_server_paths_that_point_elsewhere_are_refused(engine, files):
    like = {"task": "generate", "prompt": PROMPT, "steps": 2}
    for name, words, status in (("pointer.vrt", "hold their own data", 422), ("with_sidecar.tif", "sidecar", 422),
                                ("escape.tif", "outside the folders this engine may read", 403)):
        path = str(files.allowed / name)
        response = requests.post(f"{engine.url}/v1/jobs", json={**like, "paths": {"like": path}}, timeout=30)
        assert response.status_code == status, (name, response.text)
        detail = response.json()["detail"]
        assert words in detail, (name, detail)
        assert str(files.outside) not in detail and str(files.secret) not in detail, "no symlink target is revealed"
        assert path in detail, "the path is named as the client gave it"
    plain = requests.post(f"{engine.url}/v1/jobs", json={**like, "paths": {"like": str(files.allowed / "plain.tif")}}, timeout=30)
    assert plain.status_code == 202, plain.text
    requests.post(f"{engine.url}/v1/jobs/{plain.json()['id']}/cancel", timeout=10)


# --- web pages ----------------------------------------------------------------------------------------


def test_a_web_page_cannot_drive_a_local_engine(engine):
    url, port = engine.url, engine.port
    before = job_count(url)
    form = {"params": json.dumps({"task": "generate", "prompt": PROMPT, "extent": [0, 0, 128, 128], "crs": UTM,
                                  "resolution_m": 2})}
    attacks = [
        {"Origin": "https://evil.example"},  # a cross-site form post or fetch
        {"Origin": "null"},  # a sandboxed frame or a file:// page
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": f"http://127.0.0.1:{port + 1}"},  # another local web app
        {"Host": f"evil.example:{port}"},  # DNS rebinding: the attacker's name resolving to 127.0.0.1
        {"Host": "127.0.0.1.nip.io"},
    ]
    for headers in attacks:
        for method, path, kwargs in (("POST", "/v1/jobs", {"data": form}), ("GET", "/v1/jobs", {}),
                                     ("DELETE", "/v1/jobs/x", {}), ("GET", "/v1/health", {})):
            response = requests.request(method, url + path, headers=headers, timeout=10, **kwargs)
            assert response.status_code == 403, (headers, method, path, response.status_code)
            assert "access-control-allow-origin" not in {k.lower() for k in response.headers}
    preflight = requests.options(f"{url}/v1/jobs", timeout=10, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 403 and "access-control-allow-origin" not in {k.lower() for k in preflight.headers}
    assert job_count(url) == before, "no job was queued by any of them"

    # What a user's own tools send passes: no Origin, loopback names, the engine's own origin.
    for headers in ({}, {"Host": f"localhost:{port}"}, {"Host": f"127.0.0.1:{port}"}, {"Host": f"[::1]:{port}"},
                    {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}):
        response = requests.get(f"{url}/v1/health", headers=headers, timeout=10)
        assert response.status_code == 200, (headers, response.text)
        assert response.headers["x-content-type-options"] == "nosniff"


def test_the_docs_page_loads_nothing_from_elsewhere(engine):
    page = requests.get(f"{engine.url}/docs", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script" not in page.text.lower() and "cdn" not in page.text.lower()
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "/v1/jobs/{job_id}/cancel" in page.text and "openapi.json" in page.text
    assert requests.get(f"{engine.url}/redoc", timeout=10).status_code == 404
    assert requests.get(f"{engine.url}/openapi.json", timeout=10).status_code == 200


# --- tokens and leaks ---------------------------------------------------------------------------------


def test_a_trivially_short_token_is_refused_beyond_loopback():
    from engine.server.security import MIN_TOKEN_LENGTH, InsecureBind, check_bind

    for token in ("secret", "1234", "x" * (MIN_TOKEN_LENGTH - 1), " " * 40):
        with pytest.raises(InsecureBind):
            check_bind("0.0.0.0", token)
    check_bind("0.0.0.0", "k3Vb9-Q2xLw8PzR4mN7aT1")
    check_bind("127.0.0.1", None)
    env = {k: v for k, v in os.environ.items() if k != "GFM4D_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "engine.server", "--host", "0.0.0.0", "--port", "1", "--token", "abc"],
                          env=env, capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2 and "too short" in done.stderr and "Traceback" not in done.stderr


def test_no_response_names_the_engines_own_folders(engine, files):
    private = [str(engine.work), str(engine.models), os.path.realpath(engine.work), os.path.realpath(engine.models),
               str(Path(__file__).resolve().parents[1])]
    base = {"task": "generate", "prompt": PROMPT, "extent": [ORIGIN[0], ORIGIN[1], ORIGIN[0] + 128, ORIGIN[1] + 128],
            "crs": UTM, "resolution_m": 2.0, "steps": 2}
    responses = [
        requests.post(f"{engine.url}/v1/jobs", json={**base, "model": "no-such-model"}, timeout=10),
        requests.post(f"{engine.url}/v1/jobs", json={**base, "model": "../../etc"}, timeout=10),
        requests.post(f"{engine.url}/v1/jobs", json={**base, "model": "demo-superres"}, timeout=10),
        post(engine.url, {"task": "inpaint"}, files={"image": files.root / "polygons.geojson", "polygons": files.polygons}),
        post(engine.url, {"task": "inpaint"}, files={"image": files.image, "polygons": files.image}),
        requests.get(f"{engine.url}/v1/jobs/{'a' * 40}/results/image", timeout=10),
    ]
    for response in responses:
        assert 400 <= response.status_code < 500, response.text
        for folder in private:
            assert folder not in response.text, (folder, response.text)
