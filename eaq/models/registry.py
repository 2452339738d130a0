"""A registry of named models, in the style of timm's ``register_model``.

A model is registered with a :class:`ModelInfo` (its defaults and the input normalisation its
weights expect) and a builder ``fn(num_classes, input_size) -> nn.Module``. :func:`create_model`
builds one by name and loads its weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from eaq.errors import EaqError
from eaq.models.weights import load_weights_
from eaq.paths import default_data_root, repo_root
from eaq.registry import Registry

Builder = Callable[[int, int], nn.Module]
"""``fn(num_classes, input_size) -> nn.Module`` with random weights."""

WEIGHTS_HINT = "pass --weights PATH, --weights pretrained or --weights random"


@dataclass(frozen=True)
class ModelInfo:
    """What eaq knows about a registered model.

    Attributes:
        name: the registry name (``--model``).
        description: one line for ``eaq models``.
        family: ``"cnn"`` or ``"vit"``.
        num_classes: default number of output classes.
        input_size: default square input size in pixels.
        mean: per-channel input mean the weights expect (RGB, on [0, 1] pixels).
        std: per-channel input standard deviation the weights expect.
        default_dataset: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``.
        default_weights: a weights file relative to the data root or to the project (its
            ``checkpoints/`` folder), or None when there is none.
    """

    name: str
    description: str
    family: str
    num_classes: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_dataset: str
    default_weights: str | None = None


@dataclass(frozen=True)
class _Entry:
    info: ModelInfo
    build: Builder
    pretrained: Builder | None


MODELS: Registry[_Entry] = Registry("model")


def register_model(
    info: ModelInfo, *, pretrained: Builder | None = None
) -> Callable[[Builder], Builder]:
    """Register a builder under ``info.name``.

    Args:
        info: the model's defaults.
        pretrained: optional ``fn(num_classes, input_size)`` that builds the model with weights
            from its online source (``--weights pretrained``); it raises :class:`EaqError` when
            they cannot be had.

    Returns:
        A decorator that registers ``fn(num_classes, input_size) -> nn.Module`` and returns it.
    """

    def decorator(fn: Builder) -> Builder:
        MODELS.add(info.name, _Entry(info, fn, pretrained))
        return fn

    return decorator


def list_models() -> list[ModelInfo]:
    """All registered models, sorted by name."""
    return [MODELS.get(name).info for name in MODELS.names(sort=True)]


def model_names() -> list[str]:
    """The registered model names, sorted."""
    return MODELS.names(sort=True)


def _entry(name: str) -> _Entry:
    return MODELS.get(name)


def get_model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model; :class:`EaqError` for an unknown name."""
    return _entry(name).info


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    input_size: int | None = None,
    weights: str | Path | None = None,
    data_root: Path | None = None,
) -> nn.Module:
    """Build a registered model, load its weights and put it in eval mode.

    Args:
        name: a registered model name (see :func:`list_models`).
        num_classes: output classes; the model's default when None.
        input_size: input size in pixels; the model's default when None.
        weights: ``None`` or ``"random"``: random init; ``"default"``: the registry's default
            file under ``data_root``; ``"pretrained"``: the online source (timm/torchvision);
            any other string or path: a local state-dict file.
        data_root: where ``"default"`` weights are looked up; :func:`default_data_root` if None.

    Returns:
        The model, in ``eval()`` mode.

    Raises:
        EaqError: unknown name, no default weights, a missing or mismatched weights file, or
            pretrained weights that cannot be downloaded.

    Examples:
        >>> model = create_model("resnet20_cifar")
        >>> model.training
        False
    """
    entry = _entry(name)
    info = entry.info
    n_cls = info.num_classes if num_classes is None else int(num_classes)
    size = info.input_size if input_size is None else int(input_size)
    if n_cls < 1:
        raise EaqError(f"num_classes must be >= 1, got {n_cls}")
    if size < 1:
        raise EaqError(f"input_size must be >= 1, got {size}")

    key = None if weights is None else str(weights)
    if key is None or key == "random":
        model = entry.build(n_cls, size)
    elif key == "pretrained":
        if entry.pretrained is None:
            raise EaqError(
                f"no online pretrained weights for {name}; "
                "pass --weights PATH (a state-dict file) or --weights random"
            )
        model = entry.pretrained(n_cls, size)
    else:
        model = entry.build(n_cls, size)
        load_weights_(model, weights_file(name, key, data_root), model_name=name)
    return model.eval()


def weights_file(
    name: str, weights: str | Path | None, data_root: Path | None = None
) -> Path | None:
    """The local file that ``weights`` (as :func:`create_model` takes it) names, or None.

    None for random and online-pretrained weights. ``"default"`` looks in the data root first
    (shared files such as the ResNet-20), then in the project's own trained checkpoints
    (``checkpoints/`` beside the package); EaqError when the model has none or none is found.
    """
    key = None if weights is None else str(weights)
    if key in (None, "random", "pretrained"):
        return None
    if key != "default":
        return Path(key).expanduser()
    info = _entry(name).info
    if info.default_weights is None:
        raise EaqError(f"no default weights for {name}; {WEIGHTS_HINT}")
    root = default_data_root() if data_root is None else Path(data_root)
    candidates = [root / info.default_weights, repo_root() / info.default_weights]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise EaqError(
            f"default weights for {name} not found: looked for "
            f"{' and '.join(map(str, candidates))}; set --data-root or "
            f"EAQ_DATA_ROOT to a folder holding {info.default_weights}, or "
            f"{WEIGHTS_HINT}"
        )
    return path
