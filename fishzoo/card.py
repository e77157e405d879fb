"""The model card (``README.md``) of a hub folder: YAML front matter the Hub reads, and the text a person reads."""
import copy
import re
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import torch
from huggingface_hub import EvalResult, ModelCardData

from fishzoo.info import count_gmacs

# the snippet of a folder not (yet) on the Hub; push_to_hub rewrites it to hf-hub:REPO_ID
LOCAL_REF = 'local-dir:path/to/this/folder'

# metric name -> (Hub metric type, display name); fractions (F1, mAP) are shown as percentages
METRICS = {
    'top1': ('accuracy', 'Top-1 accuracy'), 'top5': ('top_5_accuracy', 'Top-5 accuracy'),
    'f1_micro': ('f1', 'Micro F1'), 'f1_macro': ('f1', 'Macro F1'), 'map': ('map', 'mAP'),
    'subset_acc': ('accuracy', 'Subset accuracy'),
}
PERCENT_OF_FRACTION = ('f1_micro', 'f1_macro', 'map', 'subset_acc')

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


def _complexity(model: torch.nn.Module, input_size) -> Tuple[float, float]:
    """(GMACs, activations in millions) of one image, counted on a meta copy: nothing is allocated.

    Activations are the output elements of every convolution and linear layer, the measure timm's
    model cards give."""
    meta = copy.deepcopy(model).to('meta').eval()
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.numel()))
             for m in meta.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    gmacs = count_gmacs(meta, input_size)
    for hook in hooks:
        hook.remove()
    return gmacs, sum(outputs) / 1e6


def retarget_card(text: str, repo_id: str) -> str:
    """A card's snippet, title and model-index name pointed at ``repo_id`` (run by push before uploading)."""
    name = repo_id.split('/')[-1]
    text = re.sub(r"(local-dir:path/to/this/folder|hf-hub:[^'\"\s)`]+)", f'hf-hub:{repo_id}', text)
    text = re.sub(r'^# .*$', f'# {name}', text, count=1, flags=re.MULTILINE)
    return re.sub(r'^(- name: ).*$', rf'\g<1>{name}', text, count=1, flags=re.MULTILINE)


@dataclass(frozen=True)
class CardFacts:
    """What a model card says beyond the model and its config.json.

    Attributes:
        repo_id: the Hub repo the folder is for (the snippets load ``hf-hub:REPO_ID``; without it
            ``local-dir:``, which ``push_to_hub`` rewrites).
        dataset: the training dataset, as a hub id or (hub id, display name).
        metrics: name -> value (e.g. ``{'top1': 78.14}``), written to ``model-index`` and to a table.
        metrics_source: who measured the metrics, when not this folder's own evaluation
            (e.g. 'reported by the FishNet authors, not measured by fishzoo').
        license: a Hub license id; the model's pretrained_cfg license, else 'other'.
        tags: extra Hub tags.
        description: the card's first paragraph.
        base_model: the Hub repo a fine-tune started from (the Hub's model tree).
    """
    repo_id: Optional[str] = None
    dataset: Union[str, Tuple[str, str], None] = None
    metrics: Optional[Mapping[str, float]] = None
    metrics_source: Optional[str] = None
    license: Optional[str] = None
    tags: Sequence[str] = ()
    description: Optional[str] = None
    base_model: Optional[str] = None

    @property
    def dataset_id_and_name(self) -> Tuple[Optional[str], Optional[str]]:
        if isinstance(self.dataset, str):
            return self.dataset, self.dataset
        return self.dataset or (None, None)


def _front_matter(arch: str, cfg: dict, facts: CardFacts, license: str) -> str:
    """The YAML the Hub reads: library, tags, license, datasets, base model and ``model-index`` metrics."""
    dataset_id, dataset_name = facts.dataset_id_and_name
    eval_results = None
    if facts.metrics and dataset_id:
        # model-index names a source only together with its url (the original implementation's)
        source = dict(source_name=facts.metrics_source, source_url=cfg['origin_url']) \
            if facts.metrics_source and cfg.get('origin_url') else {}
        eval_results = [
            EvalResult(
                task_type='image-classification', dataset_type=dataset_id, dataset_name=dataset_name,
                metric_type=METRICS.get(name, (name,))[0], metric_name=_metric_title(name),
                metric_value=_card_value(name, value), **source)
            for name, value in facts.metrics.items()]
    card_license = dict(license=license)
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
    multilabel = bool(hub_config.get('multilabel'))
    activation = 'sigmoid()' if multilabel else 'softmax(-1)'
    install = ['# fishzoo is not on PyPI: install it from its source tree', 'pip install timm /path/to/fishzoo'] \
        if is_fishzoo else ['pip install timm']
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
    ]
    if is_fishzoo:
        lines += ['fishzoo registers its architectures with timm when it is installed; no `import fishzoo` is needed.',
                  '']
    return lines


def _details(model: torch.nn.Module, arch: str, cfg: dict, facts: CardFacts, license: str) -> List[str]:
    """Architecture, size, input, classes, dataset, lineage, paper and license."""
    params = sum(p.numel() for p in model.parameters())
    gmacs, activations = _complexity(model, cfg['input_size'])
    _, height, width = cfg['input_size']
    lines = [
        '## Model details', '',
        f'- Architecture: `{arch}` ({params / 1e6:.2f}M parameters)',
        f'- GMACs: {gmacs:.2f}, activations: {activations:.2f}M (one {height}x{width} image)',
        f"- Input: {height}x{width} px, {cfg['input_size'][0]} channels, "
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
    else:
        lines.append(f'- License: {license}')
    return lines


def _results(facts: CardFacts) -> List[str]:
    if not facts.metrics:
        return []
    lines = ['', '## Results', '']
    if facts.metrics_source:
        lines += [f'Numbers {facts.metrics_source}.', '']
    lines += ['| metric | value |', '|---|---:|']
    return lines + [f'| {_metric_title(k)} (%) | {_card_value(k, v):.2f} |' for k, v in facts.metrics.items()]


def model_card(model: torch.nn.Module, hub_config: Optional[dict] = None, facts: Optional[CardFacts] = None,
               **fields) -> str:
    """The README.md of a hub folder: YAML front matter (library, tags, license, datasets, model-index) and text.

    ``hub_config`` is the folder's config.json contents (its pretrained_cfg describes the saved model's
    input; the model's own pretrained_cfg if not given). What else the card says is ``facts``, or the
    :class:`CardFacts` fields as keyword arguments.
    """
    facts = facts or CardFacts(**fields)
    hub_config = hub_config or {}
    cfg = hub_config.get('pretrained_cfg') or model.pretrained_cfg
    arch = hub_config.get('architecture') or cfg.get('architecture') or type(model).__name__
    license = facts.license or cfg.get('license') or 'other'
    ref = f'hf-hub:{facts.repo_id}' if facts.repo_id else LOCAL_REF
    is_fishzoo = type(model).__module__.startswith('fishzoo.')
    lines = [
        '---', _front_matter(arch, cfg, facts, license), '---', '',
        f'# {(facts.repo_id or arch).split("/")[-1]}', '',
        facts.description or cfg.get('description') or f'A `{arch}` image classifier saved with fishzoo.', '',
        *_usage(model, hub_config, cfg, ref, is_fishzoo),
        *_details(model, arch, cfg, facts, license),
        *_results(facts),
    ]
    for note in cfg.get('notes') or ():
        lines.append(f'\n> {note}')
    if arch.startswith(('fishnet', 'fishnext')):
        lines += ['', '## Citation', '', '```bibtex', FISHNET_CITATION, '```']
    lines.append('')
    return '\n'.join(lines)


def export_card(config: dict) -> str:
    """The README.md of an exported folder (``fishzoo export``): what it holds, how to run it, and the int8
    accuracy measured against the fp32 model when the export was checked on held-out images."""
    record = config['export']
    arch = config.get('architecture', 'model')
    fmt, precision = record['format'], record['precision']
    runtime = {'onnx': 'onnxruntime', 'openvino': 'OpenVINO'}[fmt]
    cfg = config.get('pretrained_cfg') or {}
    lines = [
        '---', 'library_name: ' + ('onnx' if fmt == 'onnx' else 'openvino'),
        f'tags: [image-classification, fishzoo, {fmt}' + (', int8' if precision == 'int8' else '') + ']', '---', '',
        f'# {arch} ({fmt}, {precision})', '',
        f'`{arch}` exported by `fishzoo export` for {runtime}: `{record["file"]}`, batch, height and width dynamic, '
        f'BatchNorm folded. `config.json` is the source model\'s (preprocessing, {config.get("num_classes")} '
        'labels) with an `export` record of how this folder was made.', '',
        '```bash', f'fishzoo predict path/to/this/folder image.jpg --backend {fmt}', '```', '',
        f"Input: {cfg.get('input_size')}, mean {cfg.get('mean')}, std {cfg.get('std')}, "
        f"{cfg.get('interpolation')} resize to 1/{cfg.get('crop_pct')} then center crop.", '',
    ]
    if 'max_rel_diff_fp32' in record:
        worst = max(record['max_rel_diff_fp32'].values())
        lines += [f'The fp32 export matches PyTorch within {worst:.1e} (relative, at '
                  f'{", ".join(record["max_rel_diff_fp32"])}).', '']
    if precision == 'int8':
        calib = record.get('calibration', {})
        how = ('NNCF post-training quantization' if fmt == 'openvino'
               else "onnxruntime's quantize_static (QDQ, int8 weights per channel, uint8 activations)")
        lines += [f'int8 by {how}, calibrated on {calib.get("images")} images of `{calib.get("source")}`.', '']
        acc = record.get('accuracy')
        if acc:
            name = 'top-1 (%)' if acc['metric'] == 'top1' else 'micro-F1 (%)'
            kept = (f'{len(acc["layers_in_fp32"])} of {acc["total_layers"]} convolutions kept in fp32 by the '
                    f'accuracy-aware search' if acc['layers_in_fp32'] else
                    f'{acc["quantized_layers"]} of {acc["total_layers"]} convolution/linear layers in int8')
            lines += [f'Measured on {acc["images"]} held-out images of `{acc["source"]}`:', '',
                      '| | fp32 | int8 | drop (points) | allowed | same decision as fp32 |',
                      '|---|---:|---:|---:|---:|---:|',
                      f'| {name} | {acc["fp32"]:.2f} | {acc["int8"]:.2f} | {acc["drop"]:.2f} | {acc["max_drop"]:g} '
                      f'| {acc["agreement"]:.2f}% |', '', kept + '.', '']
        else:
            lines += ['Accuracy not measured: export with `--val-data` to check int8 against fp32 on held-out '
                      'images (and to keep the most sensitive layers in fp32 until the drop fits `--max-drop`).', '']
    return '\n'.join(lines)
