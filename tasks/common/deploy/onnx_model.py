"""An exported task model on ONNX Runtime, returning what the PyTorch network it replaces returns.

A task whose network returns one tensor (logits, embeddings) runs as `OnnxClassifier`; the others
subclass `OnnxModel` in their own `deploy.py` (the SSD's detections, PlaNet's per-partition logits).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from backbone.export import onnx_session, read_metadata
from tasks.common.deploy.deployment import DeployError


class OnnxModel:
    """The exported file of a `task` model, checked to be one, on an ONNX Runtime session."""

    def __init__(self, path: str | os.PathLike, *, task: str, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DeployError(f"{self.path}: exported model not found")
        try:
            self.session = onnx_session(self.path, threads=threads)
        except Exception as err:  # onnxruntime raises its own types for a bad file
            raise DeployError(f"{self.path}: not a loadable ONNX model ({err})") from err
        self.metadata = read_metadata(self.session)
        self.task = task
        found = self.metadata.get("task")
        if found != task:
            raise DeployError(f"{self.path}: a {found or 'non-suite'} model, but this is `mobilenets {task}`")
        self.image_size = int(self.metadata["image_size"])
        self.int8 = "int8" in self.metadata

    def run(self, images: torch.Tensor) -> list[torch.Tensor]:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        outputs = self.session.run(None, {"images": array})
        return [torch.from_numpy(output).to(images.device) for output in outputs]

    def eval(self) -> OnnxModel:  # lets code that calls model.eval() keep working
        return self


class OnnxClassifier(OnnxModel):
    """A network with one output tensor (classifier logits, attribute logits, face embeddings)."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images)[0]
