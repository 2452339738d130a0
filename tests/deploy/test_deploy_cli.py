import json

import pytest

from eaq.cli.main import main


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_quantize_save_export_evaluate(capsys, data_root, tmp_path):
    art, onnx_file = tmp_path / "art", tmp_path / "r20.onnx"
    code, out, err = run_cli(
        capsys, "quantize", "--model", "resnet20_cifar", "--data-root", data_root,
        "--limit", 1000, "--calib-size", 64, "--save", art, "--onnx", onnx_file, "--json",
    )  # fmt: skip
    assert code == 0, err
    r = json.loads(out)
    assert abs(r["onnx"]["top1"] - r["quant_top1"]) <= 0.5
    assert r["onnx"]["folded_batchnorm"] and r["artifact"]["size_ratio"] < 0.3
    assert "saved to" in err and "wrote" in err

    code, out, err = run_cli(
        capsys, "evaluate", "--onnx", onnx_file, "--data-root", data_root, "--limit", 1000,
        "--json",
    )  # fmt: skip
    assert code == 0, err
    e = json.loads(out)
    assert e["dataset"] == "cifar10" and e["top1"] == r["onnx"]["top1"]

    code, out, err = run_cli(
        capsys, "evaluate", "--artifact", art, "--data-root", data_root, "--limit", 1000, "--json"
    )
    assert code == 0, err
    assert json.loads(out)["top1"] == r["quant_top1"]  # the loaded model is the saved one

    again = tmp_path / "again.onnx"
    code, out, err = run_cli(capsys, "export", art, "--onnx", again, "--opset", 13, "--json")
    assert code == 0, err
    assert json.loads(out)["opset"] == 13 and again.is_file()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["export", "{tmp}", "--onnx", "{tmp}/x.onnx"], "is not an eaq artifact"),
        (["export", "{tmp}/none", "--onnx", "{tmp}/x.onnx"], "artifact folder not found"),
        (["export", "{tmp}", "--onnx", "{tmp}/x.txt"], "must name a .onnx file"),
        (["export", "{tmp}", "--onnx", "{tmp}/x.onnx", "--opset", "9"], "--opset must be in"),
        (["evaluate", "--onnx", "{tmp}/missing.onnx"], "ONNX file not found"),
        (["evaluate"], "pass exactly one of --model"),
        (
            ["quantize", "--model", "resnet20_cifar", "--onnx", "{tmp}/x", "--limit", "1"],
            "must name a .onnx file",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, message):
    code, out, err = run_cli(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp_path.glob("*.onnx*"))


def test_save_refuses_a_foreign_folder_before_any_work(capsys, tmp_path):
    (tmp_path / "mine.txt").write_text("x")
    code, _, err = run_cli(
        capsys, "quantize", "--model", "resnet20_cifar", "--save", tmp_path, "--limit", 1
    )
    assert code == 2 and "is not an eaq artifact" in err
