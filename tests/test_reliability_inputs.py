"""Reliability sweep (issue 16): each bad input a hostile but realistic user fed the suite gives the
suite's own error naming the file and record, or is skipped and counted; never a raw traceback or a
silently wrong number. Every test here failed before its fix."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from tasks.common.classification import ImageFolderDataset
from tasks.common.io import ImageReadError, read_image

# -- bad image files -------------------------------------------------------------------------------


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def write_bomb_png(path: Path, side: int = 20000) -> Path:
    """A valid PNG header claiming side x side pixels (400 Mpx): tiny on disk, 1.2 GB decoded."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )
    return path


def write_bad_crc_png(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    at = data.find(b"IDAT")
    length = struct.unpack(">I", data[at - 4 : at])[0]
    data[at + 4 + length] ^= 0xFF  # the IDAT chunk's CRC
    path.write_bytes(bytes(data))
    return path


def write_truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        buffer, "JPEG"
    )
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def write_bad_images(folder: Path, stem: str = "bad") -> list[Path]:
    """One of each bad kind the issue lists, with image suffixes."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [
        write_bomb_png(folder / f"{stem}_bomb.png"),
        write_bad_crc_png(folder / f"{stem}_crc.png"),
        write_truncated_jpeg(folder / f"{stem}_truncated.jpg"),
        folder / f"{stem}_empty.jpg",
        folder / f"{stem}_dir.jpg",
        folder / f"{stem}_1x1.png",
    ]
    paths[3].write_bytes(b"")
    paths[4].mkdir()
    Image.new("RGB", (1, 1)).save(paths[5])
    return paths


def write_good_image(path: Path, colour=(120, 60, 200), size=(40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def test_every_bad_image_kind_is_an_image_read_error_naming_the_file(tmp_path):
    for path in write_bad_images(tmp_path):
        with pytest.raises(ImageReadError, match=path.name):
            read_image(path)
    assert read_image(write_good_image(tmp_path / "good.png")).shape == (40, 40, 3)


def _distinct_skips(dataset) -> int:
    return len(set(dataset.skipped.paths))


def test_corrupt_images_are_skipped_and_counted_in_every_tasks_dataset(tmp_path, caplog):
    from tasks.detection.data import CocoDetection
    from tasks.face_embedding.data import IdentityFolder, ImageList

    # fine-grained (class folders), face embedding (identity folders): 2 good + 6 bad per folder
    for name in ("a", "b"):
        write_good_image(tmp_path / "folders" / name / "good1.png")
        write_good_image(tmp_path / "folders" / name / "good2.jpg")
        write_bad_images(tmp_path / "folders" / name)
    caplog.set_level(logging.WARNING)
    for dataset in (ImageFolderDataset(tmp_path / "folders"), IdentityFolder(tmp_path / "folders")):
        items = [dataset[i] for i in range(len(dataset))]
        assert all(item[0].shape[0] == 3 for item in items)  # every index served a readable image
        # the directory named x.jpg is no file: ImageFolder does not list it, the identity folder does
        assert _distinct_skips(dataset) == len(dataset) - 4
    assert "skipped corrupt image" in caplog.text and "bad_bomb.png" in caplog.text

    keys = [p.relative_to(tmp_path).as_posix() for p in write_bad_images(tmp_path / "list")]
    listed = ImageList(tmp_path, keys, [0] * len(keys), skip_corrupt=True)
    assert [listed[i] for i in range(len(listed))] == [None] * 6 and len(listed.skipped) == 6

    # detection: the same files named by a COCO file, plus two good ones
    images_dir = tmp_path / "coco"
    bad = write_bad_images(images_dir)
    good = [write_good_image(images_dir / f"good{i}.png", size=(64, 48)) for i in range(2)]
    records = [
        {"id": i + 1, "file_name": p.name, "width": 64, "height": 48} for i, p in enumerate(good + bad)
    ]
    anns = [{"id": i + 1, "image_id": r["id"], "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400,
             "iscrowd": 0} for i, r in enumerate(records)]  # fmt: skip
    gt = tmp_path / "gt.json"
    gt.write_text(
        json.dumps({"images": records, "annotations": anns, "categories": [{"id": 1, "name": "x"}]})
    )
    coco = CocoDetection(images_dir, gt)
    served = {coco[i][1]["image_id"] for i in range(len(coco))}
    assert served <= {1, 2} and _distinct_skips(coco) == 6


def test_an_over_large_search_query_is_a_clear_error(tmp_path, capsys):
    from tasks.face_embedding.commands import main_search
    from tasks.face_embedding.index import EmbeddingIndex

    index = EmbeddingIndex(4)
    index.add(np.eye(4, dtype=np.float32)[:2], [0, 1])
    index.save(tmp_path / "index")
    info = {"weights": str(tmp_path / "never_loaded.ckpt"), "image_size": 32, "embedding_dim": 4,
            "identities": ["a", "b"]}  # fmt: skip
    (tmp_path / "index" / "embedder.json").write_text(json.dumps(info))
    query = write_bomb_png(tmp_path / "query.png")
    assert main_search(["--index", str(tmp_path / "index"), "--query", str(query)]) == 2
    err = capsys.readouterr().err
    assert "query.png" in err and "pixel limit" in err


# -- image folders: the training split defines the classes ---------------------------------------


def _class_folders(root: Path, layout: dict[str, int]) -> None:
    for label, (name, count) in enumerate(layout.items()):
        for i in range(count):
            write_good_image(root / name / f"{i}.png", colour=(40 * label, 100, 20 * i))


def test_a_val_split_missing_a_class_keeps_the_training_labels(tmp_path, caplog):
    from tasks.finegrained.data import FineGrainedDataModule

    _class_folders(tmp_path / "train", {"ant": 2, "bee": 2, "cat": 2})
    _class_folders(tmp_path / "val", {"ant": 1, "cat": 1})
    data = FineGrainedDataModule("imagefolder", str(tmp_path), image_size=32, batch_size=2, num_workers=0)
    with caplog.at_level(logging.WARNING):
        data.setup("fit")
    val = data.splits["val"]
    assert val.classes == ["ant", "bee", "cat"] and data.num_classes == 3
    assert sorted(label for _, label in val.samples) == [0, 2]  # cat stays 2, not relabelled to 1
    assert "1 of the 3 training classes have no folder here: ['bee']" in caplog.text


def test_a_val_split_with_an_extra_class_is_an_error_naming_it(tmp_path):
    from tasks.finegrained.data import FineGrainedDataModule

    _class_folders(tmp_path / "train", {"ant": 1, "bee": 1, "cat": 1})
    _class_folders(tmp_path / "val", {"ant": 1, "bee": 1, "cat": 1, "dog": 1})
    data = FineGrainedDataModule("imagefolder", str(tmp_path), image_size=32, batch_size=2, num_workers=0)
    with pytest.raises(ValueError, match=r"val: class folders \['dog'\] are not classes of the training"):
        data.setup("validate")


# -- detection: COCO files and results ---------------------------------------------------------------


def _coco(images=None, annotations=None, categories=None) -> dict:
    images = (
        [
            {"id": 1, "file_name": "a.png", "width": 100, "height": 80},
            {"id": 2, "file_name": "b.png", "width": 100, "height": 80},
        ]
        if images is None
        else images
    )
    if annotations is None:
        annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [50, 40, 40, 30], "area": 1200,
                        "iscrowd": 0},
                       {"id": 2, "image_id": 2, "category_id": 1, "bbox": [60, 10, 30, 60], "area": 1800,
                        "iscrowd": 0}]  # fmt: skip
    return {"images": images, "annotations": annotations,
            "categories": categories or [{"id": 1, "name": "thing"}]}  # fmt: skip


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["images"][0].update(file_name="../outside.png"),
            r"images\[0\] \(id 1\) has file_name '../outside.png'",
        ),
        (
            lambda d: d["images"][0].update(file_name="/etc/passwd"),
            r"images\[0\] \(id 1\) has file_name '/etc/passwd'",
        ),
        (lambda d: d["images"][1].update(id=1), r"images\[1\] \(id 1\) repeats image id 1"),
        (
            lambda d: d["images"][0].update(id="1"),
            r"images\[0\] \(id '1'\) has id '1'; image ids are integers",
        ),
        (lambda d: d["images"][1].pop("width"), r"images\[1\] \(id 2\) has no 'width'"),
        (lambda d: d["annotations"][0].update(bbox=[1, "2", 3, 4]), r"annotations\[0\] \(id 1\) has bbox"),
        (lambda d: d.update(images=[], annotations=[]), r"'images' is empty"),
        (lambda d: d["annotations"][1].update(image_id=True), r"annotations\[1\] \(id 2\) has image_id True"),
    ],
)
def test_coco_loading_refuses_bad_records_naming_file_and_record(tmp_path, edit, message):
    from tasks.detection.data import CocoDetection

    data = _coco()
    edit(data)
    gt = _write(tmp_path / "instances.json", data)
    with pytest.raises(ValueError, match=message) as caught:
        CocoDetection(tmp_path, gt)
    assert str(gt) in str(caught.value)


def test_annotations_on_unknown_image_ids_are_counted(tmp_path, caplog):
    from tasks.detection.data import CocoDetection

    data = _coco()
    data["annotations"] += [{"id": 9, "image_id": 77, "category_id": 1, "bbox": [1, 1, 5, 5]},
                            {"id": 10, "image_id": 78, "category_id": 1, "bbox": [1, 1, 5, 5]}]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        coco = CocoDetection(tmp_path, _write(tmp_path / "gt.json", data))
    assert coco.orphan_annotations == 2 and len(coco._boxes) == 2
    assert "2 annotations name image ids that 'images' does not list (e.g. 77, 78)" in caplog.text


def _results(gt: dict, *, xyxy: bool = False) -> list[dict]:
    out = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        out.append({"image_id": ann["image_id"], "category_id": 1, "score": 0.9,
                    "bbox": [x, y, x + w, y + h] if xyxy else [x, y, w, h]})  # fmt: skip
    return out


def test_evaluate_warns_when_results_look_like_xyxy(tmp_path, caplog):
    from tasks.detection.metrics import evaluate_coco

    data = _coco()
    gt = _write(tmp_path / "gt.json", data)
    with caplog.at_level(logging.WARNING):
        assert evaluate_coco(gt, _results(data))["AP"] == pytest.approx(1.0)
    assert "[x0, y0, x1, y1]" not in caplog.text
    with caplog.at_level(logging.WARNING):
        evaluation = evaluate_coco(gt, _results(data, xyxy=True))
    assert evaluation["AP"] < 0.5
    assert "2 of 2 boxes reach past the image edge: are they [x0, y0, x1, y1]?" in caplog.text


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r[0].update(bbox=[10, 10, -5, 20]), r"record 0 has a negative width or height"),
        (lambda r: r[1].update(score=True), r"record 1 is not a box detection"),
    ],
)
def test_evaluate_rejects_bad_results_naming_the_record(tmp_path, capsys, edit, message):
    from tasks.detection.commands import main_evaluate

    data = _coco()
    results = _results(data)
    edit(results)
    gt, dets = _write(tmp_path / "gt.json", data), _write(tmp_path / "dets.json", results)
    with pytest.raises(SystemExit):
        main_evaluate(["--gt", str(gt), "--results", str(dets)])
    err = capsys.readouterr().err
    assert "dets.json" in err
    assert __import__("re").search(message, err)


@pytest.mark.parametrize("field", ["area", "iscrowd"])
def test_evaluate_names_a_ground_truth_box_without_area_or_iscrowd(tmp_path, capsys, field):
    from tasks.detection.commands import main_evaluate

    data = _coco()
    del data["annotations"][1][field]
    gt, dets = _write(tmp_path / "gt.json", data), _write(tmp_path / "dets.json", _results(data))
    with pytest.raises(SystemExit):
        main_evaluate(["--gt", str(gt), "--results", str(dets)])
    assert (
        f"gt.json: annotations[1] (id 2) has no '{field}', which COCO evaluation needs"
        in capsys.readouterr().err
    )


def test_synth_shapes_rejects_a_val_fraction_outside_0_1(tmp_path, capsys):
    from tasks.detection.commands import main_synth_shapes

    for fraction in ("1.5", "0", "-0.2"):
        with pytest.raises(SystemExit):
            main_synth_shapes(["--out", str(tmp_path), "--images", "4", "--val-fraction", fraction])
        assert "--val-fraction must be between 0 and 1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# -- damaged index directories -------------------------------------------------------------------


@pytest.fixture
def saved_index(tmp_path) -> Path:
    from tasks.face_embedding.index import EmbeddingIndex

    index = EmbeddingIndex(8)
    index.add(np.random.default_rng(0).normal(size=(6, 8)), [0, 0, 1, 1, 2, 2])
    index.save(tmp_path / "index")
    return tmp_path / "index"


def _edit_meta(index: Path, change) -> None:
    meta = json.loads((index / "meta.json").read_text())
    change(meta)
    (index / "meta.json").write_text(json.dumps(meta))


DAMAGE = {
    "meta not JSON": (lambda d: (d / "meta.json").write_text("{kind: flat"), "meta.json: not valid JSON"),
    "meta a list": (lambda d: (d / "meta.json").write_text("[1, 2]"), "meta.json: must hold a JSON object"),
    "missing dim": (lambda d: _edit_meta(d, lambda m: m.pop("dim")), "meta.json: missing 'dim'"),
    "dim a string": (lambda d: _edit_meta(d, lambda m: m.update(dim="8")), "meta.json: dim must be"),
    "garbage faiss": (
        lambda d: (d / "index.faiss").write_bytes(b"garbage" * 10),
        "index.faiss: not a readable",
    ),
    "truncated faiss": (
        lambda d: (d / "index.faiss").write_bytes((d / "index.faiss").read_bytes()[:60]),
        "index.faiss: not a readable",
    ),
    "object labels": (
        lambda d: np.save(d / "labels.npy", np.array([0, "a", None] * 2, dtype=object), allow_pickle=True),
        "labels.npy: not a readable .npy",
    ),
    "float labels": (
        lambda d: np.save(d / "labels.npy", np.arange(6, dtype=np.float32)),
        "labels.npy: labels must be a 1-D integer array",
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_index_is_an_index_format_error_naming_the_file(saved_index, damage):
    from tasks.face_embedding.index import EmbeddingIndex, IndexFormatError

    break_it, message = DAMAGE[damage]
    break_it(saved_index)
    with pytest.raises(IndexFormatError, match=message) as caught:
        EmbeddingIndex.load(saved_index)
    assert str(saved_index) in str(caught.value)


def test_fewer_identities_than_labels_and_k_0_are_clear_errors(saved_index, tmp_path, capsys):
    from tasks.face_embedding.commands import main_search

    info = {"weights": "w.ckpt", "image_size": 32, "embedding_dim": 8, "identities": ["a", "b"]}
    (saved_index / "embedder.json").write_text(json.dumps(info))
    query = write_good_image(tmp_path / "q.png", size=(40, 40))
    assert main_search(["--index", str(saved_index), "--query", str(query)]) == 2
    assert "embedder.json: names 2 identities, but labels.npy uses label 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main_search(["--index", str(saved_index), "--query", str(query), "-k", "0"])
    assert "-k must be at least 1" in capsys.readouterr().err


# -- Stanford Dogs lists, LFW pairs ------------------------------------------------------------------


def _dogs(root: Path, labels, files=None, *, test_labels=None) -> Path:
    (root / "Images").mkdir(parents=True, exist_ok=True)
    (root / "lists").mkdir(exist_ok=True)
    files = (
        files if files is not None else [f"n0{label}-breed{label}/x{i}.jpg" for i, label in enumerate(labels)]
    )

    def cell(strings):
        out = np.empty((len(strings), 1), dtype=object)
        for i, s in enumerate(strings):
            out[i, 0] = np.array([s])
        return out

    for split, split_labels in (
        ("train", labels),
        ("test", test_labels if test_labels is not None else labels),
    ):
        scipy.io.savemat(root / "lists" / f"{split}_list.mat",
                         {"file_list": cell(files), "labels": np.asarray(split_labels)[:, None]})  # fmt: skip
    return root


def test_stanford_dogs_bad_lists_name_the_file(tmp_path):
    from tasks.finegrained.data import StanfordDogs

    root = _dogs(tmp_path / "beyond", [1, 2], test_labels=[1, 3])
    with pytest.raises(ValueError, match=r"test_list.mat: record 1 .* label 3, beyond the 2 classes"):
        StanfordDogs(root, "test")

    root = _dogs(tmp_path / "strings", ["1", "2"])
    with pytest.raises(ValueError, match=r"train_list.mat: labels are <U1 values, not numbers"):
        StanfordDogs(root, "train")

    root = _dogs(tmp_path / "empty", [1])
    scipy.io.savemat(root / "lists" / "train_list.mat",
                     {"file_list": np.empty((0, 1), dtype=object), "labels": np.empty((0, 1))})  # fmt: skip
    with pytest.raises(ValueError, match=r"train_list.mat: the split list is empty"):
        StanfordDogs(root, "train")

    root = _dogs(tmp_path / "notmat", [1])
    for garbage in (b"", b"MATLAB 5.0 MAT-file" + b"\0" * 200, b"hello, world\n"):
        (root / "lists" / "train_list.mat").write_bytes(garbage)
        with pytest.raises(ValueError, match=r"train_list.mat: not a readable MATLAB file"):
            StanfordDogs(root, "train")


def test_latin1_pairs_file_names_the_file_and_line(tmp_path):
    from tasks.face_embedding.lfw import PairsFormatError, read_pairs

    path = tmp_path / "pairs.txt"
    path.write_bytes("1\t1\nJos\u00e9_Maria\t1\t2\nAnn\t1\tBob\t1\n".encode("latin-1"))
    with pytest.raises(PairsFormatError, match=r"pairs.txt:2: not UTF-8 text"):
        read_pairs(path)


# -- checkpoints from elsewhere cannot run code ----------------------------------------------------


class _Payload:
    """Unpickling this runs `os.system`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {}, "global_step": 0, "evil": _Payload(marker)}, path)
    return path


def test_a_malicious_ckpt_path_is_refused_naming_the_file(tmp_path, monkeypatch):
    from tasks.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MOBILENETS_RUN_VERSION", raising=False)
    marker = tmp_path / "pwned"
    evil = _evil_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(SystemExit, match=r"--ckpt_path .*evil.ckpt: refused"):
        main(["finegrained", "fit", "--ckpt_path", str(evil), "--trainer.enable_progress_bar=false"])
    assert not marker.exists() and not (tmp_path / "runs" / "finegrained").exists()


def test_a_pickle_renamed_safetensors_is_refused_naming_the_file(tmp_path):
    from backbone import mobilenet_v1
    from backbone.weights import load_weights

    marker = tmp_path / "pwned"
    renamed = tmp_path / "weights.safetensors"
    renamed.write_bytes(pickle.dumps({"w": _Payload(marker)}))
    with pytest.raises(ValueError, match=r"weights.safetensors.*not a safetensors file"):
        load_weights(mobilenet_v1(width_mult=0.25), renamed)
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(ValueError, match=r"evil.pt"):
        load_weights(mobilenet_v1(width_mult=0.25), evil)
    assert not marker.exists()


def test_export_bounds_width_mult_and_resolution(tmp_path, capsys):
    from backbone.export import main_export

    for args in (["--width-mult", "100"], ["--width-mult", "0"], ["--resolution", "100000"]):
        with pytest.raises(SystemExit):
            main_export(["--out", str(tmp_path / "m.onnx"), *args])
        assert "must be in" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_a_fit_counts_skipped_images_of_its_workers_in_the_metrics(tmp_path, monkeypatch):
    from tasks.cli import main

    for name, colour in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
        for i in range(4):
            write_good_image(tmp_path / "data" / "train" / name / f"good{i}.png", colour=colour)
        write_bad_images(tmp_path / "data" / "train" / name)  # 5 listed files, sorted before the good ones
        for i in range(2):
            write_good_image(tmp_path / "data" / "val" / name / f"good{i}.png", colour=colour)
        write_bomb_png(tmp_path / "data" / "val" / name / "bad.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MOBILENETS_RUN_VERSION", raising=False)
    main(["finegrained", "fit", "--data.dataset=imagefolder", f"--data.root={tmp_path / 'data'}",
          "--data.image_size=32", "--data.batch_size=6", "--data.num_workers=1", "--trainer.max_epochs=1",
          "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
          "--model.backbone.width_mult=0.25"])  # fmt: skip
    (run,) = (tmp_path / "runs" / "finegrained").iterdir()
    import csv

    rows = list(csv.DictReader(open(run / "metrics.csv")))
    train = [float(r["data/skipped_train"]) for r in rows if r.get("data/skipped_train")]
    val = [float(r["data/skipped_val"]) for r in rows if r.get("data/skipped_val")]
    # each index is read once per epoch; a run of 5 bad files before a good one is tried 5+4+3+2+1 times
    assert train == [2 * 15] and val == [2 * 1]
