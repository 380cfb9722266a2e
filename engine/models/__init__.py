"""Model registry, DiffusionSat-compatible models, loaders and demo models.

- `registry`: `ModelRegistry` (list / get / load / import_model), `ModelInfo`, `DiffusionModel`;
- `layout`: recognising a model folder from its config files (kinds, run-folder layout, SD-2.1 fill-in);
- `loading`: building the networks (UNet, ControlNet) and loading the frozen components;
- `satunet` + `metadata_embedding`: DiffusionSat's metadata-conditioned UNet on current diffusers;
- `controlnet_2d` / `controlnet_3d` (on `controlnet_base`): DiffusionSat's metadata ControlNet
  (super-resolution, pre ⇄ post) and temporal ControlNet, key for key the released checkpoints;
- `config_signature`: constructor signatures diffusers' `from_config` can read;
- `weights`: strict `.safetensors` / `.bin` (weights_only) loading;
- `schedulers`: diffusers schedulers by short name;
- `importing`: copying a model folder or released zip into the models directory;
- `demo`: tiny deterministic models in the real on-disk layouts;
- `backbones`: SDXL, SD3 and FLUX (recognition, loading, and the per-family adapter the sampling loop calls);
- `lora`: LoRA files (diffusers/PEFT, Kohya) fused through diffusers' loaders;
- `footprint`: parameter counts from weight-file headers, before loading;
- `tiny_backbones`: tiny random SDXL/SD3/FLUX folders in diffusers layout.

Import from the submodules (e.g. `from engine.models.registry import ModelRegistry`).
"""
