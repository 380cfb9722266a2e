"""What the exported graphs hold and how sessions are called, on CPU.

- Attention: a half-precision UNet graph holds one fused MultiHeadAttention node per attention
  layer and no MatMul of two activations (the (N, N) score product of a traced attention); the
  old export (diffusers' AttnProcessor with float32 scores) fails the same check, so the check
  can fail. onnxruntime's CPU kernel computes the fused node in float32, so the half graph's
  numbers can be compared here: scores far beyond float16's range stay finite, and the half UNet
  is within 1e-2 of the float32 torch UNet's output scale (float16 carries ~3 significant digits).
- I/O binding: a session called with torch tensors gives exactly what onnxruntime's plain
  numpy run gives; on CUDA its kernels are kept in order with torch's streams (faked here).
"""

import copy

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor

from engine.runtime.onnx import OnnxGraph, StreamOrder, export_graph
from engine.runtime.onnx_attention import OnnxAttnProcessor
from engine.runtime.precision import set_attention

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def activation_products(path) -> list[tuple[str, int]]:
    """(name, element type) of each MatMul / Gemm / Einsum whose inputs are both computed, not weights."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    return [
        (node.name, types.get(node.output[0], 0))
        for node in graph.node
        if node.op_type in ("MatMul", "Gemm", "Einsum") and not any(i in constants for i in node.input)
    ]


def op_count(path, op_type: str) -> int:
    return sum(node.op_type == op_type for node in onnx.load(str(path)).graph.node)


class _Layer(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def export_layer(layer, x, folder):
    return export_graph(_Layer(layer).eval(), [x], ["x"], ["y"], {"x": {0: "batch", 1: "tokens"}}, folder)


def test_half_attention_exports_as_one_fused_node_that_keeps_upcast_numbers(tmp_path):
    torch.manual_seed(0)
    layer = Attention(query_dim=64, heads=2, dim_head=32, upcast_attention=True).eval()
    x = torch.randn(1, 16, 64) * 400  # q.k / sqrt(32) reaches ~1e6, beyond float16's 65504
    with torch.no_grad():
        reference = layer(x)
    half = layer.half()
    half.set_processor(AttnProcessor())  # the old export: float32 scores, an (N, N) float32 MatMul
    (tmp_path / "old").mkdir()
    old = export_layer(half, x.half(), tmp_path / "old")
    assert [t for _, t in activation_products(old)] == [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16]  # scores, then weights x V
    half.set_processor(OnnxAttnProcessor())
    (tmp_path / "new").mkdir()
    new = export_layer(half, x.half(), tmp_path / "new")
    assert activation_products(new) == [] and op_count(new, "Softmax") == 0
    assert op_count(new, "MultiHeadAttention") == 1
    out = torch.from_numpy(OnnxGraph(new, "cpu").session.run(None, {"x": x.half().numpy()})[0]).float()
    assert torch.isfinite(out).all()
    assert (out - reference).abs().max() < 1e-2 * reference.abs().max()


@pytest.fixture(scope="module")
def satunet():
    """A random SatUNet in the demo model's SD-2.1-like shape (upcast attention, linear projections)."""
    from engine.models.demo import _unet_architecture
    from engine.models.satunet import SatUNet

    torch.manual_seed(5)
    return SatUNet(use_metadata=True, num_metadata=7, **_unet_architecture()).eval()


def test_half_unet_graph_has_no_score_matrix_and_matches_float32_torch(satunet, tmp_path):
    from engine.runtime.onnx_models import OnnxUNet

    unet = copy.deepcopy(satunet).half()
    assert set_attention(unet, torch.float16, for_export=True) == 8
    stand_in = OnnxUNet(unet, "unet", tmp_path, torch.device("cpu"), tmp_path / "cache")
    torch.manual_seed(3)
    x, text, metadata = torch.randn(3, 4, 24, 16), torch.randn(3, 77, 32), torch.rand(3, 7) * 1000
    out = stand_in(x.half(), 500, text.half(), metadata=metadata).sample
    (graph,) = (tmp_path / "cache").glob("unet-*/model.onnx")
    assert op_count(graph, "MultiHeadAttention") == 8 and op_count(graph, "Softmax") == 0
    assert activation_products(graph) == []
    with torch.no_grad():
        expected = satunet(x, 500, text, metadata=metadata).sample
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert (out.float() - expected).abs().max() < 1e-2 * expected.abs().max()


def test_io_binding_gives_what_a_plain_run_gives(satunet, tmp_path):
    from engine.runtime.onnx_models import _UNetGraph

    unet = copy.deepcopy(satunet)
    set_attention(unet, torch.float32, for_export=True)
    torch.manual_seed(4)
    inputs = [torch.randn(2, 4, 16, 16), torch.tensor([700.0]), torch.randn(2, 77, 32), torch.rand(2, 7) * 1000]
    names = ["sample", "timestep", "encoder_hidden_states", "metadata"]
    axes = {"sample": {0: "batch", 2: "height", 3: "width"}, "encoder_hidden_states": {0: "batch"}, "metadata": {0: "batch"}}
    path = export_graph(_UNetGraph(unet, True, 0), inputs, names, ["out_sample"], axes, tmp_path)
    graph = OnnxGraph(path, "cpu")
    assert graph.order is None  # CPU: nothing to order
    sample = torch.randn(3, 4, 16, 24)
    rows = [sample.transpose(2, 3), torch.tensor([20.0]), torch.randn(3, 77, 32), torch.rand(3, 7) * 1000]
    assert not rows[0].is_contiguous()  # bound from a contiguous copy
    (bound,) = graph(*rows)
    (plain,) = graph.session.run(None, {name: t.contiguous().numpy() for name, t in zip(names, rows)})
    assert bound.device.type == "cpu" and np.array_equal(bound.numpy(), plain)
    assert bound.abs().max() > 0


class FakeStream:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def wait_stream(self, other):
        self.log.append(f"{self.name} waits for {other.name}")


class FakeTensor:
    def __init__(self, log):
        self.log = log

    def record_stream(self, stream):
        self.log.append(f"input used on {stream.name}")


def test_session_stream_is_ordered_with_torch_without_blocking():
    log = []
    session, torch_stream = FakeStream("session", log), FakeStream("torch", log)
    order = StreamOrder(session)
    with order.around(session, [FakeTensor(log)]):
        log.append("run")
    assert log == ["run"]  # the same stream: already in order, nothing added
    log.clear()
    with order.around(torch_stream, [FakeTensor(log)]):
        log.append("run")
    assert log == ["session waits for torch", "input used on session", "run", "torch waits for session"]
