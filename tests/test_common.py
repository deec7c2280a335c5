"""Shared pieces: optimiser groups, schedules, config round trips, atomic writes, image errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from backbone import mobilenet_v1
from tasks.common.config import BackboneConfig, OptimConfig, as_dataclass, plain
from tasks.common.io import ImageReadError, SkipCounter, atomic_write, read_first_readable, read_image
from tasks.common.optim import build_optimizer, lr_factor, no_decay_parameter_names, parameter_groups
from tasks.common.transforms import to_model_input


def test_no_decay_covers_exactly_depthwise_bn_and_bias():
    model = mobilenet_v1(width_mult=0.25, num_classes=10)
    exempt = no_decay_parameter_names(model)
    # 27 BN layers x (weight, bias) + 13 depthwise filters + the classifier bias
    assert len(exempt) == 27 * 2 + 13 + 1
    assert "layers.Conv2d_5.depthwise.conv.weight" in exempt
    assert "layers.Conv2d_5.pointwise.conv.weight" not in exempt
    assert "classifier.bias" in exempt and "classifier.weight" not in exempt


def test_parameter_groups_split_and_cover_every_parameter():
    model = mobilenet_v1(width_mult=0.25, num_classes=10)
    decay, no_decay = parameter_groups(model, OptimConfig(weight_decay=4e-5))
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0
    # stem + 13 pointwise + classifier weight are decayed
    assert len(decay["params"]) == 15
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    (everything,) = parameter_groups(model, OptimConfig(weight_decay=4e-5, decay_all=True))
    assert len(everything["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize(
    "name, cls", [("rmsprop", torch.optim.RMSprop), ("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)]
)
def test_build_optimizer_kinds(name, cls):
    optimizer = build_optimizer(mobilenet_v1(width_mult=0.25, num_classes=3), OptimConfig(name=name, lr=0.1))
    assert isinstance(optimizer, cls)
    assert optimizer.param_groups[0]["lr"] == 0.1


def test_lr_schedules():
    cosine = OptimConfig(schedule="cosine", warmup_epochs=1)
    factors = [lr_factor(s, cfg=cosine, total_steps=110, steps_per_epoch=10) for s in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)  # linear warm-up
    assert factors[10] == pytest.approx(1.0) and factors[60] == pytest.approx(0.5)
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    step = OptimConfig(schedule="step", step_epochs=2.5, step_gamma=0.94)
    assert lr_factor(24, cfg=step, total_steps=100, steps_per_epoch=10) == 1.0
    assert lr_factor(25, cfg=step, total_steps=100, steps_per_epoch=10) == pytest.approx(0.94)
    assert lr_factor(50, cfg=step, total_steps=100, steps_per_epoch=10) == pytest.approx(0.94**2)


def test_warmup_share_spans_the_same_share_of_steps_or_time():
    by_steps = OptimConfig(schedule="cosine", warmup_share=0.1)
    factors = [lr_factor(s, cfg=by_steps, total_steps=200, steps_per_epoch=7) for s in range(200)]
    assert factors[0] == pytest.approx(1 / 20) and factors[19] == pytest.approx(1.0)  # 10 % of 200 steps
    assert factors[110] == pytest.approx(0.5)  # half-way through the 180 cosine steps
    by_time = OptimConfig(schedule="cosine", schedule_by="time", warmup_share=0.2)

    def at(share: float) -> float:
        return lr_factor(0, cfg=by_time, total_steps=1, steps_per_epoch=1, time_progress=lambda: share)

    assert at(0.1) == pytest.approx(0.5) and at(0.2) == pytest.approx(1.0)  # linear in time, any step
    assert at(0.6) == pytest.approx(0.5) and at(1.0) == pytest.approx(0.0, abs=1e-12)
    assert at(0.0) == pytest.approx(1e-3)  # the first step does not run at zero learning rate
    both = OptimConfig(schedule="cosine", warmup_epochs=5, warmup_share=0.1)  # a recipe's share wins
    assert lr_factor(19, cfg=both, total_steps=200, steps_per_epoch=7) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="warmup_share"):
        OptimConfig(warmup_share=1.0)


def test_backbone_config_round_trips_through_plain_dicts():
    config = BackboneConfig(width_mult=0.5, shallow=True)
    saved = plain({"backbone": config, "other": [config]})
    assert saved == {"backbone": saved["backbone"], "other": [saved["backbone"]]}
    assert isinstance(saved["backbone"], dict)
    assert as_dataclass(BackboneConfig, saved["backbone"]) == config
    model = config.build(num_classes=0)
    assert model.num_features == 512 and "Conv2d_9_pointwise" not in model.end_points
    with pytest.raises(TypeError, match="BackboneConfig"):
        as_dataclass(BackboneConfig, 3)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    with atomic_write(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_corrupt_images_are_named_and_skipped(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        read_image(bad)
    with pytest.raises(ImageReadError, match="missing.jpg: file not found"):
        read_image(tmp_path / "missing.jpg")
    skipped = SkipCounter()
    paths = [bad, good]
    index, image = read_first_readable(paths.__getitem__, 0, len(paths), skipped)
    assert index == 1 and image.shape == (8, 8, 3) and image[0, 0, 0] == 7
    assert len(skipped) == 1 and skipped.paths == [str(bad)]
    with pytest.raises(ImageReadError, match="no readable image"):
        read_first_readable([bad].__getitem__, 0, 1, skipped)


def test_augmentation_declared_in_the_recipe_replaces_the_default():
    import albumentations as A
    import numpy as np

    from tasks.common.transforms import build_augmentation

    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    default = build_augmentation(None, lambda: A.Compose([A.VerticalFlip(p=1.0)]))
    np.testing.assert_array_equal(default(image=image)["image"], image[::-1])
    flip = build_augmentation([{"name": "HorizontalFlip", "p": 1.0}], lambda: None, then=[A.Resize(8, 8)])
    np.testing.assert_array_equal(flip(image=image)["image"], A.Resize(8, 8)(image=image[:, ::-1])["image"])
    off = build_augmentation([], lambda: None)
    np.testing.assert_array_equal(off(image=image)["image"], image)
    with pytest.raises(ValueError, match=r"augment\[0\]: unknown transform 'NoSuchFlip'"):
        build_augmentation([{"name": "NoSuchFlip"}], lambda: None)
    with pytest.raises(ValueError, match=r"augment\[1\] \(RandomResizedCrop\): (?s:.*)size"):
        build_augmentation([{"name": "VerticalFlip"}, {"name": "RandomResizedCrop", "size": 5}], lambda: None)
    with pytest.raises(ValueError, match=r"augment\[0\]: a transform needs a `name`"):
        build_augmentation([{"p": 0.5}], lambda: None)


def test_a_finegrained_recipe_can_turn_the_flip_off(tmp_path):
    from tasks.finegrained.data import FineGrainedDataModule

    small = dict(image_size=32, synthetic_classes=3, synthetic_train_per_class=4)
    train = FineGrainedDataModule("synthetic", **small, augment=[]).make_dataset("train")
    reference = FineGrainedDataModule("synthetic", **small).make_dataset("train")
    for index in range(len(train)):
        torch.testing.assert_close(train[index][0], to_model_input(reference.image(index)[0]))


def test_cpu_threads_are_restored_when_a_run_raises(tmp_path):
    import pytorch_lightning as pl

    from tasks.common.module import CpuThreads

    class Failing(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            assert torch.get_num_threads() == 1  # the callback is in force during the run
            raise RuntimeError("bad batch")

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.zeros(4, 2), batch_size=2)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        trainer = pl.Trainer(max_steps=1, callbacks=[CpuThreads(1)], logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
        with pytest.raises(RuntimeError, match="bad batch"):
            trainer.fit(Failing())
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
