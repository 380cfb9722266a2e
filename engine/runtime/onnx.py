"""ONNX export of torch modules, a disk cache of the exported graphs, and onnxruntime sessions.

Graphs are exported with torch's TorchScript-based exporter (a few seconds for a UNet; the
dynamo exporter takes ten times longer and gains nothing here), with dynamic batch and spatial
axes, so one graph serves every window size and batch. Each graph is kept under the cache folder
in a folder named by a hash of everything that shapes it: the weights it was traced with, the
static part of its input shapes and dtypes, the opset, and the torch / diffusers / GFM4D
versions. Graphs over 2 GB keep their weights as external data files beside `model.onnx`.

Attention layers export as onnxruntime's fused MultiHeadAttention operator (onnx_attention), so
no graph holds an (N, N) score matrix.

Sessions run on the CUDA execution provider (onnxruntime-gpu) for CUDA models and on the CPU
provider otherwise. Inputs and outputs are bound to torch tensors where they are (I/O binding and
DLPack), so a CUDA model's tensors never leave the GPU, and a CUDA session queues its kernels on
torch's CUDA stream: they run after the torch kernels that wrote their inputs and before the ones
that read their outputs without the host waiting for the GPU before or after a call.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from engine import __version__
from engine.errors import ModelError

from .onnx_attention import OPSET_IMPORTS, uses_fused_attention

OPSET = 17
EXPORT_FORM = "attention as com.microsoft MultiHeadAttention"  # part of the cache key: graphs exported otherwise are stale
GRAPH_FILE = "model.onnx"
_SAMPLE_BYTES = 1 << 20  # bytes read from each end of a weights file for its fingerprint
_ELEMENT_TYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32}


def folder_fingerprint(folder: Path) -> str:
    """Identifies the weights in a component folder without reading gigabytes: every file's name,
    size and modification time, and the first and last MiB of its content."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(_SAMPLE_BYTES))
            if stat.st_size > 2 * _SAMPLE_BYTES:
                handle.seek(-_SAMPLE_BYTES, 2)
                digest.update(handle.read())
    return digest.hexdigest()


def static_signature(examples: Sequence[torch.Tensor], names: Sequence[str], dynamic_axes: dict) -> list:
    """Each input's name, dtype and shape with its dynamic axes blanked: what a graph is specialised to."""
    signature = []
    for name, tensor in zip(names, examples):
        dynamic = dynamic_axes.get(name, {})
        shape = [None if axis in dynamic else size for axis, size in enumerate(tensor.shape)]
        signature.append([name, str(tensor.dtype).removeprefix("torch."), shape])
    return signature


def graph_key(component: str, fingerprint: str, signature: list, device: torch.device, opset: int = OPSET) -> str:
    """The cache folder name of one exported graph."""
    import diffusers

    identity = {
        "component": component,
        "weights": fingerprint,
        "inputs": signature,
        "device": torch.device(device).type,
        "opset": opset,
        "export": EXPORT_FORM,
        "versions": [torch.__version__, diffusers.__version__, __version__],
    }
    return f"{component}-{hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]}"


def cached_graph(cache_dir: Path, key: str, export: Callable[[Path], None]) -> Path:
    """The graph file of `key`, exported into `cache_dir/key/` first when it is not there yet.

    The export goes to a scratch folder that is renamed into place, so an interrupted export
    leaves no half-written graph and two processes exporting at once both end with a whole one.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / key
    if (target / GRAPH_FILE).is_file():
        return target / GRAPH_FILE
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir))
    except OSError as exc:
        raise ModelError(f"cannot write ONNX graphs to {cache_dir}: {exc}; set GFM4D_ONNX_CACHE to a writable folder") from exc
    try:
        export(scratch)
        if not (target / GRAPH_FILE).is_file():
            shutil.rmtree(target, ignore_errors=True)
            scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target / GRAPH_FILE


def export_graph(module: torch.nn.Module, examples: Sequence[torch.Tensor], input_names: Sequence[str],
                 output_names: Sequence[str], dynamic_axes: dict, folder: Path, opset: int = OPSET) -> Path:
    """Trace `module` on `examples` into `folder/model.onnx` with the given dynamic axes."""
    if importlib.util.find_spec("onnx") is None:
        raise ModelError("exporting a model to ONNX needs the onnx package: pip install 'gfm4d[onnx]' "
                         "(or 'gfm4d[onnx-gpu]'), or use the torch backend (GFM4D_BACKEND=torch)")
    path = Path(folder) / GRAPH_FILE
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about every Python-side shape check it freezes; those checks hold for all shapes used.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, tuple(examples), str(path), dynamo=False, input_names=list(input_names),
            output_names=list(output_names), dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True,
            custom_opsets=OPSET_IMPORTS if uses_fused_attention(module) else None,
        )
    return path


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelError(
            "the ONNX backend needs onnxruntime: pip install 'gfm4d[onnx]' (CPU) or 'gfm4d[onnx-gpu]' (CUDA), "
            "or use the torch backend (GFM4D_BACKEND=torch)"
        ) from exc
    return onnxruntime


def providers_for(device: torch.device, stream: int | None = None) -> list:
    """onnxruntime execution providers for a torch device (ModelError when CUDA is asked for but missing).

    `stream`: a CUDA stream handle for the session's kernels (torch's, so the two stay in order).
    """
    ort = _onnxruntime()
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        options = {"device_id": device.index or 0}
        if stream is not None:
            options.update(has_user_compute_stream="1", user_compute_stream=str(stream))
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    raise ModelError(
        f"the ONNX backend cannot run on {device}: this onnxruntime has {', '.join(ort.get_available_providers())}. "
        "Install onnxruntime-gpu instead of onnxruntime (pip uninstall onnxruntime; pip install 'gfm4d[onnx-gpu]') "
        "or use the torch backend (GFM4D_BACKEND=torch)"
    )


class StreamOrder:
    """Keeps a session's kernels, queued on `stream`, in order with torch's work on whatever stream is
    current at a call, without blocking the host: the session's stream waits for the current one
    before the run, the current one for the session's after it. On the same stream (the usual case)
    the order is already right and nothing is added."""

    def __init__(self, stream):
        self.stream = stream

    @contextmanager
    def around(self, current, inputs: Sequence[torch.Tensor]):
        other = current != self.stream
        if other:
            self.stream.wait_stream(current)
            for tensor in inputs:  # torch must not reuse their memory before the session's stream has read it
                tensor.record_stream(self.stream)
        yield
        if other:
            current.wait_stream(self.stream)


class OnnxGraph:
    """An exported graph in an onnxruntime session, called with torch tensors on its device."""

    def __init__(self, path: Path, device: torch.device | str):
        ort = _onnxruntime()
        self.device = torch.device(device)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: the CUDA provider warns about every CPU-placed shape op
        self.run_options = ort.RunOptions()
        self.order = None
        stream = None
        if self.device.type == "cuda":
            self.order = StreamOrder(torch.cuda.current_stream(self.device))
            stream = self.order.stream.cuda_stream
            # The outputs are read on the same stream: the host need not wait for the GPU at the end of a run.
            self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers_for(self.device, stream))
        except ModelError:
            raise
        except Exception as exc:  # onnxruntime's own error types derive from Exception only
            raise ModelError(f"onnxruntime cannot load {path}: {exc}; delete that folder to export it again") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Outputs as torch tensors on the graph's device, in the graph's output order."""
        if len(inputs) != len(self.input_names):
            raise ValueError(f"the graph takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), got {len(inputs)}")
        binding = self.session.io_binding()
        kept = []  # the bound memory must outlive the run
        for name, tensor in zip(self.input_names, inputs):
            if tensor.dtype not in _ELEMENT_TYPES:
                raise ModelError(f"the ONNX backend does not take {tensor.dtype} inputs; use float16 or float32 (GFM4D_DTYPE)")
            tensor = tensor.contiguous()
            kept.append(tensor)
            binding.bind_input(name, tensor.device.type, tensor.device.index or 0, _ELEMENT_TYPES[tensor.dtype],
                               tuple(tensor.shape), tensor.data_ptr())
        for name in self.output_names:
            binding.bind_output(name, self.device.type, self.device.index or 0)
        ordered = self.order.around(torch.cuda.current_stream(self.device), kept) if self.order else nullcontext()
        try:
            with ordered:
                self.session.run_with_iobinding(binding, self.run_options)
        except Exception as exc:
            if self.device.type == "cuda" and "allocat" in str(exc).lower():
                raise torch.OutOfMemoryError(f"onnxruntime ran out of GPU memory: {exc}") from exc
            raise
        values = binding.get_outputs_as_ortvaluevector()
        return [torch.from_dlpack(values.dlpack_at(i)) for i in range(len(self.output_names))]
