"""Study configs: YAML -> frozen, validated dataclasses; errors name the field and its line.

A study file::

    study: resnet20-cifar10          # a name
    profile: seed                    # energy profile
    seeds: [0, 1, 2]                 # calibration seeds
    calib_size: 256
    batch_size: 256
    method: ptq                      # PTQ method (``eaq methods``); a config may override it
    method_options: {}               # the method's options, e.g. {iters: 500}
    limit: null                      # evaluate on the first N test images (null: all)
    sensitivity: {measure: l2, widths: [4, 6, 8], a_widths: null, score_size: 2048}
    models:
      - {name: resnet20_cifar, dataset: cifar10, weights: default}
    configs:
      - {name: FP32, strategy: fp32}
      - {name: W8A8, strategy: uniform, w_bits: 8}
      - {name: W8A8-tensor, strategy: uniform, w_bits: 8, granularity: tensor}
      - {name: mixed, strategy: percentile, low: 25, high: 75}
      - {name: budget, strategy: budget, budgets: [0.1, W6A6, 0.14]}
      - {name: W4A4-adaround, strategy: uniform, w_bits: 4, method: adaround,
         method_options: {iters: 500}}

Every config takes ``granularity``, ``observer``, ``w_observer``, ``symmetric``,
``first_last_8bit``, ``measure``, ``method``, ``method_options``, ``softmax_quantizer``
(uniform, log2, twin), ``gelu_quantizer`` (uniform, twin) and ``models`` (the study models it
runs on; default all); the other keys are the strategy's options (see
:mod:`eaq.mixed.strategies`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from eaq.errors import EaqError, choices_hint
from eaq.mixed.sensitivity import MEASURES
from eaq.mixed.strategies import get_strategy, strategy_names
from eaq.plan import LAYER_OPTIONS, LayerConfig, layer_config
from eaq.quant import parse_granularity


class _Map(dict):
    """A mapping that remembers the line of each key (1-based)."""

    line: int = 0
    key_lines: dict


class _Seq(list):
    line: int = 0
    item_lines: list


def _convert(loader: yaml.SafeLoader, node: yaml.Node):
    if isinstance(node, yaml.MappingNode):
        out = _Map()
        out.line = node.start_mark.line + 1
        out.key_lines = {}
        for k, v in node.value:
            key = loader.construct_object(k, deep=True)
            out[key] = _convert(loader, v)
            out.key_lines[key] = k.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        out = _Seq(_convert(loader, v) for v in node.value)
        out.line = node.start_mark.line + 1
        out.item_lines = [v.start_mark.line + 1 for v in node.value]
        return out
    return loader.construct_object(node, deep=True)


def _parse_yaml(text: str, source: str) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else _convert(loader, node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise EaqError(f"{source}: {where}malformed YAML: {problem}") from None
    finally:
        loader.dispose()


COMMON_KEYS = ("name", "strategy", *(o.name for o in LAYER_OPTIONS))
COMMON_KEYS += ("first_last_8bit", "measure", "method", "method_options", "quantize_outputs")
COMMON_KEYS += ("onnx", "models")
OFF_BY_DEFAULT = {"quantize_outputs": False, "onnx": False, "models": None}
"""Config keys written into the study's fingerprint only when set (older studies keep theirs)."""


@dataclass(frozen=True)
class ModelEntry:
    """One model of the study."""

    name: str
    dataset: str | None = None
    weights: str = "default"
    num_classes: int | None = None


@dataclass(frozen=True)
class SensitivityConfig:
    """How sensitivities are measured (once per model and seed)."""

    measure: str = "l2"
    widths: tuple[int, ...] = (4, 6, 8)
    a_widths: tuple[int, ...] | None = None
    calib_size: int | None = None
    kl_calib_size: int = 64
    score_size: int = 2048  # held-out training images that score plans (budget, select: loss)

    def candidates(self) -> list[tuple[int, int]]:
        from eaq.mixed.sensitivity import candidate_grid

        return candidate_grid(self.widths, self.a_widths)


@dataclass(frozen=True)
class ConfigEntry:
    """One configuration: a strategy, its options and the shared quantization settings."""

    name: str
    strategy: str
    options: tuple[tuple[str, Any], ...] = ()
    granularity: str = "channel"
    observer: str = "minmax"
    w_observer: str = "minmax"
    symmetric: bool = True
    first_last_8bit: bool = True
    measure: str | None = None  # sensitivity measure; None: the study's
    method: str | None = None  # PTQ method; None: the study's
    method_options: tuple[tuple[str, Any], ...] | None = None  # None: the study's
    softmax_quantizer: str = "uniform"  # post-softmax inputs: uniform, log2 or twin
    gelu_quantizer: str = "uniform"  # post-GELU inputs: uniform or twin
    quantize_outputs: bool = False  # Plan.quantize_outputs: integer kernels everywhere
    onnx: bool = False  # also export each row to ONNX and evaluate it on onnxruntime
    models: tuple[str, ...] | None = None  # the models this config runs on; None: every model

    def base(self) -> LayerConfig:
        return layer_config(8, 8, **{o.name: getattr(self, o.name) for o in LAYER_OPTIONS})

    @property
    def options_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.options}


@dataclass(frozen=True)
class StudyConfig:
    """A whole study; :meth:`fingerprint` identifies it (what changes results, not the name)."""

    name: str
    models: tuple[ModelEntry, ...]
    configs: tuple[ConfigEntry, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    profile: str = "seed"
    calib_size: int = 256
    batch_size: int = 256
    method: str = "ptq"
    method_options: tuple[tuple[str, Any], ...] = ()
    limit: int | None = None
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["configs"] = [
            {
                **{
                    k: v
                    for k, v in asdict(c).items()
                    if k != "options" and not (k in OFF_BY_DEFAULT and v == OFF_BY_DEFAULT[k])
                },
                **c.options_dict,
            }
            for c in self.configs
        ]
        return json.loads(json.dumps(d))

    def fingerprint(self) -> str:
        d = self.to_dict()
        d.pop("name")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def with_limit(self, limit: int | None) -> StudyConfig:
        from dataclasses import replace

        return self if limit is None else replace(self, limit=limit)

    def with_seeds(self, seeds: list[int] | tuple[int, ...] | None) -> StudyConfig:
        """The same study with other calibration seeds (None: unchanged)."""
        from dataclasses import replace

        if seeds is None:
            return self
        if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
            raise EaqError(f"seeds must be distinct integers >= 0, got {list(seeds)}")
        return replace(self, seeds=tuple(seeds))

    def method_of(self, entry: ConfigEntry) -> tuple[str, dict]:
        """The PTQ method and options that ``entry`` is quantized with."""
        if entry.method is None:
            return self.method, dict(self.method_options)
        opts = entry.method_options if entry.method_options is not None else ()
        return entry.method, dict(opts)

    def configs_for(self, model: str) -> tuple[ConfigEntry, ...]:
        """The configs that run on ``model`` (those without ``models``, or naming it)."""
        return tuple(c for c in self.configs if c.models is None or model in c.models)

    def needs_sensitivity(self) -> bool:
        return any(get_strategy(c.strategy).needs_sensitivity for c in self.configs)


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, line: int | None, path: str, msg: str) -> EaqError:
        where = f"line {line}: " if line else ""
        return EaqError(f"{self.source}: {where}field '{path}': {msg}")

    def mapping(self, value, line, path) -> _Map:
        if not isinstance(value, dict):
            raise self.fail(line, path, f"must be a mapping, got {type(value).__name__}")
        return value

    def keys(self, m: _Map, path: str, valid) -> None:
        for k in m:
            if k not in valid:
                raise self.fail(
                    m.key_lines.get(k), f"{path}{k}", f"unknown field; {choices_hint(valid)}"
                )

    def int_(self, m: _Map, key, path, *, minimum=1, default=None, required=False):
        if key not in m:
            if required:
                raise self.fail(m.line, path + key, "is required")
            return default
        v = m[key]
        if v is None and not required:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self.fail(
                m.key_lines[key], path + key, f"must be an integer >= {minimum}, got {v!r}"
            )
        return v

    def str_(self, m: _Map, key, path, *, default=None, required=False, choices=None):
        if key not in m:
            if required:
                raise self.fail(m.line, path + key, "is required")
            return default
        v = m[key]
        if not isinstance(v, str) or not v:
            raise self.fail(m.key_lines[key], path + key, f"must be a non-empty string, got {v!r}")
        if choices is not None and v not in choices:
            raise self.fail(
                m.key_lines[key], path + key, f"unknown value {v!r}; {choices_hint(choices)}"
            )
        return v

    def bool_(self, m: _Map, key, path, *, default):
        if key not in m:
            return default
        if not isinstance(m[key], bool):
            raise self.fail(m.key_lines[key], path + key, f"must be true or false, got {m[key]!r}")
        return m[key]

    def int_list(self, m: _Map, key, path, *, default, minimum=0):
        if key not in m:
            return default
        v = m[key]
        if v is None:
            return None
        if isinstance(v, int) and not isinstance(v, bool):
            v = [v]
        if (
            not isinstance(v, list)
            or not v
            or any(isinstance(x, bool) or not isinstance(x, int) or x < minimum for x in v)
        ):
            raise self.fail(
                m.key_lines[key], path + key, f"must be a list of integers >= {minimum}, got {v!r}"
            )
        return tuple(v)

    def model_list(self, m: _Map, path: str, names: list[str]) -> tuple[str, ...] | None:
        """A config's ``models``: a non-empty list of the study's model names (None: absent)."""
        if "models" not in m:
            return None
        v = m["models"]
        v = [v] if isinstance(v, str) else v
        line = m.key_lines["models"]
        if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
            raise self.fail(line, path + "models", f"must be a list of model names, got {v!r}")
        for x in v:
            if x not in names:
                msg = f"{x!r} is not a model of this study; {choices_hint(names)}"
                raise self.fail(line, path + "models", msg)
        return tuple(v)

    def method_options(self, m: _Map, path: str, method: str):
        """``method_options`` of ``m`` checked against ``method``'s options (None: absent)."""
        from eaq.methods import check_method_options

        if "method_options" not in m:
            return None
        line = m.key_lines["method_options"]
        v = m["method_options"] if m["method_options"] is not None else {}
        self.mapping(v, line, path + "method_options")
        try:
            check_method_options(method, dict(v))
        except EaqError as e:
            raise self.fail(line, path + "method_options", str(e)) from None
        return tuple(sorted(v.items()))


def _freeze(v):
    return tuple(_freeze(x) for x in v) if isinstance(v, list) else v


def parse_study(text: str, source: str = "<study>") -> StudyConfig:
    """Parse and validate a study from YAML text."""
    from eaq.energy import profile_names
    from eaq.methods import method_names
    from eaq.models import model_names

    c = _Checker(source)
    root = _parse_yaml(text, source)
    if root is None:
        raise EaqError(f"{source}: the study file is empty")
    root = c.mapping(root, 1, "<top level>")
    top = ("study", "models", "configs", "seeds", "profile", "calib_size", "batch_size")
    top += ("method", "method_options", "limit", "sensitivity")
    c.keys(root, "", top)
    name = c.str_(root, "study", "", required=True)
    seeds = c.int_list(root, "seeds", "", default=(0, 1, 2))
    if seeds is None or len(set(seeds)) != len(seeds):
        raise c.fail(root.key_lines.get("seeds"), "seeds", "must be distinct integers")
    profile = c.str_(root, "profile", "", default="seed")
    if profile not in profile_names() and not Path(profile).is_file():
        raise c.fail(
            root.key_lines["profile"],
            "profile",
            f"unknown profile {profile!r}; {choices_hint(profile_names())}",
        )
    method = c.str_(root, "method", "", default="ptq", choices=method_names())
    method_options = c.method_options(root, "", method) or ()
    calib_size = c.int_(root, "calib_size", "", default=256)
    batch_size = c.int_(root, "batch_size", "", default=256)
    limit = c.int_(root, "limit", "", default=None)

    sens = SensitivityConfig()
    if "sensitivity" in root:
        s = c.mapping(root["sensitivity"], root.key_lines["sensitivity"], "sensitivity")
        s_keys = ("measure", "widths", "a_widths", "calib_size", "kl_calib_size", "score_size")
        c.keys(s, "sensitivity.", s_keys)
        sens = SensitivityConfig(
            measure=c.str_(s, "measure", "sensitivity.", default="l2", choices=MEASURES),
            widths=c.int_list(s, "widths", "sensitivity.", default=(4, 6, 8), minimum=2),
            a_widths=c.int_list(s, "a_widths", "sensitivity.", default=None, minimum=2),
            calib_size=c.int_(s, "calib_size", "sensitivity.", default=None),
            kl_calib_size=c.int_(s, "kl_calib_size", "sensitivity.", default=64),
            score_size=c.int_(s, "score_size", "sensitivity.", default=2048),
        )
        if sens.widths is None:
            raise c.fail(s.key_lines["widths"], "sensitivity.widths", "must not be null")

    if "models" not in root:
        raise c.fail(root.line, "models", "is required")
    models_v = root["models"]
    if not isinstance(models_v, list) or not models_v:
        raise c.fail(root.key_lines["models"], "models", "must be a non-empty list")
    models = []
    for i, m in enumerate(models_v):
        p = f"models[{i}]."
        if isinstance(m, str):
            m = _Map(name=m)
            m.line, m.key_lines = models_v.item_lines[i], {"name": models_v.item_lines[i]}
        m = c.mapping(m, models_v.item_lines[i], p[:-1])
        c.keys(m, p, ("name", "dataset", "weights", "num_classes"))
        models.append(
            ModelEntry(
                name=c.str_(m, "name", p, required=True, choices=model_names()),
                dataset=c.str_(m, "dataset", p, default=None),
                weights=c.str_(m, "weights", p, default="default"),
                num_classes=c.int_(m, "num_classes", p, default=None),
            )
        )

    if "configs" not in root:
        raise c.fail(root.line, "configs", "is required")
    configs_v = root["configs"]
    if not isinstance(configs_v, list) or not configs_v:
        raise c.fail(root.key_lines["configs"], "configs", "must be a non-empty list")
    configs = []
    seen = set()
    for i, m in enumerate(configs_v):
        p = f"configs[{i}]."
        m = c.mapping(m, configs_v.item_lines[i], p[:-1])
        strategy = c.str_(m, "strategy", p, required=True, choices=strategy_names())
        cname = c.str_(m, "name", p, required=True)
        if cname in seen or "@" in cname:
            raise c.fail(m.key_lines["name"], p + "name", f"{cname!r} is repeated or holds '@'")
        seen.add(cname)
        valid = list(COMMON_KEYS) + list(get_strategy(strategy).options)
        c.keys(m, p, valid)
        gran = c.str_(m, "granularity", p, default="channel")
        try:
            parse_granularity(gran)
        except EaqError as e:
            raise c.fail(m.key_lines["granularity"], p + "granularity", str(e)) from None
        layer = {
            o.name: c.bool_(m, o.name, p, default=o.default)
            if isinstance(o.default, bool)
            else c.str_(m, o.name, p, default=o.default, choices=o.valid())
            for o in LAYER_OPTIONS
            if o.name != "granularity"
        }
        entry = ConfigEntry(
            name=cname,
            strategy=strategy,
            options=tuple((k, _freeze(v)) for k, v in m.items() if k not in COMMON_KEYS),
            granularity=gran,
            **layer,
            first_last_8bit=c.bool_(m, "first_last_8bit", p, default=True),
            measure=c.str_(m, "measure", p, default=None, choices=MEASURES),
            method=c.str_(m, "method", p, default=None, choices=method_names()),
            quantize_outputs=c.bool_(m, "quantize_outputs", p, default=False),
            onnx=c.bool_(m, "onnx", p, default=False),
            models=c.model_list(m, p, [e.name for e in models]),
        )
        if entry.onnx and (entry.softmax_quantizer, entry.gelu_quantizer) != ("uniform",) * 2:
            raise c.fail(
                m.key_lines["onnx"],
                p + "onnx",
                "ONNX QDQ has no form for log2/twin quantizers; use uniform softmax and GELU "
                "quantizers in this config, or drop onnx",
            )
        entry_method = entry.method or method
        if "method_options" in m:
            from dataclasses import replace

            entry = replace(entry, method_options=c.method_options(m, p, entry_method) or ())
        configs.append(entry)
    return StudyConfig(
        name=name,
        models=tuple(models),
        configs=tuple(configs),
        seeds=tuple(seeds),
        profile=profile,
        calib_size=calib_size,
        batch_size=batch_size,
        method=method,
        method_options=method_options,
        limit=limit,
        sensitivity=sens,
    )


def load_study(path: str | Path) -> StudyConfig:
    """Read and validate a study file."""
    p = Path(path)
    if not p.is_file():
        raise EaqError(f"study file not found: {p}")
    return parse_study(p.read_text(), str(p))
