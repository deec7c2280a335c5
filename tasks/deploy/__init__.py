"""Deploying a trained task model: ONNX export (fp32 or static int8) and an ONNX Runtime stand-in.

    mobilenets export --checkpoint RUN/checkpoints/last.ckpt --format onnx --out model.onnx
    mobilenets export --checkpoint CKPT --int8 --calibration DIR --out model-int8.onnx
    mobilenets export --checkpoint CKPT --int8 --calibration-synthetic 256 --out model-int8.onnx
    mobilenets <task> test --config RUN/config.yaml --runtime onnx-int8 --model model-int8.onnx

Without `--checkpoint`, `mobilenets export` is the bare backbone's (`backbone.export`).

The package follows the path of a model out of training:

* `targets`: which task wrote a checkpoint (`TARGETS`: recorded backbone prefix and the
  hyper-parameters only that task's module takes), and the module rebuilt from it;
* `exportables`: per task (`EXPORTABLES`), the network the ONNX file holds, its output names, and
  calibration images drawn the task's own way; `ssd` holds the SSD's exported graph and the
  per-class selection and NMS that stay in PyTorch;
* `export`: `export_task` and `mobilenets export --checkpoint` (int8 via `backbone.export`);
* `runtime`: the ONNX Runtime stand-ins that return what each PyTorch network returns, and
  `--runtime onnx|onnx-int8 [--model FILE]` for a task's validate/test/predict and the face tools.

To make a new task exportable: a `TaskTarget` in `targets.TARGETS`, its builder in
`exportables.EXPORTABLES`, and a runner in `runtime.RUNNERS` when its network returns something
other than one tensor of logits.
"""

from tasks.deploy.export import export_task, main_export
from tasks.deploy.exportables import EXPORTABLES, Exportable
from tasks.deploy.runtime import (
    RUNNERS,
    RUNTIMES,
    OnnxAttributes,
    OnnxClassifier,
    OnnxDetector,
    OnnxEmbedder,
    OnnxGeolocator,
    OnnxModel,
    attach_cli_runtime,
    attach_runtime,
    load_deployed,
    load_runtime,
    split_runtime_args,
)
from tasks.deploy.ssd import SSDNetwork, select_detections
from tasks.deploy.targets import (
    TARGET_OF,
    TARGETS,
    DeployError,
    TaskTarget,
    load_task_module,
    read_checkpoint,
    recognise_task,
    task_of_module,
)

__all__ = [
    "EXPORTABLES", "RUNNERS", "RUNTIMES", "TARGETS", "TARGET_OF", "DeployError", "Exportable",
    "OnnxAttributes", "OnnxClassifier", "OnnxDetector", "OnnxEmbedder", "OnnxGeolocator", "OnnxModel",
    "SSDNetwork", "TaskTarget", "attach_cli_runtime", "attach_runtime", "export_task", "load_deployed",
    "load_runtime", "load_task_module", "main_export", "read_checkpoint", "recognise_task",
    "select_detections", "split_runtime_args", "task_of_module",
]  # fmt: skip
