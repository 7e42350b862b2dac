"""Deployment: export to ONNX/TorchScript/int8, the exported model's contract, predict, bench, profile."""
