"""The FishNet authors' checkpoints (or pytorchcv's) in, safetensors hub folders out.

    fishzoo convert fishnet150.in1k_ls fishnet150_ckpt_welltrained.tar --output-dir fishnet150.in1k_ls
    python scripts/convert_fishnet.py fishnet99 fishnet99_ckpt.tar --output-dir out --push-to-hub me/fishnet99.in1k

The checkpoint is read with ``torch.load(weights_only=True)`` (through timm) and converted by
``fishzoo.models.fishnet.checkpoint_filter_fn``. The card's accuracy is the authors' reported number,
labelled as such: nothing is evaluated here.
"""
from pathlib import Path
from typing import Optional, Union

import timm
from timm.data import ImageNetInfo

from fishzoo.errors import ConversionError
from fishzoo.hub import push_to_hub as _push_to_hub
from fishzoo.hub import save_pretrained
from fishzoo.loading import load_model
from fishzoo.models.fishnet import REPORTED_ACCURACY

CONVERTIBLE = ('fishnet99', 'fishnet150', 'fishnet201')


def resolve_tag(arch: str) -> str:
    """'fishnet150' -> its default pretrained tag 'fishnet150.in1k'; a full tag is checked and kept."""
    base = arch.split('.', 1)[0]
    if base not in CONVERTIBLE:
        raise ConversionError(f'ARCH must be one of {", ".join(CONVERTIBLE)} (optionally with a tag), got {arch!r}')
    tags = [t for t in timm.list_pretrained(f'{base}.*') if t.split('.', 1)[0] == base]
    if '.' not in arch:
        return tags[0]
    if arch not in tags:
        raise ConversionError(f'unknown tag {arch!r}; the tags of {base} are {", ".join(tags)}')
    return arch


def convert_fishnet(
        arch: str,
        checkpoint: Union[str, Path],
        output_dir: Union[str, Path],
        push_to_hub: Optional[str] = None,
        overwrite: bool = False,
) -> Path:
    """Convert ``checkpoint`` for ``arch`` (e.g. 'fishnet150' or 'fishnet150.in1k_ls') into a hub folder."""
    name = resolve_tag(arch)
    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    if not checkpoint.is_file():
        raise ConversionError(f'{checkpoint}: no such checkpoint file')
    if (output_dir / 'model.safetensors').exists() and not overwrite:
        raise ConversionError(f'{output_dir} already holds a model; pass --overwrite to replace it')
    # a ModelLoadError names the file: a refused pickle, a corrupted file, another architecture
    model = load_model(name, pretrained=True, label=f'converting as {name.split(".")[0]}',
                       pretrained_cfg_overlay=dict(file=str(checkpoint)))
    top1, top5 = REPORTED_ACCURACY[name]
    info = ImageNetInfo()
    save_pretrained(
        model.eval(), output_dir,
        label_names=info.label_names(),
        label_descriptions=info.label_descriptions(as_dict=True),
        repo_id=push_to_hub,
        dataset=('imagenet-1k', 'ImageNet-1k'),
        metrics={'top1': top1, 'top5': top5},
        metrics_source='reported by the FishNet authors, not measured by fishzoo',
        license=model.pretrained_cfg.get('license'),  # 'unknown': the authors published none
        train_images=1_281_167, val_images=50_000, validation='the ImageNet-1k validation set',
        tags=('fishnet', 'converted'),
        source_weights=True,  # the authors' weights: their tag and notes stay in config.json
        description=(
            f'`{name}`: the FishNet authors\' ImageNet-1k checkpoint `{checkpoint.name}`, converted to timm '
            f'and safetensors by fishzoo with identical outputs.'),
    )
    if push_to_hub:
        _push_to_hub(output_dir, push_to_hub, commit_message=f'Add {name} converted by fishzoo')
    return output_dir
