"""``eaq energy``: JSON keys, the seed's Table 1 through the CLI, CSV, and exit code 2."""

import csv
import json
import re

import pytest

from eaq.cli.main import main
from eaq.plan import LayerConfig, Plan

SEED_SETUP = ["--model", "resnet18", "--num-classes", "100", "--input-size", "32"]


def run_cli(capsys, *argv):
    code = main(["energy", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_seed_table1_w8(capsys, tmp_path):
    code, out, err = run_cli(
        capsys, *SEED_SETUP, "--profile", "seed", "--quantize-first-last", "--json",
        "--csv", str(tmp_path / "layers.csv"),
    )  # fmt: skip
    assert code == 0, err
    r = json.loads(out)
    for key in ("macs", "bops", "energy", "energy_fp32", "relative_energy", "mac_share",
                "memory_share", "layers"):  # fmt: skip
        assert key in r
    assert r["relative_energy"] == pytest.approx(0.238, abs=0.002)
    assert r["macs"] == pytest.approx(37.1e6, rel=5e-3)
    assert len(r["layers"]) == 21 and r["layers"][0]["name"] == "conv1"
    assert r["mac_share"] + r["memory_share"] == pytest.approx(1.0)
    rows = list(csv.DictReader(open(tmp_path / "layers.csv")))
    assert len(rows) == 21 and float(rows[-1]["energy"]) > 0


def test_table_output(capsys):
    code, out, _ = run_cli(capsys, *SEED_SETUP, "--w-bits", "4", "--a-bits", "4")
    assert code == 0
    assert "layer4.1.conv2" in out and "relative energy" in out and "pJ" in out


def _bad_plan(tmp_path):
    path = tmp_path / "plan.json"
    Plan(rules=(("layer9.0.conv1", LayerConfig(4, 4)),)).save(path)
    return str(path)


def _bad_yaml(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("base: seed\nact_read: fast\n")
    return str(path)


ERRORS = [
    (lambda t: ["--profile", "tpu"], "unknown cost profile 'tpu'"),
    (lambda t: ["--profile", _bad_yaml(t)], "'act_read'"),
    (lambda t: ["--plan", _bad_plan(t)], "layer9.0.conv1"),
    (lambda t: ["--w-bits", "17"], "17"),
    (lambda t: ["--a-bits", "1"], "1"),
    (lambda t: ["--input-size", "0"], "--input-size"),
]


@pytest.mark.parametrize("extra,pattern", ERRORS)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, extra, pattern):
    code, out, err = run_cli(capsys, *SEED_SETUP, *extra(tmp_path))
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eaq: error:")
    assert re.search(pattern, lines[0])


def test_unknown_model_exit_2(capsys):
    code, _, err = run_cli(capsys, "--model", "resnet99")
    assert code == 2 and "resnet99" in err
