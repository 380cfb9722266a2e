"""Model registry, DiffusionSat-compatible models, loaders and demo models.

- `registry`: `ModelRegistry` (list / get / load / import_model), `ModelInfo`, `DiffusionModel`;
- `layout`: recognising a model folder from its config files (kinds, run-folder layout, SD-2.1 fill-in);
- `loading`: building the networks and loading the frozen components;
- `satunet` + `metadata_embedding`: DiffusionSat's metadata-conditioned UNet on current diffusers;
- `weights`: strict `.safetensors` / `.bin` (weights_only) loading;
- `schedulers`: diffusers schedulers by short name;
- `importing`: copying a model folder or released zip into the models directory;
- `demo`: tiny deterministic models in the real on-disk layouts.

Import from the submodules (e.g. `from engine.models.registry import ModelRegistry`).
"""
