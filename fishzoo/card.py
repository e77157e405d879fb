"""The model card (``README.md``) of a hub folder: YAML front matter the Hub reads, and the text a person reads."""
from typing import Mapping, Optional, Sequence, Tuple, Union

import torch
from huggingface_hub import EvalResult, ModelCardData

REPO_ID_PLACEHOLDER = 'REPO_ID'


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
