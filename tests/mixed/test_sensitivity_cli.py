from __future__ import annotations

import json

from eaq.cli.main import main


def test_sensitivity_table_json_and_plot(resnet20_path, data_root, tmp_path, capsys):
    args = [
        "sensitivity",
        "--model",
        "resnet20_cifar",
        "--calib-size",
        "8",
        "--widths",
        "4,8",
        "--data-root",
        str(data_root),
    ]
    assert main([*args, "--json", "--plot", str(tmp_path / "s.png")]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 20 * 2 and {r["measure"] for r in rows} == {"l2"}
    assert (tmp_path / "s.png").is_file() and (tmp_path / "s.svg").is_file()
    assert main([*args, "--widths", "4,x"]) == 2
    assert "--widths" in capsys.readouterr().err
