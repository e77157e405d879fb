"""fishzoo's exceptions: one family, each message one sentence that names the file, flag or value.

Every error a user can cause derives from :class:`FishzooError`, so a program embedding fishzoo catches
them all with one ``except``; each class also keeps the builtin base it always had (``ValueError`` for a
bad input, ``RuntimeError`` for a failure along the way), so existing ``except ValueError`` code holds.
The command-line entry points print ``str(error)`` and exit with status 2 (``exit_code``).
"""


class FishzooError(Exception):
    """A mistake in the user's input, or an input fishzoo refuses; the message is one sentence."""

    exit_code = 2


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``error``'s message (at most ``limit`` characters), or its type's name.

    Messages from deep inside torch, PIL or a network library run over many lines; the first one says what
    happened. An exception without a message (``FileNotFoundError()``) still yields a readable word.
    """
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(error).__name__


def describe(error: BaseException, limit: int = 300) -> str:
    """``'TypeName: first line'``, for an error wrapped inside a sentence of fishzoo's."""
    text = first_line(error, limit)
    name = type(error).__name__
    return text if text == name else f'{name}: {text}'


# --- configuration and data ----------------------------------------------------------------------

class ConfigError(FishzooError, ValueError):
    """A bad flag, config key or value; the message names it."""


class DataError(FishzooError, ValueError):
    """A problem with the user's data; the message names the file, folder or flag."""


# --- models and weights --------------------------------------------------------------------------

class CheckpointError(FishzooError, ValueError):
    """A checkpoint that does not fit the model or cannot be read; the message names the file."""


class PretrainedWeightsUnavailable(FishzooError, RuntimeError):
    """The pretrained weights could not be found locally nor downloaded."""


class HubFolderError(CheckpointError):
    """A hub folder that cannot be loaded; the message names the file and what was expected (a checkpoint
    error: timm's ``local-dir:`` / ``hf-hub:`` loading raises it as such)."""


class ModelLoadError(FishzooError, ValueError):
    """A model name, folder or hub repo that cannot be turned into a model; the message names it."""


class ConversionError(FishzooError, ValueError):
    """The checkpoint or the arguments cannot be converted; the message names which and why."""


# --- commands ------------------------------------------------------------------------------------

class HubUploadError(FishzooError, RuntimeError):
    """An upload to the Hugging Face Hub failed; the local folder is untouched."""


class PredictError(FishzooError, ValueError):
    """A bad model, image or option for prediction; the message names it."""


class ExportError(FishzooError, ValueError):
    """A bad export option, or a failed export or check; the message names it."""


class QuantizeError(FishzooError, ValueError):
    """int8 quantization could not be done: no or unreadable calibration data, a model the quantizer refuses."""


class UserError(FishzooError):
    """A mistake on the ``fishzoo`` command line; its message is the one line the user sees."""


class TrainingStopped(FishzooError, RuntimeError):
    """Training stopped on purpose (a signal) or by a fault it reports in one sentence; ``exit_code`` for main."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
