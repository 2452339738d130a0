import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from eaq.cli.common import parse_key_values
from eaq.cli.main import main
from eaq.errors import EaqError
from eaq.models import create_model
from eaq.train.export import load_manifest, read_manifest, save_fp16
from eaq.train.recipes import RECIPES
from eaq.train.trainer import CHECKPOINT, TrainData, lr_factor, train

RECIPE = RECIPES["resnet_sgd"].with_overrides(epochs=3, batch_size=32, warmup_epochs=1)


def _data(n=96):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return TrainData(images, labels, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 10)


def _train(out, recipe=RECIPE, **kw):
    torch.manual_seed(123)  # the initial weights
    model = create_model("resnet20_cifar", weights="random")
    train(model, _data(), recipe, out, model_name="resnet20_cifar", progress=False, **kw)
    return model


SWA = RECIPE.with_overrides(swa_epochs=2, swa_lr=0.02)
# the ViT recipe's augmentations, which draw from numpy's and Python's generators
MIXED = RECIPE.with_overrides(mixup=0.8, cutmix=1.0, randaugment="rand-m9-mstd0.5")


class Killed(Exception):
    pass


@pytest.mark.parametrize(
    ("recipe", "killed_at", "checkpoint"),
    [
        (RECIPE, "epoch 2/3:", (2, None)),
        (RECIPE, "  epoch 2/3 step 1/3:", (1, 1)),
        (SWA, "epoch 1/3:", (1, None)),
        (SWA, "epoch 2/3:", (2, None)),
        (SWA, "  epoch 3/3 step 2/3:", (2, 2)),
        (MIXED, "  epoch 2/3 step 2/3:", (1, 2)),
    ],
    ids=[
        "plain",
        "plain-mid-epoch",
        "swa-before-averaging",
        "swa-one-epoch-averaged",
        "swa-mid-epoch-averaged",
        "mixup-randaugment-mid-epoch",
    ],
)
def test_resume_after_a_kill_reaches_the_same_weights(tmp_path, recipe, killed_at, checkpoint):
    straight = _train(tmp_path / "a", recipe=recipe, log=lambda msg: None)

    def die(msg):
        if msg.startswith(killed_at):  # logged after the checkpoint was written
            raise Killed

    with pytest.raises(Killed):  # a checkpoint after every step
        _train(tmp_path / "b", recipe=recipe, log=die, checkpoint_seconds=0)
    state = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)
    assert (state["epoch"], state.get("partial", {}).get("step")) == checkpoint
    messages = []
    resumed = _train(tmp_path / "b", recipe=recipe, resume=True, log=messages.append)
    assert messages[0].endswith(f"step {checkpoint[1]}/3" if checkpoint[1] else "/3")
    for (k, v), (_, w) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(v, w), k
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [1, 2, 3]
    straight_log = (tmp_path / "a" / "log.jsonl").read_text().splitlines()
    for row, other in zip(log, map(json.loads, straight_log), strict=True):
        assert row["train_loss"] == pytest.approx(other["train_loss"], rel=1e-12)
        assert row["train_top1"] == other["train_top1"]


def test_swa_averages_the_last_epochs_at_a_constant_rate(tmp_path):
    torch.manual_seed(123)
    model = create_model("resnet20_cifar", weights="random")
    after_epoch = []

    def keep_weights(msg):
        if msg.startswith("epoch"):
            after_epoch.append({k: v.clone() for k, v in model.state_dict().items()})

    history = train(
        model, _data(), SWA, tmp_path, model_name="resnet20_cifar", progress=False, log=keep_weights
    )
    assert [row["lr"] for row in history[1:]] == pytest.approx([0.02, 0.02])
    final = model.state_dict()
    for name, _ in model.named_parameters():
        mean = (after_epoch[1][name] + after_epoch[2][name]) / 2
        torch.testing.assert_close(final[name], mean, msg=name)
    # the batch-norm statistics are those of the averaged weights on the training images
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    data = _data()
    seen = []
    hook = bn.register_forward_hook(lambda m, i, o: seen.append(i[0].mean((0, 2, 3))))
    model.eval()
    with torch.no_grad():
        for i in range(0, 96, 32):
            x = (data.images[i : i + 32].permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
            model(x)
    hook.remove()
    torch.testing.assert_close(bn.running_mean, torch.stack(seen).mean(0))


def test_log_without_a_progress_bar_has_lines_within_each_epoch(tmp_path):
    lines = []
    _train(tmp_path, log=lines.append)  # 3 epochs of 3 steps: a line after steps 1 and 2
    steps = [m.split(":")[0] for m in lines if m.startswith("  ")]
    assert steps == [f"  epoch {e}/3 step {i}/3" for e in (1, 2, 3) for i in (1, 2)]
    assert [m.split(":")[0] for m in lines if not m.startswith("  ")] == [
        "epoch 1/3",
        "epoch 2/3",
        "epoch 3/3",
    ]


def test_recipe_overrides_are_checked():
    r = RECIPES["resnet_sgd"]
    assert r.with_overrides(weight_decay=1).weight_decay == 1.0  # an int for a float field
    assert r.with_overrides(warmup_epochs=0.5).warmup_epochs == 0.5  # its field's type counts
    with pytest.raises(EaqError, match="weight_decay must be float"):
        r.with_overrides(weight_decay="lots")
    with pytest.raises(EaqError, match="unknown recipe field.*swa_epoch'.*valid"):
        r.with_overrides(swa_epoch=3)
    with pytest.raises(EaqError, match="swa_epochs must be between 0 and epochs \\(60\\), got 61"):
        r.with_overrides(swa_epochs=61, swa_lr=0.05)
    with pytest.raises(EaqError, match="needs swa_lr > 0"):
        r.with_overrides(swa_epochs=5)
    with pytest.raises(EaqError, match="epochs must be int, got None"):
        r.with_overrides(epochs=None)


def test_randaugment_can_be_turned_off_and_is_checked():
    vit = RECIPES["vit_adamw"]
    off = parse_key_values("--recipe-option", ["randaugment="], "")  # as the CLI reads it
    assert vit.randaugment and vit.with_overrides(**off).randaugment is None
    assert vit.with_overrides(randaugment="rand-m5-n1").randaugment == "rand-m5-n1"
    for bad in ("", "m9", 9):
        with pytest.raises(EaqError, match="randaugment .*rand-m9-mstd0.5, or nothing"):
            vit.with_overrides(randaugment=bad)


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
    manifest = read_manifest(out)["resnet20_cifar"]
    weights = out / manifest["file"]
    assert weights.suffix == ".safetensors" and manifest["test_images"] == 10_000
    assert manifest["bf16"] is False and manifest["device"] == "cpu"
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
    assert main([*train_args, "--init", str(weights), "--teacher", "resnet20_cifar"]) == 0
    restarted = read_manifest(restart)["resnet20_cifar"]
    init = restarted["init"]
    assert init == {"file": weights.name, "sha256": manifest["sha256"]}
    assert load_manifest(restart)["earlier"] == {manifest["sha256"]: manifest}
    # ... and the teacher it was distilled from (here the shared pretrained ResNet-20)
    assert restarted["teacher"]["model"] == "resnet20_cifar"
    assert restarted["teacher"]["file"] == "resnet20_cifar10.th"
    assert restarted["recipe"]["distill_alpha"] == 0.5
    assert manifest["teacher"] is None
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
    for options, message in [
        (["--recipe-option", "mixup"], "must look like KEY=VALUE"),
        (["--recipe-option", "mixupp=0.2"], "unknown recipe field"),
        (["--recipe-option", "mixup=[0.2"], "cannot read the value"),
        (["--recipe-option", "epochs=3", "--epochs", "4"], "epochs given both"),
        (["--recipe-option", "distill_alpha=0.3"], "need --teacher MODEL"),
        (["--teacher-weights", "t.pt"], "need --teacher MODEL"),
        (["--teacher", "resnet20_cifar", "--teacher-weights", "random"], "a weights file or"),
        (["--init", "random"], "--init 'random': give a weights file or `default`"),
        (["--teacher", "resnet20_cifar", "--recipe-option", "distill_type=mid"], "valid: hard"),
        (["--teacher", "resnet18", "--data-root", str(data_root)], "num_classes 100 but"),
        (["--checkpoint-minutes", "-1"], "--checkpoint-minutes must be >= 0, got -1.0"),
    ]:
        assert main(["train", "--model", "resnet20_cifar", *options]) == 2
        assert message in capsys.readouterr().err


def test_randaugment_posterize_at_full_magnitude_gives_a_black_image():
    """timm asks Pillow for 0 bits here, which Pillow 13 refuses (the ViT recipe crashed)."""
    import random

    from PIL import Image

    from eaq.train.augment import RandAugment

    aug = RandAugment("rand-m10-mstd0-inc1", 32, (0.5, 0.5, 0.5))
    op = next(op for op in aug.transform.ops if op.name == "PosterizeIncreasing")
    op.prob = 1.0
    image = Image.fromarray(torch.full((32, 32, 3), 200, dtype=torch.uint8).numpy())
    assert not np.asarray(op(image)).any()
    random.seed(0)
    images = torch.randint(0, 256, (256, 32, 32, 3), dtype=torch.uint8)
    out = RandAugment("rand-m9-mstd0.5-inc1", 32, (0.5, 0.5, 0.5))(images)
    assert out.shape == images.shape and out.dtype == torch.uint8


def _teacher(sha="t1"):
    from eaq.train.distill import Teacher

    torch.manual_seed(7)
    model = create_model("resnet20_cifar", weights="random")
    return Teacher(model, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), sha)


def test_distillation_resumes_exactly_and_needs_the_same_teacher(tmp_path):
    straight = _train(tmp_path / "a", teacher=_teacher(), log=lambda msg: None)

    def die(msg):
        if msg.startswith("epoch 2/3"):
            raise Killed

    with pytest.raises(Killed):
        _train(tmp_path / "b", teacher=_teacher(), log=die)
    with pytest.raises(EaqError, match="teacher"):
        _train(tmp_path / "b", teacher=_teacher("t2"), resume=True, log=lambda msg: None)
    resumed = _train(tmp_path / "b", teacher=_teacher(), resume=True, log=lambda msg: None)
    for (k, v), (_, w) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(v, w), k
    # the teacher changes what is learnt; with weight 0 it changes nothing at all
    plain = _train(tmp_path / "c", log=lambda msg: None)
    unweighted = RECIPE.with_overrides(distill_alpha=0.0)
    silent = _train(tmp_path / "d", recipe=unweighted, teacher=_teacher(), log=lambda msg: None)
    assert not torch.equal(plain.conv1.weight, straight.conv1.weight)
    assert torch.equal(plain.conv1.weight, silent.conv1.weight)


def test_distillation_loss_by_hand():
    from eaq.train.distill import distillation_loss

    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[3.0, 1.0, 0.0], [0.5, 0.2, 0.1]])
    usual = torch.tensor(1.5)
    hard = RECIPE.with_overrides(distill_alpha=0.25)
    ce = -(torch.log_softmax(s, 1)[0, 0] + torch.log_softmax(s, 1)[1, 0]) / 2  # teacher: class 0
    torch.testing.assert_close(distillation_loss(s, t, usual, hard), 0.75 * usual + 0.25 * ce)
    soft = RECIPE.with_overrides(distill_alpha=1.0, distill_type="soft", distill_tau=2.0)
    p, q = torch.softmax(t / 2, 1), torch.softmax(s / 2, 1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    torch.testing.assert_close(distillation_loss(s, t, usual, soft), 4 * kl)


def test_teacher_sees_inputs_in_its_own_normalisation():
    from eaq.train.distill import Teacher

    raw = torch.rand(2, 3, 4, 4)
    student = ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    teacher = Teacher(torch.nn.Identity(), (0.1, 0.2, 0.3), (0.5, 0.6, 0.7), "t")

    def norm(x, mean, std):
        return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)

    seen = teacher.logits(norm(raw, *student), *student)
    torch.testing.assert_close(seen, norm(raw, teacher.mean, teacher.std))


def test_saved_checkpoint_is_fp16_and_has_the_usual_file_mode(tmp_path):
    umask = os.umask(0o027)
    try:
        path = tmp_path / "out" / "m.safetensors"
        save_fp16(torch.nn.Linear(3, 2), path)
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o640  # not safetensors' owner-only 0600
    assert {t.dtype for t in load_file(path).values()} == {torch.float16}
