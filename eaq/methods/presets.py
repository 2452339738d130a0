"""Presets: one name for eaq's best measured recipe, chosen by the model's structure.

A preset fixes what a user would otherwise have to know from the literature: the PTQ method,
its options and the quantizer settings of the plan (observers, the attention-probability and
post-GELU quantizers). The widths stay the user's. ``eaq quantize --preset best`` prints the
settings it chose, and the result records them like any other settings.

At 8-bit activations and wider, a family may have other settings
(:data:`PRESETS_WIDE_ACTIVATIONS`): where the activations' rounding costs little, a one-shot
weight rounding can be as accurate as a reconstruction that also learns the activations' effect.

Families (:func:`model_family`):

``vit``
    the model has LayerNorm -> Linear pairs (timm ViT blocks);
``depthwise``
    a CNN with depthwise convolutions (MobileNet, EfficientNet);
``cnn``
    any other model.

What each preset was measured to give is in ``docs/methods.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml
from torch import nn

from eaq.errors import EaqError, choices_hint

__all__ = [
    "PRESETS",
    "PRESETS_WIDE_ACTIVATIONS",
    "WIDE_ACTIVATION_BITS",
    "Preset",
    "model_family",
    "preset_for",
]


@dataclass(frozen=True)
class Preset:
    """The settings of one preset for one model family.

    Attributes:
        method: the PTQ method.
        method_options: its options.
        layer_options: quantizer settings of the plan (:data:`eaq.plan.LAYER_OPTIONS` names).
    """

    method: str
    method_options: dict = field(default_factory=dict)
    layer_options: dict = field(default_factory=dict)

    def describe(self) -> str:
        """The settings as the command-line options that would give them."""
        parts = [f"--{k.replace('_', '-')} {v}" for k, v in self.layer_options.items()]
        parts.append(f"--method {self.method}")
        for k, v in self.method_options.items():
            if isinstance(v, dict):  # a YAML flow mapping, quoted for the shell
                flow = yaml.safe_dump(v, default_flow_style=True, sort_keys=False).strip()
                parts.append(f'--method-option "{k}={flow}"')
            else:
                parts.append(f"--method-option {k}={v}")
        return " ".join(parts)


_MSE = {"observer": "mse", "w_observer": "mse"}

PRESETS: dict[str, dict[str, Preset]] = {
    "best": {
        # RepQ-ViT's LayerNorm reparameterization, then QDrop; MSE ranges, log2 attention
        # probabilities and twin-uniform post-GELU inputs (docs/methods.md: the measured rows)
        "vit": Preset(
            "repq",
            {"then": "qdrop"},
            {**_MSE, "softmax_quantizer": "log2", "gelu_quantizer": "twin"},
        ),
        # cross-layer equalization first (depthwise layers' channel ranges), then QDrop
        "depthwise": Preset("cle", {"then": "qdrop"}, dict(_MSE)),
        # QDrop, its optimisation steps in bfloat16 (AMX): faster steps, the accuracy of
        # float32 ones (resnet18_cifar W4A4 in docs/methods.md)
        "cnn": Preset("qdrop", {"iters": 500, "precision": "bf16"}, dict(_MSE)),
    },
}


WIDE_ACTIVATION_BITS = 8

# The settings that replace PRESETS' at activation widths of WIDE_ACTIVATION_BITS and more.
PRESETS_WIDE_ACTIVATIONS: dict[str, dict[str, Preset]] = {
    "best": {
        # GPTQ, then bias correction: at W4A8 as accurate as QDrop on resnet20_cifar,
        # resnet18_cifar and resnet18, in a fraction of its calibration time (docs/methods.md)
        "cnn": Preset("gptq", {"bias_correction": True}, dict(_MSE)),
    },
}


def model_family(model: nn.Module) -> str:
    """``vit``, ``depthwise`` or ``cnn`` (see the module docstring)."""
    from eaq.methods.smoothquant import find_norm_linear_pairs

    if find_norm_linear_pairs(model):
        return "vit"
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels:
            return "depthwise"
    return "cnn"


def preset_for(name: str, model: nn.Module, a_bits: int) -> Preset:
    """The settings of preset ``name`` for ``model``'s family at activation width ``a_bits``."""
    if name not in PRESETS:
        raise EaqError(f"unknown preset {name!r}; {choices_hint(list(PRESETS))}")
    family = model_family(model)
    if a_bits >= WIDE_ACTIVATION_BITS:
        wide = PRESETS_WIDE_ACTIVATIONS.get(name, {}).get(family)
        if wide is not None:
            return wide
    return PRESETS[name][family]
