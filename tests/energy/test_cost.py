"""Energy, BOPs and profiles: the seed's Table 1, hand-computed figures, the fast coster."""

import pytest
import torchvision

from eaq.energy import (
    CostProfile,
    collect_stats,
    energy,
    get_profile,
    layer_widths,
    plan_energy,
    profile_names,
    register_profile,
)
from eaq.errors import EaqError
from eaq.plan import LayerConfig, Plan


@pytest.fixture(scope="module")
def resnet18_seed():
    """The seed's setup: torchvision ResNet-18, ImageNet stem, 100 classes, 32x32 inputs."""
    return collect_stats(torchvision.models.resnet18(num_classes=100), 32)


@pytest.mark.parametrize("bits,expected", [(8, 0.238), (6, 0.178), (4, 0.118)])
def test_seed_table1(resnet18_seed, bits, expected):
    report = plan_energy(resnet18_seed, Plan.uniform(bits, bits, first_last_8bit=False), "seed")
    assert report.relative_energy == pytest.approx(expected, abs=0.002)


@pytest.mark.parametrize("rule", ["bw_ba", "max", "seed"])
def test_uniform_widths_every_rule_gives_the_seed_numbers(resnet18_seed, rule):
    plan = Plan.uniform(6, 6, first_last_8bit=False)
    ref = plan_energy(resnet18_seed, plan, "seed", "seed")
    assert plan_energy(resnet18_seed, plan, "seed", rule).energy == pytest.approx(ref.energy)


def test_seed_formula_by_hand(resnet18_seed):
    # The seed: E = N_MAC (b/8)^2 + (params + in + out) * 200 * (b/8), FP32 as b = 32.
    layer = resnet18_seed.layer("layer1.0.conv1")
    r = plan_energy(resnet18_seed, Plan.uniform(4, 4, first_last_8bit=False), "seed")
    row = next(x for x in r.layers if x.name == "layer1.0.conv1")
    assert row.energy == pytest.approx(layer.macs * 0.25 + layer.mem_elems * 100)
    assert row.energy_fp32 == pytest.approx(layer.macs * 16 + layer.mem_elems * 800)


def test_conv_energy_in_pj_by_hand(resnet18_seed):
    # layer1.0.conv1 of ResNet-18 at 32x32 (after the stride-2 stem and max pool: 8x8x64):
    #   MACs 64*8*8 outputs x 64*3*3 = 2,359,296; weights 64*64*9 = 36,864; in = out = 4,096.
    # horowitz45nm, W8A8, rule max: MAC = 0.2 * 8*8/64 + 0.03 * (8+8)/8 = 0.26 pJ
    #   -> 2,359,296 * 0.26 = 613,416.96 pJ
    # weights from DRAM: 36,864 * 8 bit * 1300/64 pJ/bit = 5,990,400 pJ
    # activations in SRAM: (4,096 + 4,096) * 8 bit * 20/64 pJ/bit = 20,480 pJ
    # total 6,624,296.96 pJ
    layer = resnet18_seed.layer("layer1.0.conv1")
    assert (layer.macs, layer.weight_elems, layer.input_elems, layer.output_elems) == (
        2_359_296, 36_864, 4_096, 4_096,
    )  # fmt: skip
    r = plan_energy(resnet18_seed, Plan.uniform(8, 8), "horowitz45nm", "max")
    row = next(x for x in r.layers if x.name == "layer1.0.conv1")
    assert row.mac_energy == pytest.approx(613_416.96)
    assert row.mem_energy == pytest.approx(5_990_400 + 20_480)
    assert row.energy == pytest.approx(6_624_296.96)
    # FP32: 2,359,296 * (3.7 + 0.9) + 36,864*32*1300/64 + 8,192*32*20/64 = 34,815,641.6 pJ
    assert row.energy_fp32 == pytest.approx(10_852_761.6 + 23_961_600 + 81_920)


def test_mixed_widths_mac_rules_by_hand(resnet18_seed):
    # W4A8 on layer1.0.conv1 (2,359,296 MACs):
    #   bw_ba: 0.2 * 32/64 + 0.03 * 12/8 = 0.145 pJ;  max: 0.2 + 0.06 = 0.26 pJ
    #   seed: b = 8 for the MAC and for every element (weights too)
    plan = Plan(default=None, rules=(("layer1.0.conv1", LayerConfig(4, 8)),), first_last_8bit=False)
    idx = [x.name for x in resnet18_seed.layers].index("layer1.0.conv1")
    got = {}
    for rule in ("bw_ba", "max", "seed"):
        got[rule] = plan_energy(resnet18_seed, plan, "horowitz45nm", rule).layers[idx]
    assert got["bw_ba"].mac_energy == pytest.approx(2_359_296 * 0.145)
    assert got["max"].mac_energy == pytest.approx(2_359_296 * 0.26)
    # weights at 4 bits except under the seed rule, which stores them at b = 8
    assert got["max"].mem_energy == pytest.approx(36_864 * 4 * 1300 / 64 + 8_192 * 8 * 20 / 64)
    assert got["seed"].mem_energy == pytest.approx(36_864 * 8 * 1300 / 64 + 8_192 * 8 * 20 / 64)
    assert got["bw_ba"].bops == 2_359_296 * 32


def test_bops(resnet18_seed):
    r = plan_energy(resnet18_seed, Plan.uniform(4, 8, first_last_8bit=False), "seed")
    assert r.bops == r.macs * 32
    assert r.relative_bops == pytest.approx(32 / 1024)
    fp = plan_energy(resnet18_seed, Plan(default=None), "seed")
    assert fp.bops == fp.bops_fp32 == fp.macs * 1024
    assert fp.relative_energy == pytest.approx(1.0)
    assert fp.mac_share + fp.memory_share == pytest.approx(1.0)


def test_first_last_policy_and_float_layers(resnet18_seed):
    widths = layer_widths(resnet18_seed, Plan.uniform(4, 4))
    assert widths[0] == widths[-1] == (8, 8) and widths[1] == (4, 4)
    widths = layer_widths(resnet18_seed, Plan(default=LayerConfig(4, 4), rules=(("fc", None),)))
    assert widths[-1] == (None, None)


@pytest.fixture(scope="module")
def vit_stats():
    """A small ViT (timm DeiT-Tiny at 32x32, patch 4): conv, linear and matmul layers."""
    import timm

    model = timm.create_model("deit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4)
    return collect_stats(model, 32)


def test_float_widths_and_bits_out_of_range(resnet18_seed):
    n = len(resnet18_seed.layers)
    report = energy(resnet18_seed, [(None, None)] * n, "seed")
    assert report.energy == pytest.approx(report.energy_fp32)
    with pytest.raises(EaqError, match="w_bits.*0"):
        energy(resnet18_seed, [(0, 8)] * n, "seed")
    with pytest.raises(EaqError, match="17"):
        Plan.uniform(17, 8)


def test_plan_naming_a_missing_layer(resnet18_seed):
    plan = Plan(rules=(("layer9.0.conv1", LayerConfig(4, 4)),))
    with pytest.raises(EaqError, match="layer9.0.conv1"):
        layer_widths(resnet18_seed, plan)


def test_unknown_profile_and_rule(resnet18_seed):
    with pytest.raises(EaqError, match="unknown cost profile 'tpu'.*horowitz45nm"):
        get_profile("tpu")
    with pytest.raises(EaqError, match="MAC rule 'min'"):
        energy(resnet18_seed, [(8, 8)] * len(resnet18_seed.layers), "seed", "min")
    assert {"seed", "horowitz45nm"} <= set(profile_names())


def test_yaml_round_trip(tmp_path, resnet18_seed):
    p = tmp_path / "mine.yaml"
    p.write_text(get_profile("horowitz45nm").to_yaml())
    loaded = get_profile(str(p))
    assert loaded == get_profile("horowitz45nm")
    p.write_text("base: horowitz45nm\nweight_mem: 40.6\nfloat_format: fp16\n")
    mine = get_profile(str(p))
    assert mine.name == "mine" and mine.weight_mem == 40.6 and mine.int_mult == 0.2
    # a float layer under fp16: 16-bit storage and the FP16 MAC
    n = len(resnet18_seed.layers)
    r = energy(resnet18_seed, [(None, None)] * n, mine)
    assert r.mac_energy == pytest.approx(r.macs * 1.5)
    assert r.relative_energy < 0.55
    register_profile(CostProfile(**{**mine.to_dict(), "name": "test_fp16"}), overwrite=True)
    assert get_profile("test_fp16").float_format == "fp16"


@pytest.mark.parametrize(
    "text,pattern",
    [
        ("base: seed\nint_mul: 1\n", "unknown field 'int_mul'"),
        ("base: seed\nint_mult: lots\n", "'int_mult' must be a finite number"),
        ("base: seed\nweight_mem: -1\n", "'weight_mem' must be >= 0"),
        ("base: seed\nmac_rule: min\n", "'mac_rule'.*bw_ba"),
        ("name: x\nunit: pJ\ndescription: d\nint_mult: 1\n", "missing field 'int_add'"),
        ("base: seed\nint_mult: [1, 2\n", "not valid YAML at line 3"),
        ("- 1\n- 2\n", "must be a mapping"),
        ("base: nosuch\n", "unknown cost profile 'nosuch'"),
    ],
)
def test_malformed_yaml_names_the_field(tmp_path, text, pattern):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(EaqError, match=pattern):
        get_profile(str(p))
