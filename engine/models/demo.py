"""Tiny deterministic demo models, written in the same on-disk layouts as real checkpoints.

They are untrained (their images are noise-like), but every byte goes through the code that loads
real models: `demo-satunet` is laid out like a released DiffusionSat run (root components, the
SatUNet only under `checkpoint-100/unet/` as a `.bin`), `demo-sd` like a diffusers Stable
Diffusion folder (safetensors). Nothing is downloaded: even the CLIP tokenizer's BPE vocabulary is
built here, from words of DiffusionSat's captions.

Two ControlNet runs, laid out like DiffusionSat's (`controlnet/` as a `.bin` beside the root
components), are built on the demo SatUNet's trunk:
- `demo-controlnet-3d`: the temporal ControlNet (3 RGB frames), its UNet taken from demo-satunet
  through gfm4d.json's `base_model`, as the authors' notebook loads the base from another run;
- `demo-superres`: the 2D metadata ControlNet for Sentinel-2 (10 bands, conditioning_scale 2: a
  64 px condition for a 128 px output), with its own `unet/` as a finished training run saves it.
A trained ControlNet's zero convs are no longer zero; an untrained one would be a no-op, so the demo
fills them (and the temporal mixing weights) with small deterministic values and gives the
conditioning encoder a variance-keeping init: the conditioning really changes the output.

All share one VAE (SD's 8x downsampling, 4 latent channels) and one text encoder (hidden size 32,
77 positions), and run at 128 px (16x16 latents) so that CPU pipelines stay fast.
"""

import json
import math
import shutil
import tempfile
from pathlib import Path

import safetensors.torch
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from .controlnet_2d import MetadataControlNet
from .controlnet_3d import ControlNetModel3D
from .layout import SETTINGS_FILE
from .satunet import SatUNet

DEMO_SEED = 1234
DEMO_VERSION = 1  # bump when the demo models change, so old copies are rebuilt
SATUNET_DEMO = "demo-satunet"
SD_DEMO = "demo-sd"
CONTROLNET_3D_DEMO = "demo-controlnet-3d"
SUPERRES_DEMO = "demo-superres"
PREPOST_DEMO = "demo-prepost"
DEMO_FRAMES = 3
SUPERRES_BANDS = 10  # Sentinel-2 B4 B3 B2 B5 B6 B7 B8 B8A B11 B12 (spec §7)
SUPERRES_SCALE = 2
ZERO_CONV_FILL_STD = 0.02  # small stand-ins for the trained zero convs
DEMO_MIXING = 0.5  # temporal blocks half on
# Weight variance x fan_in that keeps activations' scale through conv + SiLU (E[silu(z)^2] ~ 0.36 for z ~ N(0, 1)).
SILU_KEEPING_GAIN = 2.8
DEMO_RESOLUTION = 128
TEXT_HIDDEN = 32
MAX_TOKENS = 77
CHECKPOINT = "checkpoint-100"

BOS, EOS, PAD = "<|startoftext|>", "<|endoftext|>", "!"  # SD-2.1's OpenCLIP tokenizer pads with "!"

# Words of DiffusionSat's caption templates (spec §8), fMoW classes and common countries.
CAPTION_WORDS = """
a an the of in on at by and with before after being affected natural disaster satellite image fmow
spacenet satlas buildings building covering area squared meters flooding flood fire wind earthquake
tsunami volcano farm airport hangar terminal amusement park aquaculture archaeological site barn border
checkpoint burial car dealership construction crop field dam debris or rubble educational institution
electric substation factory powerplant station flooded road fountain gas golf course ground
transportation helipad hospital impoverished settlement interchange lake pond lighthouse military
facility multi unit residential nuclear office oil place worship police port prison race track
railway bridge recreational runway shipyard shopping mall single smokestack space stadium storage tank
surface mine swimming pool toll booth tower tunnel opening waste disposal water treatment zoo river
forest city town village coast island desert mountain urban rural industrial commercial solar
united states kingdom italy france germany spain china india brazil australia japan canada mexico
russia egypt nigeria kenya turkey indonesia argentina chile peru colombia
""".split()

SD21_SCHEDULER_CONFIG = {  # stabilityai/stable-diffusion-2-1 scheduler/scheduler_config.json
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

_SHARED_FILES = (
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "scheduler/scheduler_config.json",
    "model_index.json",
    SETTINGS_FILE,
)
_EXPECTED_FILES = {
    SATUNET_DEMO: _SHARED_FILES + (f"{CHECKPOINT}/unet/config.json", f"{CHECKPOINT}/unet/diffusion_pytorch_model.bin"),
    SD_DEMO: _SHARED_FILES + ("unet/config.json", "unet/diffusion_pytorch_model.safetensors"),
    CONTROLNET_3D_DEMO: _SHARED_FILES + ("controlnet/config.json", "controlnet/diffusion_pytorch_model.bin"),
    PREPOST_DEMO: _SHARED_FILES + ("controlnet/config.json", "controlnet/diffusion_pytorch_model.bin"),
    SUPERRES_DEMO: _SHARED_FILES
    + (
        "unet/config.json",
        "unet/diffusion_pytorch_model.bin",
        "controlnet/config.json",
        "controlnet/diffusion_pytorch_model.bin",
    ),
}


def build_demo_models(models_dir: Path, seed: int = DEMO_SEED) -> list[Path]:
    """Write the demo models under `models_dir` (each kept when already complete); their folders.

    demo-satunet, demo-sd, demo-controlnet-3d and demo-prepost (whose base_model is demo-satunet),
    demo-superres.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    writers = {
        SATUNET_DEMO: _write_satunet_run,
        SD_DEMO: _write_sd_folder,
        CONTROLNET_3D_DEMO: _write_controlnet_3d_run,
        PREPOST_DEMO: _write_prepost_run,
        SUPERRES_DEMO: _write_superres_run,
    }
    return [_build(models_dir / name, writer, seed) for name, writer in writers.items()]


def _is_complete(folder: Path) -> bool:
    """Whether a demo folder has every file of the current demo version."""
    folder = Path(folder)
    if not all((folder / name).is_file() for name in _EXPECTED_FILES[folder.name]):
        return False
    try:
        settings = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not (isinstance(settings, dict) and settings.get("demo_version") == DEMO_VERSION):
        return False
    if folder.name == CONTROLNET_3D_DEMO:  # built before its config asked for the compact temporal block
        try:
            config = json.loads((folder / "controlnet" / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return config.get("gfm4d_compact_first_temporal") is True
    return True


def _build(target: Path, writer, seed: int) -> Path:
    if target.is_dir() and _is_complete(target):
        return target
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=target.parent))
    try:
        folder = staging / target.name
        folder.mkdir()
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
            writer(folder, seed)
        if target.is_dir() and _is_complete(target):
            return target  # another process finished first
        if target.exists():
            shutil.rmtree(target)  # an incomplete or outdated demo build
        folder.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _demo_satunet(seed: int) -> SatUNet:
    """The demo SatUNet; the same weights every time for one seed."""
    torch.manual_seed(seed + 3)
    return SatUNet(use_metadata=True, num_metadata=7, **_unet_architecture())


def _save_diffusionsat(model, folder: Path) -> None:
    """config.json + a `.bin` state dict, as DiffusionSat's training runs save networks."""
    model.save_config(folder)  # "_class_name" SatUNet / ControlNetModel / ControlNetModel3D + extra keys
    torch.save(model.state_dict(), folder / "diffusion_pytorch_model.bin")


def _write_satunet_run(folder: Path, seed: int) -> None:
    _write_shared_components(folder, seed)
    _save_diffusionsat(_demo_satunet(seed), folder / CHECKPOINT / "unet")
    _write_json(
        folder / "model_index.json",
        {
            "_class_name": "DiffusionSatPipeline",
            "_diffusers_version": "0.17.0.dev0",
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusionsat", "SatUNet"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )
    _write_settings(
        folder, "Demo DiffusionSat (tiny, untrained)", "A DiffusionSat-layout run folder for tests and demos"
    )


def _write_controlnet_3d_run(folder: Path, seed: int) -> None:
    _write_shared_components(folder, seed)
    unet = _demo_satunet(seed)
    torch.manual_seed(seed + 4)
    controlnet = ControlNetModel3D.from_unet(unet, conditioning_in_channels=3, use_temporal_transformer=True,
                                             gfm4d_compact_first_temporal=True)
    make_conditioning_visible(controlnet, seed + 5)
    _save_diffusionsat(controlnet, folder / "controlnet")
    _write_controlnet_model_index(folder, "ControlNetModel3D")
    _write_settings(
        folder,
        "Demo DiffusionSat 3D ControlNet (tiny, untrained)",
        "A DiffusionSat-layout temporal ControlNet run (3 frames) on demo-satunet, for tests and demos",
        base_model=SATUNET_DEMO,
        num_frames=DEMO_FRAMES,
    )


def _write_prepost_run(folder: Path, seed: int) -> None:
    """DiffusionSat's single-frame xBD task: a 2D ControlNet on RGB, pre-event <-> post-event."""
    _write_shared_components(folder, seed)
    unet = _demo_satunet(seed)
    torch.manual_seed(seed + 8)
    controlnet = MetadataControlNet.from_unet(unet, conditioning_in_channels=3, conditioning_scale=1)
    make_conditioning_visible(controlnet, seed + 9)
    _save_diffusionsat(controlnet, folder / "controlnet")
    _write_controlnet_model_index(folder, "ControlNetModel")
    _write_settings(
        folder,
        "Demo DiffusionSat pre/post 2D ControlNet (tiny, untrained)",
        "A DiffusionSat-layout 2D ControlNet run on RGB frames (one frame -> the image at another date) on demo-satunet",
        base_model=SATUNET_DEMO,
    )


def _write_superres_run(folder: Path, seed: int) -> None:
    _write_shared_components(folder, seed)
    unet = _demo_satunet(seed)
    _save_diffusionsat(unet, folder / "unet")
    torch.manual_seed(seed + 6)
    controlnet = MetadataControlNet.from_unet(
        unet, conditioning_in_channels=SUPERRES_BANDS, conditioning_scale=SUPERRES_SCALE
    )
    make_conditioning_visible(controlnet, seed + 7)
    _save_diffusionsat(controlnet, folder / "controlnet")
    _write_controlnet_model_index(folder, "ControlNetModel")
    _write_settings(
        folder,
        "Demo DiffusionSat Sentinel-2 super-resolution (tiny, untrained)",
        "A DiffusionSat-layout 2D ControlNet run (10 Sentinel-2 bands, 64 px -> 128 px), for tests and demos",
    )


def make_conditioning_visible(controlnet, seed: int) -> None:
    """Deterministic stand-ins for trained weights where an untrained ControlNet would ignore its condition.

    The zero convs (conditioning encoder's conv_out, residual convs) would make it a no-op, so they
    get small random values; and PyTorch's default init shrinks a [0, 1] image to about 1% over the
    encoder's seven convs, so those get a variance-keeping init instead. Temporal blocks are
    mixed in half way.
    """
    generator = torch.Generator().manual_seed(seed)
    encoder = controlnet.controlnet_cond_embedding
    residual_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    with torch.no_grad():
        for conv in (encoder.conv_in, *encoder.blocks):
            _fill(conv.weight, generator, math.sqrt(SILU_KEEPING_GAIN / conv.weight[0].numel()))
            conv.bias.zero_()
        _fill(encoder.conv_out.weight, generator, math.sqrt(1.0 / encoder.conv_out.weight[0].numel()))
        _fill(encoder.conv_out.bias, generator, ZERO_CONV_FILL_STD)
        for conv in residual_convs:
            _fill(conv.weight, generator, ZERO_CONV_FILL_STD)
            _fill(conv.bias, generator, ZERO_CONV_FILL_STD)
        for index in getattr(controlnet, "temporal_indices", ()):
            controlnet.mixing_attns[index].fill_(DEMO_MIXING)


def _fill(tensor: torch.Tensor, generator: torch.Generator, std: float) -> None:
    tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)


def _write_controlnet_model_index(folder: Path, controlnet_class: str) -> None:
    _write_json(
        folder / "model_index.json",
        {
            "_class_name": "DiffusionSatControlNetPipeline",
            "_diffusers_version": "0.17.0.dev0",
            "controlnet": ["diffusionsat", controlnet_class],
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusionsat", "SatUNet"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )


def _write_sd_folder(folder: Path, seed: int) -> None:
    _write_shared_components(folder, seed)
    torch.manual_seed(seed + 3)
    unet = UNet2DConditionModel(**_unet_architecture())
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    _write_json(
        folder / "model_index.json",
        {
            "_class_name": "StableDiffusionPipeline",
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )
    _write_settings(
        folder, "Demo Stable Diffusion (tiny, untrained)", "A diffusers-layout SD folder for tests and demos"
    )


def _unet_architecture() -> dict:
    """SD-2.1's UNet scaled down; sample_size 96 as in the released configs (and as meaningless)."""
    return dict(
        sample_size=96,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=(2, 4),  # head counts, as in SD-2.1's [5, 10, 20, 20]
        use_linear_projection=True,
        upcast_attention=True,
        flip_sin_to_cos=True,
        freq_shift=0,
    )


def _write_shared_components(folder: Path, seed: int) -> None:
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=DEMO_RESOLUTION,
        scaling_factor=0.18215,
    )
    vae.save_pretrained(folder / "vae", safe_serialization=True)

    vocab, merges = clip_bpe_vocabulary(CAPTION_WORDS)
    _write_tokenizer(folder / "tokenizer", vocab, merges)
    torch.manual_seed(seed + 1)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=2 * TEXT_HIDDEN,
        projection_dim=TEXT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS,
        hidden_act="gelu",
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[PAD],
    )
    text_encoder = CLIPTextModel(config)
    # Written like transformers' save_pretrained, without its progress bar.
    config.save_pretrained(folder / "text_encoder")
    safetensors.torch.save_file(
        {key: value.contiguous() for key, value in text_encoder.state_dict().items()},
        str(folder / "text_encoder" / "model.safetensors"),
        metadata={"format": "pt"},
    )
    _write_json(folder / "scheduler" / "scheduler_config.json", SD21_SCHEDULER_CONFIG)


def clip_bpe_vocabulary(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP byte-level BPE vocabulary in which each of `words` is a single token.

    Laid out like CLIP's: the 256 byte symbols, the same with the end-of-word mark '</w>', one
    entry per merge, then the start/end tokens. Any other text still tokenizes (down to bytes).
    """
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    ranks: dict[tuple[str, str], int] = {}
    byte_symbol = _bytes_to_unicode()
    for word in dict.fromkeys(words):
        encoded = "".join(byte_symbol[b] for b in word.encode("utf-8"))
        # Where the merges so far leave this word, join the pieces left to right. The new merges
        # rank after all earlier ones, so they neither change earlier words nor get pre-empted.
        parts = _apply_bpe(list(encoded[:-1]) + [encoded[-1] + "</w>"], ranks)
        while len(parts) > 1:
            ranks[(parts[0], parts[1])] = len(ranks)
            tokens.append(parts[0] + parts[1])
            parts = [parts[0] + parts[1]] + parts[2:]
    tokens += [BOS, EOS]
    return {token: index for index, token in enumerate(tokens)}, list(ranks)


def _apply_bpe(parts: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE: merge the best-ranked adjacent pair until no pair is a known merge."""
    while len(parts) > 1:
        best = min(zip(parts, parts[1:]), key=lambda pair: ranks.get(pair, len(ranks)))
        if best not in ranks:
            return parts
        merged, index = [], 0
        while index < len(parts):
            if index + 1 < len(parts) and (parts[index], parts[index + 1]) == best:
                merged.append(parts[index] + parts[index + 1])
                index += 2
            else:
                merged.append(parts[index])
                index += 1
        parts = merged
    return parts


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, codes)}


def _write_tokenizer(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    """The four files of SD-2.1's tokenizer/ folder."""
    folder.mkdir(parents=True)
    _write_json(folder / "vocab.json", vocab)
    lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": EOS}
    _write_json(folder / "special_tokens_map.json", special)
    _write_json(
        folder / "tokenizer_config.json",
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_TOKENS, "do_lower_case": True, **special},
    )


def _write_settings(folder: Path, display_name: str, description: str, **extra) -> None:
    _write_json(
        folder / SETTINGS_FILE,
        {
            "native_resolution": DEMO_RESOLUTION,
            "display_name": display_name,
            "description": description,
            "demo_version": DEMO_VERSION,
            **extra,
        },
    )


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
