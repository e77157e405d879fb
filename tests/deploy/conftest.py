# The [deploy] extra is part of the test extra: a runtime missing in CI fails the run here instead of the
# tests that need it being skipped.
import nncf  # noqa: F401
import onnx  # noqa: F401
import onnxruntime  # noqa: F401
import onnxscript  # noqa: F401
import openvino  # noqa: F401
import torchao  # noqa: F401
