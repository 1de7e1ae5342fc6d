"""Benchmarks of qasr-live against the official Qwen3-ASR implementation (not part of the test suite).

One command runs everything: ``python -m bench.run`` (see docs/performance.md).
"""
