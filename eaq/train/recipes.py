"""Training recipes: the standard ones for CIFAR ResNets and for small ViTs.

A recipe is data (a frozen dataclass); `eaq train` picks one by the model's family and lets the
command line override single fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from eaq.errors import EaqError, choices_hint, like_default


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of one training run.

    Attributes:
        optimizer: ``sgd`` (momentum, Nesterov) or ``adamw``.
        lr: peak learning rate for ``batch_size``.
        schedule: ``onecycle`` (linear warm-up, cosine down) or ``cosine`` (warm-up then cosine).
        warmup_epochs: epochs of warm-up (``onecycle`` uses it as its rising phase).
        label_smoothing: cross-entropy label smoothing.
        crop_padding: random-crop padding in pixels (0: no crop).
        flip: random horizontal flips.
        randaugment: a timm RandAugment string such as ``rand-m9-mstd0.5``, or None.
        mixup, cutmix: alphas of timm's Mixup/CutMix (0: off).
        swa_epochs: stochastic weight averaging (Izmailov et al. 2018) over the last this many
            epochs: they run at the constant rate ``swa_lr``, the weights are averaged after
            each of them, and the average, with batch-norm statistics recomputed on the
            training images, is the result (0: off). With ``swa_epochs == epochs`` the whole
            run is averaging, which suits a warm start (``eaq train --init``).
        swa_lr: the constant learning rate of the averaging epochs.
        distill_alpha: with a teacher (``eaq train --teacher``), the weight of its term in the
            loss; DeiT's 0.5 by default (no teacher: no distillation).
        distill_type: ``hard`` (the teacher's top class, DeiT's choice) or ``soft`` (its
            tempered distribution); see :mod:`eaq.train.distill`.
        distill_tau: the temperature of ``soft`` distillation.
    """

    name: str
    optimizer: str
    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    schedule: str = "onecycle"
    warmup_epochs: float = 1.0
    momentum: float = 0.9
    label_smoothing: float = 0.1
    crop_padding: int = 4
    flip: bool = True
    randaugment: str | None = None
    mixup: float = 0.0
    cutmix: float = 0.0
    swa_epochs: int = 0
    swa_lr: float = 0.0
    distill_alpha: float = 0.5
    distill_type: str = "hard"
    distill_tau: float = 1.0

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise EaqError(f"unknown optimizer {self.optimizer!r}; valid: sgd, adamw")
        if self.schedule not in ("onecycle", "cosine"):
            raise EaqError(f"unknown schedule {self.schedule!r}; valid: onecycle, cosine")
        for name in ("lr", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise EaqError(f"recipe {name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.swa_epochs <= self.epochs:
            raise EaqError(
                f"recipe swa_epochs must be between 0 and epochs ({self.epochs}), "
                f"got {self.swa_epochs}"
            )
        if self.swa_epochs and self.swa_lr <= 0:
            raise EaqError(f"recipe swa_epochs={self.swa_epochs} needs swa_lr > 0, e.g. 0.05")
        if not 0 <= self.distill_alpha <= 1:
            raise EaqError(f"recipe distill_alpha must be in [0, 1], got {self.distill_alpha}")
        if self.distill_type not in ("hard", "soft"):
            raise EaqError(f"unknown distill_type {self.distill_type!r}; valid: hard, soft")
        if self.distill_tau <= 0:
            raise EaqError(f"recipe distill_tau must be > 0, got {self.distill_tau}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Recipe:
        """A recipe as ``to_dict`` stored it; fields added since then take their defaults.

        Examples:
            >>> old = RECIPES["resnet_sgd"].to_dict()
            >>> del old["distill_tau"]
            >>> Recipe.from_dict(old) == RECIPES["resnet_sgd"]
            True
        """
        return cls(**values)

    def with_overrides(self, **overrides) -> Recipe:
        """A copy with the given fields changed.

        A value must have the field's type (an int is taken for a float field); None turns
        ``randaugment`` off, and a RandAugment string must be one that timm reads.

        Examples:
            >>> RECIPES["resnet_sgd"].with_overrides(mixup=0.2).mixup
            0.2
            >>> RECIPES["vit_adamw"].with_overrides(randaugment=None).randaugment is None
            True
        """
        valid = {f.name for f in fields(self)}
        bad = sorted(set(overrides) - valid)
        if bad:
            raise EaqError(f"unknown recipe field(s) {bad}; {choices_hint(sorted(valid))}")
        declared = {f.name: f.type for f in fields(self)}  # "float", "int", ... (annotations)
        changes = {}
        for key, value in overrides.items():
            if declared[key] == "str | None":  # randaugment: a timm string, or None (off)
                changes[key] = _checked_randaugment(value)
                continue
            kind = {"float": float, "int": int, "bool": bool, "str": str}[declared[key]]
            if not like_default(value, kind()):
                raise EaqError(
                    f"recipe {key} must be {kind.__name__}, got {value!r} ({type(value).__name__})"
                )
            changes[key] = float(value) if kind is float else value
        return replace(self, **changes)


def _checked_randaugment(value) -> str | None:
    """A RandAugment string timm reads (``rand-m9-mstd0.5``), or None (off)."""
    if value is None:
        return None
    hint = "a timm RandAugment string such as rand-m9-mstd0.5, or nothing (randaugment=) for off"
    if not isinstance(value, str):
        raise EaqError(f"recipe randaugment must be {hint}; got {value!r}")
    from timm.data.auto_augment import rand_augment_transform

    try:
        rand_augment_transform(value, {})
    except Exception:  # timm asserts on strings it cannot read
        raise EaqError(f"recipe randaugment {value!r} is not {hint}") from None
    return value


RECIPES: dict[str, Recipe] = {
    # SGD + Nesterov momentum, one-cycle schedule, weight decay 5e-4, crop + flip, label smoothing
    # 0.1: the usual CIFAR ResNet recipe (e.g. He et al. 2016; Smith & Topin 2019 for one-cycle).
    "resnet_sgd": Recipe(
        name="resnet_sgd",
        optimizer="sgd",
        lr=0.1,
        weight_decay=5e-4,
        epochs=60,
        batch_size=128,
        schedule="onecycle",
        warmup_epochs=3.0,
    ),
    # AdamW, warm-up + cosine, RandAugment, mixup/cutmix: DeiT's recipe (Touvron et al. 2021)
    # scaled to CIFAR (smaller batch, more epochs).
    "vit_adamw": Recipe(
        name="vit_adamw",
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.05,
        epochs=200,
        batch_size=128,
        schedule="cosine",
        warmup_epochs=10.0,
        randaugment="rand-m9-mstd0.5-inc1",
        mixup=0.8,
        cutmix=1.0,
    ),
}


def recipe_for(family: str, name: str | None = None) -> Recipe:
    """The named recipe, or the default for a model family (``cnn`` or ``vit``)."""
    if name is None:
        name = "vit_adamw" if family == "vit" else "resnet_sgd"
    if name not in RECIPES:
        raise EaqError(f"unknown recipe {name!r}; {choices_hint(RECIPES)}")
    return RECIPES[name]
