"""Run checkpoints: `last.ckpt` holds the final weights, and nothing is left half-written."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tasks.common.checkpoint import PARTIAL_SUFFIX, RunCheckpoint


class TinyRegressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_last_checkpoint_holds_the_final_step_when_training_stops_between_validations(tmp_path):
    data = TensorDataset(torch.randn(40, 4), torch.randn(40, 1))
    loader = DataLoader(data, batch_size=4)  # 10 steps per epoch
    checkpoint = RunCheckpoint(dirpath=tmp_path, monitor="val/loss", mode="min", save_last=True)
    trainer = pl.Trainer(
        max_steps=23,  # validation runs after steps 20 and never again
        check_val_every_n_epoch=2,
        callbacks=[checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    model = TinyRegressor()
    trainer.fit(model, loader, loader)

    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["global_step"] == 23
    assert torch.equal(last["state_dict"]["layer.weight"], model.layer.weight.detach())
    best = torch.load(checkpoint.best_model_path, weights_only=True)
    assert best["global_step"] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.ckpt", "epoch=1-step=20.ckpt"])
    assert not list(tmp_path.glob(f"*{PARTIAL_SUFFIX}"))
