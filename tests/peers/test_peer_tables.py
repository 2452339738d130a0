"""The peer benchmark's pure parts (peers/common.py, peers/report.py): what its tables and
energy figures are computed from. The peers themselves run in their own environment."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from eaq.energy import LayerStats, ModelStats, energy, plan_energy
from eaq.plan import Plan

PEERS = Path(__file__).resolve().parents[2] / "peers"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"peers_{name}", PEERS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


common = _load("common")
report = _load("report")

LAYERS = (
    ("stem", "conv"),
    ("qkv", "linear"),
    ("qk", "matmul"),
    ("av", "matmul"),
    ("head", "linear"),
)
STATS = ModelStats(
    tuple(LayerStats(n, k, 1000 * (i + 1), 10, 20, 30) for i, (n, k) in enumerate(LAYERS))
)


def test_layer_widths_cost_like_eaqs_own_plan():
    w4a4 = common.parse_width("W4A4")
    widths = common.layer_widths(STATS, w4a4, {"attention_matmuls": True})
    assert widths == [(8, 8), (4, 4), (4, 4), (4, 4), (8, 8)]
    ours = plan_energy(STATS, Plan.uniform(4, 4), "seed").relative_energy
    assert energy(STATS, widths, "seed").relative_energy == pytest.approx(ours)
    info = {"attention_matmuls": False, "float_layers": ["qkv"], "widths": {"head": (8, 4)}}
    assert common.layer_widths(STATS, w4a4, info) == [
        (8, 8),
        (None, None),
        (None, None),
        (None, None),
        (8, 4),
    ]
    with pytest.raises(ValueError, match="lack: \\['blocks.0.qkv'\\]"):
        common.layer_widths(STATS, w4a4, {"float_layers": ["blocks.0.qkv"]})


def _eaq_row(config, top1, w, a, float_kinds=None, seed=0, n=10000):
    info = {"w_bits": w, "a_bits": a}
    if float_kinds:
        info["float_kinds"] = float_kinds
    return {
        "model": "deit_tiny_cifar",
        "config": config,
        "method": "ptq",
        "strategy": "uniform",
        "seed": seed,
        "n_images": n,
        "top1": top1,
        "calib_seconds": 100.0,
        "calib_size": 256,
        "relative_energy": 0.1,
        "info": info,
    }


def test_eaq_best_is_like_for_like_on_attention_and_test_set():
    rows = [
        _eaq_row("W8A8", 60.0, 8, 8),
        _eaq_row("W8A8-noattn", 60.4, 8, 8, ["matmul"]),
        _eaq_row("W8A8-seed1", 61.0, 8, 8, seed=1),
        _eaq_row("W8A8-500", 62.0, 8, 8, n=500),
        _eaq_row("W4A8", 59.0, 4, 8),
    ]
    assert report.eaq_best(rows, "deit_tiny_cifar", "W8A8", 10000, True)["config"] == "W8A8"
    assert report.eaq_best(rows, "deit_tiny_cifar", "W8A8", 10000, False)["config"] == "W8A8-noattn"
    assert report.eaq_best(rows, "deit_tiny_cifar", "W8A8", 10000)["config"] == "W8A8-noattn"
    assert report.eaq_best(rows, "deit_tiny_cifar", "W6A6", 10000) is None


def test_notes_flag_a_peer_ahead_or_as_good_and_faster():
    best = {"top1": 70.0, "calib_seconds": 100.0}
    ok = {"status": "ok"}
    assert report.note(ok | {"top1": 70.5, "calib_seconds": 500.0}, best) == "peer ahead by 0.50"
    assert report.note(ok | {"top1": 69.8, "calib_seconds": 10.0}, best) == (
        "peer as accurate and faster"
    )
    assert report.note(ok | {"top1": 69.5, "calib_seconds": 10.0}, best) == ""
    assert report.note({"status": "failed"}, best) == ""


def test_import_keeps_full_runs_only_and_the_last_row_of_a_cell(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    base = {"model": "m", "width": "W8A8", "peer": "p", "recipe": "r", "status": "ok"}
    rows = [
        base | {"limit": 500, "top1": 1.0, "n_images": 500},  # a smoke row
        base | {"limit": None, "top1": 2.0, "n_images": 10000},
        base | {"limit": None, "top1": 3.0, "n_images": 10000},  # the cell run again
    ]
    (run / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    store = tmp_path / "peers.json"
    kept = report.import_rows(run, store)
    assert [r["top1"] for r in kept] == [3.0]
    assert json.loads(store.read_text())["rows"] == kept
    (run / "rows.jsonl").write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(SystemExit, match="no full-test-set rows"):
        report.import_rows(run, tmp_path / "other.json")


def test_front_rows_merge_studies_and_refuse_a_name_in_two(tmp_path):
    def study(name, configs, profile="seed"):
        rows = [
            {"model": "m", "config": c, "strategy": "fp32" if c == "FP32" else "uniform"}
            for c in configs
        ] + [{"model": "other", "config": "W8A8", "strategy": "uniform"}]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"study": {"profile": profile}, "rows": rows}))
        return path

    a, b = study("a", ["FP32", "W4A4"]), study("b", ["FP32", "W4A8"])
    rows, profile = report.front_rows([a, b], "m")
    assert [r["config"] for r in rows] == ["FP32", "W4A4", "W4A8"] and profile == "seed"
    with pytest.raises(SystemExit, match="'W4A4' is in both a.json and c.json"):
        report.front_rows([a, study("c", ["FP32", "W4A4"])], "m")
    with pytest.raises(SystemExit, match="profiles"):
        report.front_rows([a, study("d", ["W6A6"], profile="horowitz45nm")], "m")


def test_committed_peer_tables_are_what_the_stored_rows_give(tmp_path, capsys):
    """docs/peers.md and results/peers.csv are written from results/peers.json and eaq's
    results/*.json; after either changes, rerun `python peers/report.py`."""
    root = PEERS.parent
    store = root / "results" / "peers.json"
    if not store.is_file():
        pytest.skip("no peer rows stored yet")
    csv_path, doc = tmp_path / "peers.csv", tmp_path / "peers.md"
    figures = tmp_path / "figures" / "peers"
    report.write_outputs(store, root / "results", csv_path, doc, figures)
    assert sorted(f.name for f in figures.iterdir()) == sorted(
        f"{m}_pareto.png" for m in report.FRONTS if f"## {m} (" in doc.read_text()
    )
    for made, committed in (
        (doc, root / "docs" / "peers.md"),
        (csv_path, store.with_suffix(".csv")),
    ):
        assert made.read_text() == committed.read_text(), (
            f"{committed.relative_to(root)} differs from what the stored rows give; "
            "run `python peers/report.py`"
        )


def test_a_peer_is_not_faster_at_equal_accuracy_than_an_eaq_row_faster_still():
    rows = [
        _eaq_row("W4A8-best", 70.0, 4, 8) | {"calib_seconds": 400.0},
        _eaq_row("W4A8-gptq", 69.8, 4, 8) | {"calib_seconds": 20.0},
        _eaq_row("W4A8-mse", 65.0, 4, 8) | {"calib_seconds": 2.0},
    ]
    same = report.eaq_same_width(rows, "deit_tiny_cifar", "W4A8", 10000)
    best = report.eaq_best(rows, "deit_tiny_cifar", "W4A8", 10000)
    fastest = report.eaq_fastest(same, best)
    assert (best["config"], fastest["config"]) == ("W4A8-best", "W4A8-gptq")
    peer = {"status": "ok", "top1": 69.9}
    assert report.note(peer | {"calib_seconds": 10.0}, best, fastest) == (
        "peer as accurate and faster"
    )
    assert report.note(peer | {"calib_seconds": 90.0}, best, fastest) == (
        "faster than eaq's best; eaq's W4A8-gptq is as accurate in 20.0 s"
    )
