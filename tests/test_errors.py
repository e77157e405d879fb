"""fishzoo.errors: one family users can catch, the builtin bases kept, and the first-line helpers."""
import inspect

import pytest

import fishzoo
from fishzoo import errors
from fishzoo.errors import FishzooError, describe, first_line

CLASSES = [c for _, c in inspect.getmembers(errors, inspect.isclass)
           if issubclass(c, Exception) and c.__module__ == errors.__name__]


def test_every_error_is_a_fishzoo_error_with_its_builtin_base():
    names = {c.__name__ for c in CLASSES}
    assert {'ConfigError', 'DataError', 'CheckpointError', 'PretrainedWeightsUnavailable', 'HubFolderError',
            'ModelLoadError', 'ConversionError', 'HubUploadError', 'PredictError', 'ExportError', 'UserError',
            'TrainingStopped'} <= names
    for cls in CLASSES:
        assert issubclass(cls, FishzooError), cls
        if cls not in (FishzooError, errors.UserError):  # UserError was a plain Exception
            assert issubclass(cls, (ValueError, RuntimeError)), cls  # `except ValueError` code keeps working
    assert fishzoo.FishzooError is FishzooError


def test_old_import_locations_still_work():
    from fishzoo.data import DataError
    from fishzoo.hub import HubFolderError, HubUploadError
    from fishzoo.models._builder import PretrainedWeightsUnavailable
    from fishzoo.train import ConfigError, TrainingStopped
    assert {DataError, HubFolderError, HubUploadError, PretrainedWeightsUnavailable, ConfigError,
            TrainingStopped} <= set(CLASSES)


@pytest.mark.parametrize('error, line', [
    (ValueError('shape mismatch\n  at layer 3\n'), 'shape mismatch'),
    (ValueError('\n\n  second line only'), 'second line only'),
    (FileNotFoundError(), 'FileNotFoundError'),  # no message: the type, not an IndexError
    (RuntimeError(''), 'RuntimeError'),
])
def test_first_line(error, line):
    assert first_line(error) == line


def test_describe_and_limit():
    assert describe(KeyError('fc.weight')) == "KeyError: 'fc.weight'"
    assert describe(OSError()) == 'OSError'
    assert first_line(ValueError('x' * 500), limit=10) == 'x' * 10
