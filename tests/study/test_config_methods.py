"""Per-config PTQ methods and their options in study files."""

from __future__ import annotations

import pytest

from eaq.errors import EaqError
from eaq.study import parse_study

STUDY = """\
study: methods
method: ptq
method_options: {}
models: [{name: resnet20_cifar, dataset: cifar10}]
configs:
  - {name: W4A4, strategy: uniform, w_bits: 4}
  - {name: W4A4-ada, strategy: uniform, w_bits: 4, method: adaround, method_options: {iters: 50}}
  - {name: W4A4-brecq, strategy: uniform, w_bits: 4, method: brecq}
"""


def test_method_per_config_falls_back_to_the_study_method():
    cfg = parse_study(STUDY)
    plain, ada, brecq = cfg.configs
    assert cfg.method_of(plain) == ("ptq", {})
    assert cfg.method_of(ada) == ("adaround", {"iters": 50})
    assert cfg.method_of(brecq) == ("brecq", {})
    assert "method" not in ada.options_dict and "method_options" not in ada.options_dict
    changed = parse_study(STUDY.replace("iters: 50", "iters: 60"))
    assert changed.fingerprint() != cfg.fingerprint()


@pytest.mark.parametrize(
    "old, new, match",
    [
        ("method: adaround", "method: magic", r"line 7: field 'configs\[1\].method'.*magic"),
        (
            "iters: 50",
            "iter: 50",
            r"line 7: field 'configs\[1\].method_options'.*no option\(s\) iter; valid: iters",
        ),
        ("iters: 50", "iters: many", r"line 7: .*'iters' must be like its default 1000"),
        ("method_options: {}", "method_options: {alpha: 1}", r"line 3: .*'ptq' has no option"),
        ("method_options: {}", "method_options: [1]", r"line 3: .*must be a mapping"),
    ],
)
def test_bad_method_fields_name_the_field_and_line(old, new, match):
    with pytest.raises(EaqError, match=match):
        parse_study(STUDY.replace(old, new))
