"""Measured loss of whole plans, to choose between candidate plans of one energy budget.

The budget strategy's integer program minimises a *sum of per-layer* sensitivities, a proxy
that ignores how layer errors combine. :class:`PlanScorer` measures the real thing for a whole
plan: the model is quantized with the plan (and a PTQ method) and the KL divergence of its
logits from the float model's is averaged over held-out training images,
``mean_x KL(softmax(z_float(x)) || softmax(z_quant(x)))``. A few candidates per budget (the
integer program's plan and the uniform plans within the budget) are scored and the lowest
wins, so a budgeted plan is never worse *on held-out training data* than a uniform plan it
could afford.

Examples:
    >>> from eaq.models import create_model
    >>> from eaq.plan import Plan
    >>> _ = torch.manual_seed(0)  # unseeded, a random ResNet-20 can give 0 at both widths
    >>> model = create_model("resnet20_cifar")
    >>> batches = [(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))]
    >>> score = PlanScorer(model, calib=batches, held_out=batches)
    >>> score(Plan(default=None, first_last_8bit=False))
    0.0
    >>> score(Plan.uniform(4, 4)) > score(Plan.uniform(8, 8)) >= 0.0
    True
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eaq.errors import EaqError
from eaq.nn import weights_quantized_once
from eaq.plan import Plan
from eaq.quant import ObserverCache

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def _log_probs(model: nn.Module, batches: Batches) -> list[torch.Tensor]:
    model.eval()
    with weights_quantized_once(model):
        return [F.log_softmax(model(images).double(), dim=1) for images, _ in batches]


def plan_sha256(plan: Plan) -> str:
    """A plan's identity: the SHA-256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(plan.to_dict(), sort_keys=True).encode()).hexdigest()


class PlanScorer:
    """``scorer(plan) -> mean KL`` of the plan's quantized logits from the float ones.

    Args:
        model: the float model (left untouched; each call quantizes a copy).
        calib: calibration batches the method calibrates on.
        held_out: batches the KL is measured on (training images outside ``calib``).
        method: the PTQ method that quantizes each candidate (plain ``ptq``: cheap, and the
            choice is between widths, not methods).
        method_options: the method's options.
        observers: with method ``ptq``, calibration passes to reuse
            (:class:`~eaq.quant.ObserverCache` of ``model`` on ``calib``).
    """

    def __init__(
        self,
        model: nn.Module,
        calib: Batches,
        held_out: Batches,
        method: str = "ptq",
        method_options: dict | None = None,
        observers: ObserverCache | None = None,
    ) -> None:
        self.model = model
        self.calib = calib
        self.held_out = held_out
        self.method = method
        self.method_options = dict(method_options or {})
        from eaq.methods import check_shared_observers

        check_shared_observers(method, observers)
        self.observers = observers
        self.n_images = sum(images.shape[0] for images, _ in held_out)
        if self.n_images == 0:
            raise EaqError("scoring plans needs held-out images; the set is empty")
        self.reference = _log_probs(model, held_out)
        self.calls = 0  # plans measured (a plan scored before is answered from the cache)
        self._cache: dict[str, float] = {}

    @torch.no_grad()
    def __call__(self, plan: Plan) -> float:
        key = plan_sha256(plan)
        if key not in self._cache:
            self._cache[key] = self._measure(plan)
        return self._cache[key]

    def _measure(self, plan: Plan) -> float:
        from eaq.methods import plain_ptq_, quantize_model_

        self.calls += 1
        work = copy.deepcopy(self.model).eval()
        if self.observers is not None:
            plain_ptq_(work, plan, self.calib, self.observers)
        else:
            with torch.enable_grad():  # some methods optimise
                quantize_model_(work, plan, self.calib, self.method, self.method_options)
        kl = 0.0
        for lp, lq in zip(self.reference, _log_probs(work, self.held_out), strict=True):
            kl += float((lp.exp() * (lp - lq)).sum())
        return max(kl / self.n_images, 0.0)


__all__ = ["PlanScorer"]
