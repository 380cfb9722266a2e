"""Runtime choices: dtype, per-model options, attention precision, layout, compile, memory budget, OOM fallback."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from engine import config
from engine.errors import InputError, ModelError
from engine.geo.tiling import plan_windows
from engine.pipelines.sampling import CanvasJob, denoise_canvas, encode_prompt, position_noise
from engine.runtime import device as runtime_device
from engine.runtime.device import BatchSize, choose_dtype, fit_batch_size, runtime_options, window_bytes
from engine.runtime.onnx_attention import OnnxAttnProcessor
from engine.runtime.precision import compile_module, set_attention, to_channels_last, vae_dtype

REPO = Path(__file__).resolve().parents[1]
ENV = ("GFM4D_BACKEND", "GFM4D_DTYPE", "GFM4D_COMPILE", "GFM4D_CHANNELS_LAST", "GFM4D_SCHEDULER")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from engine.models.demo import build_demo_models
    from engine.models.registry import ModelRegistry

    models_dir = tmp_path_factory.mktemp("runtime-models")
    build_demo_models(models_dir)
    return ModelRegistry(models_dir)


@pytest.fixture(scope="module")
def model(registry):
    return registry.load("demo-satunet")


# --- dtype and options -------------------------------------------------------------------------


def test_dtype_defaults_and_overrides(monkeypatch):
    assert choose_dtype("cpu") is torch.float32
    assert choose_dtype("cuda") is torch.float16  # the default needs no GPU to be decided
    assert choose_dtype("cpu", "bf16") is torch.bfloat16
    assert choose_dtype("cuda", "float32") is torch.float32
    with pytest.raises(InputError, match="float16 is not supported on the CPU"):
        choose_dtype("cpu", "float16")
    with pytest.raises(InputError, match="use float32, float16 or bfloat16"):
        choose_dtype("cpu", "double-ish")
    monkeypatch.setenv("GFM4D_DTYPE", "bfloat16")
    assert config.dtype_for(torch.device("cpu")) is torch.bfloat16


def test_options_on_cuda_and_cpu_and_their_precedence(monkeypatch):
    cpu, cuda = runtime_options("cpu"), runtime_options("cuda")
    assert (cpu.backend, cpu.channels_last, cpu.scheduler, cpu.compile_backend) == ("torch", False, None, None)
    assert (cuda.channels_last, cuda.scheduler) == (True, "dpm++")
    assert runtime_options("cpu", {"backend": "onnx"}).backend == "onnx"  # the model's gfm4d.json
    monkeypatch.setenv("GFM4D_BACKEND", "torch")
    assert runtime_options("cpu", {"backend": "onnx"}).backend == "torch"  # the environment beats the model
    assert runtime_options("cpu", {"backend": "torch"}, backend="onnx").backend == "onnx"  # an argument beats both
    monkeypatch.setenv("GFM4D_BACKEND", "tensorrt")
    with pytest.raises(ModelError, match="unknown backend 'tensorrt' \\(GFM4D_BACKEND\\)"):
        runtime_options("cpu")
    monkeypatch.delenv("GFM4D_BACKEND")
    with pytest.raises(ModelError, match="'backend' in /x/gfm4d.json"):
        runtime_options("cpu", {"backend": "trt"}, source="/x/gfm4d.json")
    monkeypatch.setenv("GFM4D_SCHEDULER", "model")
    monkeypatch.setenv("GFM4D_CHANNELS_LAST", "0")
    monkeypatch.setenv("GFM4D_COMPILE", "1")
    cuda = runtime_options("cuda")
    assert (cuda.scheduler, cuda.channels_last, cuda.compile_backend) == (None, False, "inductor")
    monkeypatch.setenv("GFM4D_COMPILE", "0")
    assert runtime_options("cuda").compile_backend is None


def test_default_scheduler_is_dpm_solver_when_the_runtime_says_so(model):
    assert isinstance(model.make_scheduler(), DDIMScheduler)  # CPU: the model's own
    fast = dataclasses.replace(model, default_scheduler="dpm++")
    made = fast.make_scheduler()
    assert isinstance(made, DPMSolverMultistepScheduler) and made.config.prediction_type == "v_prediction"
    assert isinstance(fast.make_scheduler("ddim"), DDIMScheduler)  # a request's choice still wins


def test_unknown_default_scheduler_fails_at_load(registry, monkeypatch):
    monkeypatch.setenv("GFM4D_SCHEDULER", "fastest")
    with pytest.raises(ModelError, match="unknown scheduler 'fastest'"):
        registry.load("demo-sd", backend="torch", dtype=torch.float32, device="cpu")


# --- precision ---------------------------------------------------------------------------------


def test_half_model_keeps_its_vae_in_float32_unless_the_vae_is_an_fp16_fix():
    assert vae_dtype(torch.float16, {}) is torch.float32  # diffusers' force_upcast defaults to true
    assert vae_dtype(torch.bfloat16, {"force_upcast": True}) is torch.float32
    assert vae_dtype(torch.float16, {"force_upcast": False}) is torch.float16
    assert vae_dtype(torch.float32, {"force_upcast": True}) is torch.float32


def test_upcast_attention_keeps_half_precision_finite():
    """SD-2.1's failure: half-precision attention scores overflow to inf, softmax gives NaN (black images)."""
    torch.manual_seed(0)
    layer = Attention(query_dim=64, heads=1, dim_head=64, upcast_attention=True).eval()
    x = torch.randn(1, 16, 64) * 400  # q.k / 8 reaches ~1e6, beyond float16's 65504
    reference = layer(x)
    half = layer.half()
    half.upcast_attention = False
    half.set_processor(AttnProcessor())
    assert not torch.isfinite(half(x.half())).all()  # what happens without the upcast
    half.upcast_attention = True
    for processor in (AttnProcessor(), AttnProcessor2_0(), OnnxAttnProcessor()):  # float32 scores / SDPA's float32 math
        half.set_processor(processor)
        out = half(x.half()).float()
        assert torch.isfinite(out).all()
        assert (out - reference).abs().max() < 1e-2 * reference.abs().max()


def test_attention_processors(model):
    unet = model.unet
    assert set_attention(unet, torch.float32) == 0
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    # A graph for ONNX gets the fused-attention export processor in every layer. The demo UNet has
    # one transformer in its down block, one in the mid block and two in its up block
    # (layers_per_block + 1), each with self- and cross-attention: 8 layers.
    assert set_attention(unet, torch.float16, for_export=True) == 8
    assert all(isinstance(p, OnnxAttnProcessor) for p in unet.attn_processors.values())
    set_attention(unet, torch.float32)
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())


def test_channels_last_changes_layout_not_results(registry):
    model = registry.load("demo-controlnet-3d")
    controlnet = model.controlnet
    conv2d = controlnet.conv_in
    conv3d = controlnet.controlnet_cond_embedding.conv_in
    torch.manual_seed(1)
    x, text = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32)
    cond, metadata = torch.rand(2, 3, 3, 128, 128), torch.rand(2, 7) * 1000
    before = controlnet(x, 10, text, cond, metadata=metadata)
    try:
        to_channels_last(controlnet)
        assert conv2d.weight.is_contiguous(memory_format=torch.channels_last)
        assert not conv2d.weight.is_contiguous()
        assert conv3d.weight.is_contiguous()  # Conv3d weights are left alone (no 5-D channels_last here)
        after = controlnet(x, 10, text, cond, metadata=metadata)
        for a, b in zip((*before[0], before[1]), (*after[0], after[1])):
            assert torch.allclose(a, b, atol=1e-5)
    finally:
        registry.unload("demo-controlnet-3d")


def test_compile_in_place_keeps_the_module_and_its_output(registry):
    from engine.models.layout import SATUNET
    from engine.models.loading import build_unet

    unet = build_unet(registry.get("demo-satunet").unet_path, SATUNET).eval()
    torch.manual_seed(2)
    x, text, metadata = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32), torch.rand(2, 7) * 1000
    with torch.no_grad():
        reference = unet(x, 10, text, metadata=metadata).sample
        compile_module(unet, "eager")  # inductor needs a C compiler; eager checks the wiring quickly
        out = unet(x, 10, text, metadata=metadata).sample
    assert unet._compiled_call_impl is not None and unet.config.use_metadata
    assert torch.allclose(out, reference, atol=1e-5)
    with pytest.raises(ModelError, match="unknown torch.compile backend 'turbo'"):
        compile_module(unet, "turbo")


# --- memory ------------------------------------------------------------------------------------


def test_window_bytes_follows_the_documented_estimate(model):
    # Demo UNet: channels (32, 64), one layer per block; 16 x 16 cells, float32, guidance (2 passes).
    # skips: (1+1)*32*256 + (1+1)*64*256/4 = 24576; working set: 16*32*256 = 131072 elements;
    # x 4 bytes x 2 (slack) x 2 passes.
    assert window_bytes(model.unet.config, 16, 16, torch.float32, passes=2) == (24576 + 131072) * 4 * 2 * 2
    # SD-2.1 at 512 px (64 x 64 latents) in float16 with guidance: ~0.2 GB per window.
    sd21 = type("Config", (), {"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2})
    assert 1e8 < window_bytes(sd21, 64, 64, torch.float16, passes=2) < 4e8


def test_batch_size_follows_free_memory():
    assert fit_batch_size(4, per_window=100, free=None) == 4  # CPU: the request
    assert fit_batch_size(None, per_window=100, free=None) == runtime_device.DEFAULT_BATCH
    # 1000 bytes free, 15 % kept back: 850 // 100 = 8 windows fit.
    assert fit_batch_size(4, per_window=100, free=1000) == 4
    assert fit_batch_size(32, per_window=100, free=1000) == 8
    assert fit_batch_size(None, per_window=100, free=1000) == 8
    assert fit_batch_size(None, per_window=1, free=10**9) == runtime_device.AUTO_BATCH_CAP
    assert fit_batch_size(8, per_window=10**9, free=1000) == 1  # never below one


class TightGPU:
    """A UNet that runs out of memory above `limit` rows per call, as a GPU would."""

    def __init__(self, unet, limit: int):
        self.unet, self.limit, self.rows = unet, limit, []

    def __call__(self, x, *args, **kwargs):
        self.rows.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return self.unet(x, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.__dict__["unet"], name)


def _five_window_job(model):
    windows = plan_windows(16, 16 + 4 * 12, 16, 4)  # five 16-cell windows in a row, 4 cells of overlap
    assert len(windows) == 5
    metadata = [np.full(7, 100.0 * i, dtype=np.float32) for i in range(len(windows))]
    from engine.geo.tiling import Span

    noise = position_noise(3, Span(0, 0, 16, 64), 4)
    return CanvasJob(noise=noise, windows=windows, window_metadata=metadata, overlap=4)


def test_out_of_memory_halves_the_batch_and_gives_the_same_latents(model):
    text = encode_prompt(model, "a fmow satellite image", "", 3.0)
    job = _five_window_job(model)

    def run(m, batch):
        return denoise_canvas(m, m.make_scheduler(), job, text, num_inference_steps=3, guidance_scale=3.0,
                              batch_size=batch, generator=torch.Generator().manual_seed(0))

    reference = run(model, 1)
    tight = TightGPU(model.unet, limit=4)  # two windows (x2 guidance halves) fit, four do not
    latents = run(dataclasses.replace(model, unet=tight), 4)
    assert torch.allclose(latents, reference, atol=1e-5)
    # Step 1: 5 windows at 4 per call are two calls of 3 (6 rows), which fail; the step is redone at
    # 2 per call (the last call padded to 2 windows), and steps 2 and 3 keep the halved size.
    assert tight.rows == [6, 4, 4, 4] + [4, 4, 4] * 2


def test_out_of_memory_with_one_window_fails_the_job(model):
    text = encode_prompt(model, "a fmow satellite image", "", 3.0)
    tight = TightGPU(model.unet, limit=1)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        denoise_canvas(dataclasses.replace(model, unet=tight), model.make_scheduler(), _five_window_job(model), text,
                       num_inference_steps=2, guidance_scale=3.0, batch_size=4)
    assert tight.rows == [6, 4, 2]  # 3 (5 windows in two calls), 2, 1 windows tried, then given up


def test_batch_size_object_refuses_to_go_below_one():
    size = BatchSize(3)
    error = torch.cuda.OutOfMemoryError("simulated")
    size.shrink(error)
    assert size.value == 1
    with pytest.raises(torch.cuda.OutOfMemoryError):
        size.shrink(error)


# --- the benchmark -----------------------------------------------------------------------------


def test_speed_benchmark_demo_run_produces_its_table(tmp_path):
    output = tmp_path / "performance.md"
    output.write_text("# Performance\n\nbefore\n<!-- speed-table:start -->\nold\n<!-- speed-table:end -->\nafter\n")
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "speed.py"), "--demo", "--quick", "--work", str(tmp_path / "work"),
         "--output", str(output), "--backends", "torch,onnx"],
        check=False, capture_output=True, text=True, timeout=900, cwd=tmp_path,  # ~1 min on 2 idle cores
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = output.read_text()
    assert text.startswith("# Performance\n\nbefore\n") and text.rstrip().endswith("after") and "old" not in text
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    assert header[3:] == ["diffusers windows/s", "GFM4D torch windows/s", "GFM4D torch / diffusers",
                          "GFM4D onnx windows/s", "GFM4D onnx / diffusers"]
    rows = {}
    for line in lines:
        cells = [c.strip() for c in line.split("|")[1:-1]]
        rows[cells[0] if len(cells) < 7 else (cells[0], cells[1])] = cells
    for workload in ("generate (SatUNet with metadata)", "inpaint (masked latent blending)", "3D ControlNet, 3 frames"):
        windows, theirs, torch_side, torch_ratio, onnx_side, onnx_ratio = rows[(workload, "2")][2:]  # demo: batch 2
        assert int(windows) == 2 and float(theirs) > 0 and float(torch_side) > 0 and float(onnx_side) > 0
        # 4 and 3 significant digits printed
        assert float(torch_ratio) == pytest.approx(float(torch_side) / float(theirs), rel=0.01)
        assert float(onnx_ratio) == pytest.approx(float(onnx_side) / float(theirs), rel=0.01)
    for backend_total, backend_run in zip(rows["total: submit, run, result downloaded"][1:], rows["engine run time"][1:]):
        assert float(backend_total) >= float(backend_run) > 0
    assert "192 x 192 px generate job through the HTTP engine, 2 windows per call" in text
