"""Image pipelines shared by the tasks (albumentations), and the one input normalisation.

MobileNet was trained by TF-slim on inputs scaled to [-1, 1]; every task feeds the backbone
that way, so weights move between tasks (and from TF-slim) without re-tuning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import import_module

import albumentations as A
import numpy as np
import torch

EVAL_CROP_FRACTION = 0.875  # resize to size/0.875, then centre-crop: the ImageNet convention


def to_model_input(image: np.ndarray) -> torch.Tensor:
    """HWC uint8 RGB -> CHW float32 in [-1, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    return tensor.float().div_(127.5).sub_(1.0)


def from_model_input(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of `to_model_input`, for drawing what the model saw."""
    image = tensor.detach().cpu().add(1.0).mul(127.5).clamp(0, 255).byte()
    return image.permute(1, 2, 0).numpy()


def classification_train(
    size: int, *, scale: tuple[float, float] = (0.25, 1.0), seed: int | None = None
) -> A.Compose:
    """Random resized crop + horizontal flip: the "little augmentation" of the paper (§3.2).

    albumentations draws from its own generator, which `seed_everything` does not reach: without
    `seed` two identical runs see different crops.
    """
    return A.Compose(
        [A.RandomResizedCrop(size=(size, size), scale=scale), A.HorizontalFlip(p=0.5)], seed=seed
    )


def seed_worker_augmentation(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: forked workers inherit one augmentation generator state, so
    each reseeds its dataset's albumentations pipeline from its own torch-derived seed."""
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if transform is not None:
        transform.set_random_seed(info.seed % 2**32)


def classification_eval(size: int) -> A.Compose:
    """Resize the shorter side to size/0.875, then centre-crop `size`."""
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=int(round(size / EVAL_CROP_FRACTION))),
            A.CenterCrop(height=size, width=size),
        ]
    )


def build_augmentation(
    spec: Sequence[dict] | None,
    default: Callable[[], A.Compose],
    *,
    seed: int | None = None,
    then: Sequence[A.BasicTransform] = (),
    **compose_options,
) -> A.Compose:
    """The training pipeline a recipe declares (`data.augment`), or the task's `default` if it declares none.

    `spec` lists transforms as `{name: HorizontalFlip, p: 0.5}`: `name` is an albumentations class, or
    `package.module.Class` for one of the user's own, and the other keys are its arguments. `[]` turns
    augmentation off. `then` runs after the declared transforms (e.g. the resize to the model's input
    size, so a user's list need not know it); `compose_options` are `A.Compose`'s (box parameters).
    """
    if spec is None:
        return default()
    transforms = [_transform(dict(entry), number) for number, entry in enumerate(spec)]
    return A.Compose([*transforms, *then], seed=seed, **compose_options)


def _transform(entry: dict, number: int) -> A.BasicTransform:
    name = entry.pop("name", None)
    if not isinstance(name, str):
        raise ValueError(f"augment[{number}]: a transform needs a `name` (albumentations class), got {name}")
    module_name, _, class_name = name.rpartition(".")
    try:
        cls = getattr(import_module(module_name) if module_name else A, class_name)
    except (ImportError, AttributeError):
        raise ValueError(f"augment[{number}]: unknown transform {name!r}") from None
    try:
        return cls(**entry)
    except (TypeError, ValueError) as err:
        raise ValueError(f"augment[{number}] ({name}): {err}") from err
