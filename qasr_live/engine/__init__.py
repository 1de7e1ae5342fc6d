"""Qwen3-ASR runtime: log-mel features, ONNX audio encoder, GGUF decoder, offline pipeline."""
