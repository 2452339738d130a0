"""Mixed precision on a transformer: the attention matmuls are layers like any other."""

from __future__ import annotations

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer

from eaq.energy import collect_stats, plan_energy
from eaq.mixed import StrategyContext, candidate_grid, layer_sensitivity, make_plans
from eaq.nn import quantizable_layers, quantize_


def _tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=10
    ).eval()


def test_sensitivity_and_budget_plan_cover_attention_matmuls():
    model = _tiny_vit()
    calib = [(torch.randn(8, 3, 16, 16), torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    sens = layer_sensitivity(model, calib, candidate_grid([4, 8]))
    matmuls = [i for i, k in enumerate(sens.kinds) if k == "matmul"]
    assert len(matmuls) == 4  # qk and av in each of the 2 blocks
    assert np.isfinite(sens.values).all()
    assert (sens.values[matmuls, 0] > sens.values[matmuls, 1]).all()  # 4 bits hurt more

    stats = collect_stats(model, 16)
    layers = tuple(quantizable_layers(model))
    assert [r.name for r in layers] == list(sens.names)
    ctx = StrategyContext(layers=layers, stats=stats, sensitivity=sens)
    w8 = plan_energy(stats, ctx.uniform_plan(8, 8), "seed").relative_energy
    w4 = plan_energy(stats, ctx.uniform_plan(4, 4), "seed").relative_energy
    budget = (w4 + w8) / 2
    [named] = make_plans(ctx, "budget", {"budgets": [budget]})
    assert plan_energy(stats, named.plan, "seed").relative_energy <= budget + 1e-9
    resolved = named.plan.resolve(list(layers))
    widths = {ref.name: resolved[ref.name].a_bits for ref in layers}
    assert {widths[sens.names[i]] for i in matmuls} <= {4, 8}
    assert len(set(widths.values())) == 2  # a real mix between the two uniform plans

    quantize_(model, named.plan)
    for name in (sens.names[i] for i in matmuls):
        q = model.get_submodule(name)
        assert q.is_quantized and q.a_quantizer.spec.bits == widths[name]


def test_token_subsampling_estimates_the_full_sum(monkeypatch):
    import eaq.mixed.sensitivity as sensitivity

    model = _tiny_vit()  # 17 tokens: subsampled
    calib = [(torch.randn(8, 3, 16, 16), torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    monkeypatch.setattr(sensitivity, "IMAGE_STRIDE", 1)  # token rows only, all images
    sampled = layer_sensitivity(model, calib, candidate_grid([4, 8])).values
    monkeypatch.setattr(sensitivity, "TOKEN_STRIDE", 1)
    full = layer_sensitivity(model, calib, candidate_grid([4, 8])).values
    kinds = layer_sensitivity(model, calib, [(8, 8)]).kinds
    assert np.allclose(sampled, full, rtol=0.15)  # measured on deit_tiny_cifar: within 0.4%
    assert not np.allclose(sampled, full, rtol=1e-9)  # a subsample was used
    # the patch embedding (a conv) is computed whole
    conv = [i for i, k in enumerate(kinds) if k == "conv"]
    assert np.allclose(sampled[conv], full[conv], rtol=1e-5)
