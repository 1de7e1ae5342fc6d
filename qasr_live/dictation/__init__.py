"""Dictation: the utterance lifecycle as a pure controller (controller.py) and the effects it emits (effects.py).
The asyncio shell that applies them is daemon.py."""
