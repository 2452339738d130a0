"""Study configs: parsed into frozen dataclasses; mistakes name the field and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from eaq.errors import EaqError
from eaq.study import parse_study

GOOD = """\
study: t
seeds: [0, 1]
models:
  - {name: resnet20_cifar, dataset: cifar10}
configs:
  - {name: FP32, strategy: fp32}
  - {name: W4A4, strategy: uniform, w_bits: 4, granularity: tensor}
  - name: budget
    strategy: budget
    budgets: [W4A4, 0.1]
"""


def test_parse_good_and_fingerprint():
    cfg = parse_study(GOOD)
    assert cfg.seeds == (0, 1) and cfg.models[0].name == "resnet20_cifar"
    assert cfg.configs[2].options_dict == {"budgets": ["W4A4", 0.1]}
    assert cfg.configs[1].granularity == "tensor"
    assert cfg.fingerprint() == parse_study(GOOD.replace("study: t", "study: u")).fingerprint()
    assert cfg.fingerprint() != cfg.with_limit(10).fingerprint()
    with pytest.raises(AttributeError):
        cfg.seeds = (3,)


@pytest.mark.parametrize(
    "old, new, match",
    [
        ("strategy: fp32", "strategy: greedy", r"line 6: field 'configs\[0\].strategy'.*greedy"),
        ("w_bits: 4", "wbits: 4", r"line 7: field 'configs\[1\].wbits'.*unknown field"),
        ("seeds: [0, 1]", "seeds: [0, x]", r"line 2: field 'seeds'"),
        ("name: resnet20_cifar", "name: nope", r"line 4: field 'models\[0\].name'"),
        (
            "granularity: tensor",
            "granularity: diagonal",
            r"line 7: field 'configs\[1\].granularity'",
        ),
        ("study: t\n", "", r"field 'study': is required"),
        ("budgets: [W4A4, 0.1]", "budgets: [W4A4, 0.1", r"line \d+, column \d+: malformed YAML"),
        (
            "granularity: tensor}",
            "models: [resnet18]}",
            r"line 7: field 'configs\[1\].models': 'resnet18' is not a model of this study",
        ),
    ],
)
def test_errors_name_field_and_line(old, new, match):
    with pytest.raises(EaqError, match=match):
        parse_study(GOOD.replace(old, new), "s.yaml")


def test_a_config_can_name_the_models_it_runs_on():
    two = GOOD.replace("models:\n", "models:\n  - {name: resnet18, dataset: cifar100}\n")
    cfg = parse_study(two.replace("granularity: tensor}", "models: [resnet18]}"))
    assert [c.name for c in cfg.configs_for("resnet18")] == ["FP32", "W4A4", "budget"]
    assert [c.name for c in cfg.configs_for("resnet20_cifar")] == ["FP32", "budget"]
    # a study without ``models`` keeps its fingerprint
    assert "models" not in parse_study(two).to_dict()["configs"][0]


def test_repo_studies_parse():
    for path in sorted(Path(__file__).resolve().parents[2].glob("studies/*.yaml")):
        cfg = parse_study(path.read_text(), str(path))
        assert cfg.configs and cfg.models


def test_deit_vit_study_parses():
    from eaq.study import load_study

    path = Path(__file__).resolve().parents[2] / "studies" / "deit_tiny_cifar100_vit.yaml"
    cfg = load_study(path)
    assert cfg.models[0].name == "deit_tiny_cifar" and cfg.seeds == (0, 1, 2)
    entries = {c.name: c for c in cfg.configs}
    assert cfg.method_of(entries["W4A4"]) == ("ptq", {})
    assert cfg.method_of(entries["W4A4-ranking"])[0] == "ranking"
    assert entries["W4A8-log2"].base().softmax_quantizer == "log2"
    twin = entries["W4A4-twin"].base()
    assert (twin.softmax_quantizer, twin.gelu_quantizer) == ("twin", "twin")
    assert entries["W8A8"].base().softmax_quantizer == "uniform"
    assert entries["mixed-nuclear"].measure == "nuclear"
    with pytest.raises(EaqError, match=r"configs\[1\].softmax_quantizer.*valid: uniform, log2"):
        parse_study(GOOD.replace("w_bits: 4,", "w_bits: 4, softmax_quantizer: log3,"))
