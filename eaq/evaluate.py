"""Top-1/top-5 evaluation over batches of (images, labels), with a progress bar."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm import tqdm

from eaq.errors import EaqError
from eaq.nn import weights_quantized_once


def channels_last_(model: nn.Module) -> nn.Module:
    """Store a CPU model's 4-d weights channels-last when it has convolutions; returns it.

    oneDNN's CPU convolutions run faster on channels-last tensors (resnet18_cifar evaluates
    about 15% faster at batch 64 on 2 cores; ``python benchmarks/throughput.py`` measures it).
    Outputs follow the weights' layout, so inputs need no change. Accuracies can differ from the
    contiguous layout's in the last float bits of a convolution, as with any change of kernel.
    """
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if on_cpu and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
    return model


@dataclass(frozen=True)
class EvalResult:
    """Accuracy in percent over ``n_images`` images, and the wall time it took."""

    top1: float
    top5: float
    n_images: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    desc: str = "eval",
    progress: bool = True,
) -> EvalResult:
    """Top-1 and top-5 accuracy (percent) of ``model`` on ``batches``; deterministic on CPU.

    Batches are moved to the device of the model's parameters (a GPU-trained model is evaluated
    where it is).

    Raises:
        EaqError: the batches hold no images.
    """
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    correct1 = correct5 = n = 0
    start = time.perf_counter()
    total = getattr(batches, "n_images", None)
    with (
        torch.inference_mode(),
        weights_quantized_once(model),
        tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar,
    ):
        for images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hits = top.eq(labels[:, None])
            correct1 += hits[:, 0].sum().item()
            correct5 += hits.any(dim=1).sum().item()
            n += labels.numel()
            bar.update(labels.numel())
    seconds = time.perf_counter() - start
    if n == 0:
        raise EaqError("nothing to evaluate: the batches hold no images (an empty data set?)")
    return EvalResult(100.0 * correct1 / n, 100.0 * correct5 / n, n, seconds)
