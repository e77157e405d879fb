#!/usr/bin/env python3
"""FishNet-99 against a ResNet of its size as a detection and segmentation backbone: the paper's claim, checked small.

    python studies/dense.py [--steps 300] [--seeds 0] [--backbones fishnet99 resnet26] [--json result.json]

The FishNet paper's downstream result is Mask R-CNN on COCO, FishNet-150 ahead of ResNet-50 and ResNeXt-50. On
2 CPU cores and without ImageNet weights (none can be downloaded here) this checks the same question on a task
made in code: 128 px scenes of textured backgrounds (smooth blobs, stripes or grain) with one to four squares,
discs and triangles of random colour, size (14-44 px) and rotation, later shapes occluding earlier ones; boxes
come from the visible part, the semantic map labels each pixel background or a shape class.

Both backbones start from random weights and get the same budget and recipe:

* **detection**: torchvision's Faster R-CNN on a feature pyramid from :func:`fishzoo.detection.fasterrcnn_fpn`
  (strides 4-64, anchors 16-256 px for these small objects, 128 RoIs sampled per image in training, 300 proposals
  per image in evaluation: scenes hold at most four objects), ``--steps`` AdamW steps
  of 4 fresh scenes at lr 2e-4 (30 warm-up steps, cosine), gradients clipped at 10; COCO box mAP on 200 held-out
  scenes (torchmetrics' evaluator on pycocotools);
* **segmentation**: segmentation_models_pytorch's FPN with the ``tu-`` encoder, ``--steps`` AdamW steps of 8
  scenes at lr 3e-4 (same schedule), cross-entropy; mean IoU over background and the three shapes on the same
  200 scenes.

Every scene comes from a seed, so both backbones see the same images in the same order. About 20 minutes on 2
CPU cores with the defaults; the README's "Detection and segmentation" table is its output.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import timm
import torch
import torch.nn.functional as F

import fishzoo  # noqa: F401  (registers the models)
from fishzoo.detection import fasterrcnn_fpn
from fishzoo.info import machine_summary

SHAPES = ('square', 'disc', 'triangle')  # class 1, 2, 3; 0 is the background
SIZE = 128
VAL_SCENES = 200


# --- the scenes ------------------------------------------------------------------------------------------------

def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (3, size, size) background in [0, 1]: smooth colour blobs, stripes, or grain on a base colour."""
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    if kind == 0:
        low = torch.from_numpy(rng.random((1, 3, 6, 6), dtype=np.float32))
        return F.interpolate(low, size=(size, size), mode='bicubic', align_corners=False)[0].clamp(0, 1).numpy()
    if kind == 1:
        angle, freq = rng.uniform(0, math.pi), rng.uniform(3, 12)
        wave = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)))
        a, b = rng.random(3), rng.random(3)
        return (a[:, None, None] * wave + b[:, None, None] * (1 - wave)).astype(np.float32)
    base = rng.random(3)[:, None, None]
    return np.clip(base + rng.normal(0, 0.15, (3, size, size)), 0, 1).astype(np.float32)


def _shape_mask(rng: np.random.Generator, kind: int, size: int) -> np.ndarray:
    """A boolean mask of one shape (1 square, 2 disc, 3 triangle), rotated, 14-44 px across, anywhere in frame."""
    extent = rng.uniform(14, 44)
    cy, cx = rng.uniform(extent / 2, size - extent / 2, 2)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    if kind == 1:
        aspect = rng.uniform(0.7, 1.3)
        return (np.abs(u) <= extent / 2) & (np.abs(v) <= extent / 2 * aspect)
    if kind == 2:
        aspect = rng.uniform(0.7, 1.3)
        return (u / (extent / 2)) ** 2 + (v / (extent / 2 * aspect)) ** 2 <= 1
    # a triangle: inside all three edges of the vertices at 90, 210 and 330 degrees
    corners = [(extent / 2 * math.cos(a), extent / 2 * math.sin(a)) for a in np.radians([90, 210, 330])]
    inside = np.ones_like(u, dtype=bool)
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]):
        inside &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0
    return inside


def make_scene(seed: int, size: int = SIZE) -> Dict[str, np.ndarray]:
    """One scene: image (3, H, W) float32, boxes (N, 4) xyxy, labels (N,), semantic (H, W) int64."""
    rng = np.random.default_rng(seed)
    image = _texture(rng, size)
    semantic = np.zeros((size, size), dtype=np.int64)
    instances: List[Tuple[int, np.ndarray]] = []
    for _ in range(rng.integers(1, 5)):
        kind = int(rng.integers(1, 4))
        mask = _shape_mask(rng, kind, size)
        colour = rng.random(3).astype(np.float32)
        grain = rng.normal(0, 0.04, (3, size, size)).astype(np.float32)
        image = np.where(mask, np.clip(colour[:, None, None] + grain, 0, 1), image)
        semantic[mask] = kind
        instances = [(k, m & ~mask) for k, m in instances] + [(kind, mask)]
    boxes, labels = [], []
    for kind, mask in instances:
        if mask.sum() < 40:  # hidden under later shapes
            continue
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(kind)
    return dict(image=image.astype(np.float32), boxes=np.array(boxes, np.float32).reshape(-1, 4),
                labels=np.array(labels, np.int64), semantic=semantic)


def scenes(seeds) -> List[Dict[str, torch.Tensor]]:
    return [{k: torch.from_numpy(v) for k, v in make_scene(int(s)).items()} for s in seeds]


def _schedule(optimizer, steps: int, warmup: int = 30):
    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- the two tasks ---------------------------------------------------------------------------------------------

def detection_run(backbone: str, steps: int, seed: int, batch: int = 4) -> Dict:
    from torchmetrics.detection import MeanAveragePrecision
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    torch.manual_seed(seed)
    anchors = AnchorGenerator(((16,), (32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 5)
    detector = fasterrcnn_fpn(backbone, num_classes=len(SHAPES) + 1, min_size=SIZE, max_size=SIZE,
                              rpn_anchor_generator=anchors, box_batch_size_per_image=128, box_detections_per_img=50,
                              rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=300)
    params = [p for p in detector.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4, weight_decay=1e-4)
    schedule = _schedule(optimizer, steps)
    detector.train()
    start, losses = time.perf_counter(), []
    for step in range(steps):
        batch_scenes = scenes(range(1_000_000 * (seed + 1) + step * batch, 1_000_000 * (seed + 1) + (step + 1) * batch))
        loss = sum(detector([s['image'] for s in batch_scenes],
                            [dict(boxes=s['boxes'], labels=s['labels']) for s in batch_scenes]).values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    train_seconds = time.perf_counter() - start

    detector.eval()
    metric = MeanAveragePrecision(box_format='xyxy', iou_type='bbox')
    val = scenes(range(VAL_SCENES))
    with torch.no_grad():
        for i in range(0, len(val), 8):
            chunk = val[i:i + 8]
            predictions = detector([s['image'] for s in chunk])
            metric.update(predictions, [dict(boxes=s['boxes'], labels=s['labels']) for s in chunk])
    result = metric.compute()
    return dict(map=float(result['map']), map_50=float(result['map_50']), map_75=float(result['map_75']),
                first_loss=float(np.mean(losses[:10])), last_loss=float(np.mean(losses[-10:])),
                train_seconds=train_seconds)


def segmentation_run(backbone: str, steps: int, seed: int, batch: int = 8) -> Dict:
    import segmentation_models_pytorch as smp
    from torchmetrics.classification import MulticlassJaccardIndex

    torch.manual_seed(seed)
    model = smp.FPN(f'tu-{backbone}', encoder_weights=None, classes=len(SHAPES) + 1)
    cfg = timm.get_pretrained_cfg(backbone)
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-4)
    schedule = _schedule(optimizer, steps)
    model.train()
    start, losses = time.perf_counter(), []
    for step in range(steps):
        batch_scenes = scenes(range(2_000_000 * (seed + 1) + step * batch, 2_000_000 * (seed + 1) + (step + 1) * batch))
        images = (torch.stack([s['image'] for s in batch_scenes]) - mean) / std
        loss = F.cross_entropy(model(images), torch.stack([s['semantic'] for s in batch_scenes]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    train_seconds = time.perf_counter() - start

    model.eval()
    metric = MulticlassJaccardIndex(num_classes=len(SHAPES) + 1, average='macro')
    val = scenes(range(VAL_SCENES))
    with torch.no_grad():
        for i in range(0, len(val), 16):
            chunk = val[i:i + 16]
            images = (torch.stack([s['image'] for s in chunk]) - mean) / std
            metric.update(model(images).argmax(1), torch.stack([s['semantic'] for s in chunk]))
    return dict(miou=float(metric.compute()), first_loss=float(np.mean(losses[:10])),
                last_loss=float(np.mean(losses[-10:])), train_seconds=train_seconds)


def dense_study(backbones: List[str], steps: int, seeds: List[int]) -> Dict:
    rows = []
    for backbone in backbones:
        params = sum(p.numel() for p in timm.create_model(backbone, features_only=True).parameters())
        for seed in seeds:
            det = detection_run(backbone, steps, seed)
            seg = segmentation_run(backbone, steps, seed)
            rows.append(dict(backbone=backbone, backbone_params=params, seed=seed, detection=det, segmentation=seg))
            print(f'{backbone} seed {seed}: box mAP {det["map"]:.3f} (AP50 {det["map_50"]:.3f}), '
                  f'mIoU {seg["miou"]:.3f}', file=sys.stderr, flush=True)
    return dict(machine=machine_summary(), steps=steps, seeds=seeds, rows=rows)


def markdown(study: Dict) -> str:
    lines = [f'{study["steps"]} steps per task and backbone, seeds {", ".join(map(str, study["seeds"]))}; '
             f'{study["machine"]}', '',
             '| backbone | params (backbone) | box mAP | AP50 | AP75 | mIoU | train time (det + seg) |',
             '|---|---|---|---|---|---|---|']
    for backbone in dict.fromkeys(r['backbone'] for r in study['rows']):
        rows = [r for r in study['rows'] if r['backbone'] == backbone]

        def mean(task, key, rows=rows):
            return float(np.mean([r[task][key] for r in rows]))
        seconds = mean('detection', 'train_seconds') + mean('segmentation', 'train_seconds')
        lines.append(f'| {backbone} | {rows[0]["backbone_params"] / 1e6:.1f}M | {mean("detection", "map"):.3f} | '
                     f'{mean("detection", "map_50"):.3f} | {mean("detection", "map_75"):.3f} | '
                     f'{mean("segmentation", "miou"):.3f} | {seconds / 60:.1f} min |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--backbones', nargs='+', default=['fishnet99', 'resnet26'])
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0])
    parser.add_argument('--json', help='also write the results here')
    args = parser.parse_args(argv)
    study = dense_study(args.backbones, args.steps, args.seeds)
    if args.json:
        Path(args.json).write_text(json.dumps(study, indent=2))
    print(markdown(study))
    return 0


if __name__ == '__main__':
    sys.exit(main())
