"""A whole training run: chips -> VAE -> latents -> SatUNet -> a model folder with its card.

Every stage keeps its result in the run folder (chip bank, VAE checkpoints, encoded latents, UNet
checkpoints), so running the same command again after Ctrl-C or a crash continues where it
stopped, and a finished stage is not repeated. `mode` picks what is trained: `scratch` (a new
VAE, unless `vae_from` names a model, and a new SatUNet), `full` (the base model's UNet, all
weights) or `lora` (PEFT LoRA adapters on the base model's attention; written as a
`pytorch_lora_weights.safetensors` file in diffusers' format).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from engine import __version__
from engine.errors import InputError

from .chips import ChipBank, build_chip_bank
from .diffusion import (DiffusionData, UNetConfig, all_captions, build_unet, caption_embeddings, caption_token_ids,
                        encode_bank, train_unet, trained_parameters)
from .decoder import DecoderConfig, train_decoder
from .sources import SourceList
from .vae import VAEConfig, heldout_scores, train_vae


MIN_LATENT_STD = 0.01  # raw latent units; the mean-colour channels spread about 0.3


@dataclass
class SamplePlace:
    """A fixed place, scale and date at which sample grids are drawn."""

    prompt: str
    lon: float
    lat: float
    gsd_m: float
    date: str | None = None


@dataclass
class TrainRecipe:
    name: str = "my-satunet"
    display_name: str = ""
    description: str = ""
    chip_size: int = 128
    native_resolution: int | None = None  # the exported model's inference window in pixels (None: chip_size)
    scales: tuple[int, ...] = (1, 2, 4)
    holdout: float = 0.2
    # Extra training chips centred on event polygons where events cover at least this share (None: grid chips only)
    event_chips: float | None = None
    mode: str = "scratch"
    base_model: str | None = None  # for full / lora: a model in the registry
    vae_from: str | None = None  # scratch: reuse this model's VAE instead of training one
    # scratch: a schedule whose last step is pure noise, as sampling starts (Lin et al. 2024), sampled from t = 999
    zero_terminal_snr: bool = False
    default_guidance: float = 2.5
    default_steps: int = 30
    sample_every: int = 1000
    sample_steps: int = 25
    quality_chips: int = 64  # held-out chips scored in the model card (0: none)
    samples: list[SamplePlace] = field(default_factory=list)
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)  # the decoder alone, after the UNet (latents unchanged)

    @property
    def window(self) -> int:
        """The exported model's generation window in pixels: native_resolution, else the chip size."""
        return self.native_resolution or self.chip_size


def load_recipe(path: Path | None, **overrides) -> TrainRecipe:
    """A recipe from YAML (unknown keys refused), with `overrides` (None values ignored) on top."""
    document: dict = {}
    if path is not None:
        try:
            document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise InputError(f"cannot read the training recipe {path}: {error}") from None
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, name = key.partition(".")
        if name:
            document.setdefault(section, {})[name] = value
        else:
            document[key] = value
    return _recipe_from(document, str(path or "the options"))


def _recipe_from(document: dict, where: str) -> TrainRecipe:
    known = {f.name for f in dataclasses.fields(TrainRecipe)}
    unknown = set(document) - known
    if unknown:
        raise InputError(f"{where}: unknown recipe keys {sorted(unknown)}; known: {sorted(known)}")
    values = dict(document)
    try:
        values["vae"] = _section(VAEConfig, values.get("vae", {}), f"{where} vae")
        values["unet"] = _section(UNetConfig, values.get("unet", {}), f"{where} unet")
        values["decoder"] = _section(DecoderConfig, values.get("decoder", {}), f"{where} decoder")
        values["samples"] = [SamplePlace(**s) for s in values.get("samples", [])]
        if "scales" in values:
            values["scales"] = tuple(int(s) for s in values["scales"])
        recipe = TrainRecipe(**values)
    except TypeError as error:
        raise InputError(f"{where}: {error}") from None
    if recipe.mode not in ("scratch", "full", "lora"):
        raise InputError(f"{where}: mode must be scratch, full or lora, not {recipe.mode!r}")
    if recipe.mode != "scratch" and not recipe.base_model:
        raise InputError(f"{where}: mode {recipe.mode} fine-tunes a model: name it with base_model (--base)")
    if recipe.chip_size % 8 or recipe.chip_size < 32:
        raise InputError(f"{where}: chip_size must be a multiple of 8 and at least 32, not {recipe.chip_size}")
    if recipe.native_resolution is not None and (recipe.native_resolution % 8 or recipe.native_resolution < 32):
        raise InputError(f"{where}: native_resolution must be a multiple of 8 and at least 32, not {recipe.native_resolution}")
    if recipe.mode != "scratch" and recipe.zero_terminal_snr:
        raise InputError(f"{where}: zero_terminal_snr changes the noise schedule: only a model trained from scratch can have it")
    share = recipe.unet.labelled_share
    if share is not None and not 0 < share < 1:
        raise InputError(f"{where}: unet.labelled_share is the share of draws given to labelled chips: between 0 and 1, "
                         f"not {share}")
    if recipe.event_chips is not None and not 0 < recipe.event_chips <= 1:
        raise InputError(f"{where}: event_chips is the least share of a chip that events must cover: between 0 and 1, "
                         f"not {recipe.event_chips}")
    dropout = recipe.unet.labelled_metadata_dropout
    if dropout is not None and not 0 <= dropout <= 1:
        raise InputError(f"{where}: unet.labelled_metadata_dropout is a probability per metadata field: between 0 and 1, "
                         f"not {dropout}")
    if not 0 <= recipe.unet.whole_mask_share <= 1:
        raise InputError(f"{where}: unet.whole_mask_share is the share of random masks that cover the whole chip: between "
                         f"0 and 1, not {recipe.unet.whole_mask_share}")
    if recipe.mode == "lora" and recipe.decoder.steps:
        raise InputError(f"{where}: a LoRA keeps its base model's VAE: drop the decoder section or use mode full")
    recipe.unet.mode = recipe.mode
    if recipe.decoder.sample_posterior is None:  # the decoder learns on the latents the UNet learned to paint
        recipe.decoder.sample_posterior = recipe.unet.sample_latents
    return recipe


def _section(cls, values: dict, where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise InputError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**converted)


@dataclass
class TrainResult:
    output: Path
    steps: int
    vae_scores: dict | None
    files: dict[str, Path]


def run_training(
    sources: SourceList,
    recipe: TrainRecipe,
    run_dir: Path,
    output: Path,
    registry=None,
    log: Callable[[str], None] = print,
    progress: Callable[[str, int, int, dict], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    time_limit_s: float | None = None,
    device: torch.device | str | None = None,
) -> TrainResult:
    """Train as the recipe says on `device` (default CPU); write the model (or LoRA) to `output`; keep every stage in `run_dir`."""
    started = time.monotonic()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_recipe(run_dir, recipe)
    base = _load_base(recipe, registry) if recipe.mode != "scratch" or recipe.vae_from else None
    if recipe.mode != "scratch":  # a recipe the base cannot take is refused before any chip is cut
        _match_inpainting(recipe, base.unet.config.in_channels, log)
        _write_recipe(run_dir, recipe)  # as resolved against the base
    bank = build_chip_bank(sources.sources, run_dir / "bank", recipe.chip_size, recipe.scales, recipe.holdout, progress=log,
                           event_share=recipe.event_chips)
    log(f"chip bank: {len(bank.indices('train'))} training and {len(bank.indices('heldout'))} held-out chips of {recipe.chip_size} px")

    def remaining() -> float | None:
        return None if time_limit_s is None else max(1.0, time_limit_s - (time.monotonic() - started))
    vae_scores = None
    if base is not None and (recipe.mode != "scratch" or recipe.vae_from):
        vae = base.vae.float()
        scaling = float(base.vae.config.get("scaling_factor", 0.18215))
    else:
        vae, vae_info = train_vae(bank, run_dir / "vae", recipe.vae, log=log, cancel=cancel, time_limit_s=remaining(),
                                  device=device,
                                  progress=(lambda d, t, h: progress("vae", d, t, h)) if progress else None)
        if vae_info["steps_done"] < recipe.vae.steps:
            return TrainResult(output, 0, None, {})
        scaling = None
    vae.eval().requires_grad_(False)
    heldout = bank.images[bank.indices("heldout")]
    vae_scores = _cached_json(run_dir / f"vae_scores-{_weights_tag(vae)}.json", lambda: heldout_scores(vae, heldout))
    log(f"VAE on held-out chips: PSNR {vae_scores['psnr']:.2f} dB, SSIM {vae_scores['ssim']:.3f} "
        f"(shrink 8x and enlarge: {vae_scores['baseline_psnr']:.2f} dB, {vae_scores['baseline_ssim']:.3f})")

    components = _text_components(recipe, base, run_dir)
    text_encoder, tokenizer = _load_text(components)
    train_idx = bank.indices("train")
    means, stds = _cached_latents(run_dir, vae, bank, train_idx, recipe.unet.encode_orientations, log)
    if scaling is None:
        means, stds, scaling = _normalise_latents(vae, means, stds)
    records = [bank.records[i] for i in train_idx]
    from .batches import place_weights, with_labelled_share

    data = DiffusionData(
        means=means, stds=stds, metadata=torch.from_numpy(np.asarray(bank.metadata[train_idx])),
        land_covers=[r.land_cover for r in records], countries=[r.country for r in records],
        captions=[r.caption for r in records],
        weights=with_labelled_share(place_weights([r.place for r in records]), [bool(r.caption) for r in records],
                                    recipe.unet.labelled_share),
        embeddings=(caption_token_ids if recipe.unet.train_text_encoder else partial(caption_embeddings, text_encoder))(
            tokenizer, all_captions(bank)),
        scaling_factor=scaling,
    )
    if recipe.unet.inpainting:
        from .batches import Rows

        # The masked chips are encoded at every step, on the training device (the VAE kept for export stays put).
        data.images, data.vae = Rows(bank.images, train_idx), _on_device(vae, device)
        data.event_masks = Rows(bank.event_masks, train_idx) if bank.event_masks is not None else None
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_pretrained(components / "scheduler")
    unet = build_unet(recipe.unet, text_encoder.config.hidden_size) if recipe.mode == "scratch" else base.unet.float()
    if recipe.unet.inpainting:
        from .inpainting import widen_conv_in

        widen_conv_in(unet)
    samples_dir = run_dir / "samples"
    trained_text = text_encoder if recipe.unet.train_text_encoder else None  # else the components' copy is exported

    def on_checkpoint(step: int, ema, history) -> None:
        if recipe.samples and not recipe.unet.inpainting and (step % recipe.sample_every == 0 or step == recipe.unet.steps):
            params = trained_parameters(unet, trained_text)
            ema.store(params)
            ema.copy_to(params)
            try:
                _sample_grid(recipe, unet, vae, components, samples_dir / f"step-{step:08d}.png", log, trained_text)
            finally:
                ema.restore(params)
                unet.train()
                if trained_text is not None:
                    trained_text.train()

    unet, history = train_unet(unet, scheduler, data, run_dir / "unet", recipe.unet, log=log, cancel=cancel,
                               time_limit_s=remaining(), on_checkpoint=on_checkpoint, device=device,
                               text_encoder=trained_text,
                               progress=(lambda d, t, h: progress("unet", d, t, h)) if progress else None)
    steps = history[-1]["step"] if history else 0
    files = {}
    from .report import loss_curve_png

    if history:
        files["loss_curve"] = loss_curve_png(history, run_dir / "loss_curve.png", f"{recipe.name}: SatUNet loss")
    if steps < recipe.unet.steps:
        log(f"stopped at step {steps} of {recipe.unet.steps}; run the same command again to continue")
        return TrainResult(output, steps, vae_scores, files)
    if recipe.decoder.steps:
        vae, decoded = train_decoder(vae, bank, run_dir / "decoder", recipe.decoder, log=log, cancel=cancel,
                                     time_limit_s=remaining(), device=device,
                                     progress=(lambda d, t, h: progress("decoder", d, t, h)) if progress else None)
        if decoded["steps_done"] < recipe.decoder.steps:
            log(f"stopped training the decoder at step {decoded['steps_done']}; run the same command again to continue")
            return TrainResult(output, steps, vae_scores, files)
        vae_scores = {**vae_scores, "decoder": _cached_json(run_dir / f"vae_scores-{_weights_tag(vae)}.json",
                                                            lambda: heldout_scores(vae, heldout))}
        log(f"VAE with the new decoder on held-out chips: PSNR {vae_scores['decoder']['psnr']:.2f} dB, "
            f"SSIM {vae_scores['decoder']['ssim']:.3f}")
    lineage = base_recipe(base.info.path) if base is not None and recipe.mode != "scratch" else []
    card = model_card(recipe, sources, bank, vae_scores, steps, {}, lineage)
    if recipe.mode == "lora":
        _export_lora(unet, output, card)
    else:
        from .export import export_model, write_card

        settings = {
            "native_resolution": recipe.window, "display_name": recipe.display_name or recipe.name,
            "description": recipe.description or f"trained with gfm4d train ({recipe.mode})",
            "default_guidance": recipe.default_guidance, "default_steps": recipe.default_steps,
            "tasks": ["inpaint"] if recipe.unet.inpainting else ["generate", "inpaint"],
        }
        extra = {"loss_curve.png": files["loss_curve"]} if "loss_curve" in files else {}
        export_model(output, unet, vae, components, settings, card, extra_files=extra, text_encoder=trained_text)
        if recipe.quality_chips and not recipe.unet.inpainting:  # samples are scored through generate
            from .quality import heldout_quality

            log(f"scoring {recipe.quality_chips} held-out chips against samples of the model and of a random-weight twin")
            quality = _cached_json(run_dir / f"quality-{steps}-{_weights_tag(vae)}.json", lambda: heldout_quality(
                output, bank, recipe, recipe.quality_chips, recipe.default_steps))
            write_card(output, model_card(recipe, sources, bank, vae_scores, steps, quality, lineage))
        if recipe.unet.inpainting:
            events = _cached_json(run_dir / f"events-{steps}-{_weights_tag(unet)}-g{recipe.default_guidance:g}.json",
                                  lambda: _score_events(output, registry, recipe, sources, log, device))
            write_card(output, model_card(recipe, sources, bank, vae_scores, steps, {"events": events}, lineage))
    log(f"wrote {output}")
    return TrainResult(output, steps, vae_scores, files)


def _on_device(module, device):
    """`module` itself on the CPU, else a copy of it on `device`."""
    import copy

    device = torch.device(device or "cpu")
    return module if device.type == "cpu" else copy.deepcopy(module).to(device)


def _write_recipe(run_dir: Path, recipe: TrainRecipe) -> None:
    (run_dir / "recipe.json").write_text(json.dumps(dataclasses.asdict(recipe), indent=2, default=str), encoding="utf-8")


def _match_inpainting(recipe: TrainRecipe, base_channels: int, log) -> None:
    """A fine-tune of an inpainting model trains as one; a LoRA cannot make one (it adds no input channels)."""
    if base_channels == 9 and not recipe.unet.inpainting:
        log(f"{recipe.base_model} is an inpainting model: it is fine-tuned as one (event polygons as masks)")
        recipe.unet.inpainting = True
    elif base_channels != 9 and recipe.unet.inpainting and recipe.mode == "lora":
        raise InputError(f"an inpainting UNet has 5 more input channels than {recipe.base_model}'s, which a LoRA cannot "
                         "add: use mode full (or scratch) with unet.inpainting, or a LoRA on an inpainting model")


def _score_events(output: Path, registry, recipe: TrainRecipe, sources: SourceList, log, device=None) -> dict:
    """Held-out events inpainted on the training device by the new model and, for a fine-tune, by its base
    as the registry has it (not the copy this run trained), both at the new model's default guidance:
    {source: {model: scores}}."""
    from engine import config
    from engine.models.registry import ModelRegistry

    from .event_check import score_heldout_events

    device = torch.device(device or "cpu")
    placed = {"device": device, "dtype": config.dtype_for(device)}
    models = {recipe.name: ModelRegistry(Path(output).parent).load(Path(output).name, **placed)}
    if recipe.mode != "scratch":
        models[recipe.base_model] = registry.load(recipe.base_model, **placed)
    log(f"inpainting the held-out events with {', '.join(models)}")
    return score_heldout_events(models, sources.sources, recipe.holdout, recipe.default_steps, recipe.default_guidance)


def _load_base(recipe: TrainRecipe, registry):
    """The base model with its own copies of the UNet and VAE: the registry's cached model (which an
    engine keeps serving generate jobs from) must not be fine-tuned or given adapters in place."""
    import copy

    name = recipe.base_model or recipe.vae_from
    if registry is None:
        raise InputError(f"training on {name} needs the models folder it is in (--models-dir)")
    cached = registry.load(name, device="cpu", dtype=torch.float32)
    return dataclasses.replace(cached, unet=copy.deepcopy(cached.unet), vae=copy.deepcopy(cached.vae))


def _text_components(recipe: TrainRecipe, base, run_dir: Path) -> Path:
    """A folder with text_encoder/, tokenizer/, scheduler/: the base model's, or GFM4D's own (staged, then renamed)."""
    folder = run_dir / "components"
    if (folder / "scheduler").is_dir():
        return folder
    staging = Path(tempfile.mkdtemp(prefix=".components-", dir=run_dir))
    if base is not None:
        for name in ("text_encoder", "tokenizer", "scheduler"):
            shutil.copytree(base.info.components[name], staging / name)
    else:
        from .export import write_text_components

        write_text_components(staging, recipe.unet.seed + 1234)
        if recipe.zero_terminal_snr:
            _zero_terminal_snr(staging / "scheduler" / "scheduler_config.json")
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return folder


def _zero_terminal_snr(config_path: Path) -> None:
    """Rescale the betas so the last training step is pure noise, and sample from that step ("trailing").

    SD's schedule leaves a little of the image in its noisiest step, so a model trained on it leans on
    that trace of the layout and, started from pure noise, paints a flat mean-coloured scene.
    """
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def _load_text(components: Path):
    from transformers import CLIPTextModel, CLIPTokenizer

    text_encoder = CLIPTextModel.from_pretrained(components / "text_encoder", torch_dtype=torch.float32).eval()
    return text_encoder.requires_grad_(False), CLIPTokenizer.from_pretrained(components / "tokenizer")


def _weights_tag(module: torch.nn.Module) -> str:
    """A short fingerprint of a module's weights, in the names of score files: scores of one VAE (a new
    decoder, a changed base model) must not be read back for another."""
    total = f"{sum(float(p.detach().double().sum()) for p in module.parameters()):.6e}"
    return hashlib.sha1(total.encode()).hexdigest()[:8]


def _cached_json(path: Path, compute) -> dict:
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    value = compute()
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")
    return value


def _cached_latents(run_dir: Path, vae, bank: ChipBank, indices: np.ndarray, orientations: int, log):
    path = run_dir / "latents.pt"
    key = f"{bank.signature}:{orientations}:{_weights_tag(vae)}"
    if path.is_file():
        cached = torch.load(path, weights_only=False)
        if cached.get("key") == key:
            return cached["means"], cached["stds"]
    means, stds = encode_bank(vae, bank, indices, orientations, log=log)
    scratch = path.with_suffix(".tmp")
    torch.save({"key": key, "means": means, "stds": stds}, scratch)
    scratch.replace(path)
    return means, stds


def _normalise_latents(vae, means: torch.Tensor, stds: torch.Tensor):
    """Per-channel unit variance for a residual VAE (stored in its config), else SD's single scaling factor."""
    from engine.models.residual_vae import ResidualAutoencoderKL

    raw = means.float()
    if not isinstance(vae, ResidualAutoencoderKL):
        scaling = float(1.0 / raw.std())
        vae.register_to_config(scaling_factor=scaling)
        return means, stds, scaling
    channels = raw.transpose(0, 2).reshape(raw.shape[2], -1)
    # A channel the encoder has not learned to use yet is nearly constant: unit variance would blow its
    # posterior noise up to thousands, so its spread counts as at least MIN_LATENT_STD.
    shift, scale = channels.mean(dim=1), 1.0 / channels.std(dim=1).clamp(min=MIN_LATENT_STD)
    vae.set_latent_normalisation(shift.tolist(), scale.tolist())
    view = (1, 1, -1, 1, 1)
    return ((raw - shift.view(view)) * scale.view(view)).half(), (stds.float() * scale.view(view)).half(), 1.0


def _sample_grid(recipe: TrainRecipe, unet, vae, components: Path, path: Path, log, text_encoder=None) -> Path:
    """Generate each sample place through the real pipeline (an exported copy in a scratch models folder)."""
    from .export import export_model
    from .report import grid_png

    window = recipe.window
    with tempfile.TemporaryDirectory(prefix="gfm4d-samples-") as scratch:
        folder = export_model(Path(scratch) / "sampling", unet, vae, components, {"native_resolution": window}, "",
                              text_encoder=text_encoder)
        tiles, labels = sample_places(folder, recipe.samples, window, recipe.sample_steps, recipe.default_guidance)
    log(f"sample grid: {path}")
    return grid_png(tiles, labels, min(4, len(tiles)), path, tile=window)


def sample_places(model_folder: Path, places: list[SamplePlace], size: int, steps: int, guidance: float,
                  seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """One `size`-pixel image per place, generated on a UTM grid there at its GSD; (tiles, labels)."""
    import rasterio

    from engine.geo.grid import utm_square
    from engine.models.registry import ModelRegistry
    from engine.pipelines.generate import GenerateRequest, generate

    folder = Path(model_folder)
    model = ModelRegistry(folder.parent).load(folder.name)
    tiles, labels = [], []
    with tempfile.TemporaryDirectory(prefix="gfm4d-place-") as scratch:
        for index, place in enumerate(places):
            request = GenerateRequest(grid=utm_square(place.lon, place.lat, place.gsd_m, size), prompt=place.prompt,
                                      date=place.date, steps=steps, guidance_scale=guidance, seed=seed + index)
            out = Path(scratch) / f"{index}.tif"
            generate(model, request, out)
            with rasterio.open(out) as ds:
                tiles.append(np.moveaxis(ds.read([1, 2, 3]), 0, -1))
            labels.append(f"{place.prompt.replace('a fmow satellite image', '').strip() or 'no text'}, {place.gsd_m:g} m")
    return tiles, labels


def _export_lora(unet, output: Path, card: str) -> None:
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    import safetensors.torch

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    state = {f"unet.{k}": v.detach().half().cpu().contiguous() for k, v in state.items()}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".safetensors":  # one file (the models folder's loras/), its card beside it
        scratch = output.with_name(f".{output.name}.tmp")
        safetensors.torch.save_file(state, str(scratch), metadata={"format": "pt"})
        output.with_suffix(".md").write_text(card, encoding="utf-8")
        scratch.replace(output)
        return
    staging = Path(tempfile.mkdtemp(prefix=".lora-", dir=output.parent))
    try:
        safetensors.torch.save_file(state, str(staging / "pytorch_lora_weights.safetensors"), metadata={"format": "pt"})
        (staging / "README.md").write_text(card, encoding="utf-8")
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _recipe_lines(recipe: TrainRecipe) -> list[str]:
    """How the VAE and the UNet were made, for the card: trained here, or the base model's and fine-tuned."""
    vae, unet = recipe.vae, recipe.unet
    if recipe.mode != "scratch" or recipe.vae_from:
        vae_line = f"- VAE: {recipe.base_model or recipe.vae_from}'s, unchanged."
    else:
        vae_line = (f"- VAE: {vae.block_out_channels} channels, f = 8, 4 latent channels; loss L1 + MSE + colour "
                    f"(8x-pooled) + edges + KL {vae.kl_weight:g}"
                    + ("" if vae.sample_posterior else " on the means (deterministic: decodes the posterior mean)")
                    + f"; {vae.steps} steps of {vae.batch} x {vae.crop}^2 crops.")
    if recipe.decoder.steps:
        vae_line += (f" Then the decoder alone ({'new' if recipe.decoder.restart else 'continued'}; encoder and latents "
                     f"unchanged): {recipe.decoder.steps} steps of pixel losses and a PatchGAN "
                     f"{recipe.decoder.discriminator_channels}, hinge loss, adversarial weight "
                     f"{recipe.decoder.adversarial_weight:g} balanced against the pixel loss.")
    if recipe.mode == "lora":
        network = f"- LoRA (PEFT) of rank {unet.lora_rank} on the attention projections of {recipe.base_model}'s UNet"
    elif recipe.mode == "full":
        network = f"- All weights of {recipe.base_model}'s UNet"
    else:
        network = (f"- SatUNet: {unet.block_out_channels} channels, {unet.layers_per_block} layers per block, "
                   f"attention {unet.attention_levels}")
    return [vae_line, network + (
        f"; v-prediction, min-SNR gamma {unet.snr_gamma:g}, EMA {unet.ema_decay}, metadata dropout "
        f"{unet.metadata_dropout} per field, caption dropout {unet.caption_dropout}, both at once (unconditional) "
        f"{unet.unconditional_dropout}, AdamW lr {unet.learning_rate:g}, batch {unet.batch}"
        + ("" if unet.sample_latents else ", on the posterior means")
        + (f", labelled chips {unet.labelled_share:.0%} of the draws" if unet.labelled_share else "")
        + (f", their metadata dropout {unet.labelled_metadata_dropout} per field"
           if unet.labelled_metadata_dropout is not None else "")
        + (", text encoder trained with the UNet" if unet.train_text_encoder else "")
        + (f"; an inpainting UNet (9 input channels: noisy latents, mask, masked image latents), chips with an event "
           f"caption masked with their event polygons, the rest with random blobs (the whole chip "
           f"{unet.whole_mask_share:.0%} of the time)" if unet.inpainting else "") + ".")]


def base_recipe(model_path: Path | None) -> list[str]:
    """The recipe lines of a base model's card (how its VAE and UNet were made), for a fine-tune's card."""
    card = Path(model_path) / "README.md" if model_path else None
    if card is None or not card.is_file():
        return []
    lines, inside = [], False
    for line in card.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line.strip() == "## Recipe"
        elif inside and line.lstrip().startswith("- ") and not line.startswith("- Default sampling"):
            lines.append(line)
    return lines


def _events_table(events: dict, recipe: TrainRecipe) -> list[str]:
    """The card's held-out events: painted against real pixels, this model beside its base."""
    if not events:
        return ["No event polygon reaches a held-out strip: the held-out event check had nothing to inpaint.", ""]
    names = list(next(iter(events.values())))
    lines = ["| held-out event (source) | pixels | " + " | ".join(f"MAE: {n}" for n in names) + " | mean RGB: real / "
             + " / ".join(names) + " |", "|---" * (3 + len(names)) + "|"]
    for source, scores in events.items():
        first = scores[names[0]]
        colours = " / ".join(",".join(f"{v:.0f}" for v in c) for c in [first["real"]] + [scores[n]["painted"] for n in names])
        lines.append(f"| {source} | {first['pixels']} | " + " | ".join(f"{scores[n]['mae']:.1f}" for n in names)
                     + f" | {colours} |")
    means = [np.mean([scores[n]["mae"] for scores in events.values()]) for n in names]
    lines += [f"| mean of {len(events)} | | " + " | ".join(f"**{m:.1f}**" for m in means) + " | |", "",
              "(Every source's event polygons that reach its held-out strip, clipped to it and inpainted into the real "
              f"post-event raster with their own caption, {recipe.default_steps} steps, guidance {recipe.default_guidance:g} "
              "(this model's default) for every model: under "
              "the mask lie the real flood or burn scar, never trained on. MAE: mean absolute difference from the real "
              "pixels, 0-255 after inference's stretch, two pixels in from the polygon's edge"
              + (f"; {names[1]}: the base model as installed" if len(names) > 1 else "") + ".)", ""]
    return lines


def model_card(recipe: TrainRecipe, sources: SourceList, bank: ChipBank, vae_scores: dict | None, steps: int,
               metrics: dict, lineage: list[str] = ()) -> str:
    """The model card: what it was trained on (with licences), how, and how well on held-out chips;
    `lineage`: the base model's recipe lines, when this is a fine-tune."""
    from collections import Counter

    per_source = Counter((r.source, r.split) for r in bank.records)
    lines = [f"# {recipe.display_name or recipe.name}", "", recipe.description or "", "",
             f"Trained with `gfm4d train` (GFM4D {__version__}) on {dt.date.today().isoformat()}: mode `{recipe.mode}`"
             + (f" on `{recipe.base_model}`" if recipe.base_model else "") + f", {steps} SatUNet steps.", "",
             "## Training data", "", "| source | licence | attribution | land cover | train / held-out chips |",
             "|---|---|---|---|---|"]
    for source in sources.sources:
        lines.append(f"| {', '.join(p.name for p in source.paths)} | {source.licence} | {source.attribution} | "
                     f"{source.land_cover or ''} | {per_source[(source.name, 'train')]} / {per_source[(source.name, 'heldout')]} |")
    cover_of = {source.name: source.land_cover for source in sources.sources}
    labelled = Counter((r.source, r.caption or r.land_cover) for r in bank.records
                       if r.caption or r.land_cover != cover_of.get(r.source))
    for source in sources.sources:
        if source.polygons:
            found = ", ".join(f"{count} '{text}'" for (name, text), count in sorted(labelled.items()) if name == source.name)
            lines.append(f"\n{source.name}: chips captioned by the class of the polygons in {source.polygons.name}: "
                         f"{found or 'none (no class covers a quarter of any chip)'}.")
    gsds = sorted({round(r.gsd_m, 2) for r in bank.records})
    lines += ["", f"Chips of {recipe.chip_size} px at pooling scales {list(recipe.scales)}; ground resolutions seen: "
              f"{', '.join(f'{g:g}' for g in gsds)} m. Held out: the east {recipe.holdout:.0%} of every source "
              "(one strip per place), never trained on."
              + (f" Besides the grid, training chips centred on event polygons where events cover at least "
                 f"{recipe.event_chips:.0%} of the chip." if recipe.event_chips is not None else ""), "", "## Recipe", "",
              *_recipe_lines(recipe),
              *([f"- The base model `{recipe.base_model}`, as its card gives it:"] + [f"  {line}" for line in lineage]
                if lineage else []),
              f"- Default sampling: guidance {recipe.default_guidance:g}, {recipe.default_steps} steps.", ""]
    if vae_scores:
        lines += ["## Held-out figures", "", "| | PSNR (dB) | SSIM |", "|---|---|---|",
                  f"| VAE reconstruction | {vae_scores['psnr']:.2f} | {vae_scores['ssim']:.3f} |",
                  *([f"| VAE reconstruction, decoder stage (shipped) | {vae_scores['decoder']['psnr']:.2f} | "
                     f"{vae_scores['decoder']['ssim']:.3f} |"] if "decoder" in vae_scores else []),
                  f"| shrink 8x, enlarge bicubic (baseline) | {vae_scores['baseline_psnr']:.2f} | {vae_scores['baseline_ssim']:.3f} |",
                  "", f"({vae_scores['chips']} held-out chips, scikit-image metrics.)", ""]
    if metrics.get("events") is not None:
        lines += _events_table(metrics["events"], recipe)
    if metrics.get("trained"):
        trained, untrained = metrics["trained"], metrics["random_weights"]
        lines += ["| samples vs held-out chips (texture features) | FD | KD |", "|---|---|---|",
                  f"| this model | {trained['fd_texture']:.2f} | {trained['kd_texture']:.3f} ± {trained['kd_texture_std']:.3f} |",
                  f"| the same pipeline with random UNet weights | {untrained['fd_texture']:.2f} | "
                  f"{untrained['kd_texture']:.3f} ± {untrained['kd_texture_std']:.3f} |", "",
                  f"({trained['images']} held-out chips; each sample generated on the chip's own grid with its place, "
                  f"GSD, date and caption, {metrics['steps']} steps, guidance {metrics['guidance']:g}. FD: Fréchet "
                  "distance, KD: kernel (KID) distance ± its spread over 50 subsets of half the chips, on colour, gradient, "
                  "local-binary-pattern and Gabor features from scikit-image, in units of the held-out set's spread; "
                  "lower is closer. Inception weights "
                  "cannot be had offline: `gfm4d evaluate` gives Inception FID/KID on the same sets with them.)", ""]
    return "\n".join(lines) + "\n"
