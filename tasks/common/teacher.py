"""Distillation teachers, shared by every task that trains a student to emulate a larger model.

A teacher answers "what should the network output for these images?" for a batch of images and their
keys. It is either a model run on the very images the student sees (`kind: model`: any checkpoint of
the student's task, at any width and input size), or a table of precomputed outputs looked up by key
(`kind: outputs`), which is how one distils from a teacher that cannot run here (a large model's
outputs, dumped once). Keys are image paths relative to the data root, so one file fits both a folder
and the synthetic images written out under the same names.

What the outputs are (face embeddings, attribute logits) is the task's business: the task supplies
how to load its own checkpoints, and compares the outputs with its own loss.

The table is an `.npz` of `paths` (str, N) and `outputs` (float32, N x D), read with
`allow_pickle=False`; files written by earlier face-embedding versions name the second array
`embeddings` and are read too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tasks.common.config import BackboneConfig
from tasks.common.io import atomic_write

OUTPUT_ARRAYS = ("outputs", "embeddings")


class TeacherLookupError(LookupError):
    """An image the student trains on has no row in the teacher's file."""


@dataclass
class TeacherConfig:
    """`kind: model` loads `checkpoint` (a Lightning checkpoint of the task, or a bare state dict of its
    network described by `backbone` and `output_dim`); `kind: outputs` reads `file`."""

    kind: Literal["model", "outputs"] = "model"
    checkpoint: str | None = None
    file: str | None = None
    backbone: BackboneConfig | None = None
    output_dim: int | None = None
    image_size: int | None = None  # the teacher's input size; None: what its checkpoint says


@dataclass
class LoadedTeacherModel:
    """What a task's checkpoint loader returns: the network, its input size and output width."""

    model: nn.Module
    image_size: int
    output_dim: int


class Teacher(Protocol):
    output_dim: int

    def __call__(self, images: torch.Tensor, keys: Sequence[str]) -> torch.Tensor: ...

    def knows(self, keys: Sequence[str]) -> bool: ...

    def to(self, device: torch.device | str) -> Teacher: ...


class ModelTeacher:
    """A frozen network run on the student's (augmented) batch, resized to the teacher's input size.

    Not an `nn.Module` attribute of the student on purpose: it stays out of the student's checkpoint
    and optimiser. `to(device)` moves it along with the student.
    """

    def __init__(self, model: nn.Module, *, image_size: int, output_dim: int) -> None:
        self.model = model.eval().requires_grad_(False)
        self.image_size = image_size
        self.output_dim = output_dim

    def to(self, device: torch.device | str) -> ModelTeacher:
        self.model.to(device)
        return self

    def knows(self, keys: Sequence[str]) -> bool:
        return True

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, keys: Sequence[str]) -> torch.Tensor:
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(
                images,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        return self.model(images)


class OutputFileTeacher:
    """Precomputed outputs looked up by image key; the images themselves are ignored."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: teacher outputs file not found")
        paths, outputs = self._read()
        if paths.ndim != 1 or outputs.ndim != 2 or len(paths) != len(outputs):
            raise ValueError(
                f"{self.path}: want paths (N,) and outputs (N, D), got {paths.shape} and {outputs.shape}"
            )
        self.row = {str(p): i for i, p in enumerate(paths)}
        if len(self.row) != len(paths):
            raise ValueError(f"{self.path}: {len(paths) - len(self.row)} duplicated paths")
        self.outputs = torch.from_numpy(outputs.astype(np.float32))
        self.output_dim = self.outputs.shape[1]

    def _read(self) -> tuple[np.ndarray, np.ndarray]:
        try:
            with np.load(self.path, allow_pickle=False) as arrays:
                name = next((n for n in OUTPUT_ARRAYS if n in arrays.files), None)
                if "paths" not in arrays.files or name is None:
                    raise ValueError(
                        f"{self.path}: teacher file needs arrays 'paths' and 'outputs' (has {arrays.files})"
                    )
                return arrays["paths"], arrays[name]
        except ValueError as err:  # object arrays (pickles) or a file that is not an .npz
            if str(err).startswith(str(self.path)):
                raise
            raise ValueError(f"{self.path}: not a plain .npz of 'paths' and 'outputs' ({err})") from err
        except (OSError, EOFError) as err:
            raise ValueError(f"{self.path}: not a readable .npz ({err})") from err

    def to(self, device: torch.device | str) -> OutputFileTeacher:
        self.outputs = self.outputs.to(device)
        return self

    def knows(self, keys: Sequence[str]) -> bool:
        """A file may hold only the training images; evaluation then cannot measure the emulation error."""
        return all(key in self.row for key in keys)

    def __call__(self, images: torch.Tensor, keys: Sequence[str]) -> torch.Tensor:
        rows = []
        for key in keys:
            if key not in self.row:
                example = next(iter(self.row))
                raise TeacherLookupError(
                    f"{self.path}: no teacher output for image {key!r} "
                    f"({len(self.row)} paths in the file, e.g. {example!r})"
                )
            rows.append(self.row[key])
        return self.outputs[torch.tensor(rows, device=self.outputs.device)].to(images.device)


def build_teacher(
    config: TeacherConfig, load_model: Callable[[TeacherConfig], LoadedTeacherModel]
) -> Teacher:
    """The teacher `config` describes; `load_model` is the student task's own checkpoint loader."""
    if config.kind == "outputs":
        if not config.file:
            raise ValueError("teacher kind 'outputs' needs teacher.file (an .npz of paths and outputs)")
        return OutputFileTeacher(config.file)
    if config.kind == "model":
        if not config.checkpoint:
            raise ValueError("teacher kind 'model' needs teacher.checkpoint")
        loaded = load_model(config)
        return ModelTeacher(loaded.model, image_size=loaded.image_size, output_dim=loaded.output_dim)
    raise ValueError(f"teacher.kind must be 'model' or 'outputs', got {config.kind!r}")


def write_outputs_file(path: str | os.PathLike, keys: Sequence[str], outputs: np.ndarray) -> int:
    """Write a teacher file atomically; returns the number of rows."""
    outputs = np.asarray(outputs, dtype=np.float32)
    if outputs.ndim != 2 or len(outputs) != len(keys):
        raise ValueError(f"want one output row per key, got {outputs.shape} for {len(keys)} keys")
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as handle:  # np.savez would append ".npz" to a bare temp path
            np.savez(handle, paths=np.asarray(keys, dtype=str), outputs=outputs)
    return len(keys)
