"""Deployment: the fp32 fast path, int8, and export folders for CPUs (ONNX, OpenVINO) and phones (ExecuTorch,
LiteRT).

Layered from the bottom up; each module imports only those above it in this list:

    runtime.py        names of an exported folder, the optional-module check, running an exported folder
    fast_path.py      fishzoo.optimize_for_inference: BatchNorm folded, channels_last, compiled with freezing
    calibration.py    calibration and validation images read with the model's eval transform
    int8_exported.py  int8 of an exported ONNX file or OpenVINO model (onnxruntime, NNCF), accuracy-aware
    pt2e.py           PT2E int8: capture, convert, and the accuracy-aware search over a converted graph
    int8_torch.py     fishzoo.quantize: int8 of a torch model (torchao PT2E, compiled by inductor)
    xnnpack.py        export-time forms of fishzoo's layers that XNNPACK runs
    mobile.py         ExecuTorch programs and LiteRT models, fp32 or int8, for XNNPACK
    export.py         fishzoo export: the folders, fp32 or int8, checked against PyTorch

The heavy runtimes (onnx, onnxruntime, openvino, nncf, torchao, executorch, litert-torch) are imported only
inside the functions that use them, so importing this package needs none of them; ``pip install
'fishzoo[deploy]'`` (and ``[mobile]``, ``[litert]``) brings them.
"""
