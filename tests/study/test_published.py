"""Published tables beside measured rows: the seed's file, the join, the tables."""

from pathlib import Path

import pytest

from eaq.errors import EaqError
from eaq.study import load_study
from eaq.study.published import compare, comparison_table, layers_table, load_published

ROOT = Path(__file__).resolve().parents[2]


def test_seed_file_names_configs_and_models_of_the_main_study():
    pub = load_published(ROOT / "studies/published/seed.yaml")
    study = load_study(ROOT / "studies/seed_cifar100.yaml")
    models = {m.name for m in study.models}
    for t in pub.tables:
        assert set(t.models) <= models, t.title
        for m in t.models:
            names = {c.name for c in study.configs_for(m)}
            assert {r.config for r in t.rows} <= names, (t.title, m)
        assert set(t.notes) <= {r.config for r in t.rows}, t.title
    # the seed's Table 3: 21 ResNet-18 layers, 50 DeiT-Tiny Linear layers
    assert [sum(r.layers.values()) for t in pub.tables for r in t.rows if r.layers] == [21, 50]


def _summary(model, config, top1, delta, energy, bits=None):
    return {
        "model": model,
        "config": config,
        "top1_mean": top1,
        "delta_top1": delta,
        "relative_energy": energy,
        "bits": bits or {},
        "n_seeds": 1,
    }


def test_compare_joins_by_model_and_config(tmp_path):
    f = tmp_path / "pub.yaml"
    f.write_text(
        "tables:\n"
        "  - title: T\n"
        "    models: [a, b]\n"
        "    rows:\n"
        "      - {config: FP32, top1: 70.0, relative_energy: 1.0}\n"
        "      - {config: mix, label: Mixed, top1: 65.5, relative_energy: 0.2,"
        " layers: {4: 1, 8: 3}}\n"
        "    notes: {mix: estimated}\n"
    )
    pub = load_published(f)
    summary = [
        _summary("a", "FP32", 60.0, 0.0, 1.0),
        _summary("a", "mix", 59.0, -1.0, 0.15, {"4": 2, "8": 2, "fp": 1}),
        _summary("b", "FP32", 50.0, 0.0, 1.0),
    ]
    (rec,) = compare(summary, pub)
    fp32, mix = rec["rows"]
    assert fp32["delta"] is None and mix["delta"] == pytest.approx(-4.5)
    assert mix["label"] == "Mixed" and mix["note"] == "estimated"
    assert mix["measured"]["a"]["top1"] == 59.0 and mix["measured"]["b"] is None
    headers, rows, notes = comparison_table(rec)
    assert headers[:4] == ["Config", "seed top-1", "seed Δ", "seed energy"]
    assert rows[1][:7] == ["Mixed", "65.50", "-4.50", "0.200", "59.00", "-1.00", "0.150"]
    assert rows[1][7:] == ["not run", "—", "—", "[1]"] and notes == ["estimated"]
    assert rows[0][-1] == ""
    _, layers = layers_table([rec])
    assert layers[0][1:4] == ["1 (25.0%)", "0 (0.0%)", "3 (75.0%)"]
    assert layers[1][0] == "a" and layers[1][1:4] == ["2 (50.0%)", "0 (0.0%)", "2 (50.0%)"]
    assert len(layers) == 2  # b has no mixed row


@pytest.mark.parametrize(
    "text, message",
    [
        ("tables: []", "needs a non-empty list 'tables'"),
        ("tables: [{title: T, models: [a]}]", "needs 'title', 'models' and 'rows'"),
        ("tables: [{title: T, models: [a], rows: [{config: X, top1: high}]}]", "rows[0]"),
        ("tables: [", "malformed YAML"),
    ],
)
def test_bad_published_files(tmp_path, text, message):
    f = tmp_path / "pub.yaml"
    f.write_text(text)
    with pytest.raises(EaqError, match=message.replace("[", r"\[")):
        load_published(f)
    with pytest.raises(EaqError, match="not found"):
        load_published(tmp_path / "absent.yaml")
