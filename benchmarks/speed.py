"""GFM4D's speed against plain diffusers doing the same work on the same weights, and one large job over HTTP.

    python benchmarks/speed.py                       # on a CUDA GPU: torch and ONNX backends; writes docs/performance.md
    python benchmarks/speed.py --small               # on CPU: SD-2.1's shape, narrower; a few minutes
    python benchmarks/speed.py --demo --quick        # anywhere (CPU): the demo models, a smoke run

Full mode builds SD-2.1-architecture models with random weights from SD-2.1's public configs
(written below; nothing is downloaded): a SatUNet (SD-2.1's UNet plus DiffusionSat's metadata
MLPs), SD-2.1's VAE and OpenCLIP-H text encoder, and a 3D ControlNet on that UNet. `--small`
builds the same architecture with a fifth of the channels, one layer per block and a 4-layer
text encoder, run at 256 px, so a 2-core CPU gets through it in minutes. Then, with 512 px
windows (small: 256), 25 steps (small: 10) and guidance 7.5, at each batch size (windows per
model call: 1 and 16; small: 1 and 4), for each backend (torch, and ONNX Runtime when
onnxruntime runs on the device), on the same device in one run:

- generate: windows/s of GFM4D's generate() (metadata per window, blending, tiled VAE decoding,
  GeoTIFF writing) vs diffusers' StableDiffusionPipeline (float16, SDPA) making as many images;
- inpaint: GFM4D's inpaint() vs diffusers' StableDiffusionInpaintPipeline (4-channel UNet, the
  same masked latent blending);
- 3D ControlNet with 3 frames: GFM4D's predict() vs a diffusers-style loop (ControlNet, UNet,
  guidance, scheduler step, VAE decode) with the same networks in float16;
- a 4096 x 4096 px generate job through the HTTP engine (engine.server.launcher): total time,
  engine run time, HTTP + queue overhead, the GPU memory peak, and where the time goes (text
  encoding, UNet, VAE, raster I/O) from the same job run in-process with timers.

Both sides of each comparison use the same scheduler (GFM4D's default on the device), steps,
guidance and windows per model call. The sides run alternately, `--rounds` times each after a
warm-up (round by round in turn, the order reversed every other round), and each side's median
is kept, so load from other processes weighs on every side alike; the load average before and
after the run is printed with the table. The table is printed and written into --output
(default: docs/performance.md, between its speed-table markers for a GPU and its
cpu-speed-table markers for --small) with the device's name.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch

TABLE_START = "<!-- speed-table:start -->"
TABLE_END = "<!-- speed-table:end -->"
CPU_TABLE_START = "<!-- cpu-speed-table:start -->"
CPU_TABLE_END = "<!-- cpu-speed-table:end -->"
PROMPT = "a fmow satellite image of a farm in italy"
CRS = "EPSG:32633"
ORIGIN = (500000.0, 4100000.0)

# stabilityai/stable-diffusion-2-1: unet/config.json (as a DiffusionSat SatUNet: + use_metadata, num_metadata)
SD21_UNET = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "only_cross_attention": False,
    "out_channels": 4,
    "sample_size": 96,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": True,
    "use_linear_projection": True,
}
# stabilityai/stable-diffusion-2-1: vae/config.json
SD21_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 768,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "scaling_factor": 0.18215,
}
# stabilityai/stable-diffusion-2-1: text_encoder/config.json (OpenCLIP ViT-H/14 text tower)
SD21_TEXT = {
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "projection_dim": 512,
    "vocab_size": 49408,
}
# --small: the same architectures with a fifth of the width (64 px channels per head, as SD-2.1)
SMALL_UNET = {**SD21_UNET, "block_out_channels": [64, 128, 256, 256], "attention_head_dim": [1, 2, 4, 4],
              "cross_attention_dim": 256, "layers_per_block": 1}
SMALL_VAE = {**SD21_VAE, "block_out_channels": [32, 64, 128, 128], "layers_per_block": 1}
SMALL_TEXT = {**SD21_TEXT, "hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4, "num_hidden_layers": 4}


@dataclass
class Setup:
    """What one run measures, and on what."""

    models_dir: Path
    work: Path
    base: str  # the SatUNet model
    controlnet: str  # the 3D ControlNet model (3 frames)
    device: torch.device
    window: int  # px
    windows: int  # windows per comparison
    steps: int
    guidance: float
    batches: tuple[int, ...]  # windows per model call, both sides: one comparison per value
    engine_size: int  # px side of the HTTP job
    backends: tuple[str, ...]  # GFM4D's backends, each against the same diffusers run
    rounds: int = 1  # timed runs per side, alternating; the median is kept
    quick: bool = False  # a smoke run: no warm-up runs
    batch: int = 1  # the batch of the comparison being run

    @property
    def largest_batch(self) -> int:
        return max(self.batches)

    @property
    def overlap(self) -> int:
        return self.window // 4  # GFM4D's default

    @property
    def strip_width(self) -> int:
        """Width of a one-window-high strip that GFM4D covers with exactly `windows` windows."""
        return self.window + (self.window - self.overlap) * (self.windows - 1)


# ----------------------------------------------------------------------------------------- models


def build_sd21_models(models_dir: Path, device: torch.device, small: bool = False) -> tuple[str, str]:
    """SD-2.1-architecture SatUNet run and 3D ControlNet run with random weights (float16 safetensors;
    `small`: narrower, see SMALL_UNET) under `models_dir`, kept when present; their names."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.models.controlnet_3d import ControlNetModel3D
    from engine.models.demo import SD21_SCHEDULER_CONFIG, build_demo_models, make_conditioning_visible
    from engine.models.satunet import SatUNet

    prefix = "sd21-small" if small else "sd21"
    unet_config, vae_config, text_config = (SMALL_UNET, SMALL_VAE, SMALL_TEXT) if small else (SD21_UNET, SD21_VAE, SD21_TEXT)
    base, control = models_dir / f"{prefix}-sat", models_dir / f"{prefix}-controlnet-3d"
    if (base / "done").is_file() and (control / "done").is_file():
        return base.name, control.name
    demo = build_demo_models(models_dir.parent / "demo-models")[0]  # its tokenizer: CLIP BPE, built locally
    shutil.rmtree(base, ignore_errors=True)
    shutil.rmtree(control, ignore_errors=True)
    torch.manual_seed(0)
    with torch.device(device):  # random initialisation where it is fast
        unet = SatUNet(use_metadata=True, num_metadata=7, **unet_config)
    unet.half().save_pretrained(base / "unet", safe_serialization=True)
    with torch.device(device):
        controlnet = ControlNetModel3D.from_unet(unet, conditioning_in_channels=3, use_temporal_transformer=True)
    del unet
    make_conditioning_visible(controlnet.cpu(), seed=1)  # non-zero "zero convs", as trained ones are
    controlnet.half().save_pretrained(control / "controlnet", safe_serialization=True)
    del controlnet
    with torch.device(device):
        vae = AutoencoderKL(**vae_config)
    vae.half().save_pretrained(base / "vae", safe_serialization=True)
    vocab = json.loads((demo / "tokenizer" / "vocab.json").read_text())
    text_config = CLIPTextConfig(**text_config, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                                 pad_token_id=vocab["!"])
    with torch.device(device):
        text_encoder = CLIPTextModel(text_config)
    text_encoder.half().save_pretrained(base / "text_encoder")
    del vae, text_encoder
    shutil.copytree(demo / "tokenizer", base / "tokenizer")
    (base / "scheduler").mkdir()
    (base / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD21_SCHEDULER_CONFIG))
    window = 256 if small else 512  # GFM4D's windows: the size diffusers is asked for
    (base / "gfm4d.json").write_text(json.dumps({"native_resolution": window}))
    (control / "gfm4d.json").write_text(json.dumps({"native_resolution": window, "base_model": base.name, "num_frames": 3}))
    for folder in (base, control):
        (folder / "done").write_text("")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return base.name, control.name


def baseline_unet(gfm4d_model, dtype: torch.dtype, metadata: bool):
    """The model's UNet straight from disk, as diffusers runs it (default attention: SDPA; no runtime
    options). Without metadata: a plain UNet2DConditionModel with the SatUNet's other weights."""
    from diffusers import UNet2DConditionModel

    from engine.models.layout import SATUNET
    from engine.models.loading import build_unet

    sat = build_unet(gfm4d_model.info.unet_path, SATUNET, gfm4d_model.device, dtype).eval()
    if metadata:
        return sat
    config = {k: v for k, v in sat.config.items() if k not in ("use_metadata", "num_metadata") and not k.startswith("_")}
    with torch.device(gfm4d_model.device):
        plain = UNet2DConditionModel.from_config(config).to(dtype)
    plain.load_state_dict({k: v for k, v in sat.state_dict().items() if not k.startswith("metadata_embedding")})
    return plain.eval()


def baseline_vae(gfm4d_model, dtype: torch.dtype):
    """The VAE in the model dtype, as diffusers' pipelines run it."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(gfm4d_model.info.components["vae"], torch_dtype=dtype).to(gfm4d_model.device).eval()


def torch_text_encoder(gfm4d_model):
    """The text encoder module (the one under an ONNX stand-in)."""
    return getattr(gfm4d_model.text_encoder, "module", gfm4d_model.text_encoder)


# ------------------------------------------------------------------------------------------ clock


class Clock:
    """Seconds spent per named part; the GPU is synchronised around each measured call."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def part(self, name: str):
        self.sync()
        started = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def timed(self, fn, *args, **kwargs) -> tuple[float, object]:
        """Wall seconds of one call, the GPU idle before and after, and what it returned."""
        self.sync()
        started = time.perf_counter()
        value = fn(*args, **kwargs)
        self.sync()
        return time.perf_counter() - started, value


class Timed:
    """A network whose calls are charged to a part of the clock; everything else is the network's."""

    def __init__(self, target, clock: Clock, name: str):
        self.target, self.clock, self.name = target, clock, name

    def __call__(self, *args, **kwargs):
        with self.clock.part(self.name):
            return self.target(*args, **kwargs)

    def decode(self, *args, **kwargs):
        with self.clock.part(self.name):
            return self.target.decode(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.__dict__["target"], name)


WRITER_THREAD = "raster writes (writer thread, overlapped with decoding)"


@contextlib.contextmanager
def timed_raster_io(clock: Clock):
    """Charge opening, closing and publishing the GeoTIFF to 'raster I/O', and its block and mask
    writes, which run on the writer thread while the GPU decodes, to WRITER_THREAD (not synchronised:
    the GPU's work is the job thread's)."""
    from engine.geo.writer import GeoTIFFWriter

    originals = {name: getattr(GeoTIFFWriter, name) for name in ("__enter__", "write", "write_mask", "__exit__")}

    def wrap(original):
        def timed(*args, **kwargs):
            with clock.part("raster I/O"):
                return original(*args, **kwargs)

        return timed

    def wrap_write(original):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                clock.seconds[WRITER_THREAD] = clock.seconds.get(WRITER_THREAD, 0.0) + time.perf_counter() - started

        return timed

    for name, original in originals.items():
        setattr(GeoTIFFWriter, name, (wrap_write if name.startswith("write") else wrap)(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(GeoTIFFWriter, name, original)


# ------------------------------------------------------------------------------------------- data


def strip_grid(setup: Setup, height: int | None = None, width: int | None = None):
    from engine.geo.grid import grid_from_extent

    height, width = height or setup.window, width or setup.strip_width
    return grid_from_extent((ORIGIN[0], ORIGIN[1], ORIGIN[0] + width, ORIGIN[1] + height), CRS, resolution_m=1.0)


def write_rgb(path: Path, grid, seed: int) -> Path:
    import rasterio

    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : grid.height, 0 : grid.width]
    base = ((rows // 9 + cols // 13) % 64 + 80).astype(np.uint8)
    data = np.stack([base, base + 25, base - 20]) + rng.integers(0, 8, (3, grid.height, grid.width), dtype=np.uint8)
    profile = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": 3, "dtype": "uint8", "crs": grid.crs,
               "transform": grid.transform, "tiled": True, "blockxsize": 256, "blockysize": 256}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def write_mask_polygon(path: Path, grid, margin: int) -> Path:
    """One polygon over the raster less a margin: every window of the strip is inpainted."""
    x0, y0 = grid.transform * (margin, grid.height - margin)
    x1, y1 = grid.transform * (grid.width - margin, margin)
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    feature = {"type": "Feature", "properties": {"subtype": "destroyed"}, "geometry": {"type": "Polygon", "coordinates": [ring]}}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature],
                                "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}}))
    return path


# ------------------------------------------------------------------------------------ comparisons


def race(setup: Setup, clock: Clock, ours: dict, theirs, windows_of) -> dict:
    """Median seconds at setup.steps of GFM4D on each backend (`ours`: backend -> run) and of the
    baseline, the sides taking turns for setup.rounds rounds (every other round in reverse order),
    each side after a one-step warm-up (kernels chosen, graphs exported, caches filled) unless
    this is a quick smoke run."""
    sides = [*(("gfm4d", backend, run) for backend, run in ours.items()), ("diffusers", None, theirs)]
    if not setup.quick:
        for *_, run in sides:
            run(1)
    times: dict = {(kind, backend): [] for kind, backend, _ in sides}
    windows = None
    for round_index in range(setup.rounds):
        for kind, backend, run in sides if round_index % 2 == 0 else sides[::-1]:
            seconds, result = clock.timed(run, setup.steps)
            times[(kind, backend)].append(seconds)
            if kind == "gfm4d":
                windows = windows_of(result)
                if windows != setup.windows:  # not the work diffusers does: the comparison would mean nothing
                    raise RuntimeError(f"GFM4D ran {windows} windows where {setup.windows} were planned; "
                                       "check the model's native_resolution against the benchmark's window")
    return {"windows": windows, "diffusers": float(np.median(times[("diffusers", None)])),
            "gfm4d": {backend: float(np.median(times[("gfm4d", backend)])) for backend in ours}}


def compare_generate(setup: Setup, models: dict, vanilla, clock: Clock) -> dict:
    from diffusers import StableDiffusionPipeline

    from engine.pipelines.generate import GenerateRequest, generate

    plain, vae, text_encoder = vanilla
    model = next(iter(models.values()))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=model.tokenizer, unet=plain,
                                   scheduler=model.make_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    grid = strip_grid(setup)

    def ours(model):
        def run(steps: int):
            request = GenerateRequest(grid=grid, prompt=PROMPT, steps=steps, guidance_scale=setup.guidance, seed=1,
                                      batch_size=setup.batch, date="2020-06-01")
            return generate(model, request, setup.work / "generate.tif")

        return run

    def theirs(steps: int):
        for start in range(0, setup.windows, setup.batch):
            count = min(setup.batch, setup.windows - start)
            pipe(PROMPT, height=setup.window, width=setup.window, num_inference_steps=steps,
                 guidance_scale=setup.guidance, num_images_per_prompt=count, output_type="np")

    return race(setup, clock, {backend: ours(m) for backend, m in models.items()}, theirs, lambda result: result.windows)


def compare_inpaint(setup: Setup, models: dict, vanilla, clock: Clock) -> dict:
    import rasterio
    from diffusers import StableDiffusionInpaintPipeline

    from engine.pipelines.inpaint import InpaintOutputs, InpaintRequest, inpaint

    plain, vae, text_encoder = vanilla
    model = next(iter(models.values()))
    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=text_encoder, tokenizer=model.tokenizer, unet=plain,
                                          scheduler=model.make_scheduler(), safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    grid = strip_grid(setup)
    raster = write_rgb(setup.work / "pre.tif", grid, seed=3)
    margin = setup.window // 16
    polygons = write_mask_polygon(setup.work / "damage.geojson", grid, margin)
    with rasterio.open(raster) as src:
        pixels = torch.from_numpy(src.read()).float() / 255.0
    images = torch.stack([pixels[:, :, i * (setup.window - setup.overlap):][:, :, : setup.window] for i in range(setup.windows)])
    masks = torch.zeros(setup.windows, 1, setup.window, setup.window)
    masks[:, :, margin:-margin, :] = 1.0

    def ours(model):
        def run(steps: int):
            request = InpaintRequest(image=raster, polygons=polygons, class_field="subtype", disaster_type="fire",
                                     prompt=PROMPT, steps=steps, guidance_scale=setup.guidance, seed=1,
                                     batch_size=setup.batch)
            return inpaint(model, request, InpaintOutputs(setup.work / "post.tif", setup.work / "label.tif"))

        return run

    def theirs(steps: int):
        for start in range(0, setup.windows, setup.batch):
            part = slice(start, start + setup.batch)
            pipe([PROMPT] * len(images[part]), image=images[part], mask_image=masks[part], height=setup.window,
                 width=setup.window, strength=1.0, num_inference_steps=steps, guidance_scale=setup.guidance,
                 output_type="np")

    return race(setup, clock, {backend: ours(m) for backend, m in models.items()}, theirs, lambda result: result.windows)


def compare_controlnet_3d(setup: Setup, registry, clock: Clock, dtype: torch.dtype) -> dict:
    from engine.models.layout import CONTROLNET_3D
    from engine.models.loading import build_controlnet
    from engine.pipelines.predict import PredictRequest, predict
    from engine.pipelines.sampling import encode_prompt

    models = {backend: registry.load(setup.controlnet, setup.device, dtype, backend=backend) for backend in setup.backends}
    model = models[setup.backends[0]]
    grid = strip_grid(setup)
    frames = [write_rgb(setup.work / f"frame{i}.tif", grid, seed=10 + i) for i in range(3)]
    dates = ["2019-05-01", "2020-05-01", "2021-05-01"]

    def ours(model):
        def run(steps: int):
            request = PredictRequest(frames=frames, dates=dates, target_date="2022-05-01", reference=grid, prompt=PROMPT,
                                     steps=steps, guidance_scale=setup.guidance, seed=1, batch_size=setup.batch)
            return predict(model, request, setup.work / "predicted.tif")

        return run

    # The baseline: the same networks straight from disk (no runtime options), a diffusers-style loop.
    sat, vae = baseline_unet(model, dtype, metadata=True), baseline_vae(model, dtype)
    controlnet = build_controlnet(model.info.components["controlnet"], CONTROLNET_3D, setup.device, dtype).eval()
    text = encode_prompt(model, PROMPT, "", setup.guidance)
    hidden = torch.cat([text.uncond, text.cond]).to(dtype)
    latent = setup.window // 8

    @torch.no_grad()
    def theirs(steps: int):
        for start in range(0, setup.windows, setup.batch):
            count = min(setup.batch, setup.windows - start)
            scheduler = model.make_scheduler()
            scheduler.set_timesteps(steps, device=setup.device)
            latents = torch.randn(count, 4, latent, latent, device=setup.device) * scheduler.init_noise_sigma
            cond = torch.rand(count, 3, 3, setup.window, setup.window, device=setup.device, dtype=dtype)
            metadata = torch.full((count, 7), 500.0, device=setup.device)
            cond_metadata = torch.full((count, 7, 3), 500.0, device=setup.device)
            text_rows = hidden.repeat_interleave(count, dim=0)
            for t in scheduler.timesteps:
                x = scheduler.scale_model_input(torch.cat([latents, latents]), t).to(dtype)
                md = torch.cat([torch.zeros_like(metadata), metadata])
                down, mid = controlnet(x, t, text_rows, torch.cat([cond, cond]), metadata=md,
                                       cond_metadata=torch.cat([torch.zeros_like(cond_metadata), cond_metadata]))
                out = sat(x, t, text_rows, metadata=md, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid).sample.float()
                uncond, conditional = out.chunk(2)
                latents = scheduler.step(uncond + setup.guidance * (conditional - uncond), t, latents).prev_sample
            vae.decode((latents / model.vae_scaling_factor).to(vae.dtype)).sample.float().cpu()

    result = race(setup, clock, {backend: ours(m) for backend, m in models.items()}, theirs,
                  lambda result: result.generated.windows)
    registry.unload(setup.controlnet)
    return result


# ----------------------------------------------------------------------------------- engine job


def engine_job(setup: Setup, steps: int, backend: str) -> dict:
    """One generate job of engine_size^2 px through a private engine on `backend`, at the largest
    batch: wall time, run time, GPU memory peak."""
    from engine.client import EngineClient
    from engine.server.launcher import start_engine

    size = setup.engine_size
    params = {"model": setup.base, "extent": [ORIGIN[0], ORIGIN[1], ORIGIN[0] + size, ORIGIN[1] + size], "crs": CRS,
              "resolution_m": 1.0, "prompt": PROMPT, "steps": steps, "guidance_scale": setup.guidance, "seed": 2,
              "batch_size": setup.largest_batch}
    warm = dict(params, extent=[ORIGIN[0], ORIGIN[1], ORIGIN[0] + setup.window, ORIGIN[1] + setup.window], steps=1)
    env = {"GFM4D_BACKEND": backend}
    with start_engine(setup.models_dir, setup.work / "jobs", extra_args=["--device", str(setup.device)], env=env,
                      log_path=setup.work / "engine.log") as engine:
        client = EngineClient(engine.url, timeout=600)
        client.run("generate", warm, out_dir=setup.work / "warm")  # loads the model (and exports its graphs)
        lowest_free, stop = [None], threading.Event()

        def watch_memory():
            watcher_client = EngineClient(engine.url)  # its own HTTP session: sessions are not shared across threads
            while not stop.is_set():
                free = watcher_client.health().get("gpu_free_bytes")
                if free is not None:
                    lowest_free[0] = free if lowest_free[0] is None else min(lowest_free[0], free)
                stop.wait(0.25)

        watcher = threading.Thread(target=watch_memory, daemon=True)
        started = time.perf_counter()
        watcher.start()
        job_id = client.submit("generate", params)
        job = client.wait(job_id, poll_interval=0.1)
        client.download(job_id, "image", setup.work / "engine.tif")
        wall = time.perf_counter() - started
        stop.set()
        watcher.join()
        health = client.health()
    run = (dt.datetime.fromisoformat(job["finished_at"]) - dt.datetime.fromisoformat(job["started_at"])).total_seconds()
    peak = None
    if lowest_free[0] is not None and health.get("gpu_total_bytes"):
        peak = health["gpu_total_bytes"] - lowest_free[0]
    return {"wall": wall, "run": run, "device_peak": peak}


def profiled_job(setup: Setup, model, steps: int, clock: Clock) -> dict:
    """The engine job's work in this process with timers on text encoder, UNet, VAE and GeoTIFF writing."""
    from engine.pipelines.generate import GenerateRequest, generate

    timed = replace(model, text_encoder=Timed(model.text_encoder, clock, "text encoding"),
                    unet=Timed(model.unet, clock, "UNet"), vae=Timed(model.vae, clock, "VAE"))
    timed.vae_decoder = Timed(model.vae_decoder, clock, "VAE")  # decoding: half precision on a GPU, float32 redos
    grid = strip_grid(setup, setup.engine_size, setup.engine_size)
    request = GenerateRequest(grid=grid, prompt=PROMPT, steps=steps, guidance_scale=setup.guidance, seed=2,
                              batch_size=setup.largest_batch)
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(setup.device)
    clock.seconds.clear()
    with timed_raster_io(clock):
        total, _ = clock.timed(generate, timed, request, setup.work / "profiled.tif")
    parts = dict(clock.seconds)
    parts["total"] = total
    parts["torch_peak"] = torch.cuda.max_memory_allocated(setup.device) if setup.device.type == "cuda" else None
    return parts


# ------------------------------------------------------------------------------------------ table


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch on {torch.get_num_threads()} threads)"


def gib(value) -> str:
    return "n/a" if value is None else f"{value / 2**30:.1f} GiB"


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def render(setup: Setup, dtype: torch.dtype, scheduler: str, comparisons: dict, engines: dict, profiles: dict,
           loads: tuple[str, str]) -> str:
    """The markdown table: one row per workload and batch, one column pair per backend; then the engine job."""
    smoke = " (demo models: a smoke run, not a speed figure)" if setup.window < 256 else ""
    heading = (
        f"**{device_name(setup.device)}** — {dt.date.today().isoformat()}, torch {torch.__version__}, "
        f"{str(dtype).removeprefix('torch.')}, scheduler {scheduler}, {setup.window} px windows, {setup.steps} steps, "
        f"guidance {setup.guidance:g}; sides run alternately, median of {setup.rounds} run(s) each; "
        f"1-minute load average {loads[0]} before the run, {loads[1]} after{smoke}"
    )
    header = "| workload | windows per call | windows | diffusers windows/s |"
    rule = "|---|---:|---:|---:|"
    for backend in setup.backends:
        header += f" GFM4D {backend} windows/s | GFM4D {backend} / diffusers |"
        rule += "---:|---:|"
    lines = [heading, "", header, rule]
    for (name, batch), row in comparisons.items():
        theirs = row["windows"] / row["diffusers"]
        cells = [name, str(batch), str(row["windows"]), f"{theirs:.4g}"]
        for backend in setup.backends:
            ours = row["windows"] / row["gfm4d"][backend]
            cells += [f"{ours:.4g}", f"{ours / theirs:.3g}"]
        lines.append("| " + " | ".join(cells) + " |")
    if not engines:
        return "\n".join(lines) + "\n"

    def engine_row(label: str, value) -> str:
        return f"| {label} | " + " | ".join(value(b) for b in setup.backends) + " |"

    lines += [
        "",
        f"| {setup.engine_size} x {setup.engine_size} px generate job through the HTTP engine, "
        f"{setup.largest_batch} windows per call | " + " | ".join(f"{b} (s)" for b in setup.backends) + " |",
        "|---|" + "---:|" * len(setup.backends),
        engine_row("total: submit, run, result downloaded", lambda b: f"{engines[b]['wall']:.1f}"),
        engine_row("engine run time", lambda b: f"{engines[b]['run']:.1f}"),
        engine_row("HTTP and queue (total - run)", lambda b: f"{engines[b]['wall'] - engines[b]['run']:.1f}"),
        engine_row("the same job in-process: total", lambda b: f"{profiles[b]['total']:.1f}"),
    ]
    for part in ("text encoding", "UNet", "VAE", "raster I/O"):
        lines.append(engine_row(f"- {part}", lambda b: f"{profiles[b].get(part, 0.0):.1f}"))

    def other(b: str) -> str:
        measured = sum(v for k, v in profiles[b].items() if k not in ("total", "torch_peak", WRITER_THREAD))
        return f"{profiles[b]['total'] - measured:.1f}"

    lines += [
        engine_row("- other (planning, scheduler, blending, latents)", other),
        engine_row(WRITER_THREAD, lambda b: f"{profiles[b].get(WRITER_THREAD, 0.0):.1f}"),
        engine_row("GPU memory peak, engine process (device)", lambda b: gib(engines[b]["device_peak"])),
        engine_row("GPU memory peak, torch allocations (in-process job)", lambda b: gib(profiles[b]["torch_peak"])),
    ]
    return "\n".join(lines) + "\n"


def write_table(path: Path, table: str, start: str = TABLE_START, end: str = TABLE_END) -> None:
    """Put the table between the `start` and `end` markers of `path` (the whole file when it has none)."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1]
        text = f"{head}{start}\n{table}{end}{tail}"
    else:
        text = f"{start}\n{table}{end}\n"
    path.write_text(text, encoding="utf-8")


# ------------------------------------------------------------------------------------------- main


def onnx_runs_on(device: torch.device) -> bool:
    """Whether onnxruntime is installed with a provider for `device` (the ONNX side is then measured too)."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime
    except ImportError:
        return False
    wanted = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    return wanted in onnxruntime.get_available_providers()


def integers(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def make_setup(args, work: Path) -> Setup:
    from engine.models.demo import build_demo_models

    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.backends:
        backends = tuple(args.backends.split(","))
        unknown = set(backends) - {"torch", "onnx"}
        if unknown:
            sys.exit(f"speed.py: unknown backend(s) {', '.join(sorted(unknown))}; use torch, onnx or torch,onnx")
    else:
        backends = ("torch", "onnx") if onnx_runs_on(device) else ("torch",)
    batches = integers(args.batches) if args.batches else None
    if args.demo:
        build_demo_models(work / "models")
        return Setup(work / "models", work, "demo-satunet", "demo-controlnet-3d", device, window=128,
                     windows=args.windows or (2 if args.quick else 4), steps=args.steps or (2 if args.quick else 4),
                     guidance=7.5, batches=batches or (2,), engine_size=192 if args.quick else 512, backends=backends,
                     rounds=args.rounds or 1, quick=args.quick)
    if args.small:
        base, control = build_sd21_models(work / "models", device, small=True)
        return Setup(work / "models", work, base, control, device, window=256, windows=args.windows or 4,
                     steps=args.steps or 10, guidance=7.5, batches=batches or (1, 4), engine_size=args.engine_size or 512,
                     backends=backends, rounds=args.rounds or 3)
    if device.type != "cuda":
        sys.exit("speed.py: the full benchmark needs a CUDA GPU; use --small (a few minutes on CPU) or --demo --quick")
    base, control = build_sd21_models(work / "models", device)
    return Setup(work / "models", work, base, control, device, window=512, windows=args.windows or 16,
                 steps=args.steps or 25, guidance=7.5, batches=batches or (1, 16), engine_size=args.engine_size or 4096,
                 backends=backends, rounds=args.rounds or 2)


WORKLOADS = ("generate", "inpaint", "controlnet")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="store_true", help="the demo models (tiny, CPU-friendly) instead of SD-2.1 size")
    parser.add_argument("--small", action="store_true", help="SD-2.1's architecture, narrower, 256 px: the CPU benchmark")
    parser.add_argument("--quick", action="store_true", help="with --demo: the fewest windows and steps that still exercise every path")
    parser.add_argument("--backends", help="GFM4D's backends, comma-separated (default: torch,onnx when onnxruntime runs on the device)")
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--windows", type=int, help="windows per comparison (default 16; small 4, demo 4, quick 2)")
    parser.add_argument("--steps", type=int, help="denoising steps (default 25; small 10, demo 4, quick 2)")
    parser.add_argument("--batches", help="windows per model call on both sides, comma-separated (default 1,16; small 1,4; demo 2)")
    parser.add_argument("--rounds", type=int, help="timed runs per side, alternating; the median is kept (default 2; small 3; demo 1)")
    parser.add_argument("--engine-size", type=int, help="px side of the HTTP engine job (default 4096; small and demo 512)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated, a subset of {','.join(WORKLOADS)} (default: all)")
    parser.add_argument("--no-engine", action="store_true", help="skip the HTTP engine job and its in-process split")
    parser.add_argument("--work", type=Path, help="scratch folder; models built there are kept (default: a temporary folder)")
    parser.add_argument("--output", type=Path, help="markdown file for the table (default, except --demo: docs/performance.md)")
    args = parser.parse_args(argv)
    workloads = set(args.workloads.split(","))
    if not workloads <= set(WORKLOADS):
        parser.error(f"unknown workload(s) {', '.join(sorted(workloads - set(WORKLOADS)))}; use {', '.join(WORKLOADS)}")

    work = (args.work or Path(tempfile.mkdtemp(prefix="gfm4d-speed-"))).resolve()  # the engine runs elsewhere
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GFM4D_ONNX_CACHE", str(work / "onnx"))  # this process and the engine share exported graphs
    setup = make_setup(args, work)
    output = args.output or (None if args.demo else REPO / "docs" / "performance.md")
    markers = (CPU_TABLE_START, CPU_TABLE_END) if setup.device.type == "cpu" and not args.output else (TABLE_START, TABLE_END)

    from engine import config
    from engine.models.registry import ModelRegistry

    loads = [load_average()]
    dtype = config.dtype_for(setup.device)
    # First, while this process holds no GPU memory.
    engines = {} if args.no_engine else {backend: engine_job(setup, setup.steps, backend) for backend in setup.backends}

    clock = Clock(setup.device)
    registry = ModelRegistry(setup.models_dir)
    models = {backend: registry.load(setup.base, setup.device, dtype, backend=backend) for backend in setup.backends}
    model = models[setup.backends[0]]
    scheduler = type(model.make_scheduler()).__name__
    vanilla = (baseline_unet(model, dtype, metadata=False), baseline_vae(model, dtype), torch_text_encoder(model))
    comparisons = {}
    for batch in setup.batches:
        at = replace(setup, batch=batch)
        if "generate" in workloads:
            comparisons[("generate (SatUNet with metadata)", batch)] = compare_generate(at, models, vanilla, clock)
        if "inpaint" in workloads:
            comparisons[("inpaint (masked latent blending)", batch)] = compare_inpaint(at, models, vanilla, clock)
    del vanilla
    if setup.device.type == "cuda":
        torch.cuda.empty_cache()
    for batch in setup.batches if "controlnet" in workloads else ():
        at = replace(setup, batch=batch)
        comparisons[("3D ControlNet, 3 frames", batch)] = compare_controlnet_3d(at, registry, clock, dtype)
    profiles = {} if args.no_engine else {backend: profiled_job(setup, m, setup.steps, clock) for backend, m in models.items()}
    loads.append(load_average())

    table = render(setup, dtype, scheduler, comparisons, engines, profiles, tuple(loads))
    print(table)
    if output is not None:
        write_table(output, table, *markers)
        print(f"written to {output}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
