"""The one exception hierarchy of qasr-live.

Every error a user can cause (bad config, bad model directory, bad audio file, a busy microphone) is a
``QasrError`` whose message names the problem *and* the fix; the CLI prints it in one line, without a traceback,
and exits with the class's ``exit_code``:

====  ==========================================================================================
   1  an internal error (a bug): printed with its traceback
   2  usage: a bad option, config.yaml, input file or message (``ConfigError``, ``AudioError``, ...)
   3  the model: a missing, incomplete or corrupt model directory, or llama.cpp / the encoder refusing it
   4  a device: the microphone cannot be opened or fails
   5  another daemon already runs on the same runtime directory
   6  ``qasr-live doctor``: a check FAILed (dictation cannot work until its fix is applied)
   7  a download: the Hugging Face Hub is unreachable, refuses the repository, or the transfer broke off
 130  interrupted (Ctrl+C)
====  ==========================================================================================
"""

EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_DEVICE = 4
EXIT_ALREADY_RUNNING = 5
EXIT_CHECK_FAILED = 6  # qasr-live doctor: not an exception, a verdict
EXIT_DOWNLOAD = 7
EXIT_INTERRUPTED = 130


class QasrError(Exception):
    """Base class: a problem the user can fix, described in the message."""

    exit_code = EXIT_USAGE


class ConfigError(QasrError):
    """config.yaml (or a command-line option) is invalid; the message names the file, line and key."""


class ModelError(QasrError):
    """An exported model directory is missing, incomplete, corrupt or inconsistent."""

    exit_code = EXIT_MODEL


class DecoderError(ModelError):
    """llama.cpp refused to load the decoder or to evaluate a batch."""


class EncoderCrashed(ModelError):
    """The encoder subprocess died; the caller may restart it and re-encode from retained audio."""


class AudioError(QasrError):
    """An audio file cannot be read or holds no usable samples."""


class AudioDeviceError(AudioError):
    """An audio input device cannot be found, opened or kept running; the message says what to try."""

    exit_code = EXIT_DEVICE


class AlignmentError(QasrError):
    """Text cannot be aligned to its audio (nothing to align, more words than the audio can hold, too long), or
    timestamps were asked for without an aligner model."""


class ExportError(QasrError):
    """A source checkpoint cannot be exported."""


class DownloadError(QasrError):
    """A checkpoint cannot be downloaded from the Hugging Face Hub (`qasr-live pull`); the message says whether
    running the command again resumes it."""

    exit_code = EXIT_DOWNLOAD


class Interrupted(QasrError):
    """Ctrl+C during a long command that has something to say about it (what was kept, how to resume)."""

    exit_code = EXIT_INTERRUPTED


class ProtocolError(QasrError):
    """A WebSocket or ctl message is malformed or not allowed."""


class AlreadyRunning(QasrError):
    """Another daemon holds the runtime directory's single-instance lock."""

    exit_code = EXIT_ALREADY_RUNNING


class DaemonNotRunning(QasrError):
    """No daemon answers on the ctl socket."""


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


class HotkeysUnavailable(QasrError):
    """Global hotkeys cannot work in this session; the message says why and what to do instead."""


class DisplayError(QasrError):
    """An X display cannot be opened; the message is the X library's reason."""
