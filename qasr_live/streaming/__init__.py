"""Streaming recognition for the dictation daemon: incremental encoding, KV-cache reuse, rollback commits and
decoder memory (see recognizer.py)."""

from qasr_live.streaming.memory import DecoderMemory, MemoryEntry
from qasr_live.streaming.recognizer import Commit, Final, Partial, Stats, StreamingRecognizer, Tick

__all__ = ["Commit", "DecoderMemory", "Final", "MemoryEntry", "Partial", "Stats", "StreamingRecognizer", "Tick"]
