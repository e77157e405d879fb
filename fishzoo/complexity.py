"""What one forward pass of a model costs: multiply-accumulates and activations, counted on the meta device.

``torch.utils.flop_counter`` counts the model's operations on a tensor with no data, so even FishNet-201 is
measured in about a second with nothing allocated. The README's models table (:mod:`fishzoo.info`) and every
model card (:mod:`fishzoo.hub.card`) read their figures here.
"""
import copy
from typing import Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_gmacs(model: torch.nn.Module, input_size) -> float:
    """Multiply-accumulates (in billions) of one forward pass on a single image of ``input_size`` (C, H, W)."""
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, *input_size, device=device))
    return counter.get_total_flops() / 2e9


def complexity(model: torch.nn.Module, input_size) -> Tuple[float, float]:
    """(GMACs, activations in millions) of one image, counted on a meta copy of ``model``.

    Activations are the output elements of every convolution and linear layer, the measure timm's model cards
    give."""
    meta = copy.deepcopy(model).to('meta').eval()
    if hasattr(meta, 'set_grad_checkpointing'):  # a model trained with it: activation checkpointing has no meta
        meta.set_grad_checkpointing(False)        # device before torch 2.5, and nothing is trained here
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.numel()))
             for m in meta.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    gmacs = count_gmacs(meta, input_size)
    for hook in hooks:
        hook.remove()
    return gmacs, sum(outputs) / 1e6
