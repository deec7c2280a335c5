"""Image pipelines shared by the tasks (albumentations), and the one input normalisation.

MobileNet was trained by TF-slim on inputs scaled to [-1, 1]; every task feeds the backbone
that way, so weights move between tasks (and from TF-slim) without re-tuning.
"""

from __future__ import annotations

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
