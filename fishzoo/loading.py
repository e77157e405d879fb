"""One way from what a user types to a model: timm names, ``local-dir:PATH``, bare folders, ``hf-hub:REPO_ID``.

Training (``--model``), ``fishzoo predict``, ``fishzoo export`` and ``fishzoo convert`` all load through
:func:`load_model`, so a folder is checked the same way everywhere (config, weights present, weights
intact) before timm builds anything, and every failure becomes one sentence that starts with what the
user typed (or the flag that carried it).
"""
import difflib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import timm
import torch.nn as nn
from safetensors import SafetensorError

from fishzoo.errors import (
    CheckpointError,
    FishzooError,
    HubFolderError,
    ModelLoadError,
    PretrainedWeightsUnavailable,
    describe,
)
from fishzoo.hub.folder import checked_folder, hub_repo_folder

LOCAL_DIR, HF_HUB = 'local-dir:', 'hf-hub:'


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``kind`` is 'timm' (a registered name), 'folder' or 'hf-hub'."""
    spec: str  # as the user gave it
    kind: str
    location: str  # the timm name, the folder path or the repo id

    @property
    def folder(self) -> Optional[Path]:
        return Path(self.location) if self.kind == 'folder' else None

    @property
    def timm_name(self) -> str:
        """What ``timm.create_model`` takes for this source."""
        return {'folder': LOCAL_DIR, 'hf-hub': HF_HUB}.get(self.kind, '') + self.location

    @property
    def has_weights(self) -> bool:
        """Folders and hub repos carry their weights; a bare timm name only names an architecture."""
        return self.kind != 'timm'

    @property
    def display_name(self) -> str:
        """A short name for file names and titles: the folder's or repo's last part, or the timm name."""
        return self.location.rstrip('/').split('/')[-1] or self.location


def resolve_source(spec: str) -> ModelSource:
    """``local-dir:PATH`` and existing folders are folders, ``hf-hub:ID`` a hub repo, anything else a timm name."""
    if spec.startswith(LOCAL_DIR):
        return ModelSource(spec, 'folder', spec[len(LOCAL_DIR):])
    if spec.startswith(HF_HUB):
        return ModelSource(spec, 'hf-hub', spec[len(HF_HUB):])
    if Path(spec).is_dir():
        return ModelSource(spec, 'folder', spec)
    return ModelSource(spec, 'timm', spec)


def did_you_mean(name: str) -> str:
    """``'; did you mean fishnet99?'`` for a close registered name (the tag after a dot is kept), else ''."""
    arch, dot, tag = name.partition('.')
    close = difflib.get_close_matches(arch.lower(), timm.list_models(), n=3, cutoff=0.75)
    return f'; did you mean {" or ".join(c + dot + tag for c in close)}?' if close else ''


def _looks_like_a_path(spec: str) -> bool:
    return any(c in spec for c in '/\\') or spec.startswith(('.', '~'))


def load_model(spec: str, *, pretrained: Optional[bool] = None, label: Optional[str] = None, **kwargs) -> nn.Module:
    """Build the model ``spec`` names, with its weights (``pretrained=None``: loaded for folders and hub repos,
    not for bare timm names); ``kwargs`` go to ``timm.create_model`` (``num_classes``, ``in_chans``, ...).

    Any failure raises :class:`~fishzoo.errors.ModelLoadError` whose message starts with ``label`` (default:
    ``spec``), e.g. ``'--model local-dir:out: out/model.safetensors: corrupted (...)'``.
    """
    source = resolve_source(spec)
    label = label or spec
    if pretrained is None:
        pretrained = source.has_weights
    if source.kind == 'timm' and _looks_like_a_path(spec):
        raise ModelLoadError(f'{label}: could not load the model: no such folder '
                             '(a Hugging Face Hub repo is written hf-hub:OWNER/NAME)')
    try:
        if source.kind == 'timm':
            return timm.create_model(source.timm_name, pretrained=pretrained, **kwargs)
        if source.kind == 'folder' and not source.folder.is_dir():
            raise HubFolderError(f'{source.folder}: no such directory')
        # checked before timm reads its model_args (timm calls the constructor with them); the build inside
        # does not check it a second time
        with checked_folder(source.folder if source.kind == 'folder' else hub_repo_folder(source.location)):
            return timm.create_model(source.timm_name, pretrained=pretrained, **kwargs)
    except (HubFolderError, CheckpointError, PretrainedWeightsUnavailable) as e:
        raise ModelLoadError(f'{label}: {e}') from None
    except pickle.UnpicklingError as e:
        raise ModelLoadError(f'{label}: refused to load a pickle that is not plain weights ({describe(e)})') from None
    except RuntimeError as e:
        if str(e).startswith('Unknown model'):
            raise ModelLoadError(f'{label}: unknown model{did_you_mean(source.timm_name)} (`fishzoo list` and '
                                 'timm.list_models() show the names; or give a folder, local-dir:PATH or '
                                 'hf-hub:REPO_ID)') from None
        raise ModelLoadError(f'{label}: could not load the model ({describe(e)})') from None
    except FishzooError:
        raise
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise ModelLoadError(f'{label}: could not load the model ({describe(e)})') from None
