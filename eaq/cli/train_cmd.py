"""``eaq train``: train an FP32 reference model, with checkpoints and an exact --resume."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from eaq.cli.common import check_positive, log, model_and_dataset, parse_key_values
from eaq.data import eval_batches, load_dataset
from eaq.errors import EaqError
from eaq.evaluate import evaluate
from eaq.models import ModelInfo, create_model, get_model_info, weights_file
from eaq.paths import resolve_data_root
from eaq.provenance import git_commit, sha256
from eaq.train.distill import Teacher
from eaq.train.export import ancestry, save_fp16, update_manifest
from eaq.train.recipes import RECIPES, recipe_for
from eaq.train.trainer import TrainData, bf16_supported, train


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train an FP32 reference model (checkpoints within epochs, exact --resume)",
        description=(
            "Train a registered model, from scratch or from --init weights, with a standard "
            "recipe (ResNets: SGD + one-cycle, crop/flip, label smoothing; ViTs: AdamW + "
            "warm-up/cosine, RandAugment, mixup/cutmix); --recipe-option changes any field, "
            "e.g. stochastic weight averaging over the last epochs. A checkpoint is written "
            "after every epoch and every few minutes within one; --resume continues a killed "
            "run exactly, from the step it last saved. At the end the weights "
            "are saved as fp16 safetensors with a manifest entry whose accuracy is measured on "
            "the whole test set. Uses a GPU when there is one."
        ),
    )
    p.add_argument("--model", required=True, help="a registered model (see `eaq models`)")
    p.add_argument("--dataset", default=None, help="cifar10 or cifar100 (default: the model's)")
    p.add_argument("--data-root", default=None, help="data folder (default: $EAQ_DATA_ROOT)")
    p.add_argument("--out", default=None, help="run folder (default: runs/train-MODEL)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--recipe", default=None, help=f"one of {', '.join(RECIPES)} (default: by model family)"
    )
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    p.add_argument(
        "--lr", type=float, default=None, help="override the recipe's peak learning rate"
    )
    p.add_argument(
        "--recipe-option",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="override any recipe field, e.g. weight_decay=1e-3, mixup=0.2, cutmix=1.0, "
        "label_smoothing=0.0, randaugment=rand-m9-mstd0.5 (randaugment= with nothing after "
        "the = turns it off), swa_epochs=20 with swa_lr=0.05 "
        "(stochastic weight averaging over the last 20 epochs); repeatable. The fields are "
        "those of the manifest's recipe",
    )
    p.add_argument(
        "--init",
        default=None,
        metavar="WEIGHTS",
        help="start from these weights of the same model (a file, or `default`) instead of "
        "random ones: fine-tuning or a warm restart with the recipe's schedule; the file's "
        "sha256 and its manifest entry, when it has one, are recorded in the new manifest",
    )
    p.add_argument(
        "--teacher",
        default=None,
        metavar="MODEL",
        help="distil from this trained model (DeiT's CNN teacher for a ViT, say): the loss "
        "mixes the usual one with the teacher's top class, weight distill_alpha (0.5); "
        "--recipe-option distill_type=soft (and distill_tau=T) for its tempered distribution",
    )
    p.add_argument(
        "--teacher-weights",
        default=None,
        metavar="WEIGHTS",
        help="the teacher's weights (a file, or `default`: its default weights)",
    )
    p.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=5.0,
        metavar="M",
        help="within an epoch, write a checkpoint once M minutes have passed since the last "
        "(default 5; 0: after every step); there is always one at the end of each epoch",
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N images only")
    p.add_argument(
        "--eval-limit", type=int, default=None, help="evaluate each epoch on N test images"
    )
    p.add_argument(
        "--bf16",
        choices=["auto", "on", "off"],
        default="auto",
        help="bf16 autocast (auto: on a GPU, or on a CPU with bf16 units). Whether it pays on "
        "a CPU depends on the model: on a 2-core AMX Xeon it is faster for resnet18_cifar but "
        "1.2x slower for the seed's resnet18 (8x8 feature maps), where off is better",
    )
    p.add_argument(
        "--export",
        default=None,
        help="folder for the fp16 safetensors + manifest.json (default: the run folder)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    info, dataset = model_and_dataset(args)
    options = parse_key_values("--recipe-option", args.recipe_option, "weight_decay=1e-3")
    flags = _flags(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    if twice := sorted(set(options) & set(flags)):
        raise EaqError(f"{', '.join(twice)} given both as a flag and as --recipe-option")
    recipe = recipe_for(info.family, args.recipe).with_overrides(**options, **flags)
    if args.teacher is None and (
        args.teacher_weights or any(k.startswith("distill") for k in options)
    ):
        raise EaqError("--teacher-weights and the distill_* options need --teacher MODEL")
    check_positive("--train-limit", args.train_limit)
    check_positive("--eval-limit", args.eval_limit)
    if not args.checkpoint_minutes >= 0:  # NaN too
        raise EaqError(f"--checkpoint-minutes must be >= 0, got {args.checkpoint_minutes}")
    out = Path(args.out or f"runs/train-{args.model}")
    root = resolve_data_root(args.data_root)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = {"on": True, "off": False, "auto": device == "cuda" or bf16_supported()}[args.bf16]

    # the weights files first: a bad one is named before any data is loaded
    init, init_entries = _init_record("--init", args.model, args.init, root)
    teacher, taught_by, teacher_entries = _teacher(args.teacher, args.teacher_weights, info, root)
    train_set = load_dataset(dataset, "train", root)
    test_set = load_dataset(dataset, "test", root)
    images, labels = _train_tensors(train_set, args.train_limit)
    model = create_model(args.model, weights=args.init or "random", data_root=root)
    data = TrainData(images, labels, info.mean, info.std, info.num_classes)
    norm = dict(mean=info.mean, std=info.std, input_size=info.input_size)

    def evaluate_fn(m):
        m.eval()
        batches = eval_batches(test_set, limit=args.eval_limit, **norm)
        return evaluate(m, batches, desc="test", progress=False)

    log(
        f"training {args.model} on {dataset}: recipe {recipe.name}, {recipe.epochs} epochs, "
        f"batch {recipe.batch_size}, device {device}, bf16 {bf16}, run folder {out}"
        + (f", from {init['file']}" if init else "")
        + (f", teacher {args.teacher} ({taught_by['file']})" if teacher else "")
    )
    commit = git_commit()  # the code that trains, not whatever is checked out at the end
    start = time.perf_counter()
    history = train(
        model,
        data,
        recipe,
        out,
        model_name=args.model,
        seed=args.seed,
        resume=args.resume,
        evaluate_fn=evaluate_fn,
        device=device,
        bf16=bf16,
        init_sha256=init["sha256"] if init else None,
        teacher=teacher,
        checkpoint_seconds=60 * args.checkpoint_minutes,
        log=log,
        progress=sys.stderr.isatty(),
    )
    export = Path(args.export) if args.export else out
    weights = export / f"{args.model}_{dataset}.safetensors"
    digest = save_fp16(model.cpu(), weights)
    # The manifest's accuracy is that of the saved fp16 file, as `eaq evaluate` measures it.
    saved = create_model(args.model, weights=weights, data_root=root)
    final = evaluate(
        saved, eval_batches(test_set, **norm), desc="final test", progress=sys.stderr.isatty()
    )
    update_manifest(
        export,
        {
            "model": args.model,
            "dataset": dataset,
            "file": weights.name,
            "sha256": digest,
            "recipe": recipe.to_dict(),
            "epochs": recipe.epochs,
            "init": init,
            "teacher": taught_by,
            "seed": args.seed,
            "train_images": len(labels),
            "top1": final.top1,
            "top5": final.top5,
            "test_images": final.n_images,
            "commit": commit,
            "device": device,
            "bf16": bf16,
            "wall_seconds_this_session": time.perf_counter() - start,
            "epoch_seconds_total": sum(row["seconds"] for row in history),
        },
        earlier=init_entries | teacher_entries,
    )
    log(
        f"final: top-1 {final.top1:.2f}% top-5 {final.top5:.2f}% on {final.n_images} images; "
        f"weights {weights} (sha256 {digest[:12]})"
    )
    return 0


def _flags(**values) -> dict:
    """The recipe fields that have a flag of their own and were given."""
    return {k: v for k, v in values.items() if v is not None}


def _init_record(
    flag: str, model: str, weights: str | None, root: Path
) -> tuple[dict | None, dict[str, dict]]:
    """The weights file ``flag`` names as a manifest record (file and sha256; None: not
    given), and the manifest entries beside it of that file and of those it came from."""
    if weights is None:
        return None, {}
    path = weights_file(model, weights, root)
    if path is None:  # random or online-pretrained: nothing to record, nothing to learn from
        raise EaqError(f"{flag} {weights!r}: give a weights file or `default`")
    digest = sha256(path)
    return {"file": path.name, "sha256": digest}, ancestry(path, digest)


def _teacher(
    name: str | None, weights: str | None, student: ModelInfo, root: Path
) -> tuple[Teacher | None, dict | None, dict[str, dict]]:
    """The teacher to distil from, its record for the manifest and the manifest entries it came
    from, as `_init_record` gives them (None, None, {}: no teacher)."""
    if name is None:
        return None, None, {}
    info = get_model_info(name)
    for what in ("num_classes", "input_size"):
        if getattr(info, what) != getattr(student, what):
            raise EaqError(
                f"teacher {name} has {what} {getattr(info, what)} but {student.name} has "
                f"{getattr(student, what)}; the teacher must be a model of the same task"
            )
    weights = weights or "default"
    record, entries = _init_record("--teacher-weights", name, weights, root)
    record = {"model": name, **record}
    model = create_model(name, weights=weights, data_root=root)
    return Teacher(model, info.mean, info.std, record["sha256"]), record, entries


def _train_tensors(ds, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split as uint8 NHWC images and int64 labels (first ``limit`` images)."""
    if not ds.in_memory:
        raise EaqError("eaq train supports the in-memory CIFAR data sets only")
    return torch.from_numpy(ds.images[:limit]), torch.from_numpy(ds.labels[:limit]).long()
