import json

import pytest
import torch

from eaq.cli.main import main
from eaq.errors import EaqError
from eaq.models import create_model
from eaq.train.recipes import RECIPES
from eaq.train.trainer import CHECKPOINT, TrainData, lr_factor, train

RECIPE = RECIPES["resnet_sgd"].with_overrides(epochs=3, batch_size=32, warmup_epochs=1)


def _data(n=96):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return TrainData(images, labels, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 10)


def _train(out, **kw):
    torch.manual_seed(123)  # the initial weights
    model = create_model("resnet20_cifar", weights="random")
    train(model, _data(), RECIPE, out, model_name="resnet20_cifar", progress=False, **kw)
    return model


class Killed(Exception):
    pass


def test_resume_after_a_kill_reaches_the_same_weights(tmp_path):
    straight = _train(tmp_path / "a", log=lambda msg: None)

    def die_after_first_epoch(msg):
        if msg.startswith("epoch 1/3"):  # logged after the epoch's checkpoint was written
            raise Killed

    with pytest.raises(Killed):
        _train(tmp_path / "b", log=die_after_first_epoch)
    assert torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)["epoch"] == 1
    resumed = _train(tmp_path / "b", resume=True, log=lambda msg: None)
    for (k, v), (_, w) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(v, w), k
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [1, 2, 3]


def test_existing_run_needs_resume_and_the_same_model(tmp_path):
    _train(tmp_path, log=lambda msg: None)
    with pytest.raises(EaqError, match="--resume"):
        _train(tmp_path, log=lambda msg: None)
    other = create_model("resnet18_cifar", num_classes=10, weights="random")
    with pytest.raises(EaqError, match="resnet20_cifar"):
        train(
            other,
            _data(),
            RECIPE,
            tmp_path,
            model_name="resnet18_cifar",
            resume=True,
            progress=False,
        )


def test_resume_needs_the_same_initial_weights(tmp_path):
    _train(tmp_path, log=lambda msg: None, init_sha256="a" * 64)
    with pytest.raises(EaqError, match="initial weights"):
        _train(tmp_path, resume=True, log=lambda msg: None, init_sha256="b" * 64)
    with pytest.raises(EaqError, match="initial weights"):
        _train(tmp_path, resume=True, log=lambda msg: None)  # from random weights


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(EaqError, match="cannot write"):
        _train(blocker / "run", log=lambda msg: None)


def test_schedule_warms_up_then_decays():
    assert lr_factor(0, 100, 10, 0.04) == pytest.approx(0.04)
    assert lr_factor(10, 100, 10, 0.04) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, 0.0) == pytest.approx(0.0)


def test_train_cli_end_to_end_and_evaluate_of_its_checkpoint(tmp_path, capsys, data_root):
    out = tmp_path / "run"
    args = ["--model", "resnet20_cifar", "--dataset", "cifar10", "--data-root", str(data_root)]
    code = main(
        [
            "train",
            *args,
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--train-limit",
            "128",
            "--eval-limit",
            "64",
            "--bf16",
            "off",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())["resnet20_cifar"]
    weights = out / manifest["file"]
    assert weights.suffix == ".safetensors" and manifest["test_images"] == 10_000
    capsys.readouterr()
    code = main(["evaluate", *args, "--weights", str(weights), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["top1"] == pytest.approx(manifest["top1"])
    # a checkpoint of another model is refused with the keys named
    code = main(
        [
            "evaluate",
            "--model",
            "resnet18_cifar",
            "--data-root",
            str(data_root),
            "--weights",
            str(weights),
            "--limit",
            "8",
        ]
    )
    assert code == 2
    assert "missing" in capsys.readouterr().err
    # a warm restart from that checkpoint records what it started from
    short = ["--epochs", "1", "--batch-size", "64", "--train-limit", "64", "--eval-limit", "8"]
    restart = tmp_path / "restart"
    train_args = ["train", *args, *short, "--bf16", "off", "--out", str(restart)]
    assert main([*train_args, "--init", str(weights)]) == 0
    init = json.loads((restart / "manifest.json").read_text())["resnet20_cifar"]["init"]
    assert init["file"] == weights.name and init["sha256"] == manifest["sha256"]
    assert init["manifest"]["top1"] == manifest["top1"]
    # weights of another model are refused before any training
    capsys.readouterr()
    other = ["train", "--model", "resnet18_cifar", "--data-root", str(data_root), *short]
    assert main([*other, "--out", str(tmp_path / "other"), "--init", str(weights)]) == 2
    assert "missing" in capsys.readouterr().err


def test_train_cli_bad_input(capsys, data_root):
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "resnet20_cifar", "--epochz", "3"])
    assert e.value.code == 2
    assert main(["train", "--model", "resnet20_cifar", "--recipe", "magic"]) == 2
    assert "magic" in capsys.readouterr().err
