"""A callback the DDP test loads through `--trainer.callbacks+=`: records a fingerprint of every
training image each rank sees, so the test can check that ranks see disjoint data."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pytorch_lightning import Callback


class RecordSamples(Callback):
    def __init__(self) -> None:
        self.fingerprints: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        images, _ = batch
        self.fingerprints += [f"{float(image.double().sum()):.6f}" for image in images]

    def on_train_end(self, trainer, pl_module) -> None:
        out = Path(os.environ["DDP_PROBE_DIR"]) / f"rank{trainer.global_rank}.json"
        out.write_text(json.dumps({"world_size": trainer.world_size, "fingerprints": self.fingerprints}))
