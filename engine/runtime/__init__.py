"""How models run: device, precision, memory budget, compilation and the ONNX Runtime backend.

`device` chooses the device, dtype and per-model options (overridable by environment, see
engine.config) and sizes batches from free GPU memory; `precision` prepares torch modules
(attention, channels-last, torch.compile, VAE precision); `onnx` exports graphs and runs them in
onnxruntime; `onnx_models` puts those sessions where the pipelines expect the torch modules.
"""
