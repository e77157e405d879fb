"""Hub folders: ``config.json`` + ``model.safetensors`` + ``README.md``, saved and pushed the timm way.

A hub folder is what timm's ``save_for_hf`` writes (``config.json`` with the architecture, num_classes,
label names, pretrained_cfg and the model's constructor arguments, and ``model.safetensors``) plus a
model card. timm restores it with ``timm.create_model('local-dir:PATH', pretrained=True)``, or
``'hf-hub:REPO_ID'`` once pushed.

timm's ``push_to_hf_hub`` writes its own card and saves the model again, so ``push_to_hub`` here
uploads the folder as it is with huggingface_hub's ``HfApi.upload_folder``. The token comes from the
``HF_TOKEN`` environment variable or ``hf auth login`` only, never from an argument, and is never
written to a file, a log line or an error message.
"""
import json
import logging
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from huggingface_hub import EvalResult, HfApi, ModelCardData, get_token
from timm.models import save_for_hf

import fishzoo

_logger = logging.getLogger(__name__)

# what an upload takes from a folder: weights, configs, card, metrics and plots, never training state
UPLOAD_PATTERNS = ['*.json', '*.safetensors', '*.md', '*.png']
UPLOAD_IGNORE = ['checkpoints/*', '.*']
REPO_ID_PLACEHOLDER = 'REPO_ID'


class HubUploadError(RuntimeError):
    """An upload to the Hugging Face Hub failed; the local folder is untouched."""


class HubFolderError(ValueError):
    """A hub folder that cannot be loaded; the message names the file and what was expected."""


WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin', 'open_clip_model.safetensors')


def sha256_file(path: Union[str, Path]) -> str:
    import hashlib
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def read_hub_config(folder: Union[str, Path]) -> dict:
    """``folder/config.json``, checked: valid JSON, an object, naming an architecture timm knows."""
    import timm
    path = Path(folder) / 'config.json'
    if not path.is_file():
        raise HubFolderError(f'{path}: no such file; a hub folder holds config.json and model.safetensors')
    try:
        config = json.loads(path.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HubFolderError(f'{path}: not valid JSON ({e})') from None
    if not isinstance(config, dict):
        raise HubFolderError(f'{path}: expected a JSON object, got {type(config).__name__}')
    arch = config.get('architecture')
    if not isinstance(arch, str) or not arch:
        raise HubFolderError(f'{path}: no "architecture" name')
    if arch.split('.')[0] not in timm.list_models():
        raise HubFolderError(f'{path}: unknown architecture {arch!r} (not a timm or fishzoo model)')
    num_classes = config.get('num_classes', 0)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise HubFolderError(f'{path}: "num_classes" must be a non-negative integer, got {num_classes!r}')
    for key in ('pretrained_cfg', 'model_args'):
        if key in config and not isinstance(config[key], dict):
            raise HubFolderError(f'{path}: "{key}" must be a JSON object')
    return config


def check_hub_folder(folder: Union[str, Path]) -> dict:
    """Refuse a folder whose config is broken, whose weights are missing, or whose weights do not match
    the SHA-256 recorded by :func:`save_pretrained` (a truncated or bit-flipped file). Returns the config."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HubFolderError(f'{folder}: no such directory')
    config = read_hub_config(folder)
    weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        raise HubFolderError(f'{folder}: no weights (expected model.safetensors next to config.json)')
    expected = config.get('weights_sha256')
    if expected and weights.name == 'model.safetensors' and sha256_file(weights) != expected:
        raise HubFolderError(f'{weights}: corrupted (its SHA-256 differs from weights_sha256 in config.json)')
    return config


def _metric_title(name: str) -> str:
    return {'top1': 'Top-1 accuracy', 'top5': 'Top-5 accuracy'}.get(name, name.replace('_', ' '))


def model_card(
        model: torch.nn.Module,
        hub_config: Optional[dict] = None,
        *,
        repo_id: Optional[str] = None,
        dataset: Union[str, Tuple[str, str], None] = None,
        metrics: Optional[Mapping[str, float]] = None,
        metrics_source: Optional[str] = None,
        license: Optional[str] = None,
        tags: Sequence[str] = (),
        description: Optional[str] = None,
) -> str:
    """The README.md of a hub folder: YAML front matter (library, tags, license, datasets, model-index) and text.

    Args:
        hub_config: the folder's config.json contents (its pretrained_cfg describes the saved model's
            input); the model's own pretrained_cfg if not given.
        dataset: the training dataset, as a hub id or (hub id, display name).
        metrics: name -> value (e.g. ``{'top1': 78.14}``), written to ``model-index`` and to a table.
        metrics_source: who measured the metrics, when not this folder's own evaluation
            (e.g. 'reported by the FishNet authors, not measured by fishzoo').
    """
    cfg = (hub_config or {}).get('pretrained_cfg') or model.pretrained_cfg
    arch = (hub_config or {}).get('architecture') or cfg.get('architecture') or type(model).__name__
    license = license or cfg.get('license') or 'other'
    dataset_id, dataset_name = (dataset, dataset) if isinstance(dataset, str) else (dataset or (None, None))
    eval_results = None
    if metrics and dataset_id:
        # model-index names a source only together with its url (the original implementation's)
        source = dict(source_name=metrics_source, source_url=cfg['origin_url']) \
            if metrics_source and cfg.get('origin_url') else {}
        eval_results = [
            EvalResult(
                task_type='image-classification', dataset_type=dataset_id, dataset_name=dataset_name,
                metric_type=name, metric_name=_metric_title(name), metric_value=float(value), **source)
            for name, value in metrics.items()]
    card_license = dict(license=license)
    if license == 'unknown':
        card_license = dict(license='other', license_name='no-license-published')
    data = ModelCardData(
        library_name='timm',
        pipeline_tag='image-classification',
        tags=list(dict.fromkeys(['image-classification', 'timm', 'fishzoo', arch, *tags])),
        datasets=[dataset_id] if dataset_id else None,
        model_name=(repo_id or arch).split('/')[-1],
        eval_results=eval_results,
        **card_license,
    )
    ref = repo_id or REPO_ID_PLACEHOLDER
    params = sum(p.numel() for p in model.parameters())
    lines = [
        '---', data.to_yaml(), '---', '',
        f'# {ref.split("/")[-1]}', '',
        description or cfg.get('description') or f'A `{arch}` image classifier saved with fishzoo.', '',
        '## Usage', '',
        '```bash', 'pip install fishzoo', '```', '',
        '```python',
        'import timm',
        'from PIL import Image',
        '',
        f"model = timm.create_model('hf-hub:{ref}', pretrained=True).eval()",
        "# or, from this folder on disk: timm.create_model('local-dir:/path/to/folder', pretrained=True)",
        'transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))',
        "probs = model(transform(Image.open('image.jpg').convert('RGB')).unsqueeze(0)).softmax(-1)",
        '```', '',
        'fishzoo registers its architectures with timm when it is installed; no `import fishzoo` is needed.', '',
        '## Model details', '',
        f'- Architecture: `{arch}` ({params / 1e6:.2f}M parameters)',
        f"- Input: {cfg['input_size'][1]}x{cfg['input_size'][2]} px, {cfg['input_size'][0]} channels, "
        f"{cfg.get('interpolation')} resize, crop {cfg.get('crop_pct')}",
        f'- Classes: {model.num_classes}',
    ]
    if dataset_name:
        lines.append(f'- Dataset: {dataset_name}')
    if cfg.get('paper_name'):
        lines.append(f"- Paper: {cfg['paper_name']} ({cfg.get('paper_ids', '')})")
    if cfg.get('origin_url'):
        lines.append(f"- Original implementation: {cfg['origin_url']}")
    if license == 'unknown':
        lines.append('- License: the authors published no license for their code or weights.')
    else:
        lines.append(f'- License: {license}')
    if metrics:
        lines += ['', '## Results', '']
        if metrics_source:
            lines += [f'Numbers {metrics_source}.', '']
        lines += ['| metric | value |', '|---|---:|']
        lines += [f'| {_metric_title(k)} | {v:.4g} |' for k, v in metrics.items()]
    for note in cfg.get('notes') or ():
        lines.append(f'\n> {note}')
    lines.append('')
    return '\n'.join(lines)


def save_pretrained(
        model: torch.nn.Module,
        save_dir: Union[str, Path],
        *,
        label_names: Optional[Sequence[str]] = None,
        label_descriptions: Optional[Dict[str, str]] = None,
        data_config: Optional[dict] = None,
        extra_config: Optional[dict] = None,
        repo_id: Optional[str] = None,
        dataset: Union[str, Tuple[str, str], None] = None,
        metrics: Optional[Mapping[str, float]] = None,
        metrics_source: Optional[str] = None,
        license: Optional[str] = None,
        tags: Sequence[str] = (),
        description: Optional[str] = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card to ``save_dir``.

    ``label_names`` (one per class) and ``extra_config`` go into ``config.json``; ``data_config``
    overrides the preprocessing recorded in its pretrained_cfg. The card arguments are those of
    :func:`model_card`.
    """
    save_dir = Path(save_dir)
    if label_names is not None and len(label_names) != model.num_classes:
        raise ValueError(f'label_names has {len(label_names)} names but the model has {model.num_classes} classes')
    model_config = dict(extra_config or {})
    if label_names is not None:
        model_config['label_names'] = list(label_names)
    if label_descriptions:
        model_config['label_descriptions'] = dict(label_descriptions)
    save_for_hf(model, save_dir, model_config=model_config, data_config=data_config, safe_serialization=True)
    hub_config = json.loads((save_dir / 'config.json').read_text())
    # lets check_hub_folder tell a truncated or bit-flipped weights file from a good one
    hub_config['weights_sha256'] = sha256_file(save_dir / 'model.safetensors')
    (save_dir / 'config.json').write_text(json.dumps(hub_config, indent=2))
    card = model_card(
        model, hub_config, repo_id=repo_id, dataset=dataset, metrics=metrics, metrics_source=metrics_source, license=license,
        tags=tags, description=description)
    (save_dir / 'README.md').write_text(card, encoding='utf-8')
    return save_dir


def _scrub(text: str, secrets: List[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, '***')
    return re.sub(r'hf_[A-Za-z0-9]{8,}', '***', text)


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
    missing = [f for f in ('config.json', 'model.safetensors') if not (folder / f).is_file()]
    if missing:
        raise HubUploadError(f'{folder} is not a hub folder: {", ".join(missing)} missing')
    retry = (f'the folder {folder} is intact; retry with `fishzoo push {folder} {repo_id}`')
    token = get_token()
    if not token:
        raise HubUploadError(
            f'no Hugging Face token: set HF_TOKEN or run `hf auth login`, then retry ({retry})')
    api = HfApi(library_name='fishzoo', library_version=fishzoo.__version__)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_url.repo_id, folder_path=folder, commit_message=commit_message, revision=revision,
            create_pr=create_pr, allow_patterns=UPLOAD_PATTERNS, ignore_patterns=UPLOAD_IGNORE)
    except Exception as e:  # a network boundary: every failure becomes one clear, token-free sentence
        reason = _scrub(f'{type(e).__name__}: {e}'.splitlines()[0], [token])
        raise HubUploadError(f'upload of {folder} to {repo_id} failed ({reason}); {retry}') from None
    _logger.info('uploaded %s to %s', folder, repo_id)
    return str(getattr(commit, 'commit_url', commit))
