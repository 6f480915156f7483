"""Exporters: torch -> ONNX (onnx.py), precision variants (precision.py), ONNX -> TensorRT
(tensorrt.py). They need the `export` extra (torch, onnx, onnxscript)."""
