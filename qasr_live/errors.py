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


class InvalidValue(QasrError):
    """A value does not fit its type annotation (qasr_live.schema); callers re-raise it with their location."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path  # where inside the checked value: "" for the value itself, else e.g. "[2]" or "['key']"
        self.problem = problem  # what is wrong and what is allowed, e.g. "expected an integer, got a string ('x')"


class TypingBackendError(QasrError):
    """A typing backend could not deliver; ``delivered`` is how many characters it typed before failing."""

    def __init__(self, message: str, delivered: int = 0) -> None:
        super().__init__(message)
        self.delivered = delivered
