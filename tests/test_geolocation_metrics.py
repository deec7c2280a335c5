"""Geolocation metrics against references computed here: geopy's great circle and geodesic, an independent
chord formula, hand-computed shares/median/GeoScore; the smoothing loss; `evaluate`; the cost profile."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from geopy.distance import geodesic, great_circle

from tasks.cli import main
from tasks.geolocation.losses import cell_loss, haversine_targets
from tasks.geolocation.metrics import (
    EARTH_RADIUS_KM,
    country_report,
    geo_metrics,
    great_circle_km,
    great_circle_km_torch,
)
from tasks.geolocation.profile import profile_planet

RNG = np.random.default_rng(0)
A = np.stack([RNG.uniform(-89, 89, 300), RNG.uniform(-180, 180, 300)], 1)
B = np.stack([RNG.uniform(-89, 89, 300), RNG.uniform(-180, 180, 300)], 1)
NEAR = A + RNG.normal(0, 0.05, A.shape)  # a few km apart: where haversine must stay accurate


def chord_km(a, b):
    """Independent great-circle distance: the chord between unit vectors, 2R asin(|p - q| / 2)."""

    def xyz(p):
        lat, lon = np.radians(p[:, 0]), np.radians(p[:, 1])
        return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], 1)

    return 2 * EARTH_RADIUS_KM * np.arcsin(np.linalg.norm(xyz(a) - xyz(b), axis=1) / 2)


@pytest.mark.parametrize("other", [B, np.clip(NEAR, -90, 90)])
def test_great_circle_matches_geopy_and_an_independent_formula(other):
    ours = great_circle_km(A[:, 0], A[:, 1], other[:, 0], other[:, 1])
    reference = np.array(
        [great_circle(tuple(a), tuple(b), radius=EARTH_RADIUS_KM).km for a, b in zip(A, other, strict=True)]
    )
    assert np.allclose(ours, reference, rtol=1e-9, atol=1e-6)
    assert np.allclose(ours, chord_km(A, other), rtol=1e-9, atol=1e-6)
    ellipsoid = np.array([geodesic(tuple(a), tuple(b)).km for a, b in zip(A, other, strict=True)])
    relative = np.abs(ours - ellipsoid) / ellipsoid
    # sphere vs WGS-84: within 0.5 % for nearly all pairs; the worst (north-south, near the poles) 0.56 %
    assert np.mean(relative <= 0.005) > 0.95 and relative.max() < 0.006
    torch_ours = great_circle_km_torch(
        *(torch.tensor(v) for v in (A[:, 0], A[:, 1], other[:, 0], other[:, 1]))
    )
    assert np.allclose(torch_ours.numpy(), ours, rtol=1e-9)


def test_known_distances():
    assert great_circle_km(0, 0, 0, 1) == pytest.approx(EARTH_RADIUS_KM * math.pi / 180)  # 111.19 km
    assert great_circle_km(0, 0, 0, 180) == pytest.approx(EARTH_RADIUS_KM * math.pi)
    assert great_circle_km(90, 0, 90, 123) == pytest.approx(0, abs=1e-9)
    assert great_circle_km(10, 179.5, 10, -179.5) == pytest.approx(great_circle_km(10, 0, 10, 1))


def test_five_scale_shares_median_mean_and_geoscore_by_hand():
    d = [0.5, 1.0, 24.9, 25.0, 199.0, 800.0, 3000.0]
    scores = geo_metrics(d)
    assert scores["acc_1km"] == pytest.approx(1 / 7)  # strict bound: 1.0 km is not within 1 km
    assert scores["acc_25km"] == pytest.approx(3 / 7)
    assert scores["acc_200km"] == pytest.approx(5 / 7)
    assert scores["acc_750km"] == pytest.approx(5 / 7)
    assert scores["acc_2500km"] == pytest.approx(6 / 7)
    assert scores["median_km"] == 25.0 and scores["mean_km"] == pytest.approx(sum(d) / 7)
    assert scores["geoscore"] == pytest.approx(sum(5000 * math.exp(-x / 1492.7) for x in d) / 7)
    assert scores["count"] == 7
    with pytest.raises(ValueError, match="no distances"):
        geo_metrics([])


def test_country_report_by_hand():
    accuracy, rows = country_report(["FR", "FR", "DE", ""], ["FR", "BE", "DE", "US"], [5.0, 300.0, 10.0, 9.0])
    assert accuracy == pytest.approx(2 / 3)  # the photo with no country is left out
    assert [(r["country"], r["count"], r["country_acc"]) for r in rows] == [("FR", 2, 0.5), ("DE", 1, 1.0)]
    assert rows[0]["acc_25km"] == 0.5 and rows[0]["median_km"] == pytest.approx(152.5)


def test_haversine_label_smoothing_targets_and_loss_by_hand():
    cells = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    coords = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    tau = 100.0
    km = EARTH_RADIUS_KM * math.pi / 180
    expected = torch.tensor([1.0, math.exp(-km / tau), math.exp(-3 * km / tau)])
    targets = haversine_targets(coords, cells, tau)
    assert torch.allclose(targets[0].float(), expected / expected.sum(), atol=1e-6)
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    labels = torch.tensor([0, -1])
    smoothed = cell_loss(logits, labels, coords=coords.repeat(2, 1), cell_positions=cells, tau_km=tau)
    by_hand = -(targets[0].float() * torch.log_softmax(logits[0], 0)).sum()
    assert smoothed.item() == pytest.approx(by_hand.item(), rel=1e-5)  # the -1 label is left out
    plain = cell_loss(logits, labels)
    assert plain.item() == pytest.approx(torch.nn.functional.cross_entropy(logits[:1], labels[:1]).item())
    nothing = cell_loss(logits, torch.tensor([-1, -1]))
    assert nothing.item() == 0.0


def write_truth(path, rows):
    path.write_text("IMG_ID,LAT,LON\n" + "".join(f"{k},{a},{b}\n" for k, a, b in rows))


def test_evaluate_scores_any_predictions_file_as_json(tmp_path, capsys):
    truth = [("a.jpg", 48.85, 2.35), ("b.jpg", 40.71, -74.0), ("c.jpg", -33.87, 151.21)]
    write_truth(tmp_path / "truth.csv", truth)
    (tmp_path / "pred.csv").write_text(
        "id,lat,lon,extra\nb.jpg,40.71,-74.0,x\na.jpg,48.85,2.45,y\nc.jpg,51.5,-0.12,z\n"
    )
    assert (
        main(
            [
                "geolocation",
                "evaluate",
                "--truth",
                str(tmp_path / "truth.csv"),
                "--predictions",
                str(tmp_path / "pred.csv"),
                "--json",
            ]
        )
        == 0
    )
    scores = json.loads(capsys.readouterr().out)
    assert list(scores) == [
        "acc_1km",
        "acc_25km",
        "acc_200km",
        "acc_750km",
        "acc_2500km",
        "median_km",
        "mean_km",
        "geoscore",
        "count",
    ]
    d = [great_circle_km(48.85, 2.35, 48.85, 2.45), 0.0, great_circle_km(-33.87, 151.21, 51.5, -0.12)]
    assert scores["count"] == 3 and scores["acc_1km"] == pytest.approx(1 / 3)
    assert scores["acc_25km"] == pytest.approx(2 / 3) and scores["median_km"] == pytest.approx(d[0])
    assert scores["mean_km"] == pytest.approx(sum(d) / 3)


@pytest.mark.parametrize(
    "predictions,message",
    [
        ("id,lat,lon\na.jpg,48.85,2.35\n", r"no prediction for 1 id\(s\) of .*truth.csv, first 'b.jpg'"),
        ("id,lat,lon\na.jpg,1,1\nb.jpg,1,1\nz.jpg,1,1\n", r"1 id\(s\) not in .*truth.csv, first 'z.jpg'"),
        ("id,lat,lon\na.jpg,1,1\na.jpg,1,1\n", r"pred.csv:3: duplicate id 'a.jpg'"),
        ("id,lat\na.jpg,1\n", r"pred.csv:1: predictions need columns id,lat,lon; missing lon"),
        ("id,lat,lon\na.jpg,91,1\n", r"pred.csv:2: position \(91.0, 1.0\) outside"),
        ("id,lat,lon\na.jpg,north,1\n", r"pred.csv:2: lat/lon not numbers"),
    ],
)
def test_evaluate_errors_name_the_file_line_or_id(tmp_path, capsys, predictions, message):
    write_truth(tmp_path / "truth.csv", [("a.jpg", 1, 1), ("b.jpg", 2, 2)])
    (tmp_path / "pred.csv").write_text(predictions)
    with pytest.raises(SystemExit):
        main(
            [
                "geolocation",
                "evaluate",
                "--truth",
                str(tmp_path / "truth.csv"),
                "--predictions",
                str(tmp_path / "pred.csv"),
            ]
        )
    assert re.search(message, capsys.readouterr().err)


def test_profile_reproduces_the_papers_13m_parameters_and_058b_mult_adds(capsys):
    # body: 4,231,976 - 1,025,000 (ImageNet FC) = 3,206,976 params; 567,716,352 conv mult-adds (REFERENCE §1)
    result = profile_planet([9800])
    assert result.body_params == 3_206_976 and result.head_params == 9800 * 1025
    assert result.mult_adds == 567_716_352 + 9800 * 1024
    assert round(result.params / 1e6) == 13 and round(result.mult_adds / 1e9, 2) == 0.58
    assert main(["geolocation", "profile", "--cells", "9800"]) == 0
    assert "13.25" in capsys.readouterr().out
