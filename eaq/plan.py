"""A quantization plan: which layer gets which widths, as data.

A :class:`Plan` maps layer names to a :class:`LayerConfig` (or to ``None``: keep the layer in
floating point). Rules are looked up in this order:

1. an exact layer name (``"layer1.0.conv1"``);
2. the first ``"re:<pattern>"`` rule whose pattern matches the whole name;
3. the plan's ``default``.

The seed's policy, the first and the last weight layer at 8 bits, is the option
``first_last_8bit`` (on by default); an exact-name rule overrides it. Plans round-trip through
JSON, so search strategies can write them and :func:`eaq.nn.quantize_` can apply them.

Examples:
    >>> plan = Plan.uniform(4, 4)
    >>> Plan.from_json(plan.to_json()) == plan
    True
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from eaq.errors import EaqError
from eaq.quant import (
    Granularity,
    PerChannel,
    PerTensor,
    QuantSpec,
    format_granularity,
    parse_granularity,
)

LAYER_KINDS = ("conv", "linear", "matmul")
WEIGHT_KINDS = ("conv", "linear")
SOFTMAX_QUANTIZERS = ("uniform", "log2", "twin")
GELU_QUANTIZERS = ("uniform", "twin")
INPUT_ROLES = ("softmax", "gelu")
"""What a layer knows about an input: post-softmax (the attention probabilities that
``av_matmul`` multiplies) or post-GELU (the input of an MLP's second linear)."""


@dataclass(frozen=True)
class LayerRef:
    """A quantizable layer of a model: its module path and kind (conv, linear or matmul)."""

    name: str
    kind: str


@dataclass(frozen=True)
class LayerConfig:
    """How one layer is quantized.

    Attributes:
        w_bits: weight width, or None to keep weights in floating point (ignored for matmuls).
        a_bits: input-activation width (both inputs of a matmul), or None for float inputs.
        granularity: weight granularity (activations are per tensor).
        observer: activation observer name.
        w_observer: weight observer name.
        symmetric: symmetric (zero point 0) or affine, for weights and activations.
        softmax_quantizer: quantizer of post-softmax inputs (:data:`SOFTMAX_QUANTIZERS`):
            ``uniform``, ``log2`` or ``twin`` (see :mod:`eaq.quant.nonuniform`).
        gelu_quantizer: quantizer of post-GELU inputs (:data:`GELU_QUANTIZERS`): ``uniform``
            or ``twin``.
    """

    w_bits: int | None = 8
    a_bits: int | None = 8
    granularity: Granularity = field(default_factory=lambda: PerChannel(0))
    observer: str = "minmax"
    w_observer: str = "minmax"
    symmetric: bool = True
    softmax_quantizer: str = "uniform"
    gelu_quantizer: str = "uniform"

    def __post_init__(self) -> None:
        # QuantSpec validates bits and observer names with user-facing messages.
        self.weight_spec()
        self.act_spec()
        for name, valid in (
            ("softmax_quantizer", SOFTMAX_QUANTIZERS),
            ("gelu_quantizer", GELU_QUANTIZERS),
        ):
            value = getattr(self, name)
            if value not in valid:
                raise EaqError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")

    def act_quantizer(self, role: str | None) -> str:
        """The quantizer kind of an input with ``role`` (:data:`INPUT_ROLES`; None: uniform)."""
        if role is None:
            return "uniform"
        if role == "softmax":
            return self.softmax_quantizer
        if role == "gelu":
            return self.gelu_quantizer
        raise ValueError(f"unknown input role {role!r}; valid: {', '.join(INPUT_ROLES)}")

    def weight_spec(self) -> QuantSpec | None:
        """The weight quantizer's spec (signed, symmetric or affine), or None for float weights."""
        if self.w_bits is None:
            return None
        return QuantSpec(
            bits=self.w_bits,
            symmetric=self.symmetric,
            signed=True,
            granularity=self.granularity,
            observer=self.w_observer,
        )

    def act_spec(self) -> QuantSpec | None:
        """The input quantizer's spec (sign chosen at calibration), or None for float inputs."""
        if self.a_bits is None:
            return None
        return QuantSpec(
            bits=self.a_bits,
            symmetric=self.symmetric,
            signed=None,
            granularity=PerTensor(),
            observer=self.observer,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["granularity"] = format_granularity(self.granularity)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LayerConfig:
        unknown = set(d) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise EaqError(
                f"unknown layer-config field(s) {sorted(unknown)}; "
                f"valid: {', '.join(cls.__dataclass_fields__)}"
            )
        d = dict(d)
        if "granularity" in d:
            d["granularity"] = parse_granularity(d["granularity"])
        return cls(**d)


def first_last_layers(layers: Sequence[LayerRef]) -> set[str]:
    """The first and the last weight layer (conv or linear): the layers the seed's policy,
    ``first_last_8bit``, keeps at 8 bits. The one definition of that policy's layers.

    Examples:
        >>> refs = [LayerRef("a", "conv"), LayerRef("m", "matmul"), LayerRef("z", "linear")]
        >>> sorted(first_last_layers(refs))
        ['a', 'z']
    """
    weighted = [ref.name for ref in layers if ref.kind in WEIGHT_KINDS]
    return {weighted[0], weighted[-1]} if weighted else set()


@dataclass(frozen=True)
class LayerOption:
    """A quantizer setting of :class:`LayerConfig` that users set by name.

    :data:`LAYER_OPTIONS` is the one list of them: the command line's options (``--observer``,
    ``--symmetric false``, ...) and a study config's keys are made from it, so both take the
    same names, values and defaults.

    Attributes:
        name: the :class:`LayerConfig` field and the study key (``w_observer``).
        help: one line for ``--help``.
        choices: the valid values (a callable, for registries filled at import), or None.
    """

    name: str
    help: str
    choices: object = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def default(self):
        value = getattr(LayerConfig(), self.name)
        return format_granularity(value) if self.name == "granularity" else value

    def valid(self) -> list | None:
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)


def _observers() -> list[str]:
    from eaq.quant import observer_names

    return observer_names()


LAYER_OPTIONS: tuple[LayerOption, ...] = (
    LayerOption("granularity", "weight granularity: tensor, channel or group:N"),
    LayerOption("observer", "activation observer", _observers),
    LayerOption("w_observer", "weight observer", _observers),
    LayerOption("symmetric", "symmetric ranges (zero point 0); false: affine ranges"),
    LayerOption(
        "softmax_quantizer",
        "quantizer of the attention probabilities (post-softmax inputs)",
        SOFTMAX_QUANTIZERS,
    ),
    LayerOption("gelu_quantizer", "quantizer of post-GELU inputs (an MLP's fc2)", GELU_QUANTIZERS),
)


def layer_config(w_bits: int | None, a_bits: int | None, **options) -> LayerConfig:
    """A :class:`LayerConfig` from :data:`LAYER_OPTIONS` values as users write them
    (granularity as text); options not given take their defaults.

    Examples:
        >>> layer_config(4, 8, granularity="tensor", symmetric=False).granularity
        PerTensor()
    """
    unknown = sorted(set(options) - {o.name for o in LAYER_OPTIONS})
    if unknown:
        raise EaqError(
            f"unknown layer option(s) {unknown}; valid: {[o.name for o in LAYER_OPTIONS]}"
        )
    values = {o.name: options.get(o.name, o.default) for o in LAYER_OPTIONS}
    values["granularity"] = parse_granularity(values["granularity"])
    return LayerConfig(w_bits=w_bits, a_bits=a_bits, **values)


def _config_to_json(c: LayerConfig | None) -> dict | None:
    return None if c is None else c.to_dict()


def _config_from_json(d: dict | None) -> LayerConfig | None:
    return None if d is None else LayerConfig.from_dict(d)


@dataclass(frozen=True)
class Plan:
    """Per-layer quantization settings; see the module docstring for the lookup order.

    Attributes:
        default: the config of layers no rule names (None: leave them in float).
        rules: ordered ``(key, config)`` pairs; a key is an exact layer name or ``"re:<regex>"``.
        first_last_8bit: keep the first and last weight layer at 8 bits (the seed's policy).
        quantize_outputs: also quantize the output of each conv/linear layer whose output no
            quantized layer reads next (through BatchNorm, ReLU, dropout): a residual branch
            before its add, a conv before pooling. At its input width. Integer deployment
            needs these (:func:`eaq.nn.open_outputs` finds them); the logits stay float.
    """

    default: LayerConfig | None = field(default_factory=LayerConfig)
    rules: tuple[tuple[str, LayerConfig | None], ...] = ()
    first_last_8bit: bool = True
    quantize_outputs: bool = False

    def __post_init__(self) -> None:
        for name in ("first_last_8bit", "quantize_outputs"):
            if not isinstance(getattr(self, name), bool):
                raise EaqError(f"plan {name} must be true or false, got {getattr(self, name)!r}")
        for key, _ in self.rules:
            if key.startswith("re:"):
                try:
                    re.compile(key[3:])
                except re.error as e:
                    raise EaqError(
                        f"plan rule {key!r} is not a valid regular expression: {e}"
                    ) from None

    @classmethod
    def uniform(
        cls,
        w_bits: int | None,
        a_bits: int | None,
        *,
        granularity: Granularity | None = None,
        observer: str = "minmax",
        w_observer: str = "minmax",
        symmetric: bool = True,
        first_last_8bit: bool = True,
        softmax_quantizer: str = "uniform",
        gelu_quantizer: str = "uniform",
        quantize_outputs: bool = False,
    ) -> Plan:
        """Every layer at the same widths."""
        cfg = LayerConfig(
            w_bits=w_bits,
            a_bits=a_bits,
            granularity=granularity if granularity is not None else PerChannel(0),
            observer=observer,
            w_observer=w_observer,
            symmetric=symmetric,
            softmax_quantizer=softmax_quantizer,
            gelu_quantizer=gelu_quantizer,
        )
        return cls(default=cfg, first_last_8bit=first_last_8bit, quantize_outputs=quantize_outputs)

    def configs(self) -> list[LayerConfig]:
        """Every config the plan can give a layer: the default and each rule's (no ``None``)."""
        return [c for c in (self.default, *(c for _, c in self.rules)) if c is not None]

    def sets(self, width: str) -> bool:
        """Whether some config sets ``width`` (``"w_bits"`` or ``"a_bits"``)."""
        return any(getattr(c, width) is not None for c in self.configs())

    def lookup(self, name: str) -> LayerConfig | None:
        """The config the rules give ``name``, before the first/last policy."""
        for key, cfg in self.rules:
            if key == name:
                return cfg
        for key, cfg in self.rules:
            if key.startswith("re:") and re.fullmatch(key[3:], name):
                return cfg
        return self.default

    def resolve(self, layers: Sequence[LayerRef]) -> dict[str, LayerConfig | None]:
        """Each layer's config, policy applied. A rule that names or matches no layer is an
        error."""
        names = {ref.name for ref in layers}
        exact = {key for key, _ in self.rules if not key.startswith("re:")}
        missing = sorted(exact - names)
        if missing:
            raise EaqError(
                f"plan names layer(s) that the model does not have: {', '.join(missing[:5])}"
                f"{' ...' if len(missing) > 5 else ''}; "
                "run `eaq energy --model M` to list its layers"
            )
        unused = [
            key
            for key, _ in self.rules
            if key.startswith("re:") and not any(re.fullmatch(key[3:], n) for n in names)
        ]
        if unused:
            raise EaqError(
                f"plan rule(s) {', '.join(repr(k) for k in unused[:5])} match no layer of the "
                "model; run `eaq energy --model M` to list its layers"
            )
        resolved = {ref.name: self.lookup(ref.name) for ref in layers}
        if self.first_last_8bit:
            for name in first_last_layers(layers):
                cfg = resolved[name]
                if name in exact or cfg is None:
                    continue
                resolved[name] = replace(
                    cfg,
                    w_bits=None if cfg.w_bits is None else 8,
                    a_bits=None if cfg.a_bits is None else 8,
                )
        return resolved

    def to_dict(self) -> dict:
        d = {
            "default": _config_to_json(self.default),
            "rules": [[key, _config_to_json(cfg)] for key, cfg in self.rules],
            "first_last_8bit": self.first_last_8bit,
        }
        if self.quantize_outputs:  # written only when on: older plans keep their JSON
            d["quantize_outputs"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        if not isinstance(d, dict):
            raise EaqError(
                "a plan must be a JSON object with 'default', 'rules', 'first_last_8bit'"
            )
        fields_ = ("default", "rules", "first_last_8bit", "quantize_outputs")
        unknown = set(d) - set(fields_)
        if unknown:
            raise EaqError(f"unknown plan field(s) {sorted(unknown)}; valid: {', '.join(fields_)}")
        try:
            rules = tuple((str(k), _config_from_json(c)) for k, c in d.get("rules", []))
        except (TypeError, ValueError) as e:
            raise EaqError(f"plan 'rules' must be a list of [name, config] pairs: {e}") from None
        return cls(
            default=_config_from_json(d.get("default")),
            rules=rules,
            first_last_8bit=d.get("first_last_8bit", True),
            quantize_outputs=d.get("quantize_outputs", False),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise EaqError(f"plan is not valid JSON: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        p = Path(path)
        if not p.is_file():
            raise EaqError(f"plan file not found: {p}")
        return cls.from_json(p.read_text())
