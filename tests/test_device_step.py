"""The denoising step on an accelerator: inputs on the model's device, no copies in the loop, fixed shapes, compile.

There is no GPU in CI, so the device is simulated: a torch function mode tags every tensor as
host memory (made from numpy, or by a factory without a device) or device memory (a network's
weights, or anything moved with `.to(<model device>)`), and propagates the tags through every
operation. What CUDA would refuse (an operation mixing host and device tensors) is recorded, and
so is every host-to-device copy and device-to-host read the engine's own code makes. The model
runs in float64, so a tensor that skipped the cast to the model's dtype is seen as well.
"""

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import torch
from rasterio.transform import from_origin
from torch.overrides import TorchFunctionMode

from engine import config
from engine.geo.grid import OutputGrid, grid_from_extent
from engine.geo.sentinel2 import ALL_BANDS, MEAN
from engine.geo.tiling import Span, plan_windows
from engine.geo.vectors import PolygonLayer
from engine.pipelines.generate import GenerateRequest, generate
from engine.pipelines.inpaint import InpaintOutputs, InpaintRequest, inpaint
from engine.pipelines.predict import PredictRequest, predict
from engine.pipelines.sampling import CanvasJob, denoise_canvas, encode_prompt, position_noise
from engine.pipelines.staging import batch_layout
from engine.pipelines.superres import SuperresRequest, superres
from engine.runtime.device import RuntimeOptions, runtime_options

ENGINE = str(Path(__file__).resolve().parents[1] / "engine")
TORCH = str(Path(torch.__file__).parent)
PRE = "xv2deploy_pre_tile_1361-10160.tif"
POST = "xv2deploy_post_tile_32524-5137.tif"
STEP = re.compile(r"step (\d+)/(\d+)")
HOST, DEVICE = "host", "device"
# Reading a device tensor's value waits for the device.
READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu, torch.Tensor.__bool__,
         torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__}
MOVES = {torch.Tensor.to, torch.Tensor.cuda}


def _leaves(value):
    """The tensors in nested lists, tuples and dicts (a lean tree_flatten: this runs for every operation)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif hasattr(value, "to_tuple"):  # diffusers' output dataclasses
        yield from _leaves(value.to_tuple())


def _place(tensor):
    return getattr(tensor, "_simulated_place", None)


def _engine_caller() -> str | None:
    """file:line of the innermost caller outside torch, when it is the engine's own code."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(TORCH) or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is not None and frame.f_code.co_filename.startswith(ENGINE):
        return f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}"
    return None


class SimulatedDevice(TorchFunctionMode):
    """Tags tensors host/device as CUDA would place them; records mixes, copies and reads (see the module docstring)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.mixes: list[str] = []
        self.copies: list[tuple[tuple[int, int], str]] = []  # ((step, steps), where): host -> device
        self.reads: list[tuple[tuple[int, int], str]] = []  # ((step, steps), where): device -> host
        self.step = (0, 0)  # (steps reported so far in the current region, its steps)
        for network in networks(model).values():
            for tensor in (*network.parameters(), *network.buffers()):
                tensor._simulated_place = DEVICE

    def progress(self, progress) -> None:
        match = STEP.search(progress.message)
        self.step = (int(match.group(1)), int(match.group(2))) if match else (0, 0)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        inputs = list(_leaves((args, kwargs)))
        places = {_place(t) for t in inputs if t.dim() > 0} - {None}  # 0-dim tensors are scalars to CUDA
        if func in READS and DEVICE in {_place(t) for t in inputs[:1]}:
            self._note(self.reads)
        if func is torch.Tensor.__getitem__ and places == {DEVICE} and _list_index(args[1]):
            self._note(self.copies)  # the index list is copied to the device
        if func in MOVES and _names_a_device(args[1:], kwargs):
            if _place(inputs[0]) != DEVICE:
                self._note(self.copies)
            place = DEVICE
        elif func in (torch.Tensor.cpu, torch.Tensor.numpy):
            place = HOST
        elif not inputs:  # a factory: where it was asked to put its tensor
            place = DEVICE if kwargs.get("device") is not None else HOST
            if place == DEVICE and func in (torch.tensor, torch.as_tensor):
                self._note(self.copies)
        else:
            if places == {HOST, DEVICE}:
                self.mixes.append(f"{getattr(func, '__name__', func)} at {_engine_caller() or _any_caller()}")
            scalars = {_place(t) for t in inputs} - {None}
            place = DEVICE if DEVICE in (places or scalars) else (HOST if (places or scalars) else None)
        if place is not None:
            for out in _leaves(result):
                out._simulated_place = place
        return result

    def _note(self, events) -> None:
        where = _engine_caller()
        if where is not None:
            events.append((self.step, where))

    def in_loop(self, events) -> list:
        """Events between the end of a region's first step and the start of its last: steps 2..N, after
        the region's set-up (which may stage at the first call) and before the next region's or decoding."""
        return [event for event in events if 1 <= event[0][0] < event[0][1]]


def _list_index(index) -> bool:
    index = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, (list, np.ndarray)) for i in index)


def _names_a_device(args, kwargs) -> bool:
    return kwargs.get("device") is not None or any(isinstance(a, (torch.device, str)) for a in args)


def _any_caller() -> str:
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(TORCH) or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    return f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}" if frame else "?"


def networks(model) -> dict:
    found = {"unet": model.unet, "vae": model.vae, "text_encoder": model.text_encoder}
    if getattr(model, "controlnet", None) is not None:
        found["controlnet"] = model.controlnet
    return found


class NetworkSpy:
    """Forward pre-hooks on every network: what each tensor argument is (place, device, dtype)."""

    # float32 by design, whatever the model's dtype (engine.models.metadata_embedding); timesteps are the scheduler's.
    FREE_DTYPE = {"metadata", "cond_metadata", "timestep", "timesteps", "#1"}

    def __init__(self, model):
        self.model = model
        self.calls: list[tuple[str, list[tuple[str, str, torch.device, torch.dtype, tuple]]]] = []
        self.handles = []
        parts = networks(model)
        for name in ("unet", "controlnet", "text_encoder"):
            if name in parts:
                self.handles.append(parts[name].register_forward_pre_hook(self._hook(name), with_kwargs=True))
        for name in ("encoder", "decoder"):
            self.handles.append(getattr(model.vae, name).register_forward_pre_hook(self._hook(f"vae.{name}"), with_kwargs=True))

    def _hook(self, name):
        def record(module, args, kwargs):
            named = [(f"#{i}", a) for i, a in enumerate(args)] + list(kwargs.items())
            seen = []
            for key, value in named:
                for tensor in _leaves(value):
                    seen.append((key, _place(tensor), tensor.device, tensor.dtype, tuple(tensor.shape)))
            self.calls.append((name, seen))

        return record

    def problems(self) -> list[str]:
        found = []
        for name, seen in self.calls:
            network = networks(self.model)[name.split(".")[0]]
            dtype = next(network.parameters()).dtype
            for key, place, device, tensor_dtype, _ in seen:
                if place != DEVICE or device != self.model.device:
                    found.append(f"{name} {key} on the {place or 'untracked'} side")
                if tensor_dtype.is_floating_point and tensor_dtype != dtype and key not in self.FREE_DTYPE:
                    found.append(f"{name} {key} is {tensor_dtype}, the network {dtype}")
        return sorted(set(found))

    def shapes(self, name: str) -> set[tuple]:
        return {tuple(shape for _, _, _, _, shape in seen) for network, seen in self.calls if network == name}

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from engine.models.demo import build_demo_models
    from engine.models.registry import ModelRegistry

    path = tmp_path_factory.mktemp("step-models")
    build_demo_models(path)
    return ModelRegistry(path)


@pytest.fixture(scope="module")
def inpainting_model(registry, tmp_path_factory):
    """A 9-channel inpainting UNet (the demo SD model's config with in_channels 9), in float64."""
    import json
    import shutil

    from diffusers import UNet2DConditionModel

    from engine.models.registry import ModelRegistry

    root = tmp_path_factory.mktemp("step-inpaint-models")
    target = root / "demo-sd-inpaint"
    shutil.copytree(registry.get("demo-sd").path, target)
    unet_config = json.loads((target / "unet" / "config.json").read_text())
    unet_config["in_channels"] = 9
    shutil.rmtree(target / "unet")
    torch.manual_seed(0)
    UNet2DConditionModel.from_config(unet_config).save_pretrained(target / "unet")
    return ModelRegistry(root).load("demo-sd-inpaint", dtype=torch.float64)


def _run_watched(model, job):
    """Run a job under the simulated device and the network spy; (device, spy)."""
    device, spy = SimulatedDevice(model), NetworkSpy(model)
    try:
        with device:
            job(device.progress)
    finally:
        spy.close()
    return device, spy


def _assert_clean(device: SimulatedDevice, spy: NetworkSpy, networks_called: set[str]) -> None:
    assert {name for name, _ in spy.calls} >= networks_called
    assert device.mixes == [], f"operations mixing host and device tensors: {sorted(set(device.mixes))}"
    assert spy.problems() == []
    assert device.in_loop(device.copies) == [], f"host-to-device copies inside the loop: {device.in_loop(device.copies)}"
    assert device.in_loop(device.reads) == [], f"device reads inside the loop: {device.in_loop(device.reads)}"


def _scene(path, size=32):
    rng = np.random.default_rng(0)
    profile = dict(driver="GTiff", width=size, height=size, count=len(ALL_BANDS), dtype="uint16", crs="EPSG:32633",
                   transform=from_origin(500000, 4100320, 10, 10))
    with rasterio.open(path, "w", **profile) as dst:
        for i, name in enumerate(ALL_BANDS, start=1):
            dst.write(rng.integers(int(MEAN[name] * 0.5), int(MEAN[name] * 1.5), (size, size)).astype(np.uint16), i)
    return path


# --- every tensor reaching a network is on its device and dtype; nothing is copied in the loop -----


def test_generate_feeds_the_networks_from_the_device_only(registry, tmp_path):
    model = registry.load("demo-satunet", dtype=torch.float64)
    grid = grid_from_extent((600000, 5100000, 600000 + 224 * 2, 5100000 + 128 * 2), "EPSG:32632", resolution_m=2)
    request = GenerateRequest(grid=grid, prompt="a fmow satellite image", steps=2, guidance_scale=2.0, batch_size=2,
                              date="2020-06-01")
    device, spy = _run_watched(model, lambda progress: generate(model, request, tmp_path / "g.tif", progress))
    _assert_clean(device, spy, {"unet", "text_encoder", "vae.decoder"})


def test_nine_channel_inpainting_feeds_the_unet_from_the_device_only(inpainting_model, rasters_dir, tmp_path):
    raster = rasters_dir / "m_3607824_se_17_1_20160620_sub.tif"
    with rasterio.open(raster) as src:
        crs, transform = src.crs, src.transform
    (x0, y0), (x1, y1) = transform @ (50, 50), transform @ (90, 90)
    layer = PolygonLayer([shapely.box(x0, y1, x1, y0)], [{}], crs, "flood")
    request = InpaintRequest(image=raster, polygons=layer, disaster_type="flooding", steps=2, guidance_scale=2.0,
                             feather_m=0.0)
    outputs = InpaintOutputs(tmp_path / "post.tif", tmp_path / "label.tif")
    device, spy = _run_watched(inpainting_model, lambda progress: inpaint(inpainting_model, request, outputs, progress))
    assert outputs.image.exists()
    _assert_clean(device, spy, {"unet", "text_encoder", "vae.encoder", "vae.decoder"})
    assert {shape[0][1] for shape in spy.shapes("unet")} == {9}  # latents + mask + masked image's latents


def test_predict_moves_the_frames_to_the_device_once_per_region(registry, rasters_dir, tmp_path):
    model = registry.load("demo-controlnet-3d", dtype=torch.float64)
    with rasterio.open(rasters_dir / PRE) as pre:  # inside the post tile's footprint (see test_predict)
        grid = OutputGrid(pre.crs, pre.transform @ rasterio.Affine.translation(800, 300), 128, 128)
    request = PredictRequest(frames=[rasters_dir / PRE, rasters_dir / POST, rasters_dir / PRE],
                             dates=["2011-05-20", "2011-05-26", "2011-04-01"], target_date="2011-06-15",
                             reference=grid, steps=2, guidance_scale=2.0, batch_size=1)
    device, spy = _run_watched(model, lambda progress: predict(model, request, tmp_path / "p.tif", progress))
    _assert_clean(device, spy, {"unet", "controlnet", "text_encoder", "vae.decoder"})


def test_superres_moves_the_scene_to_the_device_once_per_region(registry, tmp_path):
    model = registry.load("demo-superres", dtype=torch.float64)
    scene = _scene(tmp_path / "S2B_MSIL1C_20200601T100559_N0209_R022_T33SVB_20200601T121210.tif", size=24)
    request = SuperresRequest(image=scene, steps=2, guidance_scale=2.0, batch_size=2)
    device, spy = _run_watched(model, lambda progress: superres(model, request, tmp_path / "sr.tif", progress))
    _assert_clean(device, spy, {"unet", "controlnet", "text_encoder", "vae.decoder"})


# --- fixed shapes: the last batch is padded ---------------------------------------------------------


def test_batches_share_one_length_and_cover_every_window_once():
    assert batch_layout(5, 4) == [[0, 1, 2], [3, 4, 4]]
    assert batch_layout(17, 16) == [list(range(9)), list(range(9, 17)) + [16]]  # two calls of 9, not 16 + 1
    assert batch_layout(3, 8) == [[0, 1, 2]]
    for count in range(1, 30):
        for size in range(1, 12):
            batches = batch_layout(count, size)
            assert len({len(b) for b in batches}) == 1 and len(batches[0]) <= size
            assert len(batches) == -(-count // size)  # no more calls than unpadded batches would need
            assert [i for b in batches for i in dict.fromkeys(b)] == list(range(count))


def _three_window_job(model):
    windows = plan_windows(16, 16 + 2 * 12, 16, 4)  # three 16-cell windows in a row
    assert len(windows) == 3 and {(w.height, w.width) for w in windows} == {(16, 16)}
    metadata = [np.full(7, 100.0 * i, dtype=np.float32) for i in range(3)]
    return CanvasJob(noise=position_noise(5, Span(0, 0, 16, 40), model.latent_channels), windows=windows,
                     window_metadata=metadata, overlap=4)


def _denoise(model, job, batch_size):
    """The job's latents, and the shape of the UNet's input at every call."""
    text = encode_prompt(model, "a fmow satellite image", "", 2.0)
    shapes = []
    handle = model.unet.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    try:
        latents = denoise_canvas(model, model.make_scheduler(), job, text, num_inference_steps=2, guidance_scale=2.0,
                                 batch_size=batch_size, generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    return latents, shapes


def test_the_padded_last_batch_changes_no_window_and_keeps_every_call_the_same_shape(registry):
    model = registry.load("demo-satunet")
    job = _three_window_job(model)
    unpadded, _ = _denoise(model, job, batch_size=1)  # one window per call: nothing to pad
    padded, shapes = _denoise(model, job, batch_size=2)  # [0, 1] and [2, 2]: a repeat fills the last call
    assert shapes == [(4, 4, 16, 16)] * 4  # 2 calls x 2 steps; 2 windows x 2 guidance halves each
    assert torch.allclose(padded, unpadded, atol=1e-5)
    assert not torch.allclose(padded[..., 24:], padded[..., :16], atol=1e-3)  # the windows differ


# --- torch.compile ----------------------------------------------------------------------------------


def test_compile_is_on_with_cuda_graphs_by_default_on_cuda_only(monkeypatch):
    monkeypatch.delenv("GFM4D_COMPILE", raising=False)
    cuda, cpu = runtime_options("cuda"), runtime_options("cpu")
    assert (cuda.compile_backend, cuda.compile_mode) == ("inductor", "reduce-overhead")
    assert (cpu.compile_backend, cpu.compile_mode) == (None, None)
    monkeypatch.setenv("GFM4D_COMPILE", "0")
    assert (runtime_options("cuda").compile_backend, runtime_options("cuda").compile_mode) == (None, None)
    monkeypatch.setenv("GFM4D_COMPILE", "aot_eager")  # another backend: no inductor mode
    assert (runtime_options("cuda").compile_backend, runtime_options("cuda").compile_mode) == ("aot_eager", None)
    assert runtime_options("cpu").compile_backend == "aot_eager"  # forced on for the CPU


def test_loading_compiles_unet_and_controlnet_with_the_mode_static_shapes_and_the_engine_cache(registry, monkeypatch,
                                                                                               tmp_path):
    from engine.models.loading import load_model

    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: calls.append((type(self).__name__, kwargs)))
    monkeypatch.setenv("GFM4D_HOME", str(tmp_path))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")  # restored after the test, whatever it was
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    options = RuntimeOptions(compile_backend="inductor", compile_mode="reduce-overhead")
    load_model(registry.get("demo-controlnet-3d"), "cpu", torch.float32, None, options=options)
    expected = {"backend": "inductor", "dynamic": False, "mode": "reduce-overhead"}
    assert calls == [("SatUNet", expected), ("ControlNetModel3D", expected)]
    assert Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]) == config.compile_cache_dir() == tmp_path / "compile"


def test_sdxl_sd3_and_flux_denoisers_are_compiled_too_but_not_when_offloaded(monkeypatch, tmp_path):
    from engine.models.loading import load_model
    from engine.models.registry import ModelRegistry
    from engine.models.tiny_backbones import build_tiny_backbone

    build_tiny_backbone(tmp_path / "sdxl", "sdxl")
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: calls.append((type(self).__name__, kwargs)))
    options = RuntimeOptions(compile_backend="eager")
    info = ModelRegistry(tmp_path).get("sdxl")
    load_model(info, "cpu", torch.float32, None, options=options)
    assert calls == [("UNet2DConditionModel", {"backend": "eager", "dynamic": False})]
    monkeypatch.setenv("GFM4D_OFFLOAD", "1")  # offloaded weights move at every call: nothing to compile
    load_model(info, "cpu", torch.float32, None, options=options)
    assert len(calls) == 1


def test_compiled_networks_give_the_same_latents_and_a_second_job_compiles_nothing(registry, monkeypatch):
    from torch._dynamo.utils import counters

    from engine.models.registry import ModelRegistry

    reference, _ = _denoise(registry.load("demo-satunet"), _three_window_job(registry.load("demo-satunet")), 2)
    monkeypatch.setenv("GFM4D_COMPILE", "eager")  # inductor needs a C compiler on the CPU; eager checks the wiring
    compiled_modules = []
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, **kwargs: (compiled_modules.append(type(self).__name__), compile_module(self, **kwargs))[1])
    torch._dynamo.reset()
    counters.clear()
    fresh = ModelRegistry(registry.get("demo-satunet").path.parent)
    model = fresh.load("demo-satunet")
    assert compiled_modules == ["SatUNet"]
    first, _ = _denoise(model, _three_window_job(model), 2)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0 and torch.allclose(first, reference, atol=1e-5)
    again = fresh.load("demo-satunet")  # the cached model, compiled module and all
    second, _ = _denoise(again, _three_window_job(again), 2)
    assert again is model and compiled_modules == ["SatUNet"]
    assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled again
    assert torch.equal(second, first)
    torch._dynamo.reset()
