from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tasks.detection.commands import main_evaluate
from tasks.detection.metrics import (
    STAT_NAMES,
    DetectionResults,
    detections_to_coco,
    evaluate_coco,
    write_results_json,
)
from tasks.detection.plots import draw_detections, plot_pr_curves, write_ap_tables
from tasks.detection.synthetic import write_synth_shapes


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory) -> tuple[Path, Path]:
    """Synth-shapes ground truth and a results file: jittered true boxes plus false positives."""
    root = tmp_path_factory.mktemp("eval")
    gt_file = write_synth_shapes(root, images=40, seed=2)["val"]
    gt = json.loads(gt_file.read_text())
    rng = np.random.default_rng(0)
    results = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 0.08 * w, size=4)
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]],
                "score": float(rng.uniform(0.3, 1)),
            }
        )
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": int(rng.choice([1, 3, 5, 7, 9])),
                "bbox": [float(v) for v in rng.uniform(0, 150, size=2)] + [40.0, 30.0],
                "score": float(rng.uniform(0, 0.8)),
            }
        )
    results_file = root / "dets.json"
    write_results_json(results_file, results)
    return gt_file, results_file


def _pycocotools_stats(gt_file: Path, results_file: Path, cat_ids=None) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        evaluator = COCOeval(gt, gt.loadRes(str(results_file)), "bbox")
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def test_stats_equal_a_direct_pycocotools_run(coco_files):
    gt_file, results_file = coco_files
    evaluation = evaluate_coco(gt_file, results_file)
    expected = _pycocotools_stats(gt_file, results_file)
    assert [evaluation[name] for name in STAT_NAMES] == expected.tolist()
    assert 0.2 < evaluation["AP"] < 0.95 and min(evaluation[n] for n in ("APs", "APm", "APl")) > 0
    assert evaluation["precision"].shape == (10, 101, 5, 4, 3)
    for name, cat_id in zip(evaluation["category_names"], evaluation["category_ids"], strict=True):
        alone = _pycocotools_stats(gt_file, results_file, cat_ids=[cat_id])
        assert evaluation["per_category"][name]["AP"] == pytest.approx(alone[0], abs=1e-12)
        assert evaluation["per_category"][name]["AP50"] == pytest.approx(alone[1], abs=1e-12)


def test_faster_coco_eval_backend_gives_the_same_stats(coco_files):
    pytest.importorskip("faster_coco_eval")
    gt_file, results_file = coco_files
    reference = evaluate_coco(gt_file, results_file)
    faster = evaluate_coco(gt_file, results_file, backend="faster_coco_eval")
    assert [faster[n] for n in STAT_NAMES] == pytest.approx([reference[n] for n in STAT_NAMES], abs=1e-9)


def test_loaded_coco_object_is_accepted(coco_files):
    gt_file, results_file = coco_files
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
    assert evaluate_coco(gt, results_file)["AP"] == evaluate_coco(gt_file, results_file)["AP"]


def test_empty_results_give_zeros(coco_files, tmp_path):
    gt_file, _ = coco_files
    empty_file = tmp_path / "empty.json"
    write_results_json(empty_file, [])
    for results in ([], empty_file):
        evaluation = evaluate_coco(gt_file, results)
        assert [evaluation[name] for name in STAT_NAMES] == [0.0] * 12
        assert all(row["AP"] == 0.0 for row in evaluation["per_category"].values())


@pytest.mark.parametrize(
    ("field", "bad_ids", "message"),
    [("image_id", [999, 4242], "2 unknown image_ids not in the ground truth: 999, 4242"),
     ("category_id", [2], "1 unknown category_ids not in the ground truth: 2")],
)  # fmt: skip
def test_unknown_ids_raise_naming_them_and_the_file(coco_files, tmp_path, field, bad_ids, message):
    gt_file, results_file = coco_files
    results = json.loads(results_file.read_text())
    for i, bad in enumerate(bad_ids):
        results[i][field] = bad
    bad_file = tmp_path / "bad_dets.json"
    write_results_json(bad_file, results)
    with pytest.raises(ValueError, match=f"bad_dets.json: {message}"):
        evaluate_coco(gt_file, bad_file)


def test_malformed_record_names_its_index(coco_files):
    gt_file, results_file = coco_files
    results = json.loads(results_file.read_text())
    results[3]["bbox"] = [1, 2, 3]
    with pytest.raises(ValueError, match="record 3 is not a box detection"):
        evaluate_coco(gt_file, results)


def test_cli_json_and_table(coco_files, capsys):
    gt_file, results_file = coco_files
    assert main_evaluate(["--gt", str(gt_file), "--results", str(results_file), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [printed[n] for n in STAT_NAMES] == _pycocotools_stats(gt_file, results_file).tolist()
    assert set(printed["per_category"]) == {"circle", "square", "triangle", "star", "cross"}
    main_evaluate(["--gt", str(gt_file), "--results", str(results_file)])
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["AP", f"{printed['AP']:.4f}"]
    with pytest.raises(SystemExit) as exit_info:
        main_evaluate(["--gt", str(gt_file) + ".missing", "--results", str(results_file)])
    assert exit_info.value.code == 2 and ".missing: COCO annotation file not found" in capsys.readouterr().err


def test_model_outputs_map_back_to_original_pixels_and_category_ids():
    results = DetectionResults({1: 3, 2: 90})
    outputs = [
        {
            "boxes": torch.tensor([[10.0, 20, 60, 80]]),
            "scores": torch.tensor([0.9]),
            "labels": torch.tensor([2]),
        }
    ]
    targets = [{"image_id": 7, "orig_size": (200, 400)}]
    results.add_batch(outputs, targets, input_size=(100, 100))
    results.add_batch(outputs, targets, input_size=(100, 100))  # a repeated image id replaces, not doubles
    assert len(results) == 1
    [det] = results.results()
    assert det["image_id"] == 7 and det["category_id"] == 90 and det["score"] == pytest.approx(0.9)
    assert det["bbox"] == pytest.approx([40.0, 40.0, 200.0, 120.0])  # x * 4, y * 2, then xywh
    clipped = detections_to_coco(
        [[-5.0, 0, 120, 50]], [0.5], [1], image_id=1, orig_size=(100, 100), input_size=(100, 100),
        label_to_cat_id={1: 3},
    )  # fmt: skip
    assert clipped[0]["bbox"] == [0.0, 0.0, 100.0, 50.0]


def test_plots_and_tables_are_written(coco_files, tmp_path):
    gt_file, results_file = coco_files
    evaluation = evaluate_coco(gt_file, results_file)
    paths = plot_pr_curves(evaluation, tmp_path) + write_ap_tables(evaluation, tmp_path)
    assert [p.name for p in paths] == [
        "pr_curves.png", "pr_curves_per_category.png", "per_category_ap.csv", "per_category_ap.md",
    ]  # fmt: skip
    assert Image.open(paths[0]).format == "PNG"
    rows = paths[2].read_text().splitlines()
    assert len(rows) == 6 and rows[1].startswith("circle,1,")
    assert f"| **all** | | {evaluation['AP']:.4f}" in paths[3].read_text()
    drawn = draw_detections(
        np.zeros((50, 60, 3), np.uint8), tmp_path / "dets.png", boxes=[[5, 5, 30, 40]], labels=[1],
        scores=[0.9], class_names=["__background__", "circle"], gt_boxes=[[4, 4, 31, 41]],
    )  # fmt: skip
    pixels = np.asarray(Image.open(drawn))
    assert pixels.shape == (50, 60, 3) and pixels.any()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left
