"""Load MobileNet v1 weights from our checkpoints, timm state dicts and TF-slim checkpoints (as `.npz`).

The format is recognised from the keys, not the file name, so a renamed file still loads. Every
converter turns the source into our naming and reports the source keys it could not place; one
shared check then names every missing and unexpected key at once.

BatchNorm epsilon is not part of a state dict, yet the source's value is baked into its running
variances (timm trains with 1e-5, TF-slim and we use 1e-3). Loading folds the difference into
`running_var` (`var + eps_source - eps_ours`), which gives exactly the source's normalisation and
keeps the result a plain, self-contained state dict of ours.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from backbone.fileio import atomic_write
from backbone.mobilenet import MobileNetV1

log = logging.getLogger(__name__)

TIMM_BN_EPS = 1e-5
TF_SLIM_BN_EPS = 1e-3
TF_SCOPE = "MobilenetV1/"
OUR_STEM_KEY = "layers.Conv2d_0.conv.weight"
CLASSIFIER_KEYS = ("classifier.weight", "classifier.bias")
BN_FIELDS = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}

StateDict = Mapping[str, torch.Tensor]


@dataclass
class Converted:
    """A source state dict in our naming, plus what could not be placed and the source's BN epsilon."""

    state: dict[str, torch.Tensor]
    unplaced: list[str]
    bn_eps: float | None


# -- reading files -------------------------------------------------------------------------------
def read_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a `.npz`, `.safetensors` or torch file into a flat name -> tensor dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                return {name: torch.from_numpy(arrays[name].copy()) for name in arrays.files}
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                return dict(load_file(str(path)))
            except SafetensorError as err:  # e.g. a pickle renamed .safetensors: refused, never unpickled
                raise ValueError(f"not a safetensors file ({err})") from None
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as err:
        raise ValueError(f"cannot read weights from {path}: {err}") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # Lightning checkpoint
        prefix = state.get("backbone_prefix")  # where a task module keeps its MobileNet (TaskModule)
        state = state["state_dict"]
        if isinstance(prefix, str):
            state = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state


def detect_format(state: StateDict) -> str:
    """'ours', 'timm' or 'tf_slim', judged from the key names."""
    if any(key.endswith(OUR_STEM_KEY) for key in state):
        return "ours"
    if "conv_stem.weight" in state:
        return "timm"
    if any(key.startswith(TF_SCOPE) for key in state):
        return "tf_slim"
    sample = ", ".join(list(state)[:5])
    raise ValueError(f"unrecognised weights format: expected MobileNetV1, timm or TF-slim keys; got {sample}")


# -- converters: source -> our naming ----------------------------------------------------------
def convert_ours(state: StateDict, model: MobileNetV1) -> Converted:
    """Our own state dict, possibly nested in a Lightning module (`backbone.`, `model.backbone.`)."""
    prefix = next(key[: -len(OUR_STEM_KEY)] for key in state if key.endswith(OUR_STEM_KEY))
    ours = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    return Converted(ours, unplaced=[], bn_eps=None)


_TIMM_KEY = re.compile(r"blocks\.(\d+)\.(\d+)\.(conv_dw|bn1|conv_pw|bn2)\.(\w+)")
_TIMM_PART = {
    "conv_dw": "depthwise.conv", "bn1": "depthwise.bn", "conv_pw": "pointwise.conv", "bn2": "pointwise.bn"
}


def convert_timm(state: StateDict, model: MobileNetV1) -> Converted:
    """timm `mobilenetv1_100`/`_125`: blocks are numbered by stage, ours by layer, in the same order."""
    blocks = sorted({(int(m[1]), int(m[2])) for key in state if (m := _TIMM_KEY.fullmatch(key))})
    layer_names = list(model.layers._modules)[1:]
    block_layer = dict(zip(blocks, layer_names, strict=False))  # extra blocks stay unplaced
    ours, unplaced = {}, []
    for key, value in state.items():
        if key.startswith("conv_stem."):
            ours["layers.Conv2d_0.conv." + key.split(".", 1)[1]] = value
        elif key.startswith("bn1."):
            ours["layers.Conv2d_0.bn." + key.split(".", 1)[1]] = value
        elif key in CLASSIFIER_KEYS:
            ours[key] = value
        elif (m := _TIMM_KEY.fullmatch(key)) and (int(m[1]), int(m[2])) in block_layer:
            ours[f"layers.{block_layer[int(m[1]), int(m[2])]}.{_TIMM_PART[m[3]]}.{m[4]}"] = value
        else:
            unplaced.append(key)
    return Converted(ours, unplaced, bn_eps=TIMM_BN_EPS)


_TF_LAYER_KEY = re.compile(
    r"MobilenetV1/(Conv2d_\d+)(?:_(depthwise|pointwise))?/"
    r"(weights|depthwise_weights|BatchNorm/(?:gamma|beta|moving_mean|moving_variance))"
)
_TF_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_TF_LOGITS = {"MobilenetV1/Logits/Conv2d_1c_1x1/weights": "classifier.weight",
              "MobilenetV1/Logits/Conv2d_1c_1x1/biases": "classifier.bias"}


def _from_tf_kernel(array: torch.Tensor, depthwise: bool) -> torch.Tensor:
    """HWIO (depthwise: H W C 1) -> OIHW (depthwise: C 1 H W)."""
    return array.permute(2, 3, 0, 1) if depthwise else array.permute(3, 2, 0, 1)


def convert_tf_slim(state: StateDict, model: MobileNetV1) -> Converted:
    """TF-slim variables (HWIO kernels; 1x1 conv logits over 1001 classes, class 0 = background)."""
    ours, unplaced = {}, []
    for key, value in state.items():
        value = torch.as_tensor(value, dtype=torch.float32)
        if key in _TF_LOGITS:
            if key.endswith("weights"):
                value = value.reshape(value.shape[-2:]).t()
            ours[_TF_LOGITS[key]] = value.contiguous()
            continue
        m = _TF_LAYER_KEY.fullmatch(key)
        if m is None:
            unplaced.append(key)
            continue
        layer, half, variable = m.groups()
        module = f"layers.{layer}." + (f"{half}." if half else "")
        if variable.startswith("BatchNorm/"):
            ours[module + "bn." + _TF_BN[variable.split("/")[1]]] = value
        else:
            ours[module + "conv.weight"] = _from_tf_kernel(value, depthwise=half == "depthwise").contiguous()
    if model.num_classes == 1000 and "classifier.bias" in ours and ours["classifier.bias"].shape[0] == 1001:
        ours["classifier.weight"] = ours["classifier.weight"][1:]  # drop the background class
        ours["classifier.bias"] = ours["classifier.bias"][1:]
    return Converted(ours, unplaced, bn_eps=TF_SLIM_BN_EPS)


CONVERTERS: dict[str, Callable[[StateDict, MobileNetV1], Converted]] = {
    "ours": convert_ours,
    "timm": convert_timm,
    "tf_slim": convert_tf_slim,
}


def convert_state_dict(source: StateDict, model: MobileNetV1, *, strict: bool = True) -> OrderedDict:
    """Turn a source state dict of any known format into a state dict that `model` loads exactly."""
    converted = CONVERTERS[detect_format(source)](source, model)
    target = model.state_dict()
    state = _fold_bn_eps(converted.state, model, converted.bn_eps)
    _keep_own_classifier_if_mismatched(state, target)
    for key in target:  # TF-slim keeps no batch counter
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(target[key])

    missing = [key for key in target if key not in state]
    unexpected = converted.unplaced + [key for key in state if key not in target]
    if (missing or unexpected) and strict:
        raise ValueError(
            "weights do not fit this MobileNetV1"
            f" (width_mult={model.width_mult}, conv={model.conv_kind!r}, {len(model.layers)} layers):\n"
            f"  missing keys ({len(missing)}): {', '.join(missing) or '-'}\n"
            f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected) or '-'}"
        )
    if missing or unexpected:
        log.warning("non-strict load: %d missing keys %s, %d unexpected keys %s",
                    len(missing), missing, len(unexpected), unexpected)
    wrong_shape = [
        f"{key}: file {tuple(value.shape)} vs model {tuple(target[key].shape)}"
        for key, value in state.items()
        if key in target and value.shape != target[key].shape
    ]
    if wrong_shape:
        raise ValueError("wrong shapes (another width_mult?):\n  " + "\n  ".join(wrong_shape))
    return OrderedDict((key, state.get(key, target[key]).to(target[key].dtype)) for key in target)


def _fold_bn_eps(state: dict[str, torch.Tensor], model: nn.Module, source_eps: float | None) -> dict:
    if source_eps is None:
        return state
    state = dict(state)
    for name, module in model.named_modules():
        key = f"{name}.running_var"
        if isinstance(module, nn.BatchNorm2d) and key in state and module.eps != source_eps:
            state[key] = state[key] + (source_eps - module.eps)
    return state


def _keep_own_classifier_if_mismatched(state: dict[str, torch.Tensor], target: StateDict) -> None:
    """Fine-tuning keeps the model's fresh classifier when the file's has another shape or is absent."""
    for key in CLASSIFIER_KEYS:
        theirs, own = state.get(key), target.get(key)
        if own is None and theirs is not None:
            log.info("model has no classifier: ignoring the file's %s %s", key, tuple(theirs.shape))
            del state[key]
        elif own is not None and (theirs is None or theirs.shape != own.shape):
            found = "absent" if theirs is None else f"shape {tuple(theirs.shape)}"
            log.info("keeping the model's own %s %s: the file's is %s", key, tuple(own.shape), found)
            state[key] = own


# -- public entry points -----------------------------------------------------------------------
def load_weights(model: MobileNetV1, path: str | os.PathLike, *, strict: bool = True) -> MobileNetV1:
    """Load `path` (ours, timm or TF-slim `.npz`) into `model` in place and return it."""
    try:
        state = convert_state_dict(read_state(path), model, strict=strict)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    model.load_state_dict(state)
    log.info("loaded weights from %s", path)
    return model


def save_weights(model: MobileNetV1, path: str | os.PathLike) -> None:
    """Save the plain state dict (loads back with `load_weights`); written atomically."""
    with atomic_write(path) as tmp:
        torch.save(model.state_dict(), tmp)
