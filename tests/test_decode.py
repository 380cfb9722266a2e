"""Decoding and writing: half-precision VAE decode with a float32 redo of overflowing blocks, decoding
block sizes per device, and GeoTIFF writes on a thread of their own (same bytes, errors, cancel, bound)."""

import errno
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from diffusers import AutoencoderKL

from engine.errors import Cancelled
from engine.geo.grid import grid_from_extent
from engine.geo.queued_writer import QueuedWriter
from engine.geo.tiling import Span
from engine.geo.writer import GeoTIFFWriter
from engine.models.loading import DiffusionModel
from engine.pipelines.canvas import LatentCanvas, LatentStore, decode_blocks, decode_in_blocks, decode_to_writer
from engine.pipelines.generate import GenerateRequest, write_canvas
from engine.runtime import vae_decode
from engine.runtime.vae_decode import VaeDecoder, decode_bytes, decode_size

MARGIN = 4
BLOCK = 16  # 48 x 40 cells: 3 x 3 blocks, decoded 4 per call on the CPU


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[32, 32], layers_per_block=1,
                        latent_channels=4, norm_num_groups=32, sample_size=32)
    return vae.eval().requires_grad_(False)


def vae_model(vae: AutoencoderKL, dtype: torch.dtype = torch.float32) -> DiffusionModel:
    """A loaded model as far as decoding goes: only its VAE is used."""
    return DiffusionModel(info=SimpleNamespace(name="tiny-vae"), unet=None, vae=vae, text_encoder=None, tokenizer=None,
                          scheduler_config={}, device=torch.device("cpu"), dtype=dtype)


@pytest.fixture(scope="module")
def vae():
    return tiny_vae()


@pytest.fixture
def half_on_cpu(monkeypatch):
    """The CUDA-only switch forced on, so the half-precision path runs here (the CPU has float16 convolutions)."""
    monkeypatch.setenv("GFM4D_VAE_HALF", "1")


def _grid():
    return grid_from_extent((600000, 5100000, 600000 + 96 * 2, 5100000 + 80 * 2), "EPSG:32632", resolution_m=2)


def _canvas_and_store(model, hot: Span | None = None):
    canvas = LatentCanvas.over(_grid(), model.vae_scale_factor, model.latent_channels, 8)
    store = LatentStore(canvas)
    latents = torch.randn((1, canvas.channels, canvas.height, canvas.width), generator=torch.Generator().manual_seed(3))
    if hot is not None:  # far outside what the decoder saw in training: its activations pass float16's range
        latents[(slice(None), slice(None)) + hot.slices] *= 3e4
    store.write(Span(0, 0, canvas.height, canvas.width), latents)
    return canvas, store


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


# --- half precision --------------------------------------------------------------------------------


def test_an_overflowing_block_is_decoded_again_in_float32(vae, half_on_cpu):
    decoder = VaeDecoder.for_model(vae, torch.device("cpu"), torch.float16)
    assert decoder.fast is not None and decoder.fast.dtype == torch.float16 and decoder.fast.encoder is None
    assert vae.encoder is not None and vae.dtype == torch.float32, "the loaded VAE is left as it was"
    latents = torch.randn((3, 4, 12, 12), generator=torch.Generator().manual_seed(1))
    latents[1] *= 3e4
    with torch.no_grad():
        half_alone = decoder.fast.decode(latents.half()).sample
        float32 = vae.decode(latents).sample
        redone = vae.decode(latents[1:2]).sample[0]
    assert not torch.isfinite(half_alone[1]).all(), "the test's block must overflow in float16"
    assert torch.isfinite(float32).all()

    images = decoder(latents)

    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    assert torch.equal(images[1], redone), "the overflowing block is the float32 decode"
    torch.testing.assert_close(images[[0, 2]], float32[[0, 2]], atol=2e-2, rtol=0)  # the others stay half precision
    assert not torch.equal(images[0], float32[0])
    assert (decoder.decoded, decoder.fallbacks) == (3, 1)


def test_a_half_precision_vae_gets_a_float32_copy_at_its_first_overflow(half_on_cpu):
    half_vae = tiny_vae(seed=2).half()
    decoder = VaeDecoder.for_model(half_vae, torch.device("cpu"), torch.float16)
    assert decoder.fast is half_vae
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(4))
    decoder(latents[:1])
    assert decoder._exact is None, "no float32 copy while nothing overflows"
    latents[1] *= 3e4
    images = decoder(latents)
    assert decoder.exact.dtype == torch.float32 and half_vae.dtype == torch.float16
    with torch.no_grad():
        assert torch.equal(images[1], decoder.exact.decode(latents[1:2]).sample[0])
    assert torch.isfinite(images).all() and decoder.fallbacks == 1


def test_half_decoding_is_for_half_precision_models_on_cuda_only(vae, monkeypatch):
    monkeypatch.delenv("GFM4D_VAE_HALF", raising=False)
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference = vae.decode(latents).sample
    for dtype in (torch.float32, torch.bfloat16):  # the CPU's half type: decoding stays float32 there
        decoder = VaeDecoder.for_model(vae, torch.device("cpu"), dtype)
        assert decoder.fast is None
        assert torch.equal(decoder(latents), reference)
    for dtype in (torch.float16, torch.bfloat16):  # a half-precision model on CUDA decodes in float16
        assert VaeDecoder.for_model(vae, torch.device("cuda"), dtype).fast.dtype == torch.float16
    assert VaeDecoder.for_model(vae, torch.device("cuda"), torch.float32).fast is None
    monkeypatch.setenv("GFM4D_VAE_HALF", "0")
    assert VaeDecoder.for_model(vae, torch.device("cuda"), torch.float16).fast is None, "the switch turns it off"


def test_half_decode_of_a_canvas_matches_float32_where_it_overflowed(vae, half_on_cpu, tmp_path):
    hot = Span(21, 21, 4, 4)  # inside the centre block's core, beyond the other blocks' margins
    model32, model16 = vae_model(vae), vae_model(vae, torch.float16)
    canvas, store = _canvas_and_store(model32, hot)
    pairs = decode_blocks(canvas, BLOCK, MARGIN)
    float32 = dict(decode_in_blocks(model32, store.read, pairs))
    half = dict(decode_in_blocks(model16, store.read, pairs))
    assert model16.vae_decoder.fallbacks == 1 and model16.vae_decoder.decoded == len(pairs)
    for core in float32:
        assert torch.isfinite(half[core]).all()
        if core.intersection(hot) is not None:
            torch.testing.assert_close(half[core], float32[core], atol=1e-5, rtol=0)
        else:
            torch.testing.assert_close(half[core], float32[core], atol=2e-2, rtol=0)


# --- block size by device -------------------------------------------------------------------------


def test_cpu_keeps_its_block_size_and_a_request_wins(vae):
    assert decode_size(vae, torch.device("cpu"), MARGIN) == (vae_decode.CPU_DECODE_BLOCK, vae_decode.CPU_DECODE_BATCH)
    assert decode_size(vae, torch.device("cpu"), MARGIN, block=24)[0] == 24


@pytest.mark.parametrize("total_gib", [8, 24, 80, 141])
def test_gpu_block_is_the_largest_whose_float32_decode_fits_its_share(monkeypatch, total_gib):
    config = SimpleNamespace(block_out_channels=[128, 256, 512, 512])  # SD's VAE
    total = total_gib * 2**30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=total))
    block, batch = decode_size(SimpleNamespace(config=config), torch.device("cuda"), 8)
    share = vae_decode.GPU_DECODE_SHARE * total
    fits = [c for c in vae_decode.GPU_DECODE_BLOCKS if decode_bytes(config, c + 16, torch.float32) <= share]
    assert block == (max(fits) if fits else min(vae_decode.GPU_DECODE_BLOCKS))
    assert block >= vae_decode.CPU_DECODE_BLOCK
    assert 1 <= batch <= vae_decode.GPU_DECODE_BATCH
    assert batch == 1 or batch * decode_bytes(config, block + 16, torch.float16) <= share
    assert decode_size(SimpleNamespace(config=config), torch.device("cuda"), 8, block=32)[0] == 32


def test_a_larger_gpu_never_picks_a_smaller_block(monkeypatch):
    config = SimpleNamespace(block_out_channels=[128, 256, 512, 512])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    chosen = []
    for gib in (4, 12, 16, 24, 40, 48, 80, 141):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d, gib=gib: SimpleNamespace(total_memory=gib * 2**30))
        chosen.append(decode_size(SimpleNamespace(config=config), torch.device("cuda"), 8)[0])
    assert chosen == sorted(chosen) and chosen[0] < chosen[-1]


# --- writing on a thread --------------------------------------------------------------------------


def _write(model, folder, name, queue_depth, cancel=None, on_block=None, mask=True):
    canvas, store = _canvas_and_store(model)
    output = folder / name
    with GeoTIFFWriter(output, canvas.grid, count=3, dtype="uint8", with_mask=mask) as writer:
        decode_to_writer(model, canvas, store, writer, block=BLOCK, margin=MARGIN, queue_depth=queue_depth,
                         valid_mask=(lambda w: np.arange(int(w.width))[None] % 3 > 0) if mask else None,
                         on_block=on_block, cancel=cancel)
    return output


def test_queued_writes_give_the_same_bytes_as_direct_ones(vae, tmp_path):
    model = vae_model(vae)
    direct = _write(model, tmp_path, "direct.tif", queue_depth=None)
    for depth in (1, 3):
        queued = _write(model, tmp_path, f"queued{depth}.tif", queue_depth=depth)
        assert queued.read_bytes() == direct.read_bytes()
    with rasterio.open(direct) as src:
        assert src.read().std() > 0 and (src.read_masks(1) == 0).any()


def _writer_threads():
    return [t for t in threading.enumerate() if t.name == "gfm4d-raster-writer"]


def test_a_failing_write_fails_the_job_and_leaves_nothing(vae, tmp_path, monkeypatch):
    model = vae_model(vae)
    original = GeoTIFFWriter.write
    calls = []

    def disk_full(self, data, window):
        calls.append(window)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, data, window)

    monkeypatch.setattr(GeoTIFFWriter, "write", disk_full)
    request = GenerateRequest(grid=_grid(), prompt="x", decode_block_cells=8, decode_margin_cells=MARGIN)
    canvas, store = _canvas_and_store(model)
    blocks = []
    with pytest.raises(OSError, match="No space left") as failure:
        write_canvas(model, request, canvas, store, tmp_path / "full.tif", {}, on_block=lambda: blocks.append(1))
    assert failure.value.errno == errno.ENOSPC
    assert len(blocks) < len(decode_blocks(canvas, 8, MARGIN)), "the job stopped early"
    assert _files(tmp_path) == [], "no output and no scratch file"
    assert not _writer_threads()


def test_cancel_during_decoding_leaves_nothing(vae, tmp_path):
    model = vae_model(vae)
    done = []
    with pytest.raises(Cancelled):
        _write(model, tmp_path, "cancelled.tif", queue_depth=2, on_block=lambda: done.append(1), cancel=lambda: len(done) >= 4)
    assert 0 < len(done) < len(decode_blocks(LatentCanvas.over(_grid(), 2, 4, 8), BLOCK, MARGIN)), "cancelled mid-way"
    assert _files(tmp_path) == []
    assert not _writer_threads()


def test_a_decoding_error_drops_the_queued_writes(tmp_path):
    class Recorder:
        def __init__(self):
            self.written = []

        def write(self, data, window):
            time.sleep(0.01)
            self.written.append(window)

    recorder = Recorder()
    with pytest.raises(RuntimeError, match="decoder"):
        with QueuedWriter(recorder, depth=4) as queued:
            for index in range(5):
                queued.write(np.zeros((1, 1, 1)), index)
            raise RuntimeError("decoder failed")
    assert len(recorder.written) < 5 and recorder.written == list(range(len(recorder.written)))
    assert not _writer_threads()


@pytest.mark.parametrize("depth", [1, 3])
def test_blocks_in_flight_never_exceed_the_queue_bound(depth):
    """Memory stays flat in the raster's size: handed-over blocks not yet written <= depth + the one being written."""
    handed, written, in_flight = [0], [0], []

    class SlowWriter:
        def write(self, data, window):
            time.sleep(0.002)  # a disk slower than the producer, so the queue fills
            written[0] += 1

    with QueuedWriter(SlowWriter(), depth=depth) as queued:
        for index in range(40):
            queued.write(np.zeros((3, 8, 8), np.uint8), index)
            handed[0] += 1
            in_flight.append(handed[0] - written[0])
    assert written[0] == 40
    assert max(in_flight) <= depth + 1
