"""Let timm find fishzoo's models without ``import fishzoo``.

fishzoo installs ``fishzoo-autoload.pth`` next to this module; its single line imports this module at
interpreter start. All that happens then is that a finder is put on ``sys.meta_path``: nothing else is
imported. When (and only when) the program imports timm, the finder lets the normal machinery load
timm and imports fishzoo right after, which registers its architectures. So ``timm.create_model``,
``hf-hub:`` configs naming a fishzoo architecture and timm's own ``train.py`` / ``validate.py`` all see
them.

``FISHZOO_AUTOLOAD=0`` disables the hook. A failing fishzoo import is reported as a warning and never
breaks ``import timm``.
"""
import os
import sys

_TRUE_VALUES = ('', '1', 'true', 'yes', 'on')


def _import_fishzoo() -> None:
    try:
        import fishzoo  # noqa: F401
    except Exception as e:  # never let fishzoo break timm
        import warnings
        warnings.warn(f'fishzoo could not be imported, so timm will not list its models ({type(e).__name__}: {e}). '
                      'Set FISHZOO_AUTOLOAD=0 to stop trying.', RuntimeWarning, stacklevel=2)


class _LoaderThenFishzoo:
    """Wraps timm's loader: runs it, then imports fishzoo."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _import_fishzoo()

    def __getattr__(self, name):  # resource readers, is_package, ... of the real loader
        return getattr(self._loader, name)


class TimmImportHook:
    """A meta-path finder that answers only for 'timm', once."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'timm':
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]  # one shot; avoid finding ourselves
        from importlib.machinery import PathFinder
        spec = PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _LoaderThenFishzoo(spec.loader)
        return spec


def install() -> None:
    """Arm the hook (idempotent); called from fishzoo-autoload.pth."""
    if os.environ.get('FISHZOO_AUTOLOAD', '1').strip().lower() not in _TRUE_VALUES:
        return
    if 'timm' in sys.modules or any(isinstance(f, TimmImportHook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, TimmImportHook())
