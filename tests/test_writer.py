"""GeoTIFF outputs: COG layout, georeferencing, and atomic publication."""

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from engine.errors import Cancelled, InputError
from engine.geo.grid import grid_from_extent
from engine.geo.writer import GeoTIFFWriter, check_destination, write_preview_png


@pytest.fixture
def grid():
    return grid_from_extent((300000, 5000000, 300000 + 1300 * 2, 5000000 + 700 * 2), "EPSG:32633", resolution_m=2)


def _fill(writer, grid, block=256):
    for row in range(0, grid.height, block):
        for col in range(0, grid.width, block):
            h, w = min(block, grid.height - row), min(block, grid.width - col)
            rr, cc = np.mgrid[row : row + h, col : col + w]
            data = np.stack([(rr + cc) % 256, rr % 256, cc % 256]).astype(np.uint8)
            writer.write(data, Window(col, row, w, h))


def test_written_file_is_a_georeferenced_cog(tmp_path, grid):
    path = tmp_path / "out.tif"
    with GeoTIFFWriter(path, grid, count=3, dtype="uint8", tags={"GFM4D_TASK": "test"}) as writer:
        _fill(writer, grid)
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 32633
        assert src.transform == grid.transform
        assert (src.width, src.height) == (1300, 700)
        assert src.profile["tiled"] and src.profile["blockxsize"] == 512
        assert src.compression is not None
        assert src.overviews(1), "COG must carry internal overviews"
        assert src.tags()["GFM4D_TASK"] == "test"
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        data = src.read(window=Window(700, 300, 3, 2))
    rr, cc = np.mgrid[300:302, 700:703]
    assert np.array_equal(data[0], (rr + cc) % 256)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]


def test_mask_is_written_internally(tmp_path, grid):
    path = tmp_path / "masked.tif"
    valid = np.zeros((grid.height, grid.width), dtype=bool)
    valid[100:200, 50:150] = True
    with GeoTIFFWriter(path, grid, count=3, dtype="uint8", with_mask=True) as writer:
        _fill(writer, grid, block=grid.width)
        writer.write_mask(valid, Window(0, 0, grid.width, grid.height))
    with rasterio.open(path) as src:
        mask = src.dataset_mask()
    assert int((mask > 0).sum()) == 100 * 100
    assert not any(p.suffix == ".msk" for p in tmp_path.iterdir())


def test_failure_leaves_no_file_and_keeps_an_existing_destination(tmp_path, grid):
    path = tmp_path / "out.tif"
    path.write_bytes(b"previous result")
    with pytest.raises(Cancelled):
        with GeoTIFFWriter(path, grid, count=3, dtype="uint8") as writer:
            _fill(writer, grid)
            raise Cancelled("stop")
    assert path.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]


def test_bad_destinations_are_refused_before_work(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        check_destination(tmp_path / "missing" / "out.tif")
    with pytest.raises(InputError, match="GeoTIFF"):
        check_destination(tmp_path / "out.png")


def test_preview_png(tmp_path, grid):
    path = tmp_path / "out.tif"
    with GeoTIFFWriter(path, grid, count=3, dtype="uint8") as writer:
        _fill(writer, grid)
    png = write_preview_png(path, tmp_path / "out.png", max_size=256)
    from PIL import Image

    with Image.open(png) as image:
        assert image.size == (256, 138) and image.mode == "RGB"
