"""The model card (``README.md``) of a hub folder: YAML front matter the Hub reads, and the text a person reads."""
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from huggingface_hub import EvalResult, ModelCardData

from fishzoo.complexity import complexity

from .config import is_multilabel

# the snippets of a folder not (yet) on the Hub; push_to_hub rewrites them to hf-hub:REPO_ID / REPO_ID
LOCAL_PATH = 'path/to/this/folder'
LOCAL_REF = f'local-dir:{LOCAL_PATH}'

# metric name -> (Hub metric type, display name); fractions (F1, mAP) are shown as percentages
METRICS = {
    'top1': ('accuracy', 'Top-1 accuracy'), 'top5': ('top_5_accuracy', 'Top-5 accuracy'),
    'f1_micro': ('f1', 'Micro F1'), 'f1_macro': ('f1', 'Macro F1'), 'map': ('map', 'mAP'),
    'subset_acc': ('accuracy', 'Subset accuracy'),
    'f1_micro_tuned': ('f1', 'Micro F1 at the published thresholds'),
}
PERCENT_OF_FRACTION = ('f1_micro', 'f1_macro', 'map', 'subset_acc', 'f1_micro_tuned')
CLASSES_LISTED = 50  # a card lists up to this many class names; config.json holds them all

FISHNET_CITATION = """@inproceedings{sun2018fishnet,
  title={FishNet: A Versatile Backbone for Image, Region, and Pixel Level Prediction},
  author={Sun, Shuyang and Pang, Jiangmiao and Shi, Jianping and Yi, Shuai and Ouyang, Wanli},
  booktitle={Advances in Neural Information Processing Systems},
  year={2018}
}"""


def _metric_title(name: str) -> str:
    return METRICS.get(name, (name, name.replace('_', ' ')))[1]


def _card_value(name: str, value: float) -> float:
    """Percent, 2 decimals: what the Hub's leaderboards and model pages show."""
    return round(float(value) * (100.0 if name in PERCENT_OF_FRACTION else 1.0), 2)


def retarget_card(text: str, repo_id: str) -> str:
    """A card's snippet, title and model-index name pointed at ``repo_id`` (run by push before uploading)."""
    name = repo_id.split('/')[-1]
    # the replacements are literal text (functions): a backslash in them is not a group reference
    text = re.sub(r"(local-dir:path/to/this/folder|hf-hub:[^'\"\s)`]+)", lambda _: f'hf-hub:{repo_id}', text)
    text = re.sub(r"model='[^']*'\)", lambda _: f"model='{repo_id}')", text)  # the transformers snippet
    text = re.sub(r'^# .*$', lambda _: f'# {name}', text, count=1, flags=re.MULTILINE)
    return re.sub(r'^(- name: ).*$', lambda m: m.group(1) + name, text, count=1, flags=re.MULTILINE)


@dataclass(frozen=True)
class CardFacts:
    """What a model card says beyond the model and its config.json.

    Attributes:
        repo_id: the Hub repo the folder is for (the snippets load ``hf-hub:REPO_ID``; without it
            ``local-dir:``, which ``push_to_hub`` rewrites).
        dataset: the training dataset, as a hub id or (hub id, display name).
        metrics: name -> value (e.g. ``{'top1': 78.14}``), written to ``model-index`` and to a table, the
            first being the headline; top-5 is left out for models of 5 classes or fewer (it is 100).
        metrics_source: who measured the metrics, when not this folder's own evaluation
            (e.g. 'reported by the FishNet authors, not measured by fishzoo').
        license: a Hub license id, as the model's author chose it (``unknown``: the authors published
            none); without one the card says that none was chosen.
        tags: extra Hub tags.
        description: the card's first paragraph.
        base_model: the Hub repo a fine-tune started from (the Hub's model tree).
        train_images, val_images: how many images it was trained and measured on (for the limitations).
        validation: how the validation images were chosen (e.g. '20% held out of the training data').
        source_weights: the saved weights are the ones the model's pretrained_cfg describes (a conversion of
            published weights): its tag, license, description and notes stay in config.json. Otherwise
            (trained, fine-tuned or random weights) those describe other weights and are left out.
    """
    repo_id: Optional[str] = None
    dataset: Union[str, Tuple[str, str], None] = None
    metrics: Optional[Mapping[str, float]] = None
    metrics_source: Optional[str] = None
    license: Optional[str] = None
    tags: Sequence[str] = ()
    description: Optional[str] = None
    base_model: Optional[str] = None
    train_images: Optional[int] = None
    val_images: Optional[int] = None
    validation: Optional[str] = None
    source_weights: bool = False

    @property
    def dataset_id_and_name(self) -> Tuple[Optional[str], Optional[str]]:
        if isinstance(self.dataset, str):
            return self.dataset, self.dataset
        return self.dataset or (None, None)


def _shown_metrics(facts: CardFacts, num_classes: int) -> Dict[str, float]:
    """The metrics a card shows: top-5 only with more than 5 classes (with 5 or fewer it is 100 by definition)."""
    return {k: v for k, v in (facts.metrics or {}).items() if not (k == 'top5' and num_classes <= 5)}


# pretrained_cfg keys that describe one set of published weights rather than the architecture
WEIGHTS_KEYS = ('tag', 'license', 'description', 'notes')


def describe_saved_weights(cfg: dict, facts: CardFacts) -> dict:
    """``cfg`` (a pretrained_cfg) as config.json should hold it for the weights being saved: the source
    weights' tag, license, description and notes only when those are what is saved; the saver's license and
    description otherwise (a random-init fishnet99 must not say "ImageNet-1k weights ... top-1 77.41%")."""
    cfg = dict(cfg)
    if not facts.source_weights:
        for key in WEIGHTS_KEYS:
            cfg.pop(key, None)
    for key in ('license', 'description'):
        if getattr(facts, key):
            cfg[key] = getattr(facts, key)
    return cfg


def _front_matter(arch: str, cfg: dict, facts: CardFacts, license: Optional[str], num_classes: int) -> str:
    """The YAML the Hub reads: library, tags, license, datasets, base model and ``model-index`` metrics."""
    dataset_id, dataset_name = facts.dataset_id_and_name
    eval_results = None
    metrics = _shown_metrics(facts, num_classes)
    if metrics and dataset_id:
        # model-index names a source only together with its url (the original implementation's)
        source = dict(source_name=facts.metrics_source, source_url=cfg['origin_url']) \
            if facts.metrics_source and cfg.get('origin_url') else {}
        eval_results = [
            EvalResult(
                task_type='image-classification', dataset_type=dataset_id, dataset_name=dataset_name,
                metric_type=METRICS.get(name, (name,))[0], metric_name=_metric_title(name),
                metric_value=_card_value(name, value), **source)
            for name, value in metrics.items()]
    card_license = dict(license=license) if license else {}
    if license == 'unknown':
        card_license = dict(license='other', license_name='no-license-published')
    return ModelCardData(
        library_name='timm',
        pipeline_tag='image-classification',
        tags=list(dict.fromkeys(['image-classification', 'timm', 'fishzoo', arch, *facts.tags])),
        datasets=[dataset_id] if dataset_id else None,
        base_model=facts.base_model,
        model_name=(facts.repo_id or arch).split('/')[-1],
        eval_results=eval_results,
        **card_license,
    ).to_yaml()


def _usage(model: torch.nn.Module, hub_config: dict, cfg: dict, ref: str, is_fishzoo: bool) -> List[str]:
    """Install, classify an image, feature maps and embeddings: snippets the tests execute."""
    mode = {1: 'L', 4: 'RGBA'}.get(cfg['input_size'][0], 'RGB')  # what the model's input channels read
    multilabel = is_multilabel(hub_config)
    activation = 'sigmoid()' if multilabel else 'softmax(-1)'
    install = ['# fishzoo is not on PyPI: install it from its source tree', 'pip install timm /path/to/fishzoo'] \
        if is_fishzoo else ['pip install timm']
    hf_ref = ref[len('hf-hub:'):] if ref.startswith('hf-hub:') else LOCAL_PATH
    thresholds = list(hub_config.get('thresholds') or [0.5] * model.num_classes)
    lines = [
        '## Usage', '',
        '```bash', *install, '```', '',
        '### Image classification', '',
        '```python',
        'import timm',
        *(['import torch'] if multilabel else []),
        'from PIL import Image',
        '',
        f"model = timm.create_model('{ref}', pretrained=True).eval()",
        'transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))',
        f"probs = model(transform(Image.open('image.jpg').convert('{mode}')).unsqueeze(0)).{activation}",
        *([f'thresholds = torch.tensor({thresholds!r})  # tuned on the validation set (config.json)',
           'labels = probs[0] >= thresholds'] if multilabel else []),
        '```', '',
        '### Feature maps and image embeddings', '',
        '```python',
        f"backbone = timm.create_model('{ref}', pretrained=True, features_only=True).eval()",
        'feature_maps = backbone(x)  # one map per stride (backbone.feature_info.reduction())',
        '',
        f"encoder = timm.create_model('{ref}', pretrained=True, num_classes=0).eval()",
        'embedding = encoder(x)  # (batch, num_features): the pooled features before the classifier',
        '```', '',
        '### With transformers', '',
        '```python',
        'from transformers import pipeline',
        '',
        f"classifier = pipeline('image-classification', model='{hf_ref}')",
        "scores = classifier('image.jpg')  # [{'label': ..., 'score': ...}, ...], best first",
        '```', '',
        ('transformers loads the folder with its `TimmWrapper` classes (`AutoModelForImageClassification`, '
         '`AutoImageProcessor`, `AutoModel` for the feature maps); the label names are its `id2label`.'
         + (' Its scores are the sigmoid outputs; the decisions use the thresholds below '
            "(`config.json`'s `thresholds`), which the pipeline does not apply." if multilabel else '')), '',
    ]
    if is_fishzoo:
        lines += ['fishzoo registers its architectures with timm when it is installed; no `import fishzoo` is needed.',
                  '']
    return lines


def _details(model: torch.nn.Module, arch: str, cfg: dict, facts: CardFacts, license: Optional[str]) -> List[str]:
    """Architecture, size, input, classes, dataset, lineage, paper and license."""
    params = sum(p.numel() for p in model.parameters())
    gmacs, activations = complexity(model, cfg['input_size'])
    _, height, width = cfg['input_size']
    lines = [
        '## Model details', '',
        f'- Architecture: `{arch}` ({params / 1e6:.2f}M parameters)',
        f'- GMACs: {gmacs:.2f}, activations: {activations:.2f}M (one {height}x{width} image)',
        f"- Input: {height}x{width} px, {cfg['input_size'][0]} channel{'s' if cfg['input_size'][0] != 1 else ''}, "
        f"{cfg.get('interpolation')} resize, crop {cfg.get('crop_pct')}",
        f'- Classes: {model.num_classes}',
    ]
    _, dataset_name = facts.dataset_id_and_name
    if dataset_name:
        lines.append(f'- Dataset: {dataset_name}')
    if facts.base_model:
        lines.append(f'- Fine-tuned from: [{facts.base_model}](https://huggingface.co/{facts.base_model})')
    if cfg.get('paper_name'):
        lines.append(f"- Paper: {cfg['paper_name']} ({cfg.get('paper_ids', '')})")
    if cfg.get('origin_url'):
        lines.append(f"- Original implementation: {cfg['origin_url']}")
    if license == 'unknown':
        lines.append('- License: the authors published no license for their code or weights.')
    elif license:
        lines.append(f'- License: {license}')
    else:
        lines.append('- License: none chosen by the author of these weights (fishzoo-train --license sets one)')
    return lines


def _results(facts: CardFacts, num_classes: int) -> List[str]:
    metrics = _shown_metrics(facts, num_classes)
    if not metrics:
        return []
    lines = ['', '## Results', '']
    if facts.metrics_source:
        lines += [f'Numbers {facts.metrics_source}.', '']
    if 'f1_micro_tuned' in metrics:
        lines += ['The first row is what the published model decides with: its per-class thresholds (below), '
                  'chosen on the same validation split the row is measured on, so it reads a little high; the '
                  'other rows are at a threshold of 0.5.', '']
    lines += ['| metric | value |', '|---|---:|']
    return lines + [f'| {_metric_title(k)} (%) | {_card_value(k, v):.2f} |' for k, v in metrics.items()]


_MARKDOWN_SPECIAL = re.compile(r'([\\`*_{}\[\]()#+!|~])')


def plain_text(value) -> str:
    """``value`` as inert Markdown text on one line: a label name or a path from someone's data goes into a
    table or a sentence of the card without breaking it (``|``, a newline) or carrying HTML (``<script>``)."""
    text = ' '.join(str(value).split())
    text = text.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')
    return _MARKDOWN_SPECIAL.sub(r'\\\1', text)


def code_span(value) -> str:
    """``value`` as a Markdown code span on one line (HTML inside one is shown, not run); a name holding
    backticks gets a longer fence."""
    text = ' '.join(str(value).split())
    fence = '`' * (max((len(run) for run in re.findall('`+', text)), default=0) + 1)
    return f'{fence} {text} {fence}' if fence != '`' else f'`{text}`'


def _classes(hub_config: dict, num_classes: int) -> List[str]:
    """The label names (with each one's decision threshold for a multi-label model)."""
    names = hub_config.get('label_names')
    if not names or num_classes == 0:
        return []
    names = [str(n) for n in names]
    thresholds = hub_config.get('thresholds')
    lines = ['', '## Classes', '']
    shown = names[:CLASSES_LISTED]
    if thresholds is not None and len(thresholds) == len(names):
        lines += ['A label is predicted when its sigmoid score reaches its threshold:', '',
                  '| class | threshold |', '|---|---:|']
        lines += [f'| {plain_text(name)} | {t:.3f} |' for name, t in zip(shown, thresholds)]
    else:
        lines.append(', '.join(code_span(name) for name in shown))
    if len(names) > len(shown):
        lines += ['', f'... {len(names)} in all (`label_names` in `config.json`).']
    return lines


def _limitations(facts: CardFacts, num_classes: int, multilabel: bool) -> List[str]:
    """What the card can say of the model's reach from what is known about its training and measurement."""
    lines = ['', '## Intended use and limitations', '',
             f'An image classifier for the {num_classes} classes above'
             + (' (any number of them per image)' if multilabel else ' (one per image)') + '. Use it on images '
             'like those it was trained on; outside them its scores are not calibrated and its errors unknown.']
    if facts.train_images:
        size = 'a small data set' if facts.train_images < 10_000 else 'its data set'
        lines += ['', f'- Trained on {facts.train_images:,} images ({size}); measured on '
                  f'{facts.val_images or "the"} validation images'
                  + (f' ({facts.validation})' if facts.validation else '') + ', drawn from the same source, '
                  'so the numbers above say how it does on more images like them, not on other cameras, '
                  'sources or kinds of image.']
    lines += ['- Not measured: accuracy on data from other sources, calibration of the scores, robustness to '
              'corrupted or adversarial images, and differences between groups of people or places in the '
              'images. Check those on your own data before relying on it.']
    return lines


def model_card(model: torch.nn.Module, hub_config: Optional[dict] = None, facts: Optional[CardFacts] = None,
               **fields) -> str:
    """The README.md of a hub folder: YAML front matter (library, tags, license, datasets, model-index) and text.

    ``hub_config`` is the folder's config.json contents (its pretrained_cfg describes the saved model's
    input; the model's own pretrained_cfg if not given). What else the card says is ``facts``, or the
    :class:`CardFacts` fields as keyword arguments.
    """
    facts = facts or CardFacts(**fields)
    hub_config = hub_config or {}
    cfg = describe_saved_weights(hub_config.get('pretrained_cfg') or model.pretrained_cfg, facts)
    arch = hub_config.get('architecture') or cfg.get('architecture') or type(model).__name__
    license = facts.license
    ref = f'hf-hub:{facts.repo_id}' if facts.repo_id else LOCAL_REF
    is_fishzoo = type(model).__module__.startswith('fishzoo.')
    lines = [
        '---', _front_matter(arch, cfg, facts, license, model.num_classes), '---', '',
        f'# {(facts.repo_id or arch).split("/")[-1]}', '',
        facts.description or cfg.get('description') or f'A `{arch}` image classifier saved with fishzoo.', '',
        *_usage(model, hub_config, cfg, ref, is_fishzoo),
        *_details(model, arch, cfg, facts, license),
        *_results(facts, model.num_classes),
        *_classes(hub_config, model.num_classes),
        *_limitations(facts, model.num_classes, is_multilabel(hub_config)),
    ]
    for note in cfg.get('notes') or ():
        lines.append(f'\n> {note}')
    if arch.startswith(('fishnet', 'fishnext')):
        lines += ['', '## Citation', '', '```bibtex', FISHNET_CITATION, '```']
    lines.append('')
    return '\n'.join(lines)
