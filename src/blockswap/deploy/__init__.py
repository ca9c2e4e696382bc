"""After training: evaluation with latency, ONNX/TorchScript export, and the detection adapter."""
