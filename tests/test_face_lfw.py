from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.face_embedding.lfw import Pair, PairsFormatError, make_pairs, read_pairs, write_pairs
from tasks.face_embedding.metrics import (
    first_image_gallery,
    identification_topk,
    roc_points,
    ten_fold_accuracy,
    val_at_far,
)
from tasks.face_embedding.plots import roc_curve_png

LFW_STYLE = """2\t2
Abel_Pacheco\t1\t4
Akhmed_Zakayev\t1\t3
Abdel_Madi_Shabneh\t1\tDean_Barker\t1
Abdel_Madi_Shabneh\t1\tGiancarlo_Fisichella\t1
Abdullah_Gul\t13\t14
Abdullah_Gul\t13\t16
Abdullah\t1\tGuillermo_Coria\t2
Abdullah\t2\tGuillermo_Coria\t8
"""


def test_read_pairs_parses_lfw_layout(tmp_path: Path):
    path = tmp_path / "pairs.txt"
    path.write_text(LFW_STYLE)
    pairs = read_pairs(path)
    assert len(pairs) == 8
    assert [p.fold for p in pairs] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [p.is_same for p in pairs] == [True, True, False, False] * 2
    assert pairs[0] == Pair("Abel_Pacheco", 1, "Abel_Pacheco", 4, 0)
    assert pairs[7] == Pair("Abdullah", 2, "Guillermo_Coria", 8, 1)
    assert pairs[4].paths("/lfw") == (Path("/lfw/Abdullah_Gul/Abdullah_Gul_0013.jpg"),
                                      Path("/lfw/Abdullah_Gul/Abdullah_Gul_0014.jpg"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (LFW_STYLE.replace("Akhmed_Zakayev\t1\t3", "Akhmed_Zakayev\t1"),
         r"pairs.txt:3: matched pair \(fold 1\)"),
        (LFW_STYLE.replace("Dean_Barker\t1", "Dean_Barker\tone"), r"pairs.txt:4: image number"),
        (LFW_STYLE.replace("Abdullah\t1\tGuillermo_Coria\t2", "Abdullah\t1\tAbdullah\t2"),
         r"pairs.txt:8: .*same"),
        (LFW_STYLE.replace("2\t2\n", "10 300\n"), r"pairs.txt: header promises 10 folds .* found 8"),
        (LFW_STYLE.replace("2\t2\n", "two 2\n"), r"pairs.txt:1: header"),
        ("", r"pairs.txt: empty"),
    ],
)
def test_read_pairs_errors_name_file_and_line(tmp_path: Path, text: str, message: str):
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    with pytest.raises(PairsFormatError, match=message):
        read_pairs(path)


def test_make_pairs_write_read_round_trip(tmp_path: Path):
    counts = {f"person_{i:02d}": 1 + i % 4 for i in range(40)}
    pairs = make_pairs(counts, folds=4, per_fold=6, seed=3)
    assert len(pairs) == 4 * 12
    for fold in range(4):
        members = [p for p in pairs if p.fold == fold]
        assert sum(p.is_same for p in members) == 6 and len(members) == 12
        assert len({(p.name1, p.number1, p.name2, p.number2) for p in members}) == 12
    people_per_fold = [{n for p in pairs if p.fold == f for n in (p.name1, p.name2)} for f in range(4)]
    assert all(a.isdisjoint(b) for i, a in enumerate(people_per_fold) for b in people_per_fold[i + 1:])
    assert all(1 <= p.number1 <= counts[p.name1] and 1 <= p.number2 <= counts[p.name2] for p in pairs)
    assert all(p.number1 != p.number2 for p in pairs if p.is_same)

    write_pairs(tmp_path / "pairs.txt", pairs)
    assert (tmp_path / "pairs.txt").read_text().splitlines()[0] == "4\t6"
    assert read_pairs(tmp_path / "pairs.txt") == pairs
    assert make_pairs(counts, folds=4, per_fold=6, seed=3) == pairs


def test_make_pairs_rejects_too_few_people():
    with pytest.raises(ValueError, match="fold 1"):
        make_pairs({"a": 3, "b": 3, "c": 3}, folds=2, per_fold=1)


# three folds, two matched and two mismatched pairs each; thresholds worked out in the test below
SCORES = [0.9, 0.6, 0.3, 0.7, 0.8, 0.5, 0.2, 0.4, 0.95, 0.65, 0.1, 0.55]
SAME = [True, True, False, False] * 3
FOLDS = [0] * 4 + [1] * 4 + [2] * 4


def test_ten_fold_accuracy_tunes_threshold_on_other_folds():
    # fold 0 test, train = folds 1+2: t=0.45 and t=0.6 both get 7/8 right; the lower one wins.
    #   on fold 0: 0.9, 0.6 accepted (right), 0.3 rejected (right), 0.7 accepted (wrong) -> 3/4
    # fold 1 test, train = folds 0+2: t=0.575 gets 7/8 -> on fold 1: 0.5 rejected (wrong) -> 3/4
    # fold 2 test, train = folds 0+1: t=0.45 gets 7/8 -> on fold 2: 0.55 accepted (wrong) -> 3/4
    result = ten_fold_accuracy(SCORES, SAME, FOLDS)
    assert result["thresholds"] == pytest.approx([0.45, 0.575, 0.45])
    assert result["per_fold"] == [0.75, 0.75, 0.75]
    assert (result["mean"], result["std"]) == (0.75, 0.0)


def test_val_at_far_uses_training_negatives():
    # each fold trains on the 4 negatives of the other two; floor(0.25 * 4) = 1 false accept allowed,
    # so the threshold is the 2nd-highest training negative:
    # fold 0 trains on .55 .4 .2 .1 -> t = .4:  VAL 2/2, FAR 1/2 (.7 accepted)
    # fold 1 trains on .7 .55 .3 .1 -> t = .55: VAL 1/2 (.5 rejected), FAR 0/2
    # fold 2 trains on .7 .4 .3 .2  -> t = .4:  VAL 2/2, FAR 1/2 (.55 accepted)
    result = val_at_far(SCORES, SAME, FOLDS, far=0.25)
    assert result["val"] == pytest.approx(2.5 / 3)
    assert result["far"] == pytest.approx(1 / 3)


def test_roc_points_and_png(tmp_path: Path):
    far, val = roc_points([0.9, 0.8, 0.8, 0.1], [True, False, True, False])
    assert far.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert val.tolist() == [0.0, 0.5, 1.0, 1.0]
    roc_curve_png(tmp_path / "roc.png", *roc_points(SCORES, SAME))
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_identification_topk_by_hand():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    gallery_labels = np.array([10, 20, 30])
    probes = np.array([[2.0, 0.1], [0.1, -1.0], [-0.9, 1.0]])  # nearest (cosine): 10; 10 then 30; 20 then 30
    probe_labels = np.array([10, 30, 30])
    assert identification_topk(gallery, gallery_labels, probes, probe_labels, ks=(1, 2)) == {1: 1 / 3, 2: 1.0}
    # [3, 0.3] points almost along [1, 0] (cosine) but lies closer to [4, 1] (euclidean)
    gallery, gallery_labels = np.array([[1.0, 0.0], [4.0, 1.0]]), np.array([1, 2])
    probe, probe_label = np.array([[3.0, 0.3]]), np.array([2])
    assert identification_topk(gallery, gallery_labels, probe, probe_label, ks=(1,)) == {1: 0.0}
    euclidean = identification_topk(gallery, gallery_labels, probe, probe_label, ks=(1,), metric="euclidean")
    assert euclidean == {1: 1.0}


def test_first_image_gallery():
    gallery, probes = first_image_gallery([5, 5, 7, 5, 7, 9])
    assert gallery.tolist() == [0, 2, 5]
    assert probes.tolist() == [1, 3, 4]
