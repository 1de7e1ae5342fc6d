"""Qwen3-ASR runtime: log-mel features, ONNX audio encoder, incremental encoding, GGUF decoder and generation."""
