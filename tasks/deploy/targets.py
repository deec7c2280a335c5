"""Which task wrote a checkpoint, and that task's module rebuilt from it.

A checkpoint is recognised by the backbone prefix `TaskModule.on_save_checkpoint` records and the
hyper-parameters only that task's module takes, so a foreign or truncated file is refused with what was
found and what each exportable task looks like, instead of failing deep inside a constructor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from torch import nn

from tasks.common.io import read_checkpoint as read_checkpoint_file
from tasks.common.lightning_cli import load_object


class DeployError(ValueError):
    """A checkpoint, calibration source or model file that cannot be deployed; the message says why."""


@dataclass(frozen=True)
class TaskTarget:
    """How to recognise a task's checkpoint, and which part of its module the exported model replaces."""

    task: str  # the CLI name
    module: str  # "package.module:Class"
    prefix: str  # the backbone prefix its checkpoints record
    hparams: tuple[str, ...]  # hyper-parameters only this task's module takes
    network: str  # the module attribute that `attach_runtime` runs on ONNX Runtime


TARGETS = (
    TaskTarget("finegrained", "tasks.finegrained.module:FineGrainedModule", "backbone.",
               ("num_classes", "class_names", "label_smoothing"), "backbone"),
    TaskTarget("detection", "tasks.detection.module:DetectionModule", "detector.backbone.body.",
               ("architecture", "num_classes", "image_size", "ssd"), "detector"),
    TaskTarget("face-embedding", "tasks.face_embedding.module:FaceEmbeddingModule", "embedder.backbone.",
               ("embedding_dim", "mode", "margin"), "embedder"),
    TaskTarget("geolocation", "tasks.geolocation.module:GeolocationModule", "network.backbone.",
               ("num_cells", "smoothing_km", "position"), "network"),
    TaskTarget("face-attributes", "tasks.face_attributes.module:FaceAttributesModule", "backbone.",
               ("num_attributes", "threshold_criterion"), "backbone"),
)  # fmt: skip
TARGET_OF = {target.task: target for target in TARGETS}


def read_checkpoint(path: str | os.PathLike) -> dict:
    try:
        saved = read_checkpoint_file(path)
    except (FileNotFoundError, ValueError) as err:
        raise DeployError(str(err)) from err
    if "state_dict" not in saved:
        raise DeployError(f"{path}: not a Lightning checkpoint of a task run (no 'state_dict')")
    return saved


def recognise_task(checkpoint: dict, path: str | os.PathLike = "checkpoint") -> TaskTarget:
    """The task whose module wrote `checkpoint`: its recorded backbone prefix and hyper-parameters."""
    prefix = checkpoint.get("backbone_prefix")
    hparams = checkpoint.get("hyper_parameters") or {}
    matches = [t for t in TARGETS if t.prefix == prefix and all(k in hparams for k in t.hparams)]
    if len(matches) == 1:
        return matches[0]
    known = "; ".join(f"{t.task} (prefix {t.prefix!r}, hyper-parameters {', '.join(t.hparams)})"
                      for t in TARGETS)  # fmt: skip
    what = "matches several tasks" if matches else "matches no exportable task"
    raise DeployError(
        f"{path}: cannot recognise the task: backbone_prefix {prefix!r} and hyper-parameters "
        f"[{', '.join(sorted(hparams)) or 'none'}] {what}. Known: {known}"
    )


def load_task_module(checkpoint: dict, target: TaskTarget, path: str | os.PathLike = "checkpoint"):
    """The task's LightningModule rebuilt from the checkpoint's hyper-parameters and weights, in eval mode."""
    # LightningCLI adds `_instantiator` (and Lightning other `_` keys): not constructor arguments
    hparams = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    backbone = dict(hparams.get("backbone") or {})
    backbone["weights"] = None  # the state dict holds every weight; the original file may be gone
    hparams["backbone"] = backbone
    try:
        module = load_object(target.module)(**hparams)
        module.load_state_dict(checkpoint["state_dict"])
    except (TypeError, ValueError, RuntimeError) as err:
        raise DeployError(f"{path}: does not rebuild as a {target.task} model: {err}") from err
    return module.eval()


def task_of_module(module: nn.Module) -> TaskTarget:
    """The target of a live task module (by its class), for `--runtime` on a module the CLI built."""
    cls = type(module)
    for target in TARGETS:
        module_name, _, class_name = target.module.partition(":")
        if cls.__module__ == module_name and cls.__name__ == class_name:
            return target
    raise DeployError(f"{cls.__name__}: no ONNX runtime for this task yet (exportable: "
                      f"{', '.join(t.task for t in TARGETS)})")  # fmt: skip
