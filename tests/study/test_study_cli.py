"""End to end on a tiny study: SIGKILL + resume == uninterrupted; report; bad input exits 2."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eaq.cli.main import main
from eaq.study import VOLATILE_COLUMNS, Store, load_study, run_study

TINY = """\
study: tiny
seeds: [0]
calib_size: 8
batch_size: 32
sensitivity: {widths: [4, 8], score_size: 16}
models: [{name: resnet20_cifar, dataset: cifar10}]
configs:
  - {name: FP32, strategy: fp32}
  - {name: W8A8, strategy: uniform, w_bits: 8}
  - {name: W4A4, strategy: uniform, w_bits: 4}
  - {name: budget, strategy: budget, budgets: [W4A4, 0.1]}
  - {name: budget-sel, strategy: budget, budgets: [0.1], select: loss}
  - {name: W4A4-gptq, strategy: uniform, w_bits: 4, method: gptq, method_options: {percdamp: 0.05}}
"""
LIMIT = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, resnet20_path) -> Path:
    p = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    p.write_text(TINY)
    return p


@pytest.fixture(scope="module")
def ref_run(tiny, tmp_path_factory, data_root) -> Path:
    """The tiny study, uninterrupted, in-process."""
    ref = tmp_path_factory.mktemp("ref")
    run_study(load_study(tiny).with_limit(LIMIT), ref, data_root=data_root, progress=False)
    return ref


def _rows(folder: Path) -> list[dict]:
    with Store.open_folder(folder) as s:
        return [{k: v for k, v in r.items() if k not in VOLATILE_COLUMNS} for r in s.results()]


def _n_rows(db: Path) -> int:
    try:
        with sqlite3.connect(db) as c:
            return c.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_sigkill_resume_equals_uninterrupted(tiny, ref_run, tmp_path, data_root, capsys):
    want = _rows(ref_run)
    assert len(want) == 7
    with Store.open_folder(ref_run) as s:
        (session,) = s.sessions()
    phases = session["phases"]
    top = {k: v for k, v in phases.items() if ": " not in k}
    assert session["written"] == 7 and set(top) == {"models", "plans", "rows"}
    assert sum(top.values()) <= session["seconds"]
    assert set(phases) - set(top) == {"plans: sensitivities", "plans: scoring"}
    assert phases["plans: sensitivities"] + phases["plans: scoring"] <= phases["plans"]

    out = tmp_path / "killed"
    env = {**os.environ, "EAQ_DATA_ROOT": str(data_root)}
    cmd = [
        sys.executable,
        "-m",
        "eaq",
        "study",
        str(tiny),
        "--out",
        str(out),
        "--limit",
        str(LIMIT),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _n_rows(out / "study.sqlite") < 1 and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _n_rows(out / "study.sqlite")
    assert killed and 1 <= partial < len(want), "the study ended before it could be killed"

    # without --resume the folder is refused, and nothing is lost
    assert main([*cmd[3:], "--data-root", str(data_root)]) == 2
    assert _n_rows(out / "study.sqlite") == partial
    capsys.readouterr()
    assert main([*cmd[3:], "--resume", "--data-root", str(data_root)]) == 0
    assert _rows(out) == want
    # off a terminal: a line per finished row instead of progress bars
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[")]
    assert len(lines) == len(want) - partial
    assert (
        lines[-1].startswith(f"[{len(want)}/{len(want)}] resnet20_cifar ") and "top-1" in lines[-1]
    )
    # resuming a finished study does nothing
    assert main([*cmd[3:], "--resume", "--data-root", str(data_root)]) == 0
    assert _rows(out) == want


def test_json_and_report(tiny, ref_run, data_root, capsys):
    out = ref_run
    args = [str(tiny), "--out", str(out), "--limit", str(LIMIT), "--no-progress"]
    args += ["--data-root", str(data_root), "--resume"]  # finished: runs nothing, prints rows
    assert main(["study", *args, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    keys = {"model", "config", "strategy", "relative_energy", "top1_mean", "top1_std", "n_seeds"}
    assert all(keys <= set(r) for r in rows) and len(rows) == 7
    by_config = {r["config"]: r for r in _rows(out)}
    assert by_config["W4A4-gptq"]["method"] == "gptq"
    assert json.loads(json.dumps(by_config["W4A4-gptq"]["info"]))["method_options"] == {
        "percdamp": 0.05
    }
    assert by_config["W4A4"]["method"] == "ptq" and by_config["FP32"]["method"] == "none"
    candidates = by_config["budget-sel@0.100"]["info"]["candidates"]
    assert {c["name"] for c in candidates} >= {"milp", "W4A4"}
    assert sum(c["chosen"] for c in candidates) == 1
    assert main(["report", str(out)]) == 0
    rep = out / "report"
    for name in (
        "report.md",
        "report.html",
        "rows.csv",
        "summary.json",
        "resnet20_cifar_pareto.png",
        "resnet20_cifar_pareto.svg",
        "resnet20_cifar_energy.svg",
        "resnet20_cifar_sensitivity_l2.png",
        "resnet20_cifar_widths.png",
    ):
        assert (rep / name).is_file(), name
    assert "Rel. Energy" in (rep / "report.md").read_text()
    assert "Δ mixed − uniform" in (rep / "report.md").read_text()
    comparison = json.loads((rep / "front_vs_uniform.json").read_text())
    summary = {r["config"]: r for r in json.loads((rep / "summary.json").read_text())}
    # budget-sel's only point (0.1) is above W4A4's energy and below W8A8's
    sel = {c["uniform"]: c for c in comparison if c["family"] == "budget-sel"}
    assert sel["W4A4"]["best"] is None and sel["W4A4"]["delta"] is None
    assert sel["W8A8"]["best"] == "budget-sel@0.100"
    assert sel["W8A8"]["delta"] == pytest.approx(
        summary["budget-sel@0.100"]["top1_mean"] - summary["W8A8"]["top1_mean"]
    )


def test_report_with_published_tables(ref_run, tmp_path, capsys):
    pub = tmp_path / "pub.yaml"
    pub.write_text(
        "source: a paper\n"
        "tables:\n"
        "  - title: Table 1\n"
        "    models: [resnet20_cifar]\n"
        "    rows:\n"
        "      - {config: FP32, top1: 90.0, relative_energy: 1.0}\n"
        "      - {config: W4A4, label: 4-bit, top1: 80.0, relative_energy: 0.1}\n"
        "      - {config: W2A2, top1: 10.0, relative_energy: 0.05}\n"
        "    notes: {W4A4: because}\n"
    )
    assert main(["report", str(ref_run), "--published", str(pub)]) == 0
    rep = ref_run / "report"
    summary = {r["config"]: r for r in json.loads((rep / "summary.json").read_text())}
    (rec,) = json.loads((rep / "published_vs_measured.json").read_text())
    rows = {r["config"]: r for r in rec["rows"]}
    assert rows["W4A4"]["delta"] == -10.0
    got = rows["W4A4"]["measured"]["resnet20_cifar"]
    assert got["top1"] == summary["W4A4"]["top1_mean"]
    assert got["relative_energy"] == summary["W4A4"]["relative_energy"]
    assert rows["W2A2"]["measured"]["resnet20_cifar"] is None
    md = (rep / "report.md").read_text()
    assert "## Published (a paper) against measured" in md
    assert "| 4-bit | 80.00 | -10.00 | 0.100 |" in md and "not run" in md
    assert "| [1] |" in md and "[1] because" in md
    # a bad file is refused before any work, in one line
    pub.write_text("tables: []")
    capsys.readouterr()
    assert main(["report", str(ref_run), "--published", str(pub)]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs a non-empty list 'tables'" in err and "\n" not in err


def test_report_draws_and_tables_peer_points(ref_run, tmp_path, capsys):
    peer = {
        "model": "resnet20_cifar",
        "width": "W8A8",
        "peer": "sometool",
        "recipe": "default",
        "status": "ok",
        "top1": 12.5,
        "n_images": LIMIT,
        "relative_energy": {"seed": 0.123, "horowitz45nm": 0.2},
    }
    other_set = peer | {"recipe": "other-images", "n_images": LIMIT + 1}
    failed = peer | {"recipe": "broken", "status": "failed", "relative_energy": None}
    rerun = peer | {"recipe": "rerun", "top1": 1.0}  # a cell run twice: its last row counts
    later = rerun | {"top1": 2.0}
    rows = tmp_path / "rows.jsonl"
    lines = (peer, other_set, failed, rerun, later)
    rows.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert main(["report", str(ref_run), "--peers", str(rows)]) == 0
    md = (ref_run / "report" / "report.md").read_text()
    assert "| W8A8 | sometool / default | 12.50 | 0.123 |" in md
    assert "other-images" not in md and "broken" not in md  # other test set; failed
    assert "| W8A8 | sometool / rerun | 2.00 | 0.123 |" in md and "| 1.00 |" not in md
    # the study's profile must be among the peer rows' energies
    rows.write_text(json.dumps(peer | {"relative_energy": {"horowitz45nm": 0.2}}) + "\n")
    capsys.readouterr()
    assert main(["report", str(ref_run), "--peers", str(rows)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no relative energy under profile 'seed'" in err and "\n" not in err


def test_tables_import_a_study_and_write_its_table(ref_run, tmp_path, capsys):
    (tmp_path / "README.md").write_text(
        f"<!-- eaq-table kind=summary rows=results/{ref_run.name}.json configs=FP32,W4A4 -->\n"
        "<!-- /eaq-table -->\n"
    )
    assert main(["tables", "--check", "--root", str(tmp_path)]) == 2  # no rows file yet
    assert "eaq tables --import" in capsys.readouterr().err
    assert main(["tables", "--import", str(ref_run), "--root", str(tmp_path)]) == 0
    stored = json.loads((tmp_path / "results" / f"{ref_run.name}.json").read_text())
    assert len(stored["rows"]) == 7 and stored["study"]["name"] == "tiny"
    w4 = next(r for r in _rows(ref_run) if r["config"] == "W4A4")
    text = (tmp_path / "README.md").read_text()
    assert "| Config | resnet20_cifar |" in text
    assert f"| W4A4 | {w4['top1']:.2f} ({w4['relative_energy']:.3f}) |" in text
    assert main(["tables", "--check", "--root", str(tmp_path)]) == 0
    assert main(["tables", "--import", str(tmp_path), "--root", str(tmp_path)]) == 2
    assert "is not a study folder" in capsys.readouterr().err


def test_from_rows_measures_only_the_missing_rows(tiny, ref_run, tmp_path, data_root, capsys):
    from eaq.study.tables import import_rows

    rows_file = import_rows(ref_run, tmp_path / "tiny.json")
    doc = json.loads(rows_file.read_text())
    kept = [r for r in doc["rows"] if r["config"] in ("FP32", "W8A8")]
    rows_file.write_text(json.dumps({**doc, "rows": kept}))
    base = ["--limit", str(LIMIT), "--no-progress", "--data-root", str(data_root)]
    out = tmp_path / "run"
    assert main(["study", str(tiny), "--out", str(out), "--from-rows", str(rows_file), *base]) == 0
    assert "5 rows written, 2 already done" in capsys.readouterr().err
    assert _rows(out) == _rows(ref_run)
    with Store.open_folder(out) as s:  # the given rows were taken as they were, not remeasured
        created = {r["config"]: r["created"] for r in s.results()}
    assert {c: created[c] for c in ("FP32", "W8A8")} == {r["config"]: r["created"] for r in kept}
    # rows of another study (here: other --limit) or no rows file: exit 2, nothing made
    other = ["--limit", "8", "--no-progress", "--data-root", str(data_root)]
    cmd = ["study", str(tiny), "--out", str(tmp_path / "x"), "--from-rows", str(rows_file)]
    assert main([*cmd, *other]) == 2
    assert "holds the rows of another study" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("[]")
    cmd[-1] = str(tmp_path / "bad.json")
    assert main([*cmd, *base]) == 2
    assert "not a rows file" in capsys.readouterr().err
    for rows, message in (
        ([*kept, kept[0]], "row 2 repeats model resnet20_cifar, config FP32, seed 0"),
        ([{**kept[0], "extra": 1}], "row 0 is not a result row of this eaq"),
    ):
        (tmp_path / "bad.json").write_text(json.dumps({**doc, "rows": rows}))
        assert main([*cmd, *base]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_resume_reuses_stored_plan_scores(tiny, ref_run, tmp_path, data_root, monkeypatch):
    """A run stopped before a budget's rows are written scores no candidate plan again."""
    import shutil

    from eaq.mixed import PlanScorer

    with Store.open_folder(ref_run) as s:
        scores = s.plan_scores("resnet20_cifar", 0)
    assert len(scores) >= 2  # budget-sel's program plan and the uniform plans within 0.1
    out = tmp_path / "resumed"
    shutil.copytree(ref_run, out)
    with sqlite3.connect(out / "study.sqlite") as c:
        c.execute("DELETE FROM results WHERE config LIKE 'budget-sel%'")

    def no_scoring(self, plan):
        raise AssertionError("a stored plan was scored again")

    monkeypatch.setattr(PlanScorer, "__call__", no_scoring)
    cfg = load_study(tiny).with_limit(LIMIT)
    run_study(cfg, out, resume=True, data_root=data_root, progress=False)
    assert _rows(out) == _rows(ref_run)


def test_a_nan_plan_score_is_an_error_and_not_stored(tiny, tmp_path, data_root, monkeypatch):
    from eaq.errors import EaqError
    from eaq.mixed import PlanScorer

    monkeypatch.setattr(PlanScorer, "__call__", lambda self, plan: float("nan"))
    out = tmp_path / "nan"
    with pytest.raises(EaqError, match="it must be finite"):
        run_study(load_study(tiny).with_limit(LIMIT), out, data_root=data_root, progress=False)
    with Store.open_folder(out) as s:
        assert s.plan_scores("resnet20_cifar", 0) == {}


def test_bad_inputs_exit_2(tiny, tmp_path, data_root, capsys):
    base = ["--limit", "16", "--no-progress", "--data-root", str(data_root)]
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("strategy: fp32", "strategy: magic"))
    assert main(["study", str(bad), "--out", str(tmp_path / "a"), *base]) == 2
    assert "configs[0].strategy" in capsys.readouterr().err
    bad.write_text(TINY.replace("budgets: [W4A4, 0.1]", "budgets: [0.01]"))
    assert main(["study", str(bad), "--out", str(tmp_path / "b"), *base]) == 2
    assert "minimum relative energy" in capsys.readouterr().err
    bad.write_text(TINY.replace("method: gptq", "method: smoothquant").replace("percdamp", "alpha"))
    assert main(["study", str(bad), "--out", str(tmp_path / "c"), *base]) == 2
    err = capsys.readouterr().err
    assert "config 'W4A4-gptq': smoothquant needs LayerNorm -> Linear pairs" in err
    assert not (tmp_path / "c").exists() or _rows(tmp_path / "c") == []  # before any row
    # a folder holding a different study is refused, its rows kept
    other = tmp_path / "other"
    with Store.open_folder(other, create=True) as s:
        s.claim("0123", {"name": "other"})
    assert main(["study", str(tiny), "--out", str(other), *base]) == 2
    assert "different study" in capsys.readouterr().err
    with Store.open_folder(other) as s:
        assert s.get_meta("fingerprint") == "0123"


def test_seeds_option_and_per_model_configs(tmp_path, resnet20_path, data_root, capsys):
    study = tmp_path / "s.yaml"
    study.write_text(
        TINY.split("configs:")[0]
        + "configs:\n  - {name: FP32, strategy: fp32}\n"
        + "  - {name: W8A8, strategy: uniform, w_bits: 8, models: [resnet20_cifar]}\n"
    )
    base = [str(study), "--limit", "16", "--no-progress", "--data-root", str(data_root)]
    assert main(["study", *base, "--out", str(tmp_path / "a"), "--seeds", "1", "1"]) == 2
    assert "seeds must be distinct integers >= 0, got [1, 1]" in capsys.readouterr().err
    assert main(["study", *base, "--out", str(tmp_path / "b"), "--seeds", "1", "2"]) == 0
    rows = _rows(tmp_path / "b")
    assert sorted((r["config"], r["seed"]) for r in rows) == [
        ("FP32", 1), ("FP32", 2), ("W8A8", 1), ("W8A8", 2)
    ]  # fmt: skip
