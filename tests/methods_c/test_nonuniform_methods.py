"""Existing methods with the non-uniform (log2, twin) activation quantizers of a ViT plan."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from eaq.methods import quantize_model_
from eaq.plan import Plan
from eaq.quant import Log2Quantizer, NonUniformQuantizer, TwinUniformQuantizer

PLAN = Plan.uniform(4, 4, softmax_quantizer="log2", gelu_quantizer="twin")


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(method, options):
    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=10
    ).eval()
    calib = [(torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)), None)]
    quantize_model_(model, PLAN, calib, method, options)
    with torch.no_grad():
        assert torch.isfinite(model(calib[0][0])).all()
    return {
        name: (type(m), m.scale.clone(), m.quant_min.clone())
        for name, m in model.named_modules()
        if isinstance(m, NonUniformQuantizer)
    }


@pytest.mark.parametrize(
    "method,options", [("brecq", {"iters": 2}), ("qdrop", {"iters": 2}), ("gptq", {})]
)
def test_methods_keep_the_calibrated_non_uniform_quantizers(method, options):
    ptq = _run("ptq", {})
    kinds = [kind for kind, _, _ in ptq.values()]
    assert kinds.count(Log2Quantizer) == 2 and kinds.count(TwinUniformQuantizer) == 2
    # reconstruction learns uniform step sizes only: log2/twin keep their PTQ parameters
    got = _run(method, options)
    assert got.keys() == ptq.keys()
    for name, (kind, scale, qmin) in got.items():
        assert kind is ptq[name][0]
        assert torch.equal(scale, ptq[name][1]) and torch.equal(qmin, ptq[name][2])
