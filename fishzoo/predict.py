"""``fishzoo predict MODEL_OR_DIR IMAGES...``: top-k labels (or, for multi-label models, the labels over
their thresholds) with the folder's label names and data config.

MODEL_OR_DIR is a hub folder (what fishzoo-train and fishzoo convert write), ``local-dir:PATH``,
``hf-hub:REPO_ID`` or a timm name with pretrained weights.
"""
import csv
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch

from fishzoo.data import DataError, image_mode, load_image


class PredictError(ValueError):
    """A bad model, image or option; the message names it."""


def load_model(model_or_dir: str):
    import pickle

    import timm
    from safetensors import SafetensorError

    from fishzoo.hub import HubFolderError, check_hub_folder
    from fishzoo.models._pretrained import CheckpointError
    folder = model_or_dir[len('local-dir:'):] if model_or_dir.startswith('local-dir:') else model_or_dir
    try:
        if Path(folder).is_dir():
            check_hub_folder(folder)
            model_or_dir = f'local-dir:{folder}'
        model = timm.create_model(model_or_dir, pretrained=True)
    except (HubFolderError, CheckpointError) as e:
        raise PredictError(str(e)) from None
    except (RuntimeError, OSError, ValueError, pickle.UnpicklingError, SafetensorError) as e:
        raise PredictError(f'{model_or_dir}: could not load the model ({str(e).strip().splitlines()[0]})') from None
    return model.eval()


def read_thresholds(model_or_dir: str, num_classes: int) -> Optional[List[float]]:
    """Per-class decision thresholds of a multi-label folder (config.json 'thresholds'), if any."""
    folder = model_or_dir[len('local-dir:'):] if model_or_dir.startswith('local-dir:') else model_or_dir
    path = Path(folder) / 'config.json'
    if not path.is_file():
        return None
    thresholds = json.loads(path.read_text()).get('thresholds')
    if thresholds is None:
        return None
    if not isinstance(thresholds, list) or len(thresholds) != num_classes or \
            not all(isinstance(t, (int, float)) and 0 <= t <= 1 for t in thresholds):
        raise PredictError(f'{path}: "thresholds" must be {num_classes} numbers between 0 and 1')
    return [float(t) for t in thresholds]


def predict(
        model_or_dir: str,
        images: Sequence[Union[str, Path]],
        top_k: int = 5,
        batch_size: int = 16,
) -> List[Dict]:
    """One dict per image: ``{'image', 'labels': [(label, probability), ...]}``."""
    from timm.data import create_transform, resolve_input_data_config
    model = load_model(model_or_dir)
    thresholds = read_thresholds(model_or_dir, model.num_classes)
    names = model.pretrained_cfg.get('label_names')
    names = list(names) if names else [str(i) for i in range(model.num_classes)]
    config = resolve_input_data_config(model)
    transform = create_transform(**{k: config[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct')})
    mode = image_mode(config['input_size'][0])
    results = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        batch = []
        for image in chunk:
            if not Path(image).is_file():
                raise PredictError(f'{image}: no such image file')
            try:
                batch.append(transform(load_image(image, mode)))
            except (OSError, DataError, ValueError) as e:
                raise PredictError(f'{image}: unreadable image ({str(e).splitlines()[0]})') from None
        with torch.no_grad():
            logits = model(torch.stack(batch))
        for image, row in zip(chunk, logits):
            if thresholds is not None:
                probs = row.sigmoid()
                picked = [i for i in range(len(names)) if probs[i] >= thresholds[i]]
                picked.sort(key=lambda i: -probs[i].item())
            else:
                probs = row.softmax(-1)
                picked = probs.topk(min(top_k, len(names))).indices.tolist()
            results.append(dict(image=str(image), labels=[(names[i], probs[i].item()) for i in picked]))
    return results


def write_csv(results: List[Dict], path: Union[str, Path]) -> None:
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['image', 'rank', 'label', 'probability'])
        for result in results:
            for rank, (label, prob) in enumerate(result['labels'], start=1):
                writer.writerow([result['image'], rank, label, f'{prob:.6f}'])
