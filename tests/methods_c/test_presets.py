"""Presets: the family each model falls in, and every preset's settings are valid."""

from __future__ import annotations

import pytest

from eaq.errors import EaqError
from eaq.methods import check_method_options, get_method
from eaq.methods.presets import (
    PRESETS,
    PRESETS_WIDE_ACTIVATIONS,
    WIDE_ACTIVATION_BITS,
    Preset,
    model_family,
    preset_for,
)
from eaq.models import create_model
from eaq.plan import LAYER_OPTIONS, layer_config


@pytest.mark.parametrize(
    ("model", "family"),
    [("resnet20_cifar", "cnn"), ("mobilenetv2_cifar", "depthwise"), ("deit_tiny_cifar", "vit")],
)
def test_model_family(model, family):
    assert model_family(create_model(model, weights="random")) == family


def test_every_preset_names_valid_settings_for_every_family():
    names = {o.name for o in LAYER_OPTIONS}
    assert set(PRESETS_WIDE_ACTIVATIONS) <= set(PRESETS)
    for name, presets in PRESETS.items():
        assert set(presets) == {"vit", "depthwise", "cnn"}
        wide = PRESETS_WIDE_ACTIVATIONS.get(name, {})
        assert set(wide) <= set(presets)
        for preset in [*presets.values(), *wide.values()]:
            get_method(preset.method)
            check_method_options(preset.method, preset.method_options)
            assert set(preset.layer_options) <= names
            layer_config(4, 4, **preset.layer_options)  # values a plan accepts


def test_a_family_takes_its_wide_activation_settings_from_8_bit_activations_on():
    cnn = create_model("resnet20_cifar", weights="random")
    vit = create_model("deit_tiny_cifar", weights="random")
    wide = PRESETS_WIDE_ACTIVATIONS["best"]["cnn"]
    assert wide.method != PRESETS["best"]["cnn"].method
    assert preset_for("best", cnn, WIDE_ACTIVATION_BITS) is wide
    assert preset_for("best", cnn, 16) is wide
    assert preset_for("best", cnn, WIDE_ACTIVATION_BITS - 1) is PRESETS["best"]["cnn"]
    # a family without wide-activation settings keeps its own at every width
    assert preset_for("best", vit, 8) is PRESETS["best"]["vit"]


def test_unknown_preset():
    with pytest.raises(EaqError, match="unknown preset 'x'"):
        preset_for("x", create_model("resnet20_cifar", weights="random"), 4)


def test_describe_gives_options_the_command_line_reads_back():
    import shlex

    from eaq.cli.common import parse_method_options

    preset = Preset("repq", {"then": "gptq", "then_options": {"target": "float"}}, {})
    words = shlex.split(preset.describe())
    items = [words[i + 1] for i, w in enumerate(words) if w == "--method-option"]
    assert parse_method_options("repq", items) == preset.method_options
