import pytest
import torch
from torch import nn

from eaq.errors import EaqError
from eaq.models import create_model
from eaq.nn import open_outputs, quantize_
from eaq.plan import Plan


def test_resnet_residual_branches_and_stem_are_open():
    names = open_outputs(create_model("resnet18_cifar"))
    assert "layer1.0.conv2" in names and "layer2.0.downsample.0" in names
    assert "conv1" in names  # feeds layer1.0's identity path as well as its conv
    assert "layer1.0.conv1" not in names  # -> bn1 -> relu -> conv2's input quantizer
    assert "fc" not in names  # the logits


def test_a_plain_chain_has_no_open_output():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    assert open_outputs(model) == []
    pooled = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    assert open_outputs(pooled) == ["0"]


def test_plan_quantize_outputs_adds_calibrated_output_quantizers():
    model = create_model("resnet20_cifar")
    quantize_(model, Plan.uniform(8, 8, quantize_outputs=True))
    with_q = [n for n, m in model.named_modules() if getattr(m, "output_quantizer", None)]
    assert with_q == open_outputs(create_model("resnet20_cifar"))
    assert Plan.from_json(Plan.uniform(8, 8, quantize_outputs=True).to_json()).quantize_outputs


def test_untraceable_model_is_a_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(EaqError, match="torch.fx can trace"):
        open_outputs(Branchy())
    torch.manual_seed(0)


@pytest.mark.parametrize("field", ["first_last_8bit", "quantize_outputs"])
def test_plan_booleans_must_be_booleans(field):
    with pytest.raises(EaqError, match=f"plan {field} must be true or false"):
        Plan.from_dict({"default": None, field: "false"})
