"""A study row evaluated through its ONNX export, and the report's command that saves a row."""

from __future__ import annotations

import json
import shlex

import pytest

from eaq.cli.main import main
from eaq.errors import EaqError
from eaq.study import Store, load_study, parse_study, run_study

STUDY = """\
study: deploy
seeds: [0]
calib_size: 16
batch_size: 64
models: [{name: resnet20_cifar, dataset: cifar10}]
configs:
  - {name: FP32, strategy: fp32}
  - {name: W8A8, strategy: uniform, w_bits: 8, onnx: true}
  - {name: W8A8-int, strategy: uniform, w_bits: 8, onnx: true, quantize_outputs: true}
  - {name: W4A4, strategy: uniform, w_bits: 4}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory, resnet20_path, data_root):
    folder = tmp_path_factory.mktemp("cfg")
    (folder / "s.yaml").write_text(STUDY)
    out = folder / "run"
    run_study(
        load_study(folder / "s.yaml").with_limit(256), out, data_root=data_root, progress=False
    )
    return out


def test_rows_hold_both_accuracies(run):
    with Store.open_folder(run) as s:
        rows = {r["config"]: r for r in s.results()}
    for name in ("W8A8", "W8A8-int"):
        onnx = rows[name]["info"]["onnx"]
        assert onnx["n_images"] == 256 and abs(onnx["top1"] - rows[name]["top1"]) <= 1.0
    assert "onnx" not in rows["W4A4"]["info"]
    assert rows["W8A8-int"]["plan"]["quantize_outputs"] is True
    assert "quantize_outputs" not in rows["W8A8"]["plan"]


def test_report_shows_onnx_and_a_command_that_saves_the_row(
    run, data_root, capsys, tmp_path, monkeypatch
):
    assert main(["report", str(run)]) == 0
    md = (run / "report" / "report.md").read_text()
    assert "onnxruntime (%)" in md
    line = next(x for x in md.splitlines() if x.startswith("| W4A4 | `eaq quantize"))
    command = line.split("`")[1]
    argv = shlex.split(command)[1:] + ["--data-root", str(data_root), "--limit", "256", "--json"]
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(argv) == 0
    saved = json.loads(capsys.readouterr().out)
    with Store.open_folder(run) as s:
        row = next(r for r in s.results() if r["config"] == "W4A4")
    assert saved["quant_top1"] == row["top1"]  # the same plan, seed and calibration
    meta = json.loads(
        (tmp_path / "artifacts" / "resnet20_cifar-W4A4" / "artifact.json").read_text()
    )
    assert meta["plan"] == row["plan"]


def test_onnx_with_nonuniform_quantizers_is_refused_at_parse_time():
    bad = STUDY.replace("onnx: true}", "onnx: true, softmax_quantizer: log2}", 1)
    with pytest.raises(EaqError, match="no form for log2/twin"):
        parse_study(bad)


def test_off_switches_keep_the_fingerprint():
    on = parse_study(STUDY)
    off = parse_study(STUDY.replace(", onnx: true", "").replace(", quantize_outputs: true", ""))
    plain = parse_study(
        STUDY.replace(", onnx: true", ", onnx: false").replace(", quantize_outputs: true", "")
    )
    assert off.fingerprint() == plain.fingerprint() != on.fingerprint()
