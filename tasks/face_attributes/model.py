"""The face-attribute network: a MobileNet whose classifier has one logit per attribute, and its loader.

The network is `backbone.MobileNetV1(num_classes=<attributes>)` itself, so a checkpoint's weights sit
under `backbone.` and any task's checkpoint starts it (`model.backbone.weights`). A checkpoint records
what a teacher or `export-logits` needs to run it anywhere: the backbone options, the attribute names, the
input size (from the data module) and the decision thresholds chosen on the validation split.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from backbone import MobileNetV1
from tasks.common.config import BackboneConfig, as_dataclass
from tasks.common.io import read_checkpoint
from tasks.common.teacher import LoadedTeacherModel, TeacherConfig

PREFIX = "backbone."  # where FaceAttributesModule keeps the network in its state dict
DEFAULT_IMAGE_SIZE = 128  # what a checkpoint that does not record its input size was trained at


def build_attribute_network(
    *, backbone: BackboneConfig | dict | None = None, num_attributes: int
) -> MobileNetV1:
    if num_attributes < 1:
        raise ValueError(f"num_attributes must be positive, got {num_attributes}")
    return as_dataclass(BackboneConfig, backbone).build(num_classes=num_attributes)


@dataclass
class LoadedAttributeModel:
    """A network restored from disk, in eval mode, with what it was trained on."""

    model: MobileNetV1
    image_size: int
    attributes: list[str]
    thresholds: torch.Tensor  # per attribute; 0.5 where the checkpoint chose none


def load_attribute_model(
    path: str | os.PathLike,
    *,
    backbone: BackboneConfig | dict | None = None,
    num_attributes: int | None = None,
    image_size: int | None = None,
) -> LoadedAttributeModel:
    """A face-attributes Lightning checkpoint, or a bare `MobileNetV1` state dict (then `backbone` and
    `num_attributes` are needed). Explicit arguments override what the checkpoint says."""
    saved = read_checkpoint(path)
    attributes: list[str] = []
    thresholds = None
    if "state_dict" in saved:  # Lightning
        hparams = saved.get("hyper_parameters", {})
        if "num_attributes" not in hparams:
            raise ValueError(f"{path}: not a face-attributes checkpoint (no num_attributes hyper-parameter)")
        backbone = backbone if backbone is not None else hparams.get("backbone")
        num_attributes = num_attributes or hparams["num_attributes"]
        attributes = list(hparams.get("attribute_names") or [])
        image_size = image_size or saved.get("datamodule_hyper_parameters", {}).get("image_size")
        state = {k[len(PREFIX):]: v for k, v in saved["state_dict"].items() if k.startswith(PREFIX)}
        thresholds = saved["state_dict"].get("thresholds")
    else:
        state = saved
    if num_attributes is None:
        raise ValueError(f"{path}: a bare state dict needs num_attributes (and the backbone config)")
    config = dataclasses.replace(as_dataclass(BackboneConfig, backbone), weights=None)
    model = build_attribute_network(backbone=config, num_attributes=int(num_attributes))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # names every missing, unexpected and mis-shaped tensor
        raise ValueError(f"{path}: weights do not fit the configured network:\n{err}") from None
    model = model.to(memory_format=torch.channels_last).eval()
    count = int(num_attributes)
    return LoadedAttributeModel(
        model=model,
        image_size=int(image_size or DEFAULT_IMAGE_SIZE),
        attributes=attributes or [str(i) for i in range(count)],
        thresholds=thresholds.float() if thresholds is not None else torch.full((count,), 0.5),
    )


def load_teacher(config: TeacherConfig, *, attributes: Sequence[str] | None = None) -> LoadedTeacherModel:
    """`TeacherConfig` -> the network it names (how `build_teacher` loads a face-attributes teacher).

    With `attributes`, a teacher that names its attributes must name the same ones in the same order:
    a student's logit k learns the teacher's logit k.
    """
    loaded = load_attribute_model(
        config.checkpoint, backbone=config.backbone, num_attributes=config.output_dim,
        image_size=config.image_size,
    )
    named = not all(name.isdigit() for name in loaded.attributes)
    if attributes is not None and named and list(attributes) != loaded.attributes:
        raise ValueError(
            f"{config.checkpoint}: the teacher predicts {loaded.attributes}, the student {list(attributes)}; "
            "they must be the same attributes in the same order"
        )
    return LoadedTeacherModel(loaded.model, loaded.image_size, len(loaded.attributes))
