"""Geolocation end to end through the CLI: a short fit on the synthetic world beats the untrained network
and the most-populous-cell baseline by far; `predict` on a folder of new photos (no CSV); `evaluate`
reproduces the module's own test metrics from predictions.csv; the recipes instantiate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import s2cell
import torch
from PIL import Image

from tasks.cli import TASKS, main
from tasks.common.lightning_cli import RUN_VERSION_ENV, SuiteCLI, load_object, run_task_cli

REPO = Path(__file__).resolve().parents[1]
SPEC = TASKS["geolocation"]
SMALL = [
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.accelerator=cpu",
    "--trainer.max_time=null",
    "--model.cpu_threads=1",  # two threads stall whenever another process takes a core
    "--model.backbone.width_mult=0.25",
    "--data.image_size=32",
    "--data.batch_size=32",
    "--data.num_workers=0",
    "--data.synthetic_cities=12",
    "--data.synthetic_regions=6",
    "--data.synthetic_train=2400",
    "--data.synthetic_val=128",
    "--data.synthetic_test=400",
    "--data.t_max=[800,200]",
    "--data.t_min=10",
]
FIT = [
    "--trainer.max_epochs=6",
    "--model.optim.name=adamw",
    "--model.optim.lr=0.004",
    "--model.optim.schedule_by=steps",
    "--model.optim.warmup_epochs=0.5",
]


def fresh(monkeypatch) -> None:
    monkeypatch.delenv(RUN_VERSION_ENV, raising=False)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short fit shared by the tests below: (run directory, checkpoint, working directory)."""
    work = tmp_path_factory.mktemp("geo")
    patch = pytest.MonkeyPatch()
    patch.chdir(work)
    patch.delenv(RUN_VERSION_ENV, raising=False)
    torch.manual_seed(0)
    fit = run_task_cli(SPEC, ["fit", *SMALL, *FIT])
    run = Path(fit.trainer.log_dir)
    patch.undo()
    return run, run / "checkpoints" / "last.ckpt", work


def test_short_fit_beats_the_untrained_network_and_the_most_populous_cell(trained, monkeypatch):
    run, checkpoint, work = trained
    monkeypatch.chdir(work)
    fresh(monkeypatch)
    test = run_task_cli(SPEC, ["test", "--ckpt_path", str(checkpoint), *SMALL])
    scores = {k: float(v) for k, v in test.trainer.callback_metrics.items()}
    metrics = json.loads((Path(test.trainer.log_dir) / "metrics.json").read_text())
    prior = metrics["baselines"]["most_populous_cell"]
    fresh(monkeypatch)
    untrained = run_task_cli(SPEC, ["test", *SMALL])  # same recipe, no checkpoint: random weights
    blind = {k: float(v) for k, v in untrained.trainer.callback_metrics.items()}
    for scale in ("acc_25km", "acc_200km", "acc_750km", "acc_2500km"):
        assert scores[f"test/{scale}"] > prior[scale] + 0.2, (scale, scores[f"test/{scale}"], prior[scale])
        assert scores[f"test/{scale}"] > blind[f"test/{scale}"] + 0.2, (scale, blind[f"test/{scale}"])
    assert scores["test/median_km"] < 0.5 * min(prior["median_km"], blind["test/median_km"])
    assert metrics["prediction"] == "hier_mean" and set(metrics["modes"]) == {
        "centre",
        "mean",
        "hier_centre",
        "hier_mean",
    }
    assert 0 <= metrics["country_acc"] <= 1 and metrics["per_country"][0]["count"] > 0
    for png in ("error_map.png", "error_cdf.png"):
        assert (Path(test.trainer.log_dir) / png).stat().st_size > 20_000
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["backbone_prefix"] == "network.backbone." and saved["hyper_parameters"]["num_cells"][0] >= 2
    assert "cells" not in saved["hyper_parameters"] and "cell_mean_1" in saved["state_dict"]


def test_predict_on_a_folder_of_new_photos_without_a_csv(trained, monkeypatch, tmp_path):
    run, checkpoint, work = trained
    from tasks.geolocation.synthetic import SyntheticGeo, make_world

    photos = SyntheticGeo(make_world(0, cities=12, regions=6), 5, split="test", size=48, seed=9)
    folder = tmp_path / "holiday"
    (folder / "day2").mkdir(parents=True)
    for i in range(5):
        Image.fromarray(photos.image(i)).save(folder / ("day2" if i > 2 else "") / f"IMG_{i}.jpg")
    monkeypatch.chdir(work)
    fresh(monkeypatch)
    predict = run_task_cli(
        SPEC,
        [
            "predict",
            "--ckpt_path",
            str(checkpoint),
            *SMALL,
            f"--data.predict_root={folder}",
            "--model.predict_country=true",
        ],
    )
    rows = read_rows(Path(predict.trainer.log_dir) / "predictions.csv")
    assert sorted(Path(r["id"]).name for r in rows) == [f"IMG_{i}.jpg" for i in range(5)]
    for row in rows:
        assert -90 <= float(row["lat"]) <= 90 and -180 <= float(row["lon"]) <= 180
        assert s2cell.token_is_valid(row["token"]) and len(row["country"]) == 2
        probabilities = [float(row["probability"])] + [float(row[f"probability_{k}"]) for k in range(2, 6)]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < probabilities[0] <= 1


def test_evaluate_on_predictions_csv_reproduces_the_test_metrics(trained, monkeypatch, capsys):
    run, checkpoint, work = trained
    monkeypatch.chdir(work)
    fresh(monkeypatch)
    predict = run_task_cli(SPEC, ["predict", "--ckpt_path", str(checkpoint), *SMALL])  # the test split
    predictions = Path(predict.trainer.log_dir) / "predictions.csv"
    fresh(monkeypatch)
    test = run_task_cli(SPEC, ["test", "--ckpt_path", str(checkpoint), *SMALL])
    expected = json.loads((Path(test.trainer.log_dir) / "metrics.json").read_text())
    # the same photos on disk, as an MP-16-style truth CSV
    assert (
        main(
            [
                "geolocation",
                "synth",
                "--out",
                str(work / "disk"),
                "--train",
                "0",
                "--test",
                "400",
                "--size",
                "32",
                "--cities",
                "12",
                "--regions",
                "6",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "geolocation",
                "evaluate",
                "--truth",
                str(work / "disk" / "test.csv"),
                "--predictions",
                str(predictions),
                "--json",
            ]
        )
        == 0
    )
    scores = json.loads(capsys.readouterr().out)
    assert scores["count"] == 400
    for key in ("acc_25km", "acc_200km", "acc_750km", "acc_2500km", "median_km", "geoscore"):
        assert scores[key] == pytest.approx(expected[key], abs=1e-3), key


def test_the_default_and_real_recipes_instantiate(tmp_path, monkeypatch):
    """mp16.yaml / osv5m.yaml build their data module and model (fixtures at the recipes' paths)."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for folder, header, name in (
        ("mp16", "IMG_ID,LAT,LON", "mp16_places365.csv"),
        ("im2gps3k", "IMG_ID,LAT,LON", "im2gps3k_places365.csv"),
        ("osv5m", "id,latitude,longitude,country", "train.csv"),
        ("osv5m", "id,latitude,longitude,country", "test.csv"),
    ):
        (tmp_path / "data" / folder / "images" / "train").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / folder / "images" / "test").mkdir(parents=True, exist_ok=True)
        rows = [
            f"p{i}.jpg,{rng.uniform(-60, 60):.4f},{rng.uniform(-180, 180):.4f}"
            + (",FR" if "country" in header else "")
            for i in range(80)
        ]
        (tmp_path / "data" / folder / name).write_text(header + "\n" + "\n".join(rows) + "\n")
    cli_class = type("TaskCLI", (SuiteCLI,), {"spec": SPEC, "version": "recipe"})
    for recipe in ("mp16.yaml", "osv5m.yaml"):
        cli = cli_class(
            load_object(SPEC.module),
            load_object(SPEC.datamodule),
            run=False,
            auto_configure_optimizers=False,
            args=[
                "--config",
                str(REPO / "configs" / "geolocation" / recipe),
                "--trainer.accelerator=cpu",
                "--trainer.precision=32",
                "--data.t_min=1",
            ],
        )
        assert cli.model.network.backbone.width_mult == 1.0 and cli.datamodule.image_size == 224
        assert cli.model.num_cells == cli.datamodule.num_cells and len(cli.model.num_cells) == 3
        assert cli.datamodule.t_max == [5000, 2000, 1000]
