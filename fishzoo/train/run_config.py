"""A run's configuration: every setting of one training run, read-only once resolved.

What the user typed (flags over a ``--config`` file over the defaults, :func:`~.args.parse_args`) is an
``argparse.Namespace``; :func:`~.resolve.resolve_run` turns it into the :class:`RunConfig` the run trains with.
Everything in :mod:`fishzoo.train` that reads settings takes this object, called ``config``.
"""
import argparse
from types import MappingProxyType
from typing import Any, Dict, Mapping


class RunConfig:
    """Every setting of a run, read like the argparse namespace it comes from (``config.lr``), and read-only:
    :meth:`replace` returns a changed copy."""
    __slots__ = ('_values',)

    def __init__(self, values: Mapping[str, Any]):
        object.__setattr__(self, '_values', MappingProxyType(dict(values)))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> 'RunConfig':
        return cls(vars(args))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f'the run configuration has no setting {name!r}') from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f'the run configuration is read-only: use .replace({name}=...)')

    def __delattr__(self, name: str) -> None:
        raise AttributeError('the run configuration is read-only')

    def replace(self, **changes: Any) -> 'RunConfig':
        unknown = sorted(set(changes) - set(self._values))
        if unknown:
            raise AttributeError(f'the run configuration has no setting {unknown[0]!r}')
        return RunConfig({**self._values, **changes})

    def as_dict(self) -> Dict[str, Any]:
        return dict(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunConfig) and self.as_dict() == other.as_dict()

    __hash__ = None  # mutable values (lists) inside

    def __repr__(self) -> str:
        return f'RunConfig({", ".join(f"{k}={v!r}" for k, v in sorted(self._values.items()))})'
