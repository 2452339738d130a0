import pytest

from eaq.errors import EaqError
from eaq.plan import LayerConfig, LayerRef, Plan
from eaq.quant import PerGroup, PerTensor

LAYERS = [
    LayerRef("conv1", "conv"),
    LayerRef("layer1.conv", "conv"),
    LayerRef("layer2.conv", "conv"),
    LayerRef("fc", "linear"),
]


def test_json_round_trip_keeps_everything():
    plan = Plan(
        default=LayerConfig(w_bits=4, a_bits=6, granularity=PerGroup(8), observer="mse"),
        rules=(
            ("layer1.conv", None),
            ("re:layer2\\..*", LayerConfig(w_bits=6, a_bits=6, symmetric=False)),
        ),
        first_last_8bit=False,
    )
    assert Plan.from_json(plan.to_json()) == plan


def test_lookup_order_exact_then_regex_then_default():
    plan = Plan(
        default=LayerConfig(w_bits=4, a_bits=4),
        rules=(
            ("re:layer.*", LayerConfig(w_bits=6, a_bits=6)),
            ("layer1.conv", LayerConfig(w_bits=8, a_bits=8)),
        ),
        first_last_8bit=False,
    )
    got = plan.resolve(LAYERS)
    assert got["layer1.conv"].w_bits == 8  # exact beats an earlier regex
    assert got["layer2.conv"].w_bits == 6
    assert got["conv1"].w_bits == 4 and got["fc"].w_bits == 4


def test_first_last_policy_sets_8_bits_unless_named_exactly():
    plan = Plan.uniform(4, 4)
    got = plan.resolve(LAYERS)
    assert (got["conv1"].w_bits, got["conv1"].a_bits) == (8, 8)
    assert (got["fc"].w_bits, got["fc"].a_bits) == (8, 8)
    assert got["layer1.conv"].w_bits == 4
    named = Plan(
        default=LayerConfig(w_bits=4, a_bits=4), rules=(("fc", LayerConfig(w_bits=2, a_bits=2)),)
    )
    assert named.resolve(LAYERS)["fc"].w_bits == 2
    assert Plan.uniform(4, 4, first_last_8bit=False).resolve(LAYERS)["conv1"].w_bits == 4


def test_policy_ignores_matmuls_and_keeps_float_layers_float():
    layers = [LayerRef("a.qk_matmul", "matmul"), *LAYERS, LayerRef("z.av_matmul", "matmul")]
    plan = Plan(default=LayerConfig(w_bits=4, a_bits=4), rules=(("conv1", None),))
    got = plan.resolve(layers)
    assert got["conv1"] is None
    assert got["a.qk_matmul"].a_bits == 4 and got["z.av_matmul"].a_bits == 4
    assert got["fc"].w_bits == 8


def test_plan_naming_a_missing_layer_is_an_error():
    plan = Plan(rules=(("layer9.conv", None),))
    with pytest.raises(EaqError, match="layer9.conv"):
        plan.resolve(LAYERS)


@pytest.mark.parametrize("bits", [1, 17, 0])
def test_bits_out_of_range(bits):
    with pytest.raises(EaqError, match=str(bits)):
        Plan.uniform(bits, 8)


def test_bad_plan_json_and_fields():
    with pytest.raises(EaqError, match="JSON"):
        Plan.from_json("{not json")
    with pytest.raises(EaqError, match="wbits"):
        Plan.from_dict({"default": {"wbits": 4}})
    with pytest.raises(EaqError, match="regular expression"):
        Plan(rules=(("re:(", None),))


def test_activation_spec_is_per_tensor_with_automatic_sign():
    spec = LayerConfig(w_bits=4, a_bits=6).act_spec()
    assert spec.granularity == PerTensor() and spec.signed is None and spec.bits == 6
    assert LayerConfig(w_bits=None, a_bits=None).weight_spec() is None
