"""`--runtime onnx|onnx-int8 [--model FILE]`: an exported model in place of a task module's network.

A task's runner (`TaskDeployment.runner`) returns what the PyTorch network returns, so `attach_runtime`
can put it in place of the network inside the task's LightningModule and the task's own validate, test
and predict (metrics, data module, reports) score the exported model.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from tasks.common.deploy.deployment import DeployError, TaskDeployment
from tasks.common.deploy.export import export_task
from tasks.common.deploy.onnx_model import OnnxModel

RUNTIMES = ("torch", "onnx", "onnx-int8")


def load_deployed(
    path: str | os.PathLike, deployment: TaskDeployment, *, threads: int | None = None
) -> OnnxModel:
    """`deployment`'s runner on an exported file, checked to hold that task's model."""
    return deployment.runner(path, task=deployment.task, threads=threads)


def attach_runtime(
    module: nn.Module,
    runtime: str,
    deployment: TaskDeployment,
    *,
    model: str | os.PathLike | None = None,
    ckpt_path: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    threads: int | None = None,
) -> OnnxModel | None:
    """Run `module`'s network on ONNX Runtime: its `forward` then feeds the exported model.

    `model` is an exported file; without it, `ckpt_path` is exported into `out_dir` first (fp32, or
    int8 calibrated on 256 images of the recipe's synthetic generator). The exported model must be
    of the module's task and, when given as a file, of the requested precision.
    """
    deployed = load_runtime(runtime, deployment, model=model, ckpt_path=ckpt_path, out_dir=out_dir,
                            threads=threads)  # fmt: skip
    if deployed is None:
        return None
    network = getattr(module, deployment.network)
    network.forward = deployed  # nn.Module.__call__ dispatches to the instance attribute
    module.deployed_model = deployed
    return deployed


def load_runtime(
    runtime: str,
    deployment: TaskDeployment,
    *,
    model: str | os.PathLike | None = None,
    ckpt_path: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    threads: int | None = None,
) -> OnnxModel | None:
    """The exported model `--runtime` asks for (None for "torch"): `model`, or `ckpt_path` exported into
    `out_dir` first; checked to be of the deployment's task and of that precision."""
    if runtime not in RUNTIMES:
        raise DeployError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "torch":
        return None
    int8 = runtime == "onnx-int8"
    if model is None:
        if ckpt_path is None:
            raise DeployError(f"--runtime {runtime} needs --model FILE.onnx (an exported model) or "
                              "--ckpt_path (a checkpoint to export)")  # fmt: skip
        out_dir = Path(out_dir or tempfile.mkdtemp(prefix="mobilenets-runtime-"))
        model = export_task(ckpt_path, out_dir / ("model-int8.onnx" if int8 else "model.onnx"), [deployment],
                            int8=int8, calibration_synthetic=256 if int8 else None)  # fmt: skip
        print(f"exported {ckpt_path} to {model}")
    deployed = load_deployed(model, deployment, threads=threads)
    if deployed.int8 != int8:
        raise DeployError(f"{model}: an {'int8' if deployed.int8 else 'fp32'} model, but --runtime is "
                          f"{runtime}")  # fmt: skip
    return deployed


def split_runtime_args(args: Sequence[str]) -> tuple[list[str], tuple[str, str | None]]:
    """Take `--runtime onnx|onnx-int8` and `--model FILE.onnx` out of a task command's argv.

    `--model` with any other value (a YAML, `--model.x ...`) is left for LightningCLI.
    """
    rest, runtime, model = [], "torch", None
    args, i = list(args), 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        step = 1
        if name in ("--runtime", "--model") and not eq and i + 1 < len(args):
            value, step = args[i + 1], 2
        if name == "--runtime" and (eq or step == 2):
            runtime = value
        elif name == "--model" and (eq or step == 2) and value.endswith(".onnx"):
            model = value
        else:
            rest.append(args[i])
            step = 1
        i += step
    if runtime not in RUNTIMES:
        raise SystemExit(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if model is not None and runtime == "torch":
        raise SystemExit(f"--model {model}: an exported model runs with --runtime onnx or onnx-int8")
    return rest, (runtime, model)


def attach_cli_runtime(cli) -> None:
    """`SuiteCLI.before_{validate,test,predict}`: put the exported model in place of the network."""
    runtime, model = cli.runtime
    if runtime == "torch":
        return
    if cli.spec.deploy is None:
        raise SystemExit(f"mobilenets {cli.spec.name}: this task has no exported model to run (--runtime)")
    from tasks.common.lightning_cli import RUNS_ROOT

    config = cli.config[cli.subcommand]
    try:
        attach_runtime(
            cli.model, runtime, cli.spec.deployment(), model=model, ckpt_path=config.get("ckpt_path"),
            out_dir=RUNS_ROOT / cli.spec.name / cli.version, threads=getattr(cli.model, "cpu_threads", None),
        )  # fmt: skip
    except DeployError as err:
        raise SystemExit(f"mobilenets {cli.spec.name} {cli.subcommand}: {err}") from None
