"""Uploading a hub folder to the Hugging Face Hub as it is.

timm's ``push_to_hf_hub`` writes its own card and saves the model again, so :func:`push_to_hub` uploads the
folder :mod:`.save` wrote with huggingface_hub's ``HfApi.create_commit``. The token comes from the ``HF_TOKEN``
environment variable or ``hf auth login`` only, never from an argument, and is never written to a file, a log
line or an error message.
"""
import logging
import re
from pathlib import Path
from typing import List, Optional, Union

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from fishzoo.errors import HubUploadError, describe, first_line
from fishzoo.version import __version__

from .card import retarget_card

_logger = logging.getLogger(__name__)

# what a hub folder uploads; checkpoints/ and hidden files (the training lock) stay local
UPLOAD_PATTERNS = ['*.json', '*.safetensors', '*.md', '*.png', 'app.py', 'requirements.txt']


def _scrub(text: str, secrets: List[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, '***')
    return re.sub(r'hf_[A-Za-z0-9]{8,}', '***', text)


def _upload_operations(folder: Path, card: Optional[str]) -> List[CommitOperationAdd]:
    """The folder's hub files (weights, config, card, curves, demo app): top level only, no hidden files."""
    names = sorted({p.name for pattern in UPLOAD_PATTERNS for p in folder.glob(pattern)
                    if p.is_file() and not p.name.startswith('.')})
    return [CommitOperationAdd(path_in_repo=name, path_or_fileobj=card.encode('utf-8') if name == 'README.md'
                               and card is not None else str(folder / name)) for name in names]


def push_to_hub(
        folder: Union[str, Path],
        repo_id: str,
        *,
        private: bool = False,
        commit_message: str = 'Upload with fishzoo',
        revision: Optional[str] = None,
        create_pr: bool = False,
) -> str:
    """Upload a hub folder written by :func:`save_pretrained` to ``repo_id``; returns the commit url.

    The token is huggingface_hub's (``HF_TOKEN`` or ``hf auth login``). On any failure the folder is
    left as it was and :class:`HubUploadError` says why and how to retry, without the token.
    """
    folder = Path(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubUploadError(f'{repo_id!r} is not a Hub repo id (OWNER/NAME: letters, digits, -, _ and .): '
                             f'{first_line(e)}') from None
    missing = [f for f in ('config.json', 'model.safetensors') if not (folder / f).is_file()]
    if missing:
        raise HubUploadError(f'{folder} is not a hub folder: {", ".join(missing)} missing')
    retry = (f'the folder {folder} is intact; retry with `fishzoo push {folder} {repo_id}`')
    token = get_token()
    if not token:
        raise HubUploadError(
            f'no Hugging Face token: set HF_TOKEN or run `hf auth login`, then retry ({retry})')
    api = HfApi(library_name='fishzoo', library_version=__version__)
    # the card's title and snippets name the repo it goes to (a card saved before knowing it names none)
    card = retarget_card((folder / 'README.md').read_text(encoding='utf-8'), repo_id) \
        if (folder / 'README.md').is_file() else None
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.create_commit(
            repo_id=repo_url.repo_id, operations=_upload_operations(folder, card), commit_message=commit_message,
            revision=revision, create_pr=create_pr)
    except Exception as e:  # a network boundary: every failure becomes one clear, token-free sentence
        reason = _scrub(describe(e), [token])
        raise HubUploadError(f'upload of {folder} to {repo_id} failed ({reason}); {retry}') from None
    if card is not None:  # the folder now matches what the Hub holds
        (folder / 'README.md').write_text(card, encoding='utf-8')
    _logger.info('uploaded %s to %s', folder, repo_id)
    return str(getattr(commit, 'commit_url', commit))
