"""A Gradio page that classifies a dropped image with a hub folder: ``fishzoo demo FOLDER`` serves it, and
``save_pretrained`` copies this file into every hub folder as ``app.py``, so the folder can run as a
Hugging Face Space (Gradio SDK) as it is.

It needs only timm, gradio and safetensors (and fishzoo for fishzoo's architectures, which registers
them when installed): the same preprocessing as ``fishzoo predict`` (the model's own data config and
eval transform), softmax top-k for single-label models, sigmoid with the folder's tuned thresholds
for multi-label ones.
"""
import json
import os
import sys
from pathlib import Path

import timm
import torch

try:  # registers fishzoo's architectures; not needed for timm's own
    import fishzoo  # noqa: F401
    from fishzoo.images import LimitResize
except ImportError:  # a timm architecture on a Space without fishzoo: the same bound, inline
    class LimitResize:
        """Center-crop an image's long side so that its resize stays under PIL's 89.5 Mpx bomb limit."""

        def __init__(self, short_side, limit=89_478_485):
            self.short_side, self.limit = max(1, int(short_side)), limit

        def __call__(self, img):
            w, h = img.size
            if min(w, h) == 0 or self.short_side ** 2 * max(w, h) / min(w, h) <= self.limit:
                return img
            keep = max(min(w, h), int(self.limit * min(w, h) / self.short_side ** 2))
            start = (max(w, h) - keep) // 2
            return img.crop((start, 0, start + keep, h) if w > h else (0, start, w, start + keep))


class FolderClassifier:
    """The model of a hub folder with its eval transform, labels and (multi-label) thresholds."""

    def __init__(self, folder, top_k: int = 5):
        self.folder = Path(folder)
        self.model = timm.create_model(f'local-dir:{self.folder}', pretrained=True).eval()
        config = json.loads((self.folder / 'config.json').read_text())
        data_config = timm.data.resolve_model_data_config(self.model)
        short_side = max(data_config['input_size'][1:]) / (data_config.get('crop_pct') or 1.0)
        transform = timm.data.create_transform(**data_config)
        self.transform = lambda image: transform(LimitResize(short_side)(image))  # memory bounded by the resize
        self.mode = {1: 'L', 4: 'RGBA'}.get(data_config['input_size'][0], 'RGB')
        names = config.get('label_names') or [str(i) for i in range(self.model.num_classes)]
        self.names = [str(n) for n in names]
        self.thresholds = config.get('thresholds')  # per-class thresholds: a multi-label model, as for predict
        self.top_k = min(top_k, len(self.names))
        self.title = config.get('architecture', 'model')

    @torch.no_grad()
    def __call__(self, image):
        """label -> probability for a PIL image (Gradio's Label output takes this dict)."""
        if image is None:
            return {}
        logits = self.model(self.transform(image.convert(self.mode)).unsqueeze(0))[0]
        if self.thresholds is not None:
            probs = logits.sigmoid()
            return {n: float(p) for n, p, t in zip(self.names, probs, self.thresholds) if p >= t}
        probs = logits.softmax(-1)
        top = probs.topk(self.top_k)
        return {self.names[i]: float(p) for p, i in zip(top.values, top.indices)}


def build_demo(folder, top_k: int = 5):
    """The Gradio interface for ``folder``: an image in, the top-k labels out."""
    import gradio as gr
    classify = FolderClassifier(folder, top_k)
    return gr.Interface(
        fn=classify, inputs=gr.Image(type='pil', label='image'),
        outputs=gr.Label(num_top_classes=classify.top_k, label='labels'), api_name='predict',
        title=f'{classify.title}: {Path(folder).resolve().name}', flagging_mode='never',
        description='Drop an image to see what the model says.')


if __name__ == '__main__':  # as a Space's app.py: the folder is the one this file sits in
    build_demo(os.path.dirname(os.path.abspath(__file__)) if len(sys.argv) < 2 else sys.argv[1]).launch()
