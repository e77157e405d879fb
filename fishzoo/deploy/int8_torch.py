"""``fishzoo.quantize(model, calibration)``: a torch-native int8 model for x86 CPUs (VNNI / AMX).

The PT2E flow of torchao (newer torch no longer ships it under ``torch.ao``): BatchNorm folded
(timm's ``reparameterize_model``), the model captured with ``torch.export`` (batch, height and width
dynamic), annotated by ``X86InductorQuantizer`` (int8 activations per tensor, weights per channel),
calibrated on the given images, converted, and compiled by inductor with weight freezing, which turns the
quantize/dequantize pairs around each convolution into oneDNN int8 kernels. What the quantizer has no int8
pattern for (Mish, the dual MobileNetV2's activation; upsampling) runs in fp32 between a dequantize and a
quantize; :attr:`QuantizedModel.report` counts both kinds per operator. With validation images it is
accuracy-aware (:func:`fishzoo.deploy.pt2e.quantize_with_accuracy`): the modules around the activations int8
damages most stay in fp32 until the held-out drop fits.
"""
import copy
import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Union

import torch
import torch.nn as nn
from timm.models import reparameterize_model

from fishzoo.errors import QuantizeError

from . import pt2e
from .accuracy import DEFAULT_MAX_DROP, Int8Accuracy
from .calibration import LabelledImages, as_batches, validation_images
from .fast_path import InferenceModel, select_fast_path
from .runner import require, torch_runner

_logger = logging.getLogger(__name__)

_QDQ_NAMES = ('quantize_per_tensor', 'dequantize_per_tensor', 'quantize_per_channel', 'dequantize_per_channel',
              'quantize_affine', 'dequantize_affine')
# ops that only move or reshape data: not worth counting as fp32 compute
_DATA_MOVEMENT = {'view', 'reshape', 'flatten', 'permute', 'contiguous', 'clone', 'getitem', 'size', 'sym_size',
                  'alias', 'expand', 'slice', 'squeeze', 'unsqueeze', 'detach', '_assert_tensor_metadata', 'sym_numel',
                  'floordiv', 'sym_float', 'sym_int', 'truediv', 'mod', 'eq', 'ge', 'le', 'lt', 'gt', 'sym_max',
                  'sym_min'}


# activations the x86 quantizer fuses into an int8 convolution (its conv + unary patterns); others (Mish)
# run in fp32 on the convolution's dequantized output
_FUSED_UNARY = {'relu', 'relu_', 'relu6', 'hardtanh', 'hardtanh_', 'hardswish', 'hardswish_', 'silu', 'silu_'}


def _op_name(node: torch.fx.Node) -> str:
    target = node.target
    name = getattr(target, '__name__', None) or str(target)
    return name.split('.')[0]


def quantization_report(graph_module: torch.fx.GraphModule) -> Dict[str, Dict[str, int]]:
    """Compute ops of a converted graph by precision: ``{'int8': {op: n}, 'fp32': {op: n}}``. An op runs in
    int8 when a dequantize feeds it (inductor fuses the pair into an int8 kernel), or when it is an activation
    the quantizer fuses into the int8 convolution before it (ReLU, SiLU, ...; not Mish)."""
    int8, fp32 = Counter(), Counter()
    in_int8 = set()
    for node in graph_module.graph.nodes:
        if node.op != 'call_function':
            continue
        name = _op_name(node)
        if name in _QDQ_NAMES or name in _DATA_MOVEMENT:
            continue
        inputs = [a for a in node.all_input_nodes if a.op == 'call_function']
        fed_by_dq = any(_op_name(a).startswith('dequantize') for a in inputs)
        fused = (name in _FUSED_UNARY and len(inputs) == 1 and inputs[0] in in_int8
                 and any(_op_name(u).startswith('quantize') for u in node.users))
        if fed_by_dq or fused:
            in_int8.add(node)
            int8[name] += 1
        else:
            fp32[name] += 1
    return {'int8': dict(int8), 'fp32': dict(fp32)}


class QuantizedModel(InferenceModel):
    """An int8 model called like the original (fp32 images in, fp32 logits out); ``report`` says which
    operators run in int8 and which stayed in fp32; with validation data, ``accuracy`` is what it was measured
    at and ``kept_in_fp32`` the modules the accuracy-aware search left out of int8."""

    def __init__(self, model: nn.Module, fast_path, compiled, report: Dict[str, Dict[str, int]], source: nn.Module,
                 accuracy: Optional[Int8Accuracy] = None, kept_in_fp32: Sequence[str] = ()):
        super().__init__(model, fast_path, compiled)
        self.report = report
        self.accuracy = accuracy
        self.kept_in_fp32 = list(kept_in_fp32)
        # what timm's data config and fishzoo's predict read from a model
        self.pretrained_cfg = getattr(source, 'pretrained_cfg', {})
        self.num_classes = getattr(source, 'num_classes', None)

    def train(self, mode: bool = True) -> 'QuantizedModel':
        """Always in eval mode (``.eval()`` works as on any model); an int8 graph cannot train."""
        if mode:
            raise QuantizeError('an int8 model from fishzoo.quantize runs inference only; train the fp32 model '
                                'and quantize it again')
        return self

    def extra_repr(self) -> str:
        int8, fp32 = sum(self.report['int8'].values()), sum(self.report['fp32'].values())
        return f'int8 ops={int8}, fp32 ops={fp32}, compiled={self.compiled}'


def _x86_quantizer(folded: nn.Module):
    """(excluded module names) -> torchao's x86 quantizer over ``folded``'s graph, those modules left in fp32."""
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    def build(excluded: Sequence[str] = ()):
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        # a convolution over one input channel (a grayscale stem) compiled to an int8 kernel whose output
        # layout disagreed with what inductor planned ("expected stride 1==1024"), so it stays fp32
        # (test_grayscale_stem_stays_compiled guards it)
        for name, module in folded.named_modules():
            if isinstance(module, nn.Conv2d) and module.in_channels == 1 and module.groups == 1:
                quantizer.set_module_name_qconfig(name, None)
        for name in excluded:
            if not name.startswith(pt2e.NODE):  # it filters by module only
                quantizer.set_module_name_qconfig(name, None)
        return quantizer
    return build


def _validation(model: nn.Module, val_data) -> Optional[LabelledImages]:
    if val_data is None or isinstance(val_data, LabelledImages):
        return val_data
    if isinstance(val_data, (str, Path)):
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        return validation_images(val_data, cfg, cfg.get('label_names'), model.num_classes,
                                 multilabel=bool(cfg.get('multilabel')), flag='val_data')
    raise QuantizeError('val_data must be labelled images: a class-folder tree, a CSV (image,labels), "digits" '
                        f'or fishzoo.deploy.calibration.validation_images(...), got {type(val_data).__name__}')


def quantize(
        model: nn.Module,
        calibration: Union[torch.Tensor, Iterable, LabelledImages],
        compile: bool = True,
        max_batches: int = 32,
        val_data=None,
        max_drop: float = DEFAULT_MAX_DROP,
        thresholds=0.5,
) -> QuantizedModel:
    """An int8 copy of ``model`` calibrated on ``calibration``: a (N, C, H, W) tensor, a loader (or any
    iterable) of image tensors or ``(images, targets)`` pairs, or :func:`fishzoo.deploy.calibration.calibration_images`.

    Images must be preprocessed as for the model (its eval transform). ``compile=False`` keeps the converted
    graph eager: same numbers, no int8 speed (useful where no C++ compiler is installed). The first call of a
    compiled model compiles, which takes minutes for the larger FishNets on a few cores.

    With ``val_data`` (labelled images: a class-folder tree, a CSV ``image,labels``, ``'digits'``, or
    :func:`fishzoo.deploy.calibration.validation_images`) it is accuracy-aware, as ``fishzoo export --int8
    --val-data`` is: top-1 (micro-F1 for multi-label, at ``thresholds``) of fp32 and int8 is measured on them,
    and while int8 loses more than ``max_drop`` points the modules around the most damaged activations stay
    in fp32 (``kept_in_fp32``; ``accuracy`` holds the measurement, made on the converted graph before it is
    compiled).

    torchao's ``convert_pt2e`` traces its conv-BN patterns with torch.export's strict mode, which resets
    dynamo: models compiled earlier in the process (``optimize_for_inference``) compile again
    at their next call. Quantize first, or expect that one slow call.
    """
    require('torchao', 'deploy', 'fishzoo.quantize', QuantizeError)
    pt2e.quiet_torchao()
    batches = as_batches(calibration)[:max_batches]
    validation = _validation(model, val_data)
    if not 0 <= max_drop <= 100:
        raise QuantizeError(f'max_drop is in points between 0 and 100, got {max_drop}')
    in_chans = getattr(model, 'in_chans', None) or batches[0].shape[1]
    if batches[0].shape[1] != in_chans:
        raise QuantizeError(f'calibration images have {batches[0].shape[1]} channel(s), the model takes {in_chans}')
    folded = reparameterize_model(copy.deepcopy(model).eval(), inplace=True).eval()
    for p in folded.parameters():
        p.requires_grad_(False)
    example = batches[0][:2] if len(batches[0]) > 1 else batches[0].repeat(2, 1, 1, 1)
    captured = pt2e.capture(folded, example, dynamic=True)
    fp32_run = torch_runner(model) if validation is not None else None
    converted, accuracy, kept = pt2e.quantize_with_accuracy(captured, _x86_quantizer(folded), batches, validation,
                                                            fp32_run, max_drop, thresholds)
    report = quantization_report(converted)
    if not report['int8']:
        raise QuantizeError(f'{type(model).__name__}: the quantizer found no convolution or linear layer '
                            'to run in int8')
    # the layers left in floating point stay fp32 (exact), whatever the CPU's bf16 units
    fast_path = replace(select_fast_path('cpu', compile=compile, precision='fp32'), channels_last=True)
    compiled = torch.compile(converted) if fast_path.compile else None
    _logger.info('int8: %s in int8, fp32 left: %s', dict(report['int8']), dict(report['fp32']) or 'nothing')
    return QuantizedModel(converted, fast_path, compiled, report, model, accuracy, kept)
