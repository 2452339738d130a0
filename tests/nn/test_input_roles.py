"""Input roles: post-softmax and post-GELU inputs get the config's non-uniform quantizers."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from eaq.cli.main import build_parser, main
from eaq.errors import EaqError
from eaq.nn import QuantLinear, QuantMatMul, calibrate_, input_roles, quantize_
from eaq.plan import LayerConfig, Plan
from eaq.quant import Log2Quantizer, NonUniformQuantizer, Quantizer, TwinUniformQuantizer


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=10
    ).eval()


def _calib():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, 16, 16, generator=g), None) for _ in range(2)]


def _quantized(plan: Plan) -> nn.Module:
    model = _vit()
    quantize_(model, plan)
    calibrate_(model, _calib())
    return model


def _quantizers(model, cls) -> set[str]:
    return {name for name, m in model.named_modules() if type(m) is cls}


def test_layer_config_validates_and_round_trips():
    cfg = LayerConfig(4, 4, softmax_quantizer="log2", gelu_quantizer="twin")
    assert LayerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    plan = Plan(default=cfg, rules=(("re:.*fc2", LayerConfig(8, 8)),))
    assert Plan.from_json(plan.to_json()) == plan
    old = {k: v for k, v in LayerConfig().to_dict().items() if not k.endswith("_quantizer")}
    assert LayerConfig.from_dict(old) == LayerConfig()  # plans written before still load
    with pytest.raises(EaqError, match=r"softmax_quantizer 'log'; valid: uniform, log2, twin"):
        LayerConfig(softmax_quantizer="log")
    with pytest.raises(EaqError, match=r"gelu_quantizer 'log2'; valid: uniform, twin"):
        LayerConfig(gelu_quantizer="log2")
    assert cfg.act_quantizer(None) == "uniform"
    assert cfg.act_quantizer("softmax") == "log2" and cfg.act_quantizer("gelu") == "twin"


def test_roles_of_a_vit():
    model = _vit()
    assert input_roles(model) == {"blocks.0.mlp.fc2": "gelu", "blocks.1.mlp.fc2": "gelu"}
    model.blocks[1].mlp.act = nn.ReLU()
    assert input_roles(model) == {"blocks.0.mlp.fc2": "gelu"}


def test_softmax_log2_only_on_av_matmul_first_input():
    model = _quantized(Plan.uniform(4, 4, softmax_quantizer="log2"))
    assert _quantizers(model, Log2Quantizer) == {
        f"blocks.{i}.attn.av_matmul.a_quantizer" for i in range(2)
    }
    assert not any(isinstance(m, TwinUniformQuantizer) for m in model.modules())


def test_gelu_twin_only_on_fc2_input():
    model = _quantized(Plan.uniform(4, 4, gelu_quantizer="twin"))
    assert _quantizers(model, TwinUniformQuantizer) == {
        f"blocks.{i}.mlp.fc2.input_quantizer" for i in range(2)
    }
    assert model.blocks[0].mlp.fc2.input_quantizer.signed  # GELU output has negatives
    assert not any(isinstance(m, Log2Quantizer) for m in model.modules())
    assert "input_role=gelu" in repr(model.blocks[0].mlp.fc2)


def test_defaults_are_bit_identical_and_non_uniform_changes_the_output():
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    uniform = _quantized(Plan.uniform(4, 4))
    assert not any(isinstance(m, NonUniformQuantizer) for m in uniform.modules())
    # the default config is the pre-existing one: same quantizers, bit-identical output
    explicit = _quantized(Plan.uniform(4, 4, softmax_quantizer="uniform", gelu_quantizer="uniform"))
    with torch.no_grad():
        ref = uniform(x)
        assert torch.equal(explicit(x), ref)
        for kw in ({"softmax_quantizer": "log2"}, {"softmax_quantizer": "twin"}):
            out = _quantized(Plan.uniform(4, 4, gelu_quantizer="twin", **kw))(x)
            assert torch.isfinite(out).all() and not torch.equal(out, ref)


def test_rules_pick_the_quantizer_per_layer_and_state_dict_round_trips():
    plan = Plan(
        default=LayerConfig(6, 6),
        rules=(("blocks.1.attn.av_matmul", LayerConfig(6, 6, softmax_quantizer="twin")),),
    )
    model = _quantized(plan)
    assert _quantizers(model, TwinUniformQuantizer) == {"blocks.1.attn.av_matmul.a_quantizer"}
    fresh = _vit()
    quantize_(fresh, plan)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_layers_without_a_role_stay_uniform():
    mm = QuantMatMul(LayerConfig(4, 4, softmax_quantizer="log2"))
    assert type(mm.a_quantizer) is Quantizer and type(mm.b_quantizer) is Quantizer
    lin = QuantLinear.from_float(nn.Linear(4, 4), LayerConfig(4, 4, gelu_quantizer="twin"))
    assert type(lin.input_quantizer) is Quantizer


def test_quantize_cli_flags(capsys):
    parser = build_parser()
    base = ["quantize", "--model", "deit_tiny_cifar"]
    args = parser.parse_args([*base, "--softmax-quantizer", "log2", "--gelu-quantizer", "twin"])
    assert (args.softmax_quantizer, args.gelu_quantizer) == ("log2", "twin")
    args = parser.parse_args(base)
    assert (args.softmax_quantizer, args.gelu_quantizer) == ("uniform", "uniform")
    assert main([*base, "--gelu-quantizer", "log2"]) == 2  # before any model is loaded
    err = capsys.readouterr().err
    assert "unknown gelu_quantizer 'log2'; valid: uniform, twin" in err and err.count("\n") == 1


def test_copy_keeps_roles():
    model = _quantized(Plan.uniform(4, 4, softmax_quantizer="log2", gelu_quantizer="twin"))
    clone = copy.deepcopy(model)
    assert _quantizers(clone, Log2Quantizer) == _quantizers(model, Log2Quantizer)
