"""Face data: folders of identities, the synthetic people, and the DataModule that batches them P x K
and evaluates on people never trained on.

`root/<identity>/*.jpg|png` is how LFW, CASIA-WebFace and VGGFace2 crops ship, and what
`synthetic.write_identity_folders` writes. Triplet mining needs several images of each person in a
batch, hence `sampler.PKSampler`: P people x K images per batch.

Two sources, one shape of batch, `(images, labels, keys)`; keys are image paths relative to the data
root, which is what a distillation teacher's embedding file is indexed by.

* synthetic (default): identities `0..N-1` train, `100_000..` validate and `200_000..` test, so
  neither evaluation set shares a person with training; LFW-style pairs are drawn over them.
* folders: `train_root/<identity>/*.jpg` trains; `lfw_root` + `lfw_pairs` (the real LFW
  `pairs.txt`) validate and test, as the FaceNet paper evaluates.

Evaluation images are decoded strictly: a pair that names a missing or corrupt file is an error
(skipping it would silently change the protocol). Training skips and counts bad files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import albumentations as A
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torch.utils.data.dataloader import default_collate

from tasks.common.config import as_dataclass
from tasks.common.data import TaskDataModule
from tasks.common.io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    SkipCounter,
    is_image_file,
    read_first_readable,
    read_image,
)
from tasks.common.transforms import build_augmentation, to_model_input
from tasks.face_embedding.lfw import make_pairs, read_pairs
from tasks.face_embedding.metrics import EvalSet, image_key
from tasks.face_embedding.sampler import PKSampler
from tasks.face_embedding.synthetic import SyntheticFaces

VAL_IDENTITY_OFFSET = 100_000
TEST_IDENTITY_OFFSET = 200_000


class IdentityFolder(Dataset):
    """`root/<identity>/<image>` as `(CHW float tensor in [-1, 1], label)` items, read lazily.

    Labels index the sorted identity names. A corrupt image is skipped (the next readable image of
    the dataset is returned in its place, keeping the index valid) and counted in `skipped`.
    """

    def __init__(self, root: str | os.PathLike, *, transform: Callable | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: identity folder root does not exist")
        self.transform = transform
        self.identities: list[str] = []
        self.paths: list[Path] = []
        self.labels: list[int] = []
        for person in sorted(p for p in self.root.iterdir() if p.is_dir()):
            images = sorted(p for p in person.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not images:
                continue
            self.paths += images
            self.labels += [len(self.identities)] * len(images)
            self.identities.append(person.name)
        if not self.paths:
            raise ValueError(f"{self.root}: no images found (expected <root>/<identity>/*"
                             f"{{{','.join(IMAGE_EXTENSIONS)}}})")
        self.skipped = SkipCounter()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index, image = read_first_readable(self.paths.__getitem__, index, len(self.paths), self.skipped)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return to_model_input(image), self.labels[index]


def face_train_transform(size: int, *, seed: int | None = None) -> A.Compose:
    """Small pose jitter, mirror and colour jitter: aligned crops vary little; a mirror is the same face.

    `seed` makes runs repeatable: albumentations' generator is out of `seed_everything`'s reach.
    """
    return A.Compose([
        A.Resize(size, size),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-10, 10), p=0.8),
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.8),
    ], seed=seed)


def face_eval_transform(size: int) -> A.Compose:
    """Face crops are already aligned and tight, so evaluation only resizes (no centre crop)."""
    return A.Compose([A.Resize(size, size)])


class KeyedSyntheticFaces(SyntheticFaces):
    """Synthetic faces as `(image, label, key)`, keyed as `write_identity_folders` would name the file."""

    def key(self, index: int) -> str:
        label, number = divmod(index, self.images_per_identity)
        return image_key(self.identities[label], number + 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        image, label = super().__getitem__(index)
        return image, label, self.key(index)


class KeyedIdentityFolder(IdentityFolder):
    """An identity folder as `(image, label, key)`; a corrupt file is replaced by the next readable one
    (counted in `skipped`) and the key names the file actually returned."""

    def key(self, index: int) -> str:
        return self.paths[index].relative_to(self.root).as_posix()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        index, image = read_first_readable(self.paths.__getitem__, index, len(self.paths), self.skipped)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return to_model_input(image), self.labels[index], self.key(index)


class ImageList(Dataset):
    """Explicit files under `root` as `(image, label, key)`, `key` being the path relative to `root`.

    With `skip_corrupt`, an unreadable file yields `None` (dropped by `collate_readable`) and is
    counted in `skipped`; otherwise it raises `ImageReadError` naming the file.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        keys: Sequence[str],
        labels: Sequence[int],
        *,
        transform: Callable | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        if len(keys) != len(labels):
            raise ValueError(f"{len(keys)} files but {len(labels)} labels")
        self.root = Path(root)
        self.keys, self.labels = list(keys), list(labels)
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self.skipped = SkipCounter()

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str] | None:
        path = self.root / self.keys[index]
        try:
            image = read_image(path)
        except ImageReadError as err:
            if not self.skip_corrupt:
                raise
            self.skipped.record(err, path)
            return None
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return to_model_input(image), self.labels[index], self.keys[index]


def collate_readable(items: list) -> tuple | None:
    """`default_collate` over the items that could be read (None for an all-unreadable batch)."""
    items = [item for item in items if item is not None]
    return default_collate(items) if items else None


def synthetic_eval_set(
    identities: int,
    images_per_identity: int,
    *,
    size: int,
    seed: int,
    identity_offset: int,
    pairs_per_fold: int,
) -> EvalSet:
    faces = KeyedSyntheticFaces(
        identities, images_per_identity, size=size, seed=seed, identity_offset=identity_offset
    )
    pairs = make_pairs(
        {name: images_per_identity for name in faces.identities},
        per_fold=pairs_per_fold,
        seed=seed + identity_offset,
    )
    return EvalSet.from_pairs(faces, faces.labels, [faces.key(i) for i in range(len(faces))], pairs)


def lfw_eval_set(
    root: str | os.PathLike, pairs_file: str | os.PathLike, *, size: int, ext: str = "jpg"
) -> EvalSet:
    """The images named by an LFW `pairs.txt` under `root/<name>/<name>_<nnnn>.<ext>`, and its pairs."""
    pairs = read_pairs(pairs_file)
    names_numbers = sorted({(p.name1, p.number1) for p in pairs} | {(p.name2, p.number2) for p in pairs})
    names = sorted({name for name, _ in names_numbers})
    label_of = {name: i for i, name in enumerate(names)}
    keys = [image_key(name, number, ext) for name, number in names_numbers]
    labels = [label_of[name] for name, _ in names_numbers]
    images = ImageList(root, keys, labels, transform=face_eval_transform(size))
    return EvalSet.from_pairs(images, labels, keys, pairs, key_of=lambda n, k: image_key(n, k, ext))


@dataclass
class SyntheticFacesConfig:
    """Sizes of the synthetic splits; val and test each get `eval_identities` unseen people."""

    train_identities: int = 500
    images_per_identity: int = 40
    eval_identities: int = 100
    eval_images_per_identity: int = 10
    seed: int = 0


class FaceDataModule(TaskDataModule):
    """Synthetic identities by default; `train_root` (+ `lfw_root`, `lfw_pairs`) for real folders.

    `augment` replaces the training augmentation (`face_train_transform`; `[]` for none: a file
    teacher embedded the images un-augmented), followed by a resize to `image_size`. `predict`
    embeds every image under `predict_root`, or the test split's images without it.
    """

    def __init__(
        self,
        *,
        synthetic: SyntheticFacesConfig | dict | None = None,
        train_root: str | None = None,
        lfw_root: str | None = None,
        lfw_pairs: str | None = None,
        lfw_ext: str = "jpg",
        image_size: int = 64,
        p: int = 32,
        k: int = 4,
        batches_per_epoch: int | None = None,
        similar_identities: int = 1,
        augment: list[dict] | None = None,
        pairs_per_fold: int = 300,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        predict_root: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=p * k, num_workers=num_workers, seed=seed)
        if train_root and not (lfw_root and lfw_pairs):
            raise ValueError("training on folders (train_root) needs lfw_root and lfw_pairs to evaluate on")
        self.save_hyperparameters()
        self.synthetic = as_dataclass(SyntheticFacesConfig, synthetic)
        self.train_root, self.lfw_root = train_root, lfw_root
        self.lfw_pairs, self.lfw_ext = lfw_pairs, lfw_ext
        self.image_size, self.p, self.k = image_size, p, k
        self.batches_per_epoch, self.augment = batches_per_epoch, augment
        self.similar_identities = similar_identities
        self.pairs_per_fold, self.eval_batch_size = pairs_per_fold, eval_batch_size
        self.predict_root = predict_root
        self.train_set: Dataset | None = None
        self.val_set: EvalSet | None = None
        self.test_set: EvalSet | None = None

    @property
    def num_identities(self) -> int:
        """Training people: the size of an identity-classifier head (known without reading images)."""
        if not self.train_root:
            return self.synthetic.train_identities
        return sum(1 for person in Path(self.train_root).iterdir() if person.is_dir())

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._train_set()
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._eval_set(VAL_IDENTITY_OFFSET)
        if stage in (None, "test") and self.test_set is None:
            self.test_set = self._eval_set(TEST_IDENTITY_OFFSET)

    def train_transform(self) -> A.Compose:
        size = self.image_size
        default = partial(face_train_transform, size, seed=self.seed)
        return build_augmentation(self.augment, default, seed=self.seed, then=[A.Resize(size, size)])

    def _train_set(self) -> Dataset:
        transform = self.train_transform()
        if self.train_root:
            return KeyedIdentityFolder(self.train_root, transform=transform)
        cfg = self.synthetic
        return KeyedSyntheticFaces(
            cfg.train_identities,
            cfg.images_per_identity,
            size=self.image_size,
            seed=cfg.seed,
            # rendered at image_size already: with augmentation off, nothing is left to do
            transform=None if self.augment == [] else transform,
        )

    def _eval_set(self, identity_offset: int) -> EvalSet:
        if self.lfw_root:  # LFW has one protocol; validation and test both run it
            return lfw_eval_set(self.lfw_root, self.lfw_pairs, size=self.image_size, ext=self.lfw_ext)
        cfg = self.synthetic
        return synthetic_eval_set(
            cfg.eval_identities,
            cfg.eval_images_per_identity,
            size=self.image_size,
            seed=cfg.seed,
            identity_offset=identity_offset,
            pairs_per_fold=self.pairs_per_fold,
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = PKSampler(
            self.train_set.labels,
            self.p,
            self.k,
            seed=self.seed,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            batches_per_epoch=self.batches_per_epoch,
            similar_identities=self.similar_identities,
        )
        return self.loader(self.train_set, batch_sampler=sampler)

    def calibration_dataloader(self, batches: int) -> DataLoader:
        """`batches` P x K-sized batches of random training photos (the same draw on every rank): what
        `PreciseBatchNorm` estimates statistics on, since look-alike training batches are no random sample."""
        sampler = RandomSampler(
            self.train_set,
            num_samples=batches * self.batch_size,
            generator=torch.Generator().manual_seed(self.seed),
        )
        return self.loader(self.train_set, sampler=sampler, persistent=False)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_set.dataset, batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.test_set.dataset, batch_size=self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        """Batches of (images, labels, keys); unreadable files in `predict_root` are skipped and counted."""
        if self.predict_root is None:
            self.setup("test")
            return self.test_dataloader()
        root = Path(self.predict_root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: prediction folder not found")
        files = (path for path in root.rglob("*") if is_image_file(path) and path.is_file())
        keys = sorted(path.relative_to(root).as_posix() for path in files)
        if not keys:
            raise FileNotFoundError(f"{root}: no {'/'.join(IMAGE_EXTENSIONS)} images found")
        transform = face_eval_transform(self.image_size)
        images = ImageList(root, keys, [-1] * len(keys), transform=transform, skip_corrupt=True)
        return self.loader(images, batch_size=self.eval_batch_size, collate_fn=collate_readable)
