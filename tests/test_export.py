"""ONNX export: onnxruntime must reproduce the PyTorch outputs."""

from __future__ import annotations

import onnx
import pytest
import torch

from backbone import mobilenet_v1
from backbone.export import (
    cpu_flags,
    export_onnx,
    fuse_for_inference,
    main_export,
    needs_reduced_range,
    onnx_session,
    run_onnx,
)
from backbone.weights import save_weights


def calibrated(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """Give BN real statistics (a fresh BN is the identity and the logits would be ~0)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for seed in range(2):
            model(torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


def test_onnx_matches_pytorch_with_dynamic_batch(tmp_path):
    model = calibrated(mobilenet_v1(width_mult=0.25), 96)
    path = export_onnx(model, tmp_path / "model.onnx", resolution=96)
    onnx.checker.check_model(str(path))
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary left behind

    x = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(5))  # exported at batch 1
    with torch.inference_mode():
        expected = model(x)
    assert expected.abs().max() > 0.1
    got = torch.from_numpy(run_onnx(onnx_session(path), x.numpy()))
    assert got.shape == (3, 1000)
    assert (got - expected).abs().max().item() <= 1e-4


def test_cli_exports_given_weights_with_tf_padding(tmp_path, capsys):
    source = calibrated(mobilenet_v1(width_mult=0.25, num_classes=0, tf_padding=True), 97)
    weights = tmp_path / "backbone.pth"
    save_weights(source, weights)
    out = tmp_path / "features.onnx"
    assert main_export(["--format", "onnx", "--out", str(out), "--width-mult", "0.25", "--resolution", "98",
                        "--num-classes", "0", "--tf-padding", "--weights", str(weights)]) == 0
    assert str(out) in capsys.readouterr().out

    session = onnx_session(out)
    assert [o.name for o in session.get_outputs()] == ["features"]
    x = torch.randn(2, 3, 98, 98, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        expected = source(x)
    assert (torch.from_numpy(run_onnx(session, x.numpy())) - expected).abs().max().item() <= 1e-4


def test_cli_rejects_tiny_resolution(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main_export(["--out", str(tmp_path / "m.onnx"), "--resolution", "16"])
    assert "--resolution must be in [32, 2048], got 16" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_fused_batchnorm_gives_the_same_outputs():
    model = calibrated(mobilenet_v1(width_mult=0.25, tf_padding=True), 65)
    fused = fuse_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert all(m.bias is not None for m in fused.modules() if isinstance(m, torch.nn.Conv2d))
    x = torch.randn(2, 3, 65, 65, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)
        name = ["Conv2d_7_depthwise"]
        torch.testing.assert_close(fused.features(x, name), model.features(x, name), atol=1e-4, rtol=1e-4)


def test_cli_int8_backbone_is_quantized_per_channel(tmp_path, capsys):
    from PIL import Image

    from backbone.export import read_metadata

    source = calibrated(mobilenet_v1(width_mult=0.25, num_classes=10), 64)
    weights = tmp_path / "backbone.pth"
    save_weights(source, weights)
    folder = tmp_path / "calibration"
    folder.mkdir()
    for i in range(8):
        pixels = torch.randint(0, 256, (50, 70, 3), generator=torch.Generator().manual_seed(i)).byte()
        Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    out = tmp_path / "int8.onnx"
    args = ["--out", str(out), "--width-mult", "0.25", "--resolution", "64", "--num-classes", "10",
            "--weights", str(weights), "--int8", "--calibration", str(folder)]  # fmt: skip
    assert main_export(args) == 0
    assert "int8" in capsys.readouterr().out
    graph = onnx.load(str(out)).graph
    assert sum(node.op_type == "QuantizeLinear" for node in graph.node) > 10
    # per-channel: every int8 conv weight has one scale per output channel
    tensors = {init.name: init for init in graph.initializer}
    conv_weights = [
        (tensors[n.input[0]], tensors[n.input[1]]) for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in tensors and len(tensors[n.input[0]].dims) == 4
    ]  # fmt: skip
    assert len(conv_weights) == 27  # the stem and 13 depthwise + 13 pointwise convs
    assert all(list(scale.dims) == [weight.dims[0]] for weight, scale in conv_weights)
    assert read_metadata(out)["int8"] == {
        "per_channel": True, "calibration_images": 8, "format": "QDQ", "activations": "U8",
        "weights": "S7" if needs_reduced_range() else "S8", "method": "MinMax",
    }  # fmt: skip
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(9)) * 2 - 1
    with torch.inference_mode():
        expected = source(x)
    got = torch.from_numpy(run_onnx(onnx_session(out), x.numpy()))
    # A random network says nothing about int8 accuracy (tests/test_deploy.py measures a trained
    # one); here the int8 graph must only compute the same function, roughly.
    assert got.shape == expected.shape and torch.isfinite(got).all()
    assert torch.corrcoef(torch.stack([got.flatten(), expected.flatten()]))[0, 1] > 0.5


def test_cli_int8_needs_calibration_and_rejects_it_without_int8(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main_export(["--out", str(tmp_path / "m.onnx"), "--int8"])
    assert "--int8 needs calibration images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main_export(["--out", str(tmp_path / "m.onnx"), "--calibration-synthetic", "4"])
    assert "only apply with --int8" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_weights_keep_to_7_bits_only_on_an_x86_cpu_without_vnni(tmp_path):
    assert needs_reduced_range({"sse4_2", "avx2", "fma"})  # U8S8 pair sums saturate in 16 bits
    assert not needs_reduced_range({"avx2", "avx512f", "avx512_vnni"})
    assert not needs_reduced_range({"avx2", "avx_vnni"})
    assert not needs_reduced_range(set())  # not x86 (an ARM CPU's flags hold no avx2)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2"}
    assert cpu_flags(tmp_path / "missing") is None
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")  # ARM Linux
    assert cpu_flags(cpuinfo) is None
