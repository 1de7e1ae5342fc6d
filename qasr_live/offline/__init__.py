"""Offline transcription of whole files: segments of long audio, the transcript, and its file formats."""
