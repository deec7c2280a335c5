"""Deploying a trained task model: ONNX export (fp32 or static int8) and an ONNX Runtime stand-in.

    mobilenets export --checkpoint RUN/checkpoints/last.ckpt --format onnx --out model.onnx
    mobilenets export --checkpoint CKPT --int8 --calibration DIR --out model-int8.onnx
    mobilenets export --checkpoint CKPT --int8 --calibration-synthetic 256 --out model-int8.onnx
    mobilenets <task> test --config RUN/config.yaml --runtime onnx-int8 --model model-int8.onnx

Without `--checkpoint`, `mobilenets export` is the bare backbone's (`backbone.export`).

The machinery is task-agnostic; each task declares what is particular to it in a `TaskDeployment`
(`tasks/<task>/deploy.py`, named by its `TaskSpec.deploy`), and `tasks/export_cli.py` hands every
task's deployment to `main_export`. The package follows the path of a model out of training:

* `deployment`: `TaskDeployment` and `Exportable`, which deployment wrote a checkpoint, and the
  module rebuilt from it;
* `export`: `export_task` and `mobilenets export --checkpoint` (int8 via `backbone.export`);
* `onnx_model`: `OnnxModel`, the exported file on an ONNX Runtime session, and `OnnxClassifier`,
  the runner of every network with one output;
* `runtime`: `--runtime onnx|onnx-int8 [--model FILE]` for a task's validate/test/predict and the
  face tools: the runner put in place of the module's network.
"""

from tasks.common.deploy.deployment import (
    DeployError,
    Exportable,
    TaskDeployment,
    image_loader,
    load_task_module,
    read_checkpoint,
    recognise_task,
    stack_images,
    trained_on_real_data,
)
from tasks.common.deploy.export import export_task, main_export
from tasks.common.deploy.onnx_model import OnnxClassifier, OnnxModel
from tasks.common.deploy.runtime import (
    RUNTIMES,
    attach_cli_runtime,
    attach_runtime,
    load_deployed,
    load_runtime,
    split_runtime_args,
)

__all__ = [
    "RUNTIMES", "DeployError", "Exportable", "OnnxClassifier", "OnnxModel", "TaskDeployment",
    "attach_cli_runtime", "attach_runtime", "export_task", "image_loader", "load_deployed", "load_runtime",
    "load_task_module", "main_export", "read_checkpoint", "recognise_task", "split_runtime_args",
    "stack_images", "trained_on_real_data",
]  # fmt: skip
