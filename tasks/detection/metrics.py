"""COCO box evaluation: pycocotools' numbers, with the failure modes turned into clear errors.

`evaluate_coco` runs the reference COCOeval (or faster-coco-eval, a drop-in C++ port with the same
numbers) and returns its 12 summary stats, per-category AP and the precision array for PR curves.
What pycocotools does badly is handled before it runs: an empty result list (its `loadRes`
crashes on `[]`) scores zero against the ground truth; results naming image or category ids that
the ground truth lacks (its `loadRes` asserts, or silently scores them as nothing) raise a
ValueError listing the ids.

Model outputs come back to COCO through `DetectionResults`: boxes in the resized input's pixels
become `[x, y, w, h]` in the original image, labels become COCO category ids.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.common.io import atomic_write
from tasks.detection.data import read_coco_json, validate_coco

log = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS = ("pycocotools", "faster_coco_eval")
MAX_IDS_IN_ERROR = 10


def _backend_classes(backend: str) -> tuple[type, type]:
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    raise ValueError(f"unknown COCO eval backend {backend!r}; choose from {BACKENDS}")


def _coco_from_dict(coco_cls: type, dataset: dict) -> Any:
    coco = coco_cls()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _load_results(results: Sequence[Mapping] | str | Path) -> tuple[list, str]:
    if isinstance(results, (str, Path)):
        path = Path(results)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: results file not found")
        try:
            loaded = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(loaded, list):
            raise ValueError(f"{path}: a COCO results file is a JSON list of detections")
        return loaded, f"results file {path}"
    return list(results), "results"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# A results file in xyxy instead of COCO's xywh puts boxes past the image's right or bottom edge
# (x + "w" = x0 + x1); a model's xywh output is clipped to the image, so few boxes reach outside.
XYXY_OUTSIDE_FRACTION = 0.1
XYXY_TOLERANCE = 0.02  # of the image side: jitter and rounding of real boxes at the border


def _check_results(results: list, source: str, image_ids: set, cat_ids: set, image_sizes=None) -> None:
    """Reject malformed records, negative sizes and ids the ground truth does not know, naming them;
    warn when the boxes look like `[x0, y0, x1, y1]` (`image_sizes`: image id -> (width, height))."""
    for i, det in enumerate(results):
        bbox = det.get("bbox") if isinstance(det, Mapping) else None
        score = det.get("score") if isinstance(det, Mapping) else None
        if (
            not isinstance(bbox, (list, tuple))
            or len(bbox) != 4
            or not all(_number(v) for v in bbox)
            or not _number(score)
            or not _integer(det.get("image_id"))
            or not _integer(det.get("category_id"))
        ):
            raise ValueError(
                f"{source}: record {i} is not a box detection "
                f"{{image_id, category_id, bbox: [x, y, w, h], score}}: {det!r:.200}"
            )
        if bbox[2] < 0 or bbox[3] < 0:
            raise ValueError(
                f"{source}: record {i} has a negative width or height, bbox {list(bbox)}; COCO boxes are "
                "[x, y, width, height]"
            )
    for kind, known in (("image_id", image_ids), ("category_id", cat_ids)):
        unknown = sorted({det[kind] for det in results} - known)
        if unknown:
            shown = ", ".join(map(str, unknown[:MAX_IDS_IN_ERROR]))
            more = f" (+{len(unknown) - MAX_IDS_IN_ERROR} more)" if len(unknown) > MAX_IDS_IN_ERROR else ""
            raise ValueError(
                f"{source}: {len(unknown)} unknown {kind}s not in the ground truth: {shown}{more}"
            )
    if image_sizes and results:
        outside = 0
        for det in results:
            width, height = image_sizes[det["image_id"]]
            x, y, w, h = det["bbox"]
            outside += x + w > width * (1 + XYXY_TOLERANCE) + 1 or y + h > height * (1 + XYXY_TOLERANCE) + 1
        if outside > XYXY_OUTSIDE_FRACTION * len(results):
            log.warning(
                "%s: %d of %d boxes reach past the image edge: are they [x0, y0, x1, y1]? COCO results "
                "are [x, y, width, height], and xyxy boxes score near zero",
                source, outside, len(results),
            )  # fmt: skip


def evaluate_coco(
    gt: str | Path | Any, results: Sequence[Mapping] | str | Path, *, backend: str = "pycocotools"
) -> dict[str, Any]:
    """Score box detections against COCO ground truth.

    `gt` is an instances file or a loaded COCO object (pycocotools' or faster-coco-eval's);
    `results` a list of `{image_id, category_id, bbox: [x, y, w, h], score}` or a JSON file of one.
    Returns the 12 stats by name (`STAT_NAMES`; -1 where the ground truth has no object of an area
    class, as pycocotools reports), `per_category` (name -> AP, AP50, AP75), `category_ids`,
    `category_names`, and `precision`, COCOeval's array indexed [IoU threshold, recall (101 points),
    category, area range (all, S, M, L), max dets (1, 10, 100)] with -1 where undefined.
    """
    coco_cls, eval_cls = _backend_classes(backend)
    if isinstance(gt, (str, Path)):
        gt = _coco_from_dict(coco_cls, read_coco_json(gt, evaluation=True))
    else:
        validate_coco(gt.dataset, "ground truth", evaluation=True)  # before pycocotools trips on it
        if not isinstance(gt, coco_cls):
            gt = _coco_from_dict(coco_cls, gt.dataset)
    detections, source = _load_results(results)
    sizes = {image["id"]: (image["width"], image["height"]) for image in gt.dataset["images"]}
    _check_results(detections, source, set(gt.getImgIds()), set(gt.getCatIds()), sizes)
    with contextlib.redirect_stdout(io.StringIO()):
        if detections:
            dt = gt.loadRes(detections)
        else:  # loadRes cannot take []: an empty result set over the same images and categories
            dt = _coco_from_dict(
                coco_cls,
                {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []},
            )
        evaluator = eval_cls(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats[:12], strict=True)}
    precision = np.asarray(evaluator.eval["precision"])
    cat_ids = list(evaluator.params.catIds)
    names = [gt.cats[cat_id]["name"] for cat_id in cat_ids]
    iou_thresholds = np.asarray(evaluator.params.iouThrs)
    per_category = {
        name: {
            "AP": _mean_defined(precision[:, :, k, 0, -1]),
            "AP50": _mean_defined(precision[np.isclose(iou_thresholds, 0.5), :, k, 0, -1]),
            "AP75": _mean_defined(precision[np.isclose(iou_thresholds, 0.75), :, k, 0, -1]),
        }
        for k, name in enumerate(names)
    }
    return {
        **stats,
        "per_category": per_category,
        "category_ids": cat_ids,
        "category_names": names,
        "precision": precision,
    }


def _mean_defined(values: np.ndarray) -> float:
    """COCOeval's averaging: entries of -1 (no ground truth) are left out; nothing defined gives -1."""
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else -1.0


def write_results_json(path: str | Path, detections: Sequence[Mapping]) -> None:
    """Write COCO results atomically, so an interrupted run never leaves a truncated file to score."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(list(detections)))


def detections_to_coco(
    boxes: torch.Tensor | np.ndarray,
    scores: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    *,
    image_id: int,
    orig_size: tuple[int, int],
    input_size: tuple[int, int],
    label_to_cat_id: Mapping[int, int],
) -> list[dict]:
    """Boxes (xyxy in the `input_size` (h, w) model input) -> COCO results in the original image."""
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4).cpu()
    (orig_h, orig_w), (in_h, in_w) = orig_size, input_size
    boxes = boxes * torch.tensor(
        [orig_w / in_w, orig_h / in_h, orig_w / in_w, orig_h / in_h], dtype=torch.float64
    )
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, orig_w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, orig_h)
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = torch.as_tensor(scores).reshape(-1).tolist()
    labels = torch.as_tensor(labels).reshape(-1).tolist()
    return [
        {
            "image_id": int(image_id),
            "category_id": label_to_cat_id[int(label)],
            "bbox": box,
            "score": float(score),
        }
        for box, score, label in zip(xywh, scores, labels, strict=True)
    ]


class DetectionResults:
    """Collects a model's detections over an evaluation pass as COCO results, one set per image id.

    Keyed by image id: a dataset that served a neighbour in place of a corrupt image (see data.py)
    repeats that neighbour's id, and keeping one set per id stops its detections counting twice.
    """

    def __init__(self, label_to_cat_id: Mapping[int, int]) -> None:
        self.label_to_cat_id = dict(label_to_cat_id)
        self._by_image: dict[int, list[dict]] = {}

    def __len__(self) -> int:
        return len(self._by_image)

    def add_batch(
        self, outputs: Sequence[Mapping[str, torch.Tensor]], targets: Sequence[Mapping], *, input_size
    ) -> None:
        """`outputs[i]` holds `boxes`, `scores`, `labels` for `targets[i]` (torchvision convention)."""
        for output, target in zip(outputs, targets, strict=True):
            self._by_image[int(target["image_id"])] = detections_to_coco(
                output["boxes"],
                output["scores"],
                output["labels"],
                image_id=target["image_id"],
                orig_size=target["orig_size"],
                input_size=tuple(input_size),
                label_to_cat_id=self.label_to_cat_id,
            )

    def results(self) -> list[dict]:
        return [det for dets in self._by_image.values() for det in dets]

    def clear(self) -> None:
        self._by_image.clear()


def format_table(evaluation: Mapping[str, Any]) -> str:
    """The 12 stats and per-category AP as aligned text."""
    lines = [f"{name:>6}  {evaluation[name]:.4f}" for name in STAT_NAMES]
    width = max([len(name) for name in evaluation["per_category"]] + [8])
    lines += ["", f"{'category':<{width}}  {'AP':>6}  {'AP50':>6}  {'AP75':>6}"]
    for name, row in evaluation["per_category"].items():
        lines.append(f"{name:<{width}}  {row['AP']:6.4f}  {row['AP50']:6.4f}  {row['AP75']:6.4f}")
    return "\n".join(lines)
