"""Parameter and mult-add counts measured on the modules, against REFERENCE §1 and the paper's tables."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from backbone import mobilenet_v1
from backbone.complexity import profile, profile_mobilenet
from backbone.paper_tables import TABLE2, main_profile

# REFERENCE §1 "Exact complexity": params, and mult-adds (M) at 224/192/160/128.
EXACT = {
    1.0: (4_231_976, (568.7, 418.1, 290.7, 186.4)),
    0.75: (2_585_560, (325.4, 239.3, 166.4, 106.8)),
    0.5: (1_331_592, (149.5, 110.0, 76.5, 49.2)),
    0.25: (470_072, (41.0, 30.2, 21.1, 13.6)),
}


@pytest.mark.parametrize("width_mult", EXACT)
@pytest.mark.parametrize("column, resolution", enumerate((224, 192, 160, 128)))
def test_exact_complexity_table(width_mult, column, resolution):
    params, mult_adds = EXACT[width_mult][0], EXACT[width_mult][1][column]
    measured = profile_mobilenet(width_mult=width_mult, resolution=resolution)
    assert measured.params == params
    assert abs(measured.mult_adds / 1e6 - mult_adds) < 0.05


@pytest.mark.parametrize("width_mult, resolution, weights, mult_adds", [
    (1.0, 224, 3_185_088, 567_716_352),  # TF-slim docstring: conv weights alone
    (0.75, 128, 1_800_144, 106_002_432),
])
def test_conv_weights_alone_match_tf_slim(width_mult, resolution, weights, mult_adds):
    by_type = profile_mobilenet(width_mult=width_mult, resolution=resolution).by_type()
    convs = [totals for kind, totals in by_type.items() if kind != "fc"]
    assert sum(t["weights"] for t in convs) == weights
    assert sum(t["mult_adds"] for t in convs) == mult_adds


def test_meta_profile_equals_real_module_and_its_parameters():
    model = mobilenet_v1(width_mult=0.5)
    real = profile(model, input_size=160)
    assert real == profile_mobilenet(width_mult=0.5, resolution=160)
    assert real.params == sum(p.numel() for p in model.parameters())
    assert [row.name for row in real.rows][:3] == ["Conv2d_0", "Conv2d_1_depthwise", "Conv2d_1_pointwise"]
    assert real.rows[-1].name == "Logits" and real.rows[-1].out_shape == (1000,)
    assert real.rows[1].out_shape == (16, 80, 80) and real.rows[1].params == 16 * 9 + 2 * 16


def test_table2_shares_reproduce_the_paper():
    shares = profile_mobilenet().shares()
    for kind, (mult_add_share, param_share) in TABLE2.items():
        assert shares[kind]["params"] == pytest.approx(param_share, abs=0.006)
        if kind != "conv3x3":  # the paper prints 1.19 %, its own totals give 1.91 %
            assert shares[kind]["mult_adds"] == pytest.approx(mult_add_share, abs=0.006)
    assert shares["conv3x3"]["mult_adds"] == pytest.approx(1.91, abs=0.006)


@pytest.mark.parametrize("options, mult_adds, params", [
    (dict(conv="full"), 4866, 29.3),  # Table 4
    (dict(), 569, 4.2),
    (dict(width_mult=0.75), 325, 2.6),  # Table 5
    (dict(shallow=True), 307, 2.9),
])
def test_tables_4_and_5_within_one_percent(options, mult_adds, params):
    measured = profile_mobilenet(**options)
    assert measured.mult_adds / 1e6 == pytest.approx(mult_adds, rel=0.01)
    assert measured.params / 1e6 == pytest.approx(params, rel=0.01)


def test_module_called_twice_counts_mult_adds_twice_and_parameters_once():
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=True)
    head = nn.Linear(8, 5)
    model = nn.ModuleDict(dict(conv=conv, head=head))

    def forward(module: nn.ModuleDict, images: list[torch.Tensor]) -> list[torch.Tensor]:
        return [module["head"](module["conv"](x[None]).mean((2, 3))) for x in images]

    measured = profile(model, [torch.zeros(4, 10, 10), torch.zeros(4, 6, 6)], forward=forward)
    assert [row.kind for row in measured.rows] == ["conv3x3", "fc", "conv3x3", "fc"]
    assert measured.params == sum(p.numel() for p in model.parameters())
    assert measured.mult_adds == (100 + 36) * 8 * 4 * 9 + 2 * 8 * 5


def test_cli_json_and_table(capsys):
    assert main_profile(["--width-mult", "0.25", "--resolution", "128", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"] == 470_072 and abs(report["mult_adds"] / 1e6 - 13.6) < 0.05
    assert set(report["by_type"]) == {"conv1x1", "depthwise", "conv3x3", "fc"}
    assert report["by_type"]["fc"] == dict(params=256 * 1000 + 1000, weights=256 * 1000, mult_adds=256 * 1000)
    assert sum(t["mult_adds"] for t in report["by_type"].values()) == report["mult_adds"]

    assert main_profile(["--shallow", "--num-classes", "10"]) == 0
    table = capsys.readouterr().out
    assert "Conv2d_7_pointwise" not in table and "Conv2d_12_pointwise" in table
    assert "Logits" in table and "weights only" in table


def test_cli_paper_tables(capsys):
    assert main_profile(["--paper"]) == 0
    lines = capsys.readouterr().out.splitlines()
    conv_mobilenet = next(line for line in lines if "Conv MobileNet" in line).split()
    assert conv_mobilenet[-4:] == ["4866", "4867.3", "29.3", "29.29"]
    assert any(line.split()[:3] == ["9", "0.50", "MobileNet-160"] for line in lines)


def test_cli_rejects_bad_width(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main_profile(["--width-mult", "0"])
    assert exit_info.value.code == 2
    assert "width_mult must be > 0" in capsys.readouterr().err
