"""qasr-live: real-time, fully local dictation on Qwen3-ASR."""

__version__ = "0.1.0"
