"""Let timm find fishzoo's models without ``import fishzoo``.

fishzoo installs ``fishzoo-autoload.pth`` next to this module; its single line imports this module at
interpreter start. All that happens then is that a finder is put on ``sys.meta_path``: nothing else is
imported. When (and only when) the program executes timm, the finder lets the normal machinery load
timm and imports fishzoo right after, which registers its architectures. So ``timm.create_model``,
``hf-hub:`` configs naming a fishzoo architecture and timm's own ``train.py`` / ``validate.py`` all see
them.

A look-up is not an import: ``importlib.util.find_spec('timm')`` (which transformers, accelerate and others
run at their own import to see whether timm is installed) gets timm's spec with the wrapped loader, and the
finder stays armed until timm is actually executed. It answers with whatever finder would have found timm
without it (a plain install, an editable one), so it never changes where timm comes from.

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
    """Wraps timm's loader: runs it, disarms the hook, then imports fishzoo."""

    def __init__(self, loader, hook):
        self._loader = loader
        self._hook = hook

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self._hook]  # timm is loaded: done
        _import_fishzoo()

    def __getattr__(self, name):  # resource readers, is_package, ... of the real loader
        return getattr(self._loader, name)


class TimmImportHook:
    """A meta-path finder that answers only for 'timm', until timm has been executed once."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'timm':
            return None
        for finder in list(sys.meta_path):  # the spec the other finders would give, in their order
            find = getattr(finder, 'find_spec', None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and not isinstance(spec.loader, _LoaderThenFishzoo):
            spec.loader = _LoaderThenFishzoo(spec.loader, self)
        return spec


def install() -> None:
    """Arm the hook (idempotent); called from fishzoo-autoload.pth."""
    if os.environ.get('FISHZOO_AUTOLOAD', '1').strip().lower() not in _TRUE_VALUES:
        return
    if 'timm' in sys.modules or any(isinstance(f, TimmImportHook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, TimmImportHook())
