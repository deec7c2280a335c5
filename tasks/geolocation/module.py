"""Geolocation as classification over S2 cells (PlaNet, paper §4.4), trained and scored by the task CLI.

The cells come from the data module (`TaskSpec.links`: `num_cells`, `cell_tables`) and are kept in the
module's buffers, so a checkpoint predicts on new photos without the training CSV. A photo's position is
read from the predicted cell in one of four ways, all scored at test time:

- `centre`: the S2 cell's centre (PlaNet); `mean`: the mean position of the cell's training photos;
- `hier_centre` / `hier_mean`: the finest partition's cell chosen by its probability times its
  ancestors' in the coarser partitions (ISNs' hierarchy), then its centre or mean position.

`position` and `hierarchical` pick the one reported as `test/<metric>` and written by `predict`. The
most-populous-cell baseline (always answer the finest partition's biggest cell, at its mean position) is
scored beside them from the same buffers.
"""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist

from tasks.common.io import write_csv, write_text_atomic
from tasks.common.module import TaskModule
from tasks.geolocation.cells import Partition, ancestors, unsigned
from tasks.geolocation.losses import cell_loss
from tasks.geolocation.metrics import METRIC_KEYS, SCALES_KM, countries_of, country_report, geo_metrics
from tasks.geolocation.metrics import great_circle_km_torch as great_circle
from tasks.geolocation.model import PlaNet, planet

MODES = ("centre", "mean", "hier_centre", "hier_mean")
MOST_POPULOUS = "most_populous_cell"


class GeolocationModule(TaskModule):
    backbone_prefix = "network.backbone."

    def __init__(
        self,
        *,
        num_cells: list[int],
        cells: list[dict] | None = None,
        smoothing_km: float = 0.0,
        partition_weights: list[float] | None = None,
        position: Literal["centre", "mean"] = "mean",
        hierarchical: bool = True,
        predict_top_k: int = 5,
        predict_country: bool = False,
        **shared,
    ) -> None:
        super().__init__(**shared)
        # The cell tables live in buffers (state_dict), not in the hyper-parameters.
        self.save_hyperparameters(ignore=["cells", "predict_top_k", "predict_country"])
        self.num_cells = list(num_cells)
        self.network: PlaNet = planet(num_cells=self.num_cells, backbone=self.backbone_config)
        if partition_weights is not None and len(partition_weights) != len(self.num_cells):
            raise ValueError(
                f"partition_weights has {len(partition_weights)} entries for {len(num_cells)} partitions"
            )
        self.partition_weights = list(partition_weights or [1.0] * len(self.num_cells))
        if smoothing_km < 0:
            raise ValueError(f"smoothing_km must be >= 0 (0: plain cross-entropy), got {smoothing_km}")
        self.smoothing_km = smoothing_km
        if position not in ("centre", "mean"):
            raise ValueError(f"position must be centre or mean, got {position!r}")
        self.mode = ("hier_" if hierarchical and len(self.num_cells) > 1 else "") + position
        self.predict_top_k = predict_top_k
        self.predict_country = predict_country
        if cells is not None and [len(t["cell_id"]) for t in cells] != self.num_cells:
            raise ValueError(
                f"cell tables of {[len(t['cell_id']) for t in cells]} cells for num_cells {num_cells}"
            )
        for i, n in enumerate(self.num_cells):
            table = cells[i] if cells is not None else None
            self.register_buffer(
                f"cell_id_{i}",
                torch.tensor(table["cell_id"], dtype=torch.int64)
                if table
                else torch.zeros(n, dtype=torch.int64),
            )
            for name, keys in (("centre", ("lat", "lon")), ("mean", ("mean_lat", "mean_lon"))):
                value = (
                    torch.tensor([table[keys[0]], table[keys[1]]], dtype=torch.float64).T
                    if table
                    else torch.zeros(n, 2, dtype=torch.float64)
                )
                self.register_buffer(f"cell_{name}_{i}", value)
            self.register_buffer(
                f"cell_count_{i}",
                torch.tensor(table["count"], dtype=torch.int64)
                if table
                else torch.zeros(n, dtype=torch.int64),
            )
        self.finest = int(np.argmax(self.num_cells))
        self._ancestors: list[torch.Tensor | None] | None = None
        self._reset_outputs()

    @property
    def backbone(self):
        return self.network.backbone

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.network(images)

    # -- cells ---------------------------------------------------------------------------------------
    def positions(self, partition: int, kind: str) -> torch.Tensor:
        return getattr(self, f"cell_{kind}_{partition}")

    def partition(self, i: int) -> Partition:
        return Partition.from_dict(
            {
                "cell_id": getattr(self, f"cell_id_{i}").cpu().numpy(),
                "lat": self.positions(i, "centre")[:, 0].cpu().numpy(),
                "lon": self.positions(i, "centre")[:, 1].cpu().numpy(),
                "mean_lat": self.positions(i, "mean")[:, 0].cpu().numpy(),
                "mean_lon": self.positions(i, "mean")[:, 1].cpu().numpy(),
                "count": getattr(self, f"cell_count_{i}").cpu().numpy(),
            }
        )

    def ancestor_index(self) -> list[torch.Tensor | None]:
        """Per partition j, the index of the j-cell holding each finest cell (-1: none); None: the finest."""
        if self._ancestors is None:
            fine = self.partition(self.finest)
            self._ancestors = [
                None
                if j == self.finest
                else torch.from_numpy(ancestors(fine, self.partition(j))).to(self.device)
                for j in range(len(self.num_cells))
            ]
        return self._ancestors

    def _check_cells(self) -> None:
        if not bool(getattr(self, f"cell_count_{self.finest}").any()):
            raise ValueError("the model has no cell tables: train it, load a checkpoint, or pass cells=")

    def on_fit_start(self) -> None:
        self._ancestors = None

    def _eval_start(self) -> None:
        self._ancestors = None  # buffers may have just been restored from a checkpoint
        self._check_cells()
        self._reset_outputs()

    on_validation_start = on_test_start = on_predict_start = _eval_start

    def locate(
        self, logits: list[torch.Tensor]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per mode: (positions (batch, 2), chosen finest cell, its probability)."""
        result = {}
        for prefix, scores in (
            ("", logits[self.finest].float().softmax(dim=1)),
            ("hier_", self.combined(logits)),
        ):
            best, cell = scores.max(dim=1)
            for kind in ("centre", "mean"):
                result[prefix + kind] = (self.positions(self.finest, kind)[cell], cell, best)
        return result

    def combined(self, logits: list[torch.Tensor]) -> torch.Tensor:
        """Finest-cell probabilities times their ancestors' in every coarser partition, renormalised
        (an ancestor missing from a partition contributes a factor 1)."""
        probs = [x.float().softmax(dim=1) for x in logits]
        combined = probs[self.finest].clone()
        for j, index in enumerate(self.ancestor_index()):
            if index is not None:
                combined *= torch.where(
                    index >= 0, probs[j][:, index.clamp(min=0)], torch.ones_like(combined)
                )
        return combined / combined.sum(dim=1, keepdim=True).clamp(min=1e-30)

    def most_populous(self) -> torch.Tensor:
        """(partitions, 2): the mean position of each partition's biggest cell, the baseline's candidates."""
        return torch.stack(
            [
                self.positions(i, "mean")[int(getattr(self, f"cell_count_{i}").argmax())]
                for i in range(len(self.num_cells))
            ]
        )

    def _choose_most_populous(self) -> None:
        """The baseline answers with the candidate that scores best here (in the baseline's favour)."""
        truth = self._gather(torch.cat(self._outputs["truth"]))
        candidates = self.most_populous()
        scores = [
            geo_metrics(great_circle(truth[:, 0], truth[:, 1], c[0], c[1]).cpu().numpy())["geoscore"]
            for c in candidates
        ]
        local = sum(len(t) for t in self._outputs["truth"])
        self._outputs[MOST_POPULOUS] = [candidates[int(np.argmax(scores))].expand(local, 2)]

    # -- training --------------------------------------------------------------------------------
    def losses(self, logits: list[torch.Tensor], target: dict) -> torch.Tensor:
        total = 0.0
        for i, (x, weight) in enumerate(zip(logits, self.partition_weights, strict=True)):
            total = total + weight * cell_loss(
                x,
                target["cells"][:, i],
                coords=target["coords"],
                cell_positions=self.positions(i, "mean"),
                tau_km=self.smoothing_km,
            )
        return total

    def training_step(self, batch, batch_idx):
        images, target = batch
        logits = self(images)
        loss = self.losses(logits, target)
        labels = target["cells"][:, self.finest]
        valid = labels >= 0
        top1 = (
            (logits[self.finest].argmax(1)[valid] == labels[valid]).float().mean()
            if valid.any()
            else loss * 0
        )
        self.log_dict({"train/loss": loss, "train/top1": top1}, prog_bar=True, batch_size=len(images))
        return loss

    # -- evaluation -------------------------------------------------------------------------------
    def _reset_outputs(self) -> None:
        self._outputs: dict[str, list] = {
            "truth": [],
            "keys": [],
            "countries": [],
            "top": [],
            **{mode: [] for mode in (*MODES, MOST_POPULOUS)},
        }

    def _collect(self, images, target, *, all_modes: bool) -> dict:
        logits = self(images)
        located = self.locate(logits)
        truth = target["coords"].to(torch.float64)
        out = self._outputs
        out["truth"].append(truth)
        for mode in MODES if all_modes else (self.mode,):
            out[mode].append(located[mode][0])
        if all_modes:
            out["keys"] += list(target["key"])
            out["countries"] += list(target["country"])
        return {"logits": logits, "located": located}

    def validation_step(self, batch, batch_idx):
        images, target = batch
        logits = self._collect(images, target, all_modes=False)["logits"]
        self.log("val/loss", self.losses(logits, target), batch_size=len(images), sync_dist=True)

    def _distances(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        truth = self._gather(torch.cat(self._outputs["truth"]))
        predicted = self._gather(torch.cat(self._outputs[name]))
        return great_circle(truth[:, 0], truth[:, 1], predicted[:, 0], predicted[:, 1]), truth, predicted

    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.trainer.world_size > 1:
            return self.all_gather(tensor).reshape(-1, *tensor.shape[1:])
        return tensor

    def on_validation_epoch_end(self) -> None:
        if not self._outputs["truth"]:
            return
        distances, _, _ = self._distances(self.mode)
        scores = geo_metrics(distances.cpu().numpy())
        self.log_dict({f"val/{k}": float(scores[k]) for k in METRIC_KEYS if k not in ("count", "geoscore")})
        self.log("val/geoscore", scores["geoscore"], prog_bar=True)
        self._reset_outputs()

    def test_step(self, batch, batch_idx):
        images, target = batch
        self._collect(images, target, all_modes=True)

    def on_test_epoch_end(self) -> None:
        results, curves = {}, {}
        self._choose_most_populous()
        for name in (*MODES, MOST_POPULOUS):
            distances, truth, predicted = self._distances(name)
            d = distances.cpu().numpy()
            results[name] = geo_metrics(d)
            curves[name] = d
            for key in METRIC_KEYS:
                if key != "count":
                    self.log(f"test/{name}/{key}", float(results[name][key]))
            if name == self.mode:
                for key in METRIC_KEYS:
                    if key != "count":
                        self.log(f"test/{key}", float(results[name][key]))
                truth_np, pred_np, default_d = truth.cpu().numpy(), predicted.cpu().numpy(), d
        keys = _gather_objects(self._outputs["keys"])
        countries = _gather_objects(self._outputs["countries"])
        self._reset_outputs()
        if not self.trainer.is_global_zero:
            return
        report = {
            "prediction": self.mode,
            "earth_radius_km": 6371.0,
            "bound": "d < r",
            "scales_km": SCALES_KM,
            "modes": {m: results[m] for m in MODES},
            "baselines": {MOST_POPULOUS: results[MOST_POPULOUS]},
            **results[self.mode],
        }
        predicted_countries = [""] * len(keys)
        if any(countries):
            predicted_countries = countries_of(pred_np[:, 0], pred_np[:, 1])
            report["country_acc"], per_country = country_report(countries, predicted_countries, default_d)
            report["per_country"] = per_country
            self.log("test/country_acc", report["country_acc"], rank_zero_only=True)
            write_csv(
                self.run_dir / "per_country.csv",
                list(per_country[0]),
                [
                    [
                        row[k]
                        if isinstance(row[k], str)
                        else f"{row[k]:.4f}"
                        if isinstance(row[k], float)
                        else row[k]
                        for k in row
                    ]
                    for row in per_country
                ],
            )
        write_text_atomic(self.run_dir / "metrics.json", json.dumps(report, indent=2))
        write_csv(
            self.run_dir / "test_predictions.csv",
            ["id", "true_lat", "true_lon", "lat", "lon", "error_km", "country", "predicted_country"],
            [
                [k, f"{t[0]:.6f}", f"{t[1]:.6f}", f"{p[0]:.6f}", f"{p[1]:.6f}", f"{e:.3f}", c, pc]
                for k, t, p, e, c, pc in zip(
                    keys, truth_np, pred_np, default_d, countries, predicted_countries, strict=True
                )
            ],
        )
        from tasks.geolocation.plots import save_error_cdf, save_error_map

        save_error_cdf(
            {name: curves[name] for name in (*MODES, MOST_POPULOUS)},
            self.run_dir / "error_cdf.png",
            title=f"error CDF on {len(default_d)} test photos",
        )
        save_error_map(
            truth_np[:, 0],
            truth_np[:, 1],
            pred_np[:, 0],
            pred_np[:, 1],
            default_d,
            self.run_dir / "error_map.png",
            title=f"{len(default_d)} test photos ({self.mode}): truth -> prediction, "
            f"median {results[self.mode]['median_km']:.0f} km",
        )
        print(format_table({**{m: results[m] for m in MODES}, MOST_POPULOUS: results[MOST_POPULOUS]}))

    # -- prediction --------------------------------------------------------------------------------
    def predict_step(self, batch, batch_idx):
        images, target = batch
        logits = self(images)
        located = self.locate(logits)
        positions = located[self.mode][0]
        hier = self.mode.startswith("hier_")
        scores = self.combined(logits) if hier else logits[self.finest].float().softmax(dim=1)
        k = min(self.predict_top_k, scores.shape[1])
        top_p, top_cells = scores.topk(k, dim=1)
        self._outputs["keys"] += list(target["key"])
        self._outputs["top"].append((positions.cpu(), top_cells.cpu(), top_p.cpu()))

    def on_predict_epoch_end(self) -> None:
        keys = self._outputs["keys"]
        positions, cells, probs = (
            (torch.cat(parts).numpy() for parts in zip(*self._outputs["top"], strict=True))
            if keys
            else (np.zeros((0, 2)), np.zeros((0, 0), np.int64), np.zeros((0, 0)))
        )
        ids = unsigned(getattr(self, f"cell_id_{self.finest}").cpu().numpy())
        import s2cell

        tokens = {int(c): s2cell.cell_id_to_token(int(ids[c])) for c in np.unique(cells)}
        k = cells.shape[1] if len(keys) else 0
        header = ["id", "lat", "lon", "token", "probability"]
        header += [f"{field}_{r}" for r in range(2, k + 1) for field in ("token", "probability")]
        countries = countries_of(positions[:, 0], positions[:, 1]) if self.predict_country else None
        if countries is not None:
            header.append("country")
        rows = []
        for i, key in enumerate(keys):
            row = [key, f"{positions[i, 0]:.6f}", f"{positions[i, 1]:.6f}"]
            for r in range(k):
                row += [tokens[int(cells[i, r])], f"{probs[i, r]:.5f}"]
            rows.append(row + ([countries[i]] if countries is not None else []))
        path = self.run_dir / "predictions.csv"
        write_csv(path, header, rows)
        print(f"wrote {len(rows)} predictions ({self.mode}) to {path}")
        self._reset_outputs()


def _gather_objects(items: list) -> list:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, items)
        return [item for part in gathered for item in part]
    return items


def format_table(results: dict[str, dict]) -> str:
    """The five-scale table, one row per method, as the papers print it."""
    scales = list(SCALES_KM.values())
    lines = [
        f"{'method':20}" + "".join(f"{f'{r} km':>9}" for r in scales) + f"{'median km':>11}{'GeoScore':>10}"
    ]
    for name, scores in results.items():
        lines.append(
            f"{name:20}"
            + "".join(f"{100 * scores[f'acc_{r}km']:8.1f}%" for r in scales)
            + f"{scores['median_km']:11.0f}{scores['geoscore']:10.0f}"
        )
    return "\n".join(lines)
