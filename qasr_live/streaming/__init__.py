"""Streaming recognition for the dictation daemon: result types (results.py), the pure commit policy
(commit_policy.py), decoder memory (memory.py) and the recognizer that drives the engine (recognizer.py)."""
