"""The models_fetch task: install a catalogue model into the engine's models directory, as a job.

It runs like any other job (queued, progress in bytes, cancellable between chunks; a cancelled
download is kept and resumed by the next fetch) and makes one result, `model.json`: what was
installed and whether it is ready. Only catalogue entries can be fetched: where the engine
downloads from is decided by its catalogue (GFM4D_CATALOGUE on the engine's machine) and its
GFM4D_SD21_SOURCE, never by the request.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.errors import GFM4DError
from engine.models.catalogue import get_entry, load_catalogue
from engine.pipelines.sampling import Progress

from . import task


def _catalogue_names() -> list[str]:
    try:
        return list(load_catalogue())
    except GFM4DError:
        return []  # a broken catalogue is reported when a fetch is asked for


class FetchParams(BaseModel):
    """Which catalogue model to install."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = Field(..., description="a model of the engine's catalogue (`gfm4d models available`)",
                      json_schema_extra=lambda schema: schema.update(enum=_catalogue_names()))
    components: bool = Field(True, description="also fetch Stable Diffusion 2.1's vae/text_encoder/tokenizer/scheduler "
                                               "when a DiffusionSat run lacks them and the engine has no SD-2.1 folder")

    @field_validator("name")
    @classmethod
    def _in_catalogue(cls, value: str) -> str:
        try:
            get_entry(value)
        except GFM4DError as exc:
            raise ValueError(str(exc)) from None
        return value


@task("models_fetch", FetchParams,
      summary="download, verify and install a model of the engine's catalogue (result: model.json)")
def run(registry, params: FetchParams, inputs, out_dir: Path, progress, cancel) -> dict[str, Path]:
    from engine.models.fetch import Fetcher

    fetcher = Fetcher(registry.models_dir, sd21_dir=registry.sd21_dir, cancel=cancel,
                      progress=lambda done, total, what: progress(Progress(done, total, what)))
    done = fetcher.fetch(params.name, with_components=params.components)
    models = {info.name: info for info in registry.scan().models}
    report = [
        {"name": item.name, "path": str(item.path), "installed": item.installed, "note": item.note,
         "ready": models[item.name].ready if item.name in models else None}
        for item in done
    ]
    path = Path(out_dir) / "model.json"
    path.write_text(json.dumps({"fetched": report}, indent=2) + "\n", encoding="utf-8")
    return {"model": path}
