"""Knowledge distillation from a trained teacher, as DeiT trains ViTs from a CNN teacher.

The student's loss mixes the recipe's usual loss with a term that pulls it towards the teacher
(Touvron et al. 2021, section 5.1; Hinton et al. 2015 for the soft form):

    loss = (1 - distill_alpha) * usual + distill_alpha * teacher_term

``hard``: cross-entropy against the teacher's top class on the same (augmented, mixed) batch;
``soft``: ``distill_tau**2`` times the KL divergence between the teacher's and the student's
distributions at temperature ``distill_tau``. DeiT adds a distillation token with its own head
for the teacher term; here the class head serves both, so any model can be the student.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eaq.train.recipes import Recipe


@dataclass(frozen=True)
class Teacher:
    """A trained model whose outputs the student learns from.

    Attributes:
        model: the teacher; kept in eval mode and never updated.
        mean, std: the normalisation the teacher was trained with.
        sha256: its weights file's hash (a resumed run must have the same teacher).
    """

    model: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    sha256: str

    @torch.no_grad()
    def logits(self, x: torch.Tensor, mean, std) -> torch.Tensor:
        """The teacher's logits for a batch ``x`` normalised with the student's ``mean, std``."""
        if (tuple(mean), tuple(std)) != (self.mean, self.std):
            x = (x * _channels(std, x) + _channels(mean, x) - _channels(self.mean, x)) / _channels(
                self.std, x
            )
        return self.model(x).float()


def _channels(values, x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, usual: torch.Tensor, recipe: Recipe
) -> torch.Tensor:
    """The recipe's mix of the ``usual`` loss and the teacher term (see the module docstring).

    Examples:
        >>> from eaq.train.recipes import RECIPES
        >>> r = RECIPES["resnet_sgd"].with_overrides(distill_alpha=1.0)
        >>> s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 5.0]])
        >>> round(distillation_loss(s, t, torch.tensor(9.0), r).item(), 4)  # -log softmax(s)[1]
        2.1269
    """
    a = recipe.distill_alpha
    if recipe.distill_type == "hard":
        term = F.cross_entropy(student, teacher.argmax(1))
    else:
        tau = recipe.distill_tau
        term = (
            tau
            * tau
            * F.kl_div(
                F.log_softmax(student / tau, 1),
                F.log_softmax(teacher / tau, 1),
                reduction="batchmean",
                log_target=True,
            )
        )
    return (1 - a) * usual + a * term
