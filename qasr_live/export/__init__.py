"""Export an official Qwen3-ASR checkpoint to the runtime format (ONNX encoder + GGUF decoder)."""
