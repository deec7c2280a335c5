"""Parameters and mult-adds measured on a real module, per layer and per layer type (paper Table 2).

Counts come from forward hooks on the convolutions and linear layers while the module runs on an
input of the chosen size, so a model that changes (dilation, shallow, full convs, a detector) is
counted as it really is. A BatchNorm's γ/β are charged to the conv that feeds it. Running on the
`meta` device gives the same counts without computing anything.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

# The order of Table 2; other kinds (a detector's 5x5 or grouped convs) follow.
TABLE2_KINDS = ("conv1x1", "depthwise", "conv3x3", "fc")


@dataclass
class LayerRow:
    name: str
    kind: str
    out_shape: tuple[int, ...]
    params: int  # weights + bias + the following BN's γ/β
    weights: int  # the conv/FC weight tensor alone: the paper's basis for parameter shares
    mult_adds: int


@dataclass
class Profile:
    input_shape: tuple[int, ...]
    rows: list[LayerRow] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(row.params for row in self.rows)

    @property
    def weights(self) -> int:
        return sum(row.weights for row in self.rows)

    @property
    def mult_adds(self) -> int:
        return sum(row.mult_adds for row in self.rows)

    def by_type(self) -> dict[str, dict[str, int]]:
        kinds = [*TABLE2_KINDS, *sorted({row.kind for row in self.rows} - set(TABLE2_KINDS))]
        totals = OrderedDict((kind, dict(params=0, weights=0, mult_adds=0)) for kind in kinds)
        for row in self.rows:
            for key in ("params", "weights", "mult_adds"):
                totals[row.kind][key] += getattr(row, key)
        return dict(totals)

    def shares(self) -> dict[str, dict[str, float]]:
        """Table 2: mult-add share, and parameter share on the paper's basis (weights only)."""
        return {
            kind: dict(
                mult_adds=100 * totals["mult_adds"] / self.mult_adds,
                params=100 * totals["weights"] / self.weights,
            )
            for kind, totals in self.by_type().items()
        }

    def to_dict(self) -> dict[str, Any]:
        return dict(
            input_shape=list(self.input_shape),
            params=self.params,
            weights=self.weights,
            mult_adds=self.mult_adds,
            by_type=self.by_type(),
            layers=[asdict(row) for row in self.rows],
        )

    def table(self) -> str:
        rows = [
            (r.name, r.kind, "x".join(map(str, r.out_shape)), f"{r.params:,}", f"{r.mult_adds / 1e6:.2f}")
            for r in self.rows
        ]
        rows.append(("total", "", "", f"{self.params:,}", f"{self.mult_adds / 1e6:.2f}"))
        layers = format_table(("layer", "type", "output", "params", "M mult-adds"), rows)
        shares = self.shares()
        type_rows = [
            (kind, f"{t['mult_adds'] / 1e6:.2f}", f"{shares[kind]['mult_adds']:.2f}%",
             f"{t['weights']:,}", f"{shares[kind]['params']:.2f}%")
            for kind, t in self.by_type().items()
        ]
        by_type = format_table(("type", "M mult-adds", "share", "weights", "share"), type_rows)
        note = ("Shares per type (Table 2): parameter shares count conv/FC weights only, as the paper does;\n"
                "the totals above also count BatchNorm γ/β and the FC bias.")
        return f"input {'x'.join(map(str, self.input_shape))}\n{layers}\n\n{note}\n{by_type}"


def layer_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "fc"
    kh, kw = module.kernel_size
    if module.groups == 1:
        return f"conv{kh}x{kw}"
    return "depthwise" if module.groups == module.in_channels else "grouped"


def tf_style_name(path: str) -> str:
    """`layers.Conv2d_3.depthwise.conv` -> `Conv2d_3_depthwise`; `classifier` -> `Logits`."""
    name = re.sub(r"(^|\.)layers\.", r"\1", path)
    name = re.sub(r"\.conv$", "", name)
    name = name.replace(".depthwise", "_depthwise").replace(".pointwise", "_pointwise")
    return "Logits" if name == "classifier" else name


def profile(
    model: nn.Module,
    inputs: Any = None,
    *,
    input_size: int | tuple[int, int] = 224,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    name_fn: Callable[[str], str] = tf_style_name,
) -> Profile:
    """Count `model` while `forward(model, inputs)` runs (default: `model(inputs)`).

    Without `inputs`, one 3-channel image of `input_size` on the model's device is used. Mult-adds
    are for the whole call (pass one image for per-image figures); a module called twice counts
    twice, its parameters once.
    """
    if inputs is None:
        height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
        device = next(model.parameters()).device
        inputs = torch.zeros(1, 3, height, width, device=device)
    forward = forward or (lambda module, x: module(x))
    input_shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else ()
    result = Profile(input_shape=input_shape)
    seen: set[int] = set()  # modules whose parameters are already counted

    def on_layer(path: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if isinstance(module, nn.Linear):
                fan_in = module.in_features
            else:
                fan_in = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            first_call = id(module) not in seen
            seen.add(id(module))
            result.rows.append(LayerRow(
                name=name_fn(path),
                kind=layer_kind(module),
                out_shape=tuple(output.shape[1:]),
                params=sum(p.numel() for p in module.parameters(recurse=False)) if first_call else 0,
                weights=module.weight.numel() if first_call else 0,
                mult_adds=output.numel() * fan_in,
            ))

        return hook

    def on_batchnorm(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if id(module) not in seen and result.rows:  # charged to the conv that just ran
            seen.add(id(module))
            result.rows[-1].params += sum(p.numel() for p in module.parameters(recurse=False))

    handles = []
    for path, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(on_layer(path)))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_hook(on_batchnorm))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            forward(model, inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return result


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, left: int = 1) -> str:
    """A plain-text table: the first `left` columns left-aligned, the rest right-aligned."""
    cells = [list(map(str, headers))] + [list(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        cells = zip(row, widths, strict=True)
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(cells))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *map(line, cells[1:])])


def profile_mobilenet(*, resolution: int = 224, **options: Any) -> Profile:
    """Profile a MobileNetV1 built on the meta device: exact counts, no arithmetic, no memory."""
    from backbone.mobilenet import MobileNetV1

    with torch.device("meta"):
        model = MobileNetV1(**options)
    return profile(model, input_size=resolution)


