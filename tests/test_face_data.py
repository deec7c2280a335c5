from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.face_embedding.data import (
    FaceDataModule,
    IdentityFolder,
    face_eval_transform,
    face_train_transform,
)
from tasks.face_embedding.lfw import make_pairs
from tasks.face_embedding.sampler import PKSampler
from tasks.face_embedding.synthetic import SyntheticFaces, raw_pixel_nn_top1, write_identity_folders


def write_image(path: Path, colour: int, size: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), colour, np.uint8)).save(path)


def test_identity_folder_reads_layout_and_skips_corrupt(tmp_path: Path):
    write_image(tmp_path / "Bob" / "Bob_0001.jpg", 10)
    write_image(tmp_path / "Bob" / "Bob_0002.png", 20)
    write_image(tmp_path / "Alice" / "Alice_0001.jpg", 30)
    (tmp_path / "Alice" / "Alice_0002.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "Alice" / "notes.txt").write_text("ignored")
    (tmp_path / "Empty").mkdir()

    dataset = IdentityFolder(tmp_path, transform=face_eval_transform(16))

    assert dataset.identities == ["Alice", "Bob"]
    assert dataset.labels == [0, 0, 1, 1]
    names = ["Alice_0001.jpg", "Alice_0002.jpg", "Bob_0001.jpg", "Bob_0002.png"]
    assert [p.name for p in dataset.paths] == names
    image, label = dataset[1]  # corrupt: the next readable image stands in, with its own label
    assert len(dataset.skipped) == 1 and dataset.skipped.paths[0].endswith("Alice_0002.jpg")
    assert image.shape == (3, 16, 16) and label == 1
    assert torch.allclose(image, torch.full_like(image, 10 / 127.5 - 1), atol=0.05)


def test_identity_folder_errors_name_the_folder(tmp_path: Path):
    (tmp_path / "person").mkdir()
    with pytest.raises(ValueError, match=f"{tmp_path}: no images found"):
        IdentityFolder(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        IdentityFolder(tmp_path / "missing")


LABELS = [0] * 5 + [1] * 2 + [2] * 4 + [3] * 6 + [4] * 3 + [5] * 4 + [6] * 4 + [7] * 5


def test_pk_sampler_batches_p_identities_times_k():
    labels = np.array(LABELS)
    sampler = PKSampler(LABELS, 3, 4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 8 // 3
    seen = set()
    for batch in batches:
        counts = Counter(labels[batch].tolist())
        assert len(batch) == 12 and sorted(counts.values()) == [4, 4, 4]
        assert seen.isdisjoint(counts)  # one epoch visits each identity at most once
        seen |= set(counts)
        for person in counts:  # without replacement whenever the identity has enough images
            indices = [i for i in batch if labels[i] == person]
            if LABELS.count(person) >= 4:
                assert len(set(indices)) == 4


def test_pk_sampler_is_deterministic_per_epoch_and_disjoint_across_ranks():
    ranks = [PKSampler(LABELS, 2, 2, seed=5, num_replicas=2, rank=r, batches_per_epoch=6) for r in range(2)]
    first = [list(s) for s in ranks]
    assert first == [list(s) for s in ranks]  # same epoch -> same batches
    labels = np.array(LABELS)
    for batch0, batch1 in zip(*first, strict=True):
        assert set(labels[batch0]).isdisjoint(labels[batch1])
    assert len(first[0]) == len(first[1]) == 6
    for s in ranks:
        s.set_epoch(1)
    assert [list(s) for s in ranks] != first


def clustered_centroids(groups: int, size: int, dim: int = 16) -> np.ndarray:
    """Unit vectors for `groups * size` identities; identities i // size == c sit around centre c."""
    rng = np.random.default_rng(0)
    centres = np.repeat(rng.normal(size=(groups, dim)), size, axis=0)
    centroids = centres + 0.01 * rng.normal(size=centres.shape)
    return centroids / np.linalg.norm(centroids, axis=1, keepdims=True)


def test_pk_sampler_look_alike_batches_gather_nearest_identities():
    labels = np.repeat(np.arange(32), 3)
    sampler = PKSampler(labels, 8, 2, seed=1, similar_identities=4)
    plain = list(PKSampler(labels, 8, 2, seed=1))
    assert list(sampler) == plain  # no centroids yet: random people, as without grouping

    sampler.set_identity_centroids(clustered_centroids(groups=8, size=4))
    batches = list(sampler)
    assert len(batches) == 4
    for batch, random_batch in zip(batches, plain, strict=True):
        people = Counter(labels[batch].tolist())
        assert sorted(people.values()) == [2] * 8
        assert sorted(Counter(person // 4 for person in people).values()) == [4, 4]  # two whole groups
        # each group grows from one of the people the random batch would have started with
        assert [labels[batch[0]], labels[batch[8]]] == [labels[random_batch[0]], labels[random_batch[2]]]


def test_pk_sampler_rejects_impossible_requests():
    with pytest.raises(ValueError, match="8 identities cannot fill p=5 x 2 replicas"):
        PKSampler(LABELS, 5, 2, num_replicas=2)
    with pytest.raises(ValueError, match="k >= 2"):
        PKSampler(LABELS, 2, 1)
    with pytest.raises(ValueError, match="similar_identities=3 must divide p=4"):
        PKSampler(LABELS, 4, 2, similar_identities=3)
    with pytest.raises(ValueError, match="7 centroids for 8 identities"):
        PKSampler(LABELS, 4, 2, similar_identities=2).set_identity_centroids(np.eye(7))


def test_face_transforms_give_requested_size():
    image = np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    assert face_train_transform(32)(image=image)["image"].shape == (32, 32, 3)
    assert face_eval_transform(24)(image=image)["image"].shape == (24, 24, 3)


def test_augmented_training_photos_repeat_across_runs():
    """Augmentation draws from albumentations' own generator; the data module seeds it."""
    def first_photos():
        data = FaceDataModule(
            synthetic=dict(train_identities=4, images_per_identity=3), image_size=32, p=2, k=2
        )
        data.setup("fit")
        return torch.stack([data.train_set[i][0] for i in range(6)])

    first, again = first_photos(), first_photos()
    assert torch.equal(first, again)
    plain = SyntheticFaces(4, 3, size=32)
    assert not torch.equal(first, torch.stack([plain[i][0] for i in range(6)]))  # augmentation did act


def test_synthetic_faces_are_deterministic_and_identity_ranges_disjoint():
    train = SyntheticFaces(5, 3, size=48, seed=1)
    again = SyntheticFaces(5, 3, size=48, seed=1)
    test = SyntheticFaces(5, 3, size=48, seed=1, identity_offset=5)
    image, label = train[4]
    assert image.shape == (3, 48, 48) and label == 1 and image.min() >= -1 and image.max() <= 1
    assert np.array_equal(train.image(7), again.image(7))
    assert not np.array_equal(train.image(6), train.image(7))  # same person, another photo
    assert train.identity(1) == again.identity(1) and train.identity(1) != test.identity(1)
    assert set(train.identities).isdisjoint(test.identities)
    assert SyntheticFaces(10, 1, seed=1).identity(7) == test.identity(2)  # offsets index one population


def test_raw_pixels_do_not_identify_synthetic_people():
    faces = SyntheticFaces(40, 4, size=32, seed=0, identity_offset=1000)
    assert raw_pixel_nn_top1(faces) < 0.3


def test_written_folders_load_back_as_identity_folder(tmp_path: Path):
    faces = SyntheticFaces(4, 3, size=32, seed=2)
    counts = write_identity_folders(faces, tmp_path)
    assert counts == {name: 3 for name in faces.identities}
    assert (tmp_path / "synth_000002" / "synth_000002_0003.jpg").is_file()
    dataset = IdentityFolder(tmp_path)
    assert dataset.identities == faces.identities and dataset.labels == faces.labels
    decoded = dataset[5][0]
    assert (decoded - faces[5][0]).abs().mean() < 0.1  # JPEG: close, not bit-exact...
    assert (decoded - faces[4][0]).abs().mean() > 0.3  # ...and far closer than another photo
    assert len(make_pairs(counts, folds=2, per_fold=2)) == 8
