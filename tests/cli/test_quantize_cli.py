import json

import pytest

from eaq.cli.main import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_resnet20_full_test_set_fp32_and_w8a8(capsys, data_root):
    code, out, err = run_cli(
        capsys,
        "quantize",
        "--model",
        "resnet20_cifar",
        "--dataset",
        "cifar10",
        "--data-root",
        str(data_root),
        "--w-bits",
        "8",
        "--a-bits",
        "8",
        "--json",
    )
    assert code == 0, err
    r = json.loads(out)
    assert r["n_images"] == 10_000
    assert r["fp32_top1"] == pytest.approx(91.70, abs=0.05)
    assert abs(r["quant_top1"] - r["fp32_top1"]) <= 0.3
    assert r["delta_top1"] == pytest.approx(r["quant_top1"] - r["fp32_top1"], abs=1e-9)
    assert len(str(r["delta_top1"]).partition(".")[2]) <= 4  # no floating-point tail
    assert r["w_bits"] == 8 and r["a_bits"] == 8
    assert r["n_quantized_layers"] == 20
    assert r["provenance"]["weights_sha256"].startswith("12fca82f")


def test_quantize_table_output_with_limit(capsys, data_root):
    code, out, _ = run_cli(
        capsys,
        "quantize",
        "--model",
        "resnet20_cifar",
        "--data-root",
        str(data_root),
        "--w-bits",
        "4",
        "--a-bits",
        "4",
        "--granularity",
        "tensor",
        "--limit",
        "200",
        "--calib-size",
        "32",
        "--layers",
    )
    assert code == 0
    assert "FP32" in out and "W4A4 tensor" in out
    assert "quantized 20/20 layers" in out
    assert "layer3.2.conv2" in out


ERRORS = [
    (["--model", "resnet99"], "resnet99.*resnet20_cifar"),
    (["--model", "resnet20_cifar", "--dataset", "mnist"], "mnist.*cifar10"),
    (["--model", "resnet20_cifar", "--observer", "magic"], "magic.*minmax"),
    (["--model", "resnet20_cifar", "--w-bits", "17"], "--w-bits.*17"),
    (["--model", "resnet20_cifar", "--a-bits", "1"], "--a-bits.*2..16.*1"),
    (["--model", "resnet20_cifar", "--granularity", "group:7"], "7"),
    (["--model", "resnet20_cifar", "--granularity", "rows"], "rows"),
    (["--model", "resnet20_cifar", "--calib-size", "0"], "calibration set is empty"),
    (["--model", "resnet20_cifar", "--weights", "/nonexistent/w.th"], "/nonexistent/w.th"),
    (
        ["--model", "resnet20_cifar", "--method", "adaround", "--method-option", "iter=5"],
        "'adaround' has no option.*iter; valid: iters, lr, batch_size, reg_weight, warmup, seed",
    ),
    (["--model", "resnet20_cifar", "--method-option", "iters"], "KEY=VALUE"),
    (["--model", "resnet20_cifar", "--preset", "fastest"], "unknown preset 'fastest'.*best"),
    (
        ["--model", "resnet20_cifar", "--preset", "best", "--observer", "kl"],
        "--preset best sets the method and quantizer settings itself; drop --observer kl",
    ),
    (
        ["--model", "resnet20_cifar", "--preset", "best", "--method", "gptq"],
        "drop --method gptq",
    ),
    (
        ["--model", "resnet20_cifar", "--method", "brecq", "--method-option", "iters=many"],
        "option 'iters' must be like its default 500, got 'many'",
    ),
]


@pytest.mark.parametrize("argv,pattern", ERRORS)
def test_bad_input_is_one_line_and_exit_2(capsys, data_root, argv, pattern):
    code, out, err = run_cli(
        capsys, "quantize", "--data-root", str(data_root), "--limit", "8", *argv
    )
    assert code == 2
    assert err.startswith("eaq: error:") and err.count("\n") == 1, err
    assert pytest.importorskip("re").search(pattern, err), err


def test_mismatched_weights_name_missing_and_unexpected_keys(capsys, data_root):
    code, _, err = run_cli(
        capsys,
        "quantize",
        "--model",
        "resnet18_cifar",
        "--data-root",
        str(data_root),
        "--weights",
        str(data_root / "models" / "resnet20_cifar10.th"),
        "--limit",
        "8",
    )
    assert code == 2
    assert "missing" in err and "unexpected" in err


def test_missing_data_gives_a_hint(capsys, tmp_path):
    code, _, err = run_cli(
        capsys,
        "quantize",
        "--model",
        "resnet20_cifar",
        "--weights",
        "random",
        "--data-root",
        str(tmp_path),
        "--limit",
        "8",
    )
    assert code == 2
    assert str(tmp_path) in err and "--data-root" in err


@pytest.mark.parametrize("command", [[], ["models"], ["quantize"]])
def test_help_explains_itself(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    assert "usage: eaq" in capsys.readouterr().out


def test_models_lists_the_registry(capsys):
    code, out, _ = run_cli(capsys, "models", "--json")
    assert code == 0
    names = {m["name"] for m in json.loads(out)}
    assert {"resnet20_cifar", "resnet18", "resnet18_cifar", "deit_tiny", "deit_tiny_cifar"} <= names


def test_methods_lists_ptq_and_unknown_method_is_refused(capsys, data_root):
    code, out, _ = run_cli(capsys, "methods", "--json")
    assert code == 0 and "ptq" in {m["name"] for m in json.loads(out)}
    code, _, err = run_cli(
        capsys,
        "quantize",
        "--model",
        "resnet20_cifar",
        "--data-root",
        str(data_root),
        "--method",
        "magic",
    )
    assert code == 2 and "magic" in err and "ptq" in err


def test_method_options_and_calibration_time_in_json(capsys, data_root):
    code, out, err = run_cli(
        capsys,
        "quantize",
        "--model",
        "resnet20_cifar",
        "--data-root",
        str(data_root),
        "--w-bits",
        "4",
        "--limit",
        "64",
        "--calib-size",
        "32",
        "--method",
        "gptq",
        "--method-option",
        "percdamp=0.05",
        "--method-option",
        "block_columns=16",
        "--json",
    )
    assert code == 0, err
    r = json.loads(out)
    assert r["method"] == "gptq"
    assert r["method_options"] == {"percdamp": 0.05, "block_columns": 16}
    assert r["calib_seconds"] > 0
    assert "gptq: quantized and calibrated in" in err


def _quantize_with_preset_best(capsys, data_root, model: str, a_bits: int):
    """``eaq quantize --preset best --json`` at W4 and ``a_bits`` on a few images."""
    return run_cli(
        capsys,
        "quantize",
        "--model",
        model,
        "--data-root",
        str(data_root),
        "--w-bits",
        "4",
        "--a-bits",
        str(a_bits),
        "--limit",
        "32",
        "--calib-size",
        "16",
        "--preset",
        "best",
        "--json",
    )


def test_preset_best_on_the_vit_prints_and_records_its_settings(capsys, data_root, monkeypatch):
    from dataclasses import replace

    from eaq.methods.presets import PRESETS

    vit = PRESETS["best"]["vit"]  # its method options, but PTQ after repq: seconds, not minutes
    monkeypatch.setitem(PRESETS["best"], "vit", replace(vit, method_options={"then": "ptq"}))
    code, out, err = _quantize_with_preset_best(capsys, data_root, "deit_tiny_cifar", 4)
    assert code == 0, err
    assert "preset best (vit, A4): --observer mse" in err
    r = json.loads(out)
    assert (r["preset"], r["method"], r["observer"]) == ("best", "repq", "mse")
    assert r["method_options"] == {"then": "ptq"}
    layer = r["plan"]["default"]
    assert (layer["softmax_quantizer"], layer["gelu_quantizer"]) == ("log2", "twin")


def test_preset_best_on_a_cnn_at_8_bit_activations_is_gptq_with_bias_correction(capsys, data_root):
    code, out, err = _quantize_with_preset_best(capsys, data_root, "resnet20_cifar", 8)
    assert code == 0, err
    assert "preset best (cnn, A8): --observer mse --w-observer mse --method gptq" in err
    r = json.loads(out)
    assert (r["preset"], r["method"]) == ("best", "gptq")
    assert r["method_options"] == {"bias_correction": True}
