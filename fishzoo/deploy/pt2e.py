"""PT2E int8, shared by ``fishzoo.quantize`` (x86 CPUs: torchao's ``X86InductorQuantizer``) and the phone
exports (ExecuTorch's ``XNNPACKQuantizer``, litert-torch's ``PT2EQuantizer``): capture a folded model with
``torch.export``, annotate it with a quantizer, calibrate, convert; and the accuracy-aware search they all use.

The search is :func:`fishzoo.deploy.accuracy.keep_in_fp32_until_it_fits` on a PT2E graph: every activation the
converted graph quantizes is scored by its own quantize/dequantize damage (per-channel SQNR on calibration
images), and the layers around the most damaged ones (the op writing the activation and the ops reading it,
by the module they come from) are left out of int8, 1, 2, 4, ... activations at a time, until the held-out
drop fits ``max_drop``. Leaving only the reading layer out is not enough: the writing layer (a convolution
with its ReLU) still quantizes its output, and that is where the damage is.
"""
import copy
import logging
import warnings
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from fishzoo.errors import QuantizeError, describe

from .accuracy import DEFAULT_MAX_DROP, Int8Accuracy, channel_sqnr, count_layers, keep_in_fp32_until_it_fits
from .calibration import LabelledImages
from .runner import Runner, require

_logger = logging.getLogger(__name__)

# (excluded module names) -> a quantizer annotating the whole graph but those modules
QuantizerFactory = Callable[[Sequence[str]], object]

_QUANTIZE = ('quantize_per_tensor',)
_DEQUANTIZE = ('dequantize_per_tensor',)


def quiet_torchao():
    """torchao registers an Enum with torch's pytree at import, which newer torch logs as deprecated."""
    pytree_log = logging.getLogger('torch.utils._pytree')
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            from torchao.quantization.pt2e import quantize_pt2e  # noqa: F401
            from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer  # noqa: F401
    finally:
        pytree_log.setLevel(level)


def capture(folded: nn.Module, example: torch.Tensor, dynamic: bool) -> torch.fx.GraphModule:
    """``folded`` (eval, BatchNorm folded) as an exported graph module; batch, height and width dynamic where
    the model allows it (``dynamic``), else fixed at ``example``'s shape."""
    dim = torch.export.Dim.AUTO  # dynamic where the model allows it, static (not an error) where it pins a size
    shapes = ({0: dim, 2: dim, 3: dim},) if dynamic else None
    try:
        with torch.no_grad():
            return torch.export.export(folded, (example,), dynamic_shapes=shapes).module()
    except Exception as e:
        raise QuantizeError(f'{type(folded).__name__} cannot be captured for int8 quantization with torch.export '
                            f'({describe(e, 200)})') from None


def convert(captured: torch.fx.GraphModule, quantizer, batches: Sequence[torch.Tensor],
            fold_quantize: bool = True) -> torch.fx.GraphModule:
    """A quantized copy of ``captured``: annotated by ``quantizer``, calibrated on ``batches``, converted
    (``fold_quantize=False`` keeps fp32 weights with their quantize ops, as LiteRT's converter reads them)."""
    require('torchao', 'deploy', 'int8 quantization', QuantizeError)
    quiet_torchao()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    _logger.info('PT2E: calibrating on %d batches', len(batches))
    try:
        prepared = prepare_pt2e(copy.deepcopy(captured), quantizer)
        with torch.no_grad():
            for images in batches:
                prepared(images)
        return convert_pt2e(prepared, fold_quantize=fold_quantize)
    except QuantizeError:
        raise
    except Exception as e:
        raise QuantizeError(f'the int8 quantizer failed ({describe(e, 200)})') from None


def graph_runner(graph_module: torch.fx.GraphModule) -> Runner:
    """A converted graph as a runner (exported graphs refuse ``.eval()``: they are called as they are)."""
    @torch.no_grad()
    def run(images: np.ndarray) -> np.ndarray:
        return graph_module(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).float().numpy()
    return run


def _module_paths(node: torch.fx.Node) -> List[str]:
    """The modules ``node`` comes from, outermost first, as quantizers' module-name filters spell them."""
    paths = [path for path, _ in (node.meta.get('nn_module_stack') or {}).values()]
    return [path[len("L['self']."):] if path.startswith("L['self'].") else path for path in paths]


def _module_name(node: torch.fx.Node) -> Optional[str]:
    """The innermost module ``node`` comes from."""
    paths = _module_paths(node)
    return paths[-1] if paths else None


# an op written in a model's own forward (``torch.relu(x)``) comes from no submodule: the search names it by its
# graph node, which quantizers with a node filter honour and the others ignore
NODE = 'node:'


def outside_modules(excluded: Sequence[str]) -> Callable[[torch.fx.Node], bool]:
    """A node filter: True for nodes that come from none of the modules ``excluded`` and are not named there."""
    excluded = set(excluded)

    def keep(node: torch.fx.Node) -> bool:
        return NODE + node.name not in excluded and not any(path in excluded for path in _module_paths(node))
    return keep


def without_modules(quantizer, excluded: Sequence[str]):
    """``quantizer`` with the annotations of the modules ``excluded`` removed: for quantizers that cannot set a
    module's config to None (LiteRT's). Annotations that share a removed one's parameters (a pooling sharing
    its input's scale) go with it."""
    from torchao.quantization.pt2e.quantizer import Quantizer, SharedQuantizationSpec
    keep = outside_modules(excluded)

    def shares_with(annotation, removed) -> bool:
        specs = [*annotation.input_qspec_map.values(), annotation.output_qspec]
        for spec in specs:
            if isinstance(spec, SharedQuantizationSpec):
                edge = spec.edge_or_node
                if any(n in removed for n in (edge if isinstance(edge, tuple) else (edge,))):
                    return True
        return False

    class WithoutModules(Quantizer):
        def transform_for_annotation(self, model):
            return quantizer.transform_for_annotation(model)

        def annotate(self, model):
            model = quantizer.annotate(model)
            removed = {node for node in model.graph.nodes if not keep(node)}
            while True:
                for node in removed:
                    node.meta.pop('quantization_annotation', None)
                more = {node for node in model.graph.nodes if node not in removed
                        and 'quantization_annotation' in node.meta
                        and shares_with(node.meta['quantization_annotation'], removed)}
                if not more:
                    return model
                removed |= more

        def validate(self, model):
            quantizer.validate(model)
    return WithoutModules()


def _op(node: torch.fx.Node) -> str:
    return getattr(node.target, '__name__', str(node.target)).split('.')[0]


def layer_names(graph_module: torch.fx.GraphModule) -> List[str]:
    """Modules of the convolutions and linear layers, in graph order."""
    names = [_module_name(n) for n in graph_module.graph.nodes
             if n.op == 'call_function' and _op(n) in ('conv2d', 'linear', 'conv_transpose2d', 'convolution')]
    return list(dict.fromkeys(n for n in names if n))


class _Recorder(torch.fx.Interpreter):
    def __init__(self, graph_module, wanted):
        super().__init__(graph_module)
        self.wanted, self.values = wanted, {}

    def run_node(self, n):
        out = super().run_node(n)
        if n in self.wanted:
            self.values.setdefault(n, []).append(out.detach().float().numpy())
        return out


def activation_damage(converted: torch.fx.GraphModule,
                      batches: Sequence[torch.Tensor]) -> List[Tuple[float, List[str]]]:
    """Each quantized activation of ``converted``, most damaged first: (per-channel SQNR of its
    quantize/dequantize in dB, the modules writing and reading it)."""
    pairs = []
    for q in converted.graph.nodes:
        if q.op != 'call_function' or _op(q) not in _QUANTIZE or not q.args:
            continue
        source = q.args[0]
        if not isinstance(source, torch.fx.Node) or source.op == 'get_attr':
            continue  # a weight
        dequantized = [u for u in q.users if _op(u) in _DEQUANTIZE]
        if dequantized:
            pairs.append((source, dequantized[0], q))
    recorder = _Recorder(converted, {n for s, d, _ in pairs for n in (s, d)})
    with torch.no_grad():
        for images in batches[:8]:
            recorder.run(images)
    ranked = []
    for source, dequantized, q in pairs:
        readers = [u for d in q.users for u in d.users]
        names = [_module_name(n) or NODE + n.name for n in [source, *readers] if n.op == 'call_function']
        names = list(dict.fromkeys(names))
        if names:
            ranked.append((channel_sqnr(recorder.values[source], recorder.values[dequantized]), names))
    ranked.sort(key=lambda item: item[0])
    return ranked


def quantize_with_accuracy(
        captured: torch.fx.GraphModule,
        quantizer_for: QuantizerFactory,
        batches: Sequence[torch.Tensor],
        validation: Optional[LabelledImages] = None,
        fp32_runner: Optional[Runner] = None,
        max_drop: float = DEFAULT_MAX_DROP,
        thresholds=0.5,
        runner_for: Callable[[torch.fx.GraphModule], Runner] = graph_runner,
        fold_quantize: bool = True,
) -> Tuple[torch.fx.GraphModule, Optional[Int8Accuracy], List[str]]:
    """The converted graph, its measured accuracy (with ``validation``) and the modules left out of int8.

    With ``validation``, when the drop exceeds ``max_drop``, the modules around the most damaged activations
    stay in floating point, 1, 2, 4, ... activations at a time, until it fits (or every activation is tried).
    ``fold_quantize`` is :func:`convert`'s."""
    def quantize_without(excluded):
        converted = convert(captured, quantizer_for(excluded), batches, fold_quantize)
        return converted, runner_for(converted)

    if validation is None:
        return convert(captured, quantizer_for(()), batches, fold_quantize), None, []
    first = quantize_without([])
    result = keep_in_fp32_until_it_fits(first, lambda: [names for _, names in activation_damage(first[0], batches)],
                                        quantize_without, fp32_runner, validation, max_drop, thresholds)
    layers = layer_names(captured)
    in_fp32 = [name for name in layers if any(name == e or name.startswith(e + '.') for e in result.excluded)]
    return result.model, count_layers(result.accuracy, layers, in_fp32), result.excluded
