"""Bad input that used to be accepted silently is a clear error, before any work."""

import pytest
import torch
from torch import nn

from eaq.cli.main import main
from eaq.errors import EaqError
from eaq.evaluate import evaluate
from eaq.methods import check_method_options, quantize_model_
from eaq.models import create_model
from eaq.nn import quantizable_layers
from eaq.plan import LayerConfig, Plan


def test_a_pattern_rule_that_matches_no_layer():
    layers = quantizable_layers(create_model("resnet20_cifar"))
    plan = Plan(rules=(("re:layer9\\..*", LayerConfig(w_bits=4)),))
    with pytest.raises(EaqError, match=r"'re:layer9\\\\\.\.\*' match no layer"):
        plan.resolve(layers)
    Plan(rules=(("re:layer1\\..*", LayerConfig(w_bits=4)),)).resolve(layers)


def test_evaluating_nothing_is_an_error_not_nan():
    with pytest.raises(EaqError, match="no images"):
        evaluate(nn.Linear(2, 2), [], progress=False)


@pytest.mark.parametrize(
    "method,options,message",
    [
        ("gptq", {"block_columns": 0}, "block_columns must be >= 1"),
        ("gptq", {"percdamp": 0.0}, "percdamp must be > 0"),
        ("gptq", {"target": "fp32"}, "target must be one of quantized, float, got 'fp32'"),
        ("gptq", {"target": "float", "sequential": False}, "target=float needs sequential"),
        ("adaround", {"iters": 0}, "iters and batch_size must be >= 1"),
        ("qdrop", {"drop_prob": 1.5}, "drop_prob must be in"),
        ("ranking", {"rounds": 0}, "must be >= 1"),
        ("smoothquant", {"alpha": 2.0}, "alpha must be in"),
    ],
)
def test_method_option_values_are_checked_up_front(method, options, message):
    with pytest.raises(EaqError, match=message):
        check_method_options(method, options)


def test_bad_option_fails_before_the_fp32_evaluation(capsys, monkeypatch):
    import eaq.cli.quantize_cmd as cmd

    def boom(*args, **kwargs):
        raise AssertionError("evaluated before validating")

    monkeypatch.setattr(cmd, "evaluate", boom)
    code = main(
        ["quantize", "--model", "resnet20_cifar", "--method", "gptq",
         "--method-option", "block_columns=0", "--limit", "8"]
    )  # fmt: skip
    assert code == 2 and "block_columns must be >= 1" in capsys.readouterr().err


def test_smoothquant_on_a_cnn_is_an_error_not_plain_ptq():
    model = create_model("resnet20_cifar")
    calib = [(torch.randn(4, 3, 32, 32), None)]
    with pytest.raises(EaqError, match="smoothquant needs LayerNorm -> Linear pairs"):
        quantize_model_(model, Plan.uniform(8, 8), calib, "smoothquant")
