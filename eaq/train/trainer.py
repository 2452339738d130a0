"""The training loop: seeded per epoch, a checkpoint after every epoch and within it, exact resume.

Every epoch reseeds torch, numpy and random from ``(seed, epoch)`` and draws its shuffle and
augmentations from a generator seeded the same way. A run resumed from the checkpoint of epoch
``k`` therefore repeats epochs ``k+1..`` exactly as an uninterrupted run would. A checkpoint
written within an epoch (every ``checkpoint_seconds``) also holds the step and the states of
the random number generators, so a run killed mid-epoch resumes at that step, exactly too.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn
from tqdm import tqdm

from eaq.errors import EaqError
from eaq.evaluate import EvalResult
from eaq.train.augment import RandAugment, normalize, random_crop_flip
from eaq.train.distill import Teacher, distillation_loss
from eaq.train.recipes import Recipe

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"


@dataclass(frozen=True)
class TrainData:
    """Training images (uint8 NHWC), labels, normalisation and class count."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def lr_factor(step: int, total: int, warmup: int, start: float) -> float:
    """Linear warm-up from ``start`` to 1 over ``warmup`` steps, then cosine down to 0."""
    if step < warmup:
        return start + (1 - start) * step / max(1, warmup)
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _optimizer(model: nn.Module, r: Recipe) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": r.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if r.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=r.lr, momentum=r.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=r.lr)


def bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def train(
    model: nn.Module,
    data: TrainData,
    recipe: Recipe,
    out_dir: Path,
    *,
    model_name: str,
    seed: int = 0,
    resume: bool = False,
    evaluate_fn: Callable[[nn.Module], EvalResult] | None = None,
    device: str = "cpu",
    bf16: bool = False,
    init_sha256: str | None = None,
    teacher: Teacher | None = None,
    checkpoint_seconds: float = 300.0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Train ``model`` with ``recipe``; checkpoints and a JSON-lines log go to ``out_dir``.

    ``init_sha256`` names the weights ``model`` starts from (None: random); a resume must
    name the same, and the same ``teacher`` (distillation, :mod:`eaq.train.distill`). Returns
    the per-epoch history (loss, train accuracy, test accuracy, seconds). Besides the
    checkpoint after every epoch, one is written within an epoch once ``checkpoint_seconds``
    have passed since the last. ``log`` gets a line per epoch and, when there is no
    ``progress`` bar, one every tenth of an epoch.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise EaqError(f"cannot write to output folder {out_dir}: {e.strerror}") from None
    ckpt_path = out_dir / CHECKPOINT
    # channels-last: the faster layout for convolutions, most of all under bf16 autocast
    # (on a 2-core AMX Xeon a resnet18 step took 433 ms in the default layout, 277 ms in this)
    model.to(device, memory_format=torch.channels_last)
    if teacher is not None:
        teacher.model.to(device, memory_format=torch.channels_last).eval()
    teacher_sha256 = None if teacher is None else teacher.sha256
    opt = _optimizer(model, recipe)
    steps_per_epoch = len(data.labels) // recipe.batch_size
    if steps_per_epoch < 1:
        raise EaqError(
            f"batch size {recipe.batch_size} is larger than the training set "
            f"({len(data.labels)} images)"
        )
    swa_start = recipe.epochs - recipe.swa_epochs  # the first epoch that is averaged
    main_steps = steps_per_epoch * swa_start
    warmup = int(recipe.warmup_epochs * steps_per_epoch)
    start = 0.04 if recipe.schedule == "onecycle" else 0.0

    def factor(step: int) -> float:
        if step >= main_steps:  # the averaging epochs run at a constant rate
            return recipe.swa_lr / recipe.lr
        return lr_factor(step, main_steps, warmup, start)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    swa = AveragedModel(model) if recipe.swa_epochs else None
    history: list[dict] = []
    first_epoch = 0
    partial = None  # where a checkpoint written within an epoch left off
    if ckpt_path.exists():
        if not resume:
            raise EaqError(
                f"{out_dir} already holds a training run; pass --resume or another --out"
            )
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        if (
            state["model_name"] != model_name
            or Recipe.from_dict(state["recipe"]) != recipe
            or state["seed"] != seed
            or state.get("init_sha256") != init_sha256
            or state.get("teacher_sha256") != teacher_sha256
        ):
            raise EaqError(
                f"{ckpt_path} is a run of {state['model_name']} with another recipe, seed, "
                "initial weights or teacher; "
                "resume with the same options or choose another --out"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if "swa" in state:  # killed after an averaged epoch
            swa.load_state_dict(state["swa"])
        history = state["history"]
        first_epoch = state["epoch"]
        partial = state.get("partial")
        log(
            f"resuming {model_name} after epoch {first_epoch}/{recipe.epochs}"
            + (f", step {partial['step']}/{steps_per_epoch}" if partial else "")
        )

    def save(epoch_done: int, within: dict | None = None) -> None:
        """Write the checkpoint after ``epoch_done`` whole epochs (and ``within``'s steps)."""
        state = {
            "model_name": model_name,
            "recipe": recipe.to_dict(),
            "seed": seed,
            "init_sha256": init_sha256,
            "teacher_sha256": teacher_sha256,
            "epoch": epoch_done,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "history": history,
        }
        if swa is not None and epoch_done > swa_start:  # the average holds an epoch or more
            state["swa"] = swa.state_dict()
        if within is not None:
            state["partial"] = within
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, ckpt_path)

    mixup = None
    if recipe.mixup > 0 or recipe.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=recipe.mixup,
            cutmix_alpha=recipe.cutmix,
            label_smoothing=recipe.label_smoothing,
            num_classes=data.num_classes,
        )
        criterion: nn.Module = SoftTargetCrossEntropy()
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    randaug = (
        RandAugment(recipe.randaugment, data.images.shape[1], data.mean)
        if recipe.randaugment
        else None
    )

    # without a progress bar (a log file), a line every tenth of an epoch instead
    report_every = max(1, steps_per_epoch // 10)
    for epoch in range(first_epoch, recipe.epochs):
        t0 = last_save = time.perf_counter()
        s = epoch_seed(seed, epoch)
        seed_everything(s)
        g = torch.Generator().manual_seed(s)
        order = torch.randperm(len(data.labels), generator=g)
        model.train()
        loss_sum = correct = seen = 0.0
        first_step = 0
        if partial is not None:  # resume within this epoch
            first_step = partial["step"]
            loss_sum, correct, seen = partial["loss_sum"], partial["correct"], partial["seen"]
            t0 -= partial["seconds"]
            _set_rng_states(partial["rng"], g)
            partial = None
        bar = tqdm(
            range(first_step, steps_per_epoch),
            initial=first_step,
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{recipe.epochs}",
            disable=not progress,
            leave=False,
        )
        for i in bar:
            idx = order[i * recipe.batch_size : (i + 1) * recipe.batch_size]
            images = random_crop_flip(data.images[idx], recipe.crop_padding, recipe.flip, g)
            if randaug is not None:
                images = randaug(images)
            x = normalize(images, data.mean, data.std).to(device, memory_format=torch.channels_last)
            y = data.labels[idx].to(device)
            target = y
            if mixup is not None:
                x, target = mixup(x, y)
            with torch.autocast(
                device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16
            ):
                logits = model(x)
                loss = criterion(logits.float(), target)
                if teacher is not None:
                    taught = teacher.logits(x, data.mean, data.std)
                    loss = distillation_loss(logits.float(), taught, loss, recipe)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
            now = time.perf_counter()
            if now - last_save >= checkpoint_seconds and i + 1 < steps_per_epoch:
                save(
                    epoch,
                    {
                        "step": i + 1,
                        "loss_sum": loss_sum,
                        "correct": correct,
                        "seen": seen,
                        "seconds": now - t0,
                        "rng": _rng_states(g),
                    },
                )
                last_save = time.perf_counter()
            if not progress and (i + 1) % report_every == 0 and i + 1 < steps_per_epoch:
                took = time.perf_counter() - t0
                log(
                    f"  epoch {epoch + 1}/{recipe.epochs} step {i + 1}/{steps_per_epoch}: "
                    f"loss {loss_sum / seen:.3f} ({took:.0f} s, {took / (i + 1):.2f} s a step)"
                )
        bar.close()
        averaging = swa is not None and epoch >= swa_start
        if averaging:
            swa.update_parameters(model)
        row = {
            "epoch": epoch + 1,
            "lr": sched.get_last_lr()[0],
            "train_loss": loss_sum / seen,
            "train_top1": 100 * correct / seen,
        }
        if evaluate_fn is not None:
            result = evaluate_fn(model)
            row.update(test_top1=result.top1, test_top5=result.top5, test_images=result.n_images)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        save(epoch + 1)
        with open(out_dir / LOG, "a") as f:
            f.write(json.dumps(row) + "\n")
        log(
            f"epoch {row['epoch']}/{recipe.epochs}: loss {row['train_loss']:.3f}, "
            f"train {row['train_top1']:.2f}%"
            + (f", test {row['test_top1']:.2f}%" if "test_top1" in row else "")
            + f" ({row['seconds']:.0f} s)"
        )
    if swa is not None:
        _take_average(model, swa, data, recipe.batch_size, device)
        log(
            f"weights averaged over the last {recipe.swa_epochs} epochs; batch-norm statistics "
            "recomputed on the training images"
        )
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    if teacher is not None:
        teacher.model.to(memory_format=torch.contiguous_format)
    return history


def _rng_states(g: torch.Generator) -> dict:
    """The states of every random number generator a training step draws from."""
    states = {
        "generator": g.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "random": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict, g: torch.Generator) -> None:
    # the states are CPU byte tensors, whatever map_location the checkpoint was loaded with
    g.set_state(states["generator"].cpu())
    torch.set_rng_state(states["torch"].cpu())
    np.random.set_state(states["numpy"])
    random.setstate(states["random"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all([t.cpu() for t in states["cuda"]])


def _take_average(
    model: nn.Module, swa: AveragedModel, data: TrainData, batch_size: int, device: str
) -> None:
    """Load the averaged weights into ``model`` and recompute its batch-norm statistics on
    the (unaugmented) training images, in order."""
    model.load_state_dict(swa.module.state_dict())
    batches = (
        normalize(data.images[i : i + batch_size], data.mean, data.std).to(
            device, memory_format=torch.channels_last
        )
        for i in range(0, len(data.labels), batch_size)
    )
    with torch.no_grad():
        update_bn(batches, model)
