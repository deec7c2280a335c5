"""What a task declares to be deployable, which task wrote a checkpoint, and its module rebuilt from it.

Each task owns a `TaskDeployment` in `tasks/<task>/deploy.py` (named by its `TaskSpec.deploy`): how
its checkpoints are recognised (the backbone prefix `TaskModule.on_save_checkpoint` records and the
hyper-parameters only that task's module takes), the module attribute the exported model replaces,
how to build the `Exportable` (network, outputs, calibration images drawn the task's own way) and the
ONNX Runtime runner. This package knows no task: `mobilenets export` hands it every task's deployment.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from tasks.common.io import read_checkpoint as read_checkpoint_file

if TYPE_CHECKING:
    from tasks.common.deploy.onnx_model import OnnxModel


class DeployError(ValueError):
    """A checkpoint, calibration source or model file that cannot be deployed; the message says why."""


@dataclass
class Exportable:
    """A task network ready for `export_onnx`, with the task's own input pipeline for calibration."""

    network: nn.Module
    output_names: list[str]
    image_size: int
    metadata: dict
    load_image: Callable[[Path], np.ndarray]  # file -> CHW float32, preprocessed as in evaluation
    synthetic: Callable[[int], np.ndarray]  # N -> (N, 3, H, W) from the recipe's generator


@dataclass(frozen=True)
class TaskDeployment:
    """How to recognise a task's checkpoint, export its network and run the export in its place."""

    task: str  # the CLI name
    module: str  # "package.module:Class", as in the task's TaskSpec
    prefix: str  # the backbone prefix its checkpoints record
    hparams: tuple[str, ...]  # hyper-parameters only this task's module takes
    network: str  # the module attribute that `attach_runtime` runs on ONNX Runtime
    # (module, datamodule hyper-parameters, checkpoint path for messages) -> Exportable
    exportable: Callable[[nn.Module, dict, str | os.PathLike], Exportable]
    runner: type[OnnxModel]  # returns what `network` returns, from the exported file

    def matches(self, checkpoint: dict) -> bool:
        hparams = checkpoint.get("hyper_parameters") or {}
        return checkpoint.get("backbone_prefix") == self.prefix and all(k in hparams for k in self.hparams)


def image_loader(transform) -> Callable[[Path], np.ndarray]:
    """A calibration file read as the task's evaluation reads it."""
    from tasks.common.io import read_image
    from tasks.common.transforms import to_model_input

    return lambda path: to_model_input(transform(image=read_image(path))["image"]).numpy()


def stack_images(images: Iterable) -> np.ndarray:
    """HWC uint8 images -> (N, 3, H, W) model inputs."""
    from tasks.common.transforms import to_model_input

    return np.stack([to_model_input(np.asarray(image)).numpy() for image in images])


def trained_on_real_data(path, what: str) -> DeployError:
    return DeployError(f"{path}: trained on {what}, not the synthetic set; calibrate on its images with "
                       "--calibration DIR")  # fmt: skip


def read_checkpoint(path: str | os.PathLike) -> dict:
    try:
        saved = read_checkpoint_file(path)
    except (FileNotFoundError, ValueError) as err:
        raise DeployError(str(err)) from err
    if "state_dict" not in saved:
        raise DeployError(f"{path}: not a Lightning checkpoint of a task run (no 'state_dict')")
    return saved


def recognise_task(
    checkpoint: dict, deployments: Sequence[TaskDeployment], path: str | os.PathLike = "checkpoint"
) -> TaskDeployment:
    """The one of `deployments` whose module wrote `checkpoint`, or an error listing what each looks like."""
    matches = [d for d in deployments if d.matches(checkpoint)]
    if len(matches) == 1:
        return matches[0]
    known = "; ".join(f"{d.task} (prefix {d.prefix!r}, hyper-parameters {', '.join(d.hparams)})"
                      for d in deployments)  # fmt: skip
    hparams = checkpoint.get("hyper_parameters") or {}
    what = "matches several tasks" if matches else "matches no exportable task"
    raise DeployError(
        f"{path}: cannot recognise the task: backbone_prefix {checkpoint.get('backbone_prefix')!r} and "
        f"hyper-parameters [{', '.join(sorted(hparams)) or 'none'}] {what}. Known: {known}"
    )


def load_task_module(checkpoint: dict, deployment: TaskDeployment, path: str | os.PathLike = "checkpoint"):
    """The task's LightningModule rebuilt from the checkpoint's hyper-parameters and weights, in eval mode."""
    from tasks.common.lightning_cli import load_object

    # LightningCLI adds `_instantiator` (and Lightning other `_` keys): not constructor arguments
    hparams = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    backbone = dict(hparams.get("backbone") or {})
    backbone["weights"] = None  # the state dict holds every weight; the original file may be gone
    hparams["backbone"] = backbone
    try:
        module = load_object(deployment.module)(**hparams)
        module.load_state_dict(checkpoint["state_dict"])
    except (TypeError, ValueError, RuntimeError) as err:
        raise DeployError(f"{path}: does not rebuild as a {deployment.task} model: {err}") from err
    return module.eval()
