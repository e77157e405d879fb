"""Hub folders: ``config.json`` + ``model.safetensors`` + ``README.md``, the timm way, safely.

Below :mod:`fishzoo.models` (which checks a folder here before timm builds from it); imports nothing of
fishzoo's above it. Layered from the bottom up:

    schema.py   what a config.json may hold: model_args per architecture, preprocessing, labels, class counts
    config.py   config.json read and checked, written for every reader, derived for exports, as file metadata
    folder.py   a folder checked before anything is built: weights present, intact, of the model described
    atomic.py   replacing a folder's files so that a kill at any instant leaves the old set or the new one
    card.py     the model card (README.md)
    save.py     save_pretrained / write_hub_folder, upgrade_folder
    push.py     push_to_hub: the folder uploaded as it is
"""
from fishzoo.errors import HubFolderError, HubUploadError

from .card import CardFacts, model_card
from .config import for_every_reader, read_hub_config
from .folder import WEIGHT_FILES, check_hub_folder, hub_repo_folder, sha256_file
from .push import UPLOAD_PATTERNS, push_to_hub
from .save import HUB_FILES, SPACE_REQUIREMENTS, save_pretrained, upgrade_folder, write_hub_folder

__all__ = [
    'save_pretrained', 'write_hub_folder', 'push_to_hub', 'upgrade_folder', 'for_every_reader', 'read_hub_config',
    'check_hub_folder', 'hub_repo_folder', 'sha256_file', 'CardFacts', 'model_card', 'WEIGHT_FILES', 'HUB_FILES',
    'UPLOAD_PATTERNS', 'SPACE_REQUIREMENTS', 'HubFolderError', 'HubUploadError',
]
