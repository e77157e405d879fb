"""Deployment: the fast path, int8, and export folders for CPUs (ONNX, OpenVINO) and phones (ExecuTorch,
LiteRT).

One module per format, each ending in a :class:`~fishzoo.deploy.runner.Format` (how its file is written,
checked against PyTorch, quantized and run); :mod:`.formats` lists them, and the command line, predict, the
export card and :mod:`.export` read that table. Layered from the bottom up; each module imports only those
above it in this list:

    calibration.py    calibration and validation images read with the model's eval transform
    runner.py         a model as a Runner, the optional-module check, the one check against PyTorch, Format
    accuracy.py       int8 accuracy against fp32, the damage ranking, the one keep-in-fp32 search
    onnx.py           ONNX (onnxruntime; int8 by onnxruntime's quantizer)
    openvino.py       OpenVINO (int8 by NNCF)
    backend_choice.py which runtime the fast path runs a model in: torch or OpenVINO, measured and cached
    fast_path.py      fishzoo.optimize_for_inference: BatchNorm folded, channels_last, compiled with freezing
    pt2e.py           PT2E int8: capture, convert, and the search over a converted graph
    int8_torch.py     fishzoo.quantize: int8 of a torch model (torchao PT2E, compiled by inductor)
    xnnpack.py        export-time forms of fishzoo's layers that XNNPACK runs
    phone.py          what ExecuTorch and LiteRT share: batch-1 XNNPACK exports, int8 measured as the file
    executorch.py     ExecuTorch programs for the XNNPACK delegate
    litert.py         LiteRT models (ai-edge-litert's interpreter)
    formats.py        the table of formats; detecting and running an exported folder
    card.py           an exported folder's README
    export.py         fishzoo export: a folder, fp32 or int8, checked against PyTorch, written at once

The heavy runtimes (onnx, onnxruntime, openvino, nncf, torchao, executorch, litert-torch) are imported only
inside the functions that use them, so importing this package needs none of them; ``pip install
'fishzoo[deploy]'`` (and ``[mobile]``, ``[litert]``) brings them.
"""
