"""The one exception hierarchy of qasr-live.

Every error a user can cause (bad config, bad model directory, bad audio file) is a ``QasrError`` whose message
names the problem *and* the fix; the CLI prints it without a traceback and exits with status 2.
"""


class QasrError(Exception):
    """Base class: a problem the user can fix, described in the message."""


class ConfigError(QasrError):
    """config.yaml (or a command-line option) is invalid; the message names the file, line and key."""


class ModelError(QasrError):
    """An exported model directory is missing, incomplete, corrupt or inconsistent."""


class AudioError(QasrError):
    """An audio file cannot be read or holds no usable samples."""


class ExportError(QasrError):
    """A source checkpoint cannot be exported."""


class EncoderCrashed(QasrError):
    """The encoder subprocess died; the caller may restart it and re-encode from retained audio."""


class DecoderError(QasrError):
    """llama.cpp refused to load the decoder or to evaluate a batch."""


class ProtocolError(QasrError):
    """A WebSocket or ctl message is malformed or not allowed."""


class AudioDeviceError(AudioError):
    """An input device cannot be found (missing, ambiguous name) or opened."""
