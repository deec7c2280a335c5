"""Garbage in, clear error out (issue 16): property-based tests of every file parser.

Each generated input either loads or raises the suite's own error type (ValueError and its
subclasses `PairsFormatError`, `ImageReadError`, ...) with the file named in the message; never a
KeyError, IndexError, TypeError or a library's exception. Inputs are mostly near-valid records with
one or more fields broken, so both the happy path and each check are reached. The inputs each parser
received are counted (`helpers.fuzz.COUNTS`; `pytest -s -k fuzz` prints a line per parser).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.io
from helpers.fuzz import COUNTS, FUZZ, assert_suite_error, clean_folder, fuzz_workdir  # noqa: F401 - fixture
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tasks.common.io import ImageReadError

# -- JSON values ---------------------------------------------------------------------------------
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)
any_json = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def coco_document(draw):
    """A valid COCO instances dict, then 0-3 mutations: a field dropped or replaced (a bad id, type,
    file name, size or box), a record duplicated, a list emptied, or the whole document garbage."""
    if draw(st.integers(0, 11)) == 0:
        return draw(any_json)
    n_images = draw(st.integers(1, 4))
    images = [{"id": i + 1, "file_name": f"img{i}.png", "width": 64, "height": 48} for i in range(n_images)]
    categories = [{"id": c, "name": f"cat{c}"} for c in range(1, draw(st.integers(1, 3)) + 1)]
    annotations = []
    for a in range(draw(st.integers(0, 6))):
        x, y = draw(st.integers(-5, 60)), draw(st.integers(-5, 40))
        w, h = draw(st.integers(0, 30)), draw(st.integers(0, 30))
        annotations.append({"id": a + 1, "image_id": draw(st.integers(1, n_images)),
                            "category_id": draw(st.integers(1, len(categories))), "bbox": [x, y, w, h],
                            "area": w * h, "iscrowd": draw(st.sampled_from([0, 0, 0, 1]))})  # fmt: skip
    document = {"images": images, "annotations": annotations, "categories": categories}
    bad_values = {
        "id": st.sampled_from(["1", 1.5, None, True, 2**64, -(2**70), 1]),
        "image_id": st.sampled_from(["1", None, 99, 2**63, True]),
        "category_id": st.sampled_from([0, 99, "1", None]),
        "file_name": st.sampled_from(["../up.png", "/abs/c.png", "", "a\\..\\b.png", "C:d.png", 7]),
        "width": st.sampled_from([0, -1, "64", None, float("nan"), float("inf")]),
        "height": st.sampled_from([0, "48", None]),
        "bbox": st.sampled_from(
            [
                [1, 2, 3],
                [1, "2", 3, 4],
                [1, 2, -3, 4],
                None,
                "1 2 3 4",
                [float("nan")] * 4,
                [1, 2, 3, 4, 5],
                [True, 0, 5, 5],
            ]
        ),
        "area": st.sampled_from([-1, "5", None]),
        "iscrowd": st.sampled_from([2, "0", None, True]),
        "name": st.sampled_from([None, 5, ""]),
    }
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["images", "annotations", "categories", "top"]))
        if kind == "top":
            key = draw(st.sampled_from(["images", "annotations", "categories"]))
            op = draw(st.sampled_from(["drop", "empty", "garbage"]))
            if op == "drop":
                document.pop(key, None)
            else:
                document[key] = [] if op == "empty" else draw(any_json)
            continue
        records = document.get(kind)
        if not isinstance(records, list) or not records:
            continue
        index = draw(st.integers(0, len(records) - 1))
        target = records[index]
        if not isinstance(target, dict):
            continue
        op = draw(st.sampled_from(["drop", "bad", "bad", "duplicate", "replace"]))
        key = draw(st.sampled_from(sorted(target) or ["id"]))
        if op == "drop":
            target.pop(key, None)
        elif op == "bad":
            target[key] = draw(bad_values.get(key, any_json))
        elif op == "duplicate":
            records.append(dict(target))
        else:
            records[index] = draw(any_json)
    return document


@FUZZ
@given(document=coco_document(), non_utf8=st.integers(0, 9), train=st.booleans())
def test_coco_json_loads_or_names_the_file(workdir, document, non_utf8, train):
    from tasks.detection.data import CocoDetection
    from tasks.detection.metrics import evaluate_coco

    tally = COUNTS.saw("COCO JSON")
    path = workdir / "instances.json"
    text = json.dumps(document)
    if non_utf8 == 0:  # a Latin-1 file: not JSON's UTF-8
        path.write_bytes(text.replace('"', '"\u00e9', 1).encode("latin-1", "replace"))
    else:
        path.write_text(text)
    try:
        dataset = CocoDetection(workdir, path, train=train)
    except Exception as err:  # noqa: BLE001 - the assertion is on its type and message
        assert_suite_error(err, path)
        tally["refused"] += 1
        return
    tally["loaded"] += 1
    assert len(dataset) <= len(document["images"])
    assert len(dataset._boxes) == len(dataset._labels) == dataset._offsets[-1]
    try:  # what loads for training is scored by evaluation, or refused with a clear error
        evaluation = evaluate_coco(path, [])
    except Exception as err:  # noqa: BLE001
        assert_suite_error(err, path)
        tally["refused by evaluation"] += 1
        return
    tally["evaluated"] += 1
    assert evaluation["AP"] in (0.0, -1.0)


# -- Stanford Dogs .mat lists --------------------------------------------------------------------
BREEDS = ["n01-akita", "n02-beagle", "n03-corgi"]


@st.composite
def dog_lists(draw):
    """(train, test) lists: valid (train labels define the breeds), then 0-3 mutations each; a list may
    also be raw bytes (empty, a bare MAT header, noise)."""
    breeds = draw(st.integers(1, 3))
    lists = []
    for split in ("train", "test"):
        if draw(st.integers(0, 9)) == 0:
            lists.append(
                draw(st.sampled_from([b"", b"MATLAB 5.0 MAT-file" + b"\0" * 150]) | st.binary(max_size=40))
            )
            continue
        labels = list(range(1, breeds + 1)) if split == "train" else []
        labels += draw(st.lists(st.integers(1, breeds), max_size=3))
        files = [f"{BREEDS[label - 1]}/{split}{i}.jpg" for i, label in enumerate(labels)]
        labels = [float(label) for label in labels]  # the official lists store doubles
        mat = {"file_list": files, "labels": labels}
        for _ in range(draw(st.integers(0, 3))):
            op = draw(
                st.sampled_from(["label", "file", "drop", "length", "text labels", "empty", "number file"])
            )
            if op == "label" and labels:
                labels[draw(st.integers(0, len(labels) - 1))] = draw(
                    st.sampled_from([0.0, -1.0, 1.5, float(breeds + 1), float("nan"), float("inf"), 2.0**60])
                )
            elif op == "file" and files:
                files[draw(st.integers(0, len(files) - 1))] = draw(
                    st.sampled_from(
                        [
                            "",
                            "noslash.jpg",
                            "../n01-akita/x.jpg",
                            "/abs/n01-akita/y.jpg",
                            "n09-other/z.jpg",
                            "n02-beagle/b.jpg",
                        ]
                    )  # fmt: skip
                )
            elif op == "drop":
                mat.pop(draw(st.sampled_from(["file_list", "labels"])), None)
            elif op == "length" and labels:
                labels.pop()
            elif op == "text labels":
                mat["labels"] = [str(v) for v in labels]
            elif op == "empty":
                files.clear()
                labels.clear()
            elif op == "number file" and files:
                files[0] = 7
        lists.append(mat)
    return lists


def _mat_arrays(mat: dict) -> dict:
    out = {}
    if "file_list" in mat:
        cell = np.empty((len(mat["file_list"]), 1), dtype=object)
        for i, name in enumerate(mat["file_list"]):
            cell[i, 0] = np.array([name])
        out["file_list"] = cell
    if "labels" in mat:
        out["labels"] = np.array(mat["labels"]).reshape(-1, 1)
    return out


def _write_list(path: Path, content) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        scipy.io.savemat(path, _mat_arrays(content))


@FUZZ
@given(lists=dog_lists())
def test_stanford_dogs_lists_load_or_name_the_file(workdir, lists):
    from tasks.finegrained.data import StanfordDogs

    tally = COUNTS.saw("Stanford Dogs .mat")
    root = clean_folder(workdir / "dogs")
    (root / "Images").mkdir()
    (root / "lists").mkdir()
    _write_list(root / "lists" / "train_list.mat", lists[0])
    _write_list(root / "lists" / "test_list.mat", lists[1])
    for split in ("train", "test"):
        try:
            dogs = StanfordDogs(root, split)
        except Exception as err:  # noqa: BLE001
            assert_suite_error(err, root / "lists")
            tally[f"{split} refused"] += 1
            continue
        tally[f"{split} loaded"] += 1
        assert all(0 <= label < len(dogs.classes) for _, label in dogs.samples)


# -- LFW pairs.txt --------------------------------------------------------------------------------
PEOPLE = ["Ann", "Bob", "Cy_D", "Jos\u00e9"]


@st.composite
def pairs_text(draw):
    """A valid pairs file (`folds` x `per_half` matched + mismatched lines), then 0-3 mutations of its
    lines (a token replaced, a field dropped or added, a line removed or duplicated, the header
    changed), encoded as UTF-8 or Latin-1; sometimes plain noise."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=60))
    folds, per_half = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    lines = [[str(folds), str(per_half)]]
    for _ in range(folds):
        for _ in range(per_half):
            lines.append(
                [draw(st.sampled_from(PEOPLE)), str(draw(st.integers(1, 9))), str(draw(st.integers(1, 9)))]
            )
        for _ in range(per_half):
            a, b = draw(st.permutations(PEOPLE))[:2]
            lines.append([a, str(draw(st.integers(1, 9))), b, str(draw(st.integers(1, 9)))])
    tokens = st.sampled_from(["0", "-1", "x", "\u00b2", "\u0661", "9" * 30, "Ann", "1.5", ""])
    for _ in range(draw(st.integers(0, 3))):
        line = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["token", "drop field", "add field", "drop line", "duplicate line"]))
        if op == "token" and lines[line]:
            lines[line][draw(st.integers(0, len(lines[line]) - 1))] = draw(tokens)
        elif op == "drop field" and lines[line]:
            lines[line].pop()
        elif op == "add field":
            lines[line].append(draw(tokens))
        elif op == "drop line":
            lines.pop(line)
        else:
            lines.insert(line, list(lines[line]))
        if not lines:
            break
    text = "\n".join("\t".join(line) for line in lines) + draw(st.sampled_from(["", "\n", "\r\n"]))
    return text.encode(draw(st.sampled_from(["utf-8", "utf-8", "latin-1"])), "replace")


@FUZZ
@given(data=pairs_text())
def test_lfw_pairs_load_or_name_the_file(workdir, data):
    from tasks.face_embedding.lfw import read_pairs

    tally = COUNTS.saw("LFW pairs.txt")
    path = workdir / "pairs.txt"
    path.write_bytes(data)
    try:
        pairs = read_pairs(path)
    except Exception as err:  # noqa: BLE001
        assert_suite_error(err, path)
        tally["refused"] += 1
        return
    tally["loaded"] += 1
    header = data.decode().split()
    assert len(pairs) == 2 * int(header[0]) * int(header[1])
    assert all(p.number1 >= 1 and p.number2 >= 1 for p in pairs)


# -- identity folders ----------------------------------------------------------------------------
entry_names = st.sampled_from(["a.jpg", "b.PNG", "c.jpeg", "d.txt", ".hidden.png", "e.webp", "f.bmp"])
entry_kinds = st.sampled_from(["good", "good", "corrupt", "empty", "tiny", "dir"])
identity_names = st.sampled_from(["ann", "bob", "x.jpg", "c d", "\u00e9mile"])
identity = st.tuples(identity_names, st.lists(st.tuples(entry_names, entry_kinds), max_size=4))


def _write_entry(path: Path, kind: str) -> None:
    if kind == "dir":
        path.mkdir(exist_ok=True)
    elif kind == "good":
        Image.new("RGB", (8, 8), (30, 90, 150)).save(path, format="PNG")
    elif kind == "tiny":
        Image.new("RGB", (1, 1)).save(path, format="PNG")
    else:
        path.write_bytes(b"" if kind == "empty" else b"\x89PNG\r\n\x1a\nbroken")


@FUZZ
@given(people=st.lists(identity, max_size=4), loose=st.lists(st.tuples(entry_names, entry_kinds), max_size=2))
def test_identity_folders_load_or_name_the_folder(workdir, people, loose):
    from tasks.face_embedding.data import IdentityFolder

    tally = COUNTS.saw("identity folders")
    root = clean_folder(workdir / "faces")
    for name, entries in people:
        (root / name).mkdir(exist_ok=True)
        for file_name, kind in entries:
            if not (root / name / file_name).exists():
                _write_entry(root / name / file_name, kind)
    for file_name, kind in loose:  # files beside the identity folders are not identities
        if not (root / file_name).exists():
            _write_entry(root / file_name, kind)
    try:
        faces = IdentityFolder(root)
    except Exception as err:  # noqa: BLE001
        assert_suite_error(err, root)
        tally["refused"] += 1
        return
    tally["loaded"] += 1
    assert len(faces.identities) == len(set(faces.labels))
    for index in range(len(faces)):
        try:
            image, label = faces[index]
        except Exception as err:  # noqa: BLE001 - every file unreadable: an ImageReadError naming one
            assert isinstance(err, ImageReadError) and str(root) in str(err)
            return
        assert image.shape[0] == 3 and 0 <= label < len(faces.identities)
