"""Cost profiles: the per-operation and per-bit constants of the energy model, with sources.

A :class:`CostProfile` says what one multiply-accumulate and one stored bit cost. The energy of
a plan (:mod:`eaq.energy.cost`) is ``E = sum_l N_MAC,l * E_MAC,l + sum_l N_mem,l * E_mem,l``:

===============  ==============================================================================
integer MAC      ``int_mult * (m1 * m2) / 64 + int_add * (m1 + m2) / 8``: the multiplier scales
                 as the product of its operand widths (b^2 when they are equal) from the 8 x 8
                 figure, the accumulating add linearly in the product's width ``m1 + m2`` from
                 the 8-bit figure. ``(m1, m2)`` come from the MAC rule (see
                 :data:`MAC_RULES`).
float MAC        ``fp32_mac`` (or ``fp16_mac`` with ``float_format: fp16``) for a layer whose
                 weight or input is left in floating point. The FP32 baseline always uses
                 ``fp32_mac``.
memory           per bit moved: weights ``weight_bits * weight_mem``, the layer's input
                 ``input_bits * act_read``, its output ``output_bits * act_write``.
===============  ==============================================================================

Built-ins: ``seed`` (the seed paper's model, in units of one 8-bit MAC) and ``horowitz45nm``
(picojoules, Horowitz ISSCC 2014). User profiles are YAML files with the same fields, optionally
starting from a registered profile with ``base: NAME``; :func:`get_profile` takes a name or a
path.

Examples:
    >>> get_profile("seed").fp32_mac
    16.0
    >>> sorted(profile_names())[:2]
    ['horowitz45nm', 'seed']
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import yaml

from eaq.errors import EaqError, choices_hint
from eaq.registry import Registry

MAC_RULES = ("bw_ba", "max", "seed")
"""How a MAC's multiplier width follows from the layer's (b_w, b_a); a matmul uses (b_a, b_a).

- ``bw_ba``: operands ``(b_w, b_a)``, multiplier ~ ``b_w * b_a`` (the BOPs view).
- ``max``: operands ``(max, max)``, multiplier ~ ``max(b_w, b_a)^2`` (Spingarn-Eliezer et al.,
  ICLR 2023: multiplier power is dominated by the wider input).
- ``seed``: the seed's one width per layer, ``b = max(b_w, b_a)`` (32 if either is float), used
  for the MAC *and* for every memory element of the layer, as the seed's formula does.
"""
FLOAT_FORMATS = ("fp32", "fp16")

_NUMERIC = (
    "int_mult",
    "int_add",
    "fp32_mac",
    "fp16_mac",
    "weight_mem",
    "act_read",
    "act_write",
)
_STRINGS = ("name", "description", "unit", "mac_rule", "float_format")


@dataclass(frozen=True)
class CostProfile:
    """Energy constants of one hardware model; validated on construction.

    Attributes:
        name: registry name.
        description: one line, shown by ``eaq energy``; include the memory model.
        unit: the energy unit of every constant (``"pJ"``, ``"8-bit MAC"``, ...).
        int_mult: one 8 x 8-bit integer multiply (scaled by ``m1 * m2 / 64``).
        int_add: one 8-bit integer add (scaled by ``(m1 + m2) / 8``, the product width).
        fp32_mac: one FP32 multiply + add.
        fp16_mac: one FP16 multiply + add.
        weight_mem: energy per weight bit read (once per inference).
        act_read: energy per input-activation bit read.
        act_write: energy per output-activation bit written.
        mac_rule: the default MAC rule, one of :data:`MAC_RULES`.
        float_format: how layers left in float are costed (``fp32`` or ``fp16``), MACs and bits.
    """

    name: str
    description: str
    unit: str
    int_mult: float
    int_add: float
    fp32_mac: float
    fp16_mac: float
    weight_mem: float
    act_read: float
    act_write: float
    mac_rule: str = "bw_ba"
    float_format: str = "fp32"

    def __post_init__(self) -> None:
        for f in _STRINGS:
            if not isinstance(getattr(self, f), str):
                raise EaqError(
                    f"cost profile field '{f}' must be a string, got {getattr(self, f)!r}"
                )
        if not self.name:
            raise EaqError("cost profile field 'name' must not be empty")
        for f in _NUMERIC:
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise EaqError(f"cost profile field '{f}' must be a finite number, got {v!r}")
            if v < 0:
                raise EaqError(f"cost profile field '{f}' must be >= 0, got {v!r}")
            object.__setattr__(self, f, float(v))
        if self.mac_rule not in MAC_RULES:
            raise EaqError(
                f"cost profile field 'mac_rule' is {self.mac_rule!r}; {choices_hint(MAC_RULES)}"
            )
        if self.float_format not in FLOAT_FORMATS:
            raise EaqError(
                f"cost profile field 'float_format' is {self.float_format!r}; "
                f"{choices_hint(FLOAT_FORMATS)}"
            )

    @property
    def float_bits(self) -> int:
        """Storage width of a tensor left in float under this profile."""
        return 32 if self.float_format == "fp32" else 16

    @property
    def float_mac(self) -> float:
        """MAC energy of a layer left in float under this profile."""
        return self.fp32_mac if self.float_format == "fp32" else self.fp16_mac

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: object, *, source: str = "cost profile") -> CostProfile:
        """Build from a mapping (a parsed YAML file); ``base: NAME`` starts from a registered one.

        Raises:
            EaqError: naming the unknown, missing or mistyped field.
        """
        if not isinstance(d, dict):
            raise EaqError(f"{source}: must be a mapping of field: value, got {type(d).__name__}")
        d = dict(d)
        valid = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in d if k not in valid and k != "base")
        if unknown:
            raise EaqError(
                f"{source}: unknown field '{unknown[0]}'; {choices_hint(['base', *valid])}"
            )
        base = d.pop("base", None)
        try:
            if base is not None:
                if not isinstance(base, str):
                    raise EaqError(f"field 'base' must be a profile name, got {base!r}")
                return replace(_lookup(base), **d)
            required = [f.name for f in fields(cls) if f.name not in ("mac_rule", "float_format")]
            missing = [f for f in required if f not in d]
            if missing:
                raise EaqError(
                    f"missing field '{missing[0]}' (or give 'base: NAME' to start from a "
                    f"registered profile)"
                )
            return cls(**d)
        except EaqError as e:
            raise EaqError(f"{source}: {e}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> CostProfile:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise EaqError(f"cannot read cost profile {p}: {e.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or "invalid YAML"
            raise EaqError(f"cost profile {p} is not valid YAML{where}: {problem}") from None
        if isinstance(data, dict) and "name" not in data:
            data["name"] = p.stem
        return cls.from_dict(data, source=f"cost profile {p}")


PROFILES: Registry[CostProfile] = Registry("cost profile")


def register_profile(profile: CostProfile, *, overwrite: bool = False) -> CostProfile:
    """Add ``profile`` to the registry under its name and return it."""
    return PROFILES.add(profile.name, profile, overwrite=overwrite)


def profile_names() -> list[str]:
    """Names of the registered profiles."""
    return PROFILES.names()


def _lookup(name: str) -> CostProfile:
    if name in PROFILES:
        return PROFILES.get(name)
    raise EaqError(
        f"unknown cost profile {name!r}; {choices_hint(profile_names())}, or a .yaml file"
    )


def get_profile(name_or_path: str | Path | CostProfile) -> CostProfile:
    """A registered profile by name, or a user profile from a YAML file."""
    if isinstance(name_or_path, CostProfile):
        return name_or_path
    key = str(name_or_path)
    if key in PROFILES:
        return PROFILES.get(key)
    if key.endswith((".yaml", ".yml")) or Path(key).is_file():
        if not Path(key).is_file():
            raise EaqError(f"cost profile file not found: {key}")
        return CostProfile.from_yaml(key)
    return _lookup(key)


# --- built-in profiles ---------------------------------------------------------------------------

SEED = register_profile(
    CostProfile(
        name="seed",
        description=(
            "the seed paper's model (its section 3.5): E_MAC = (b/8)^2, E_mem = 200*(b/8) per "
            "element of parameters + input + output of each Conv/Linear, FP32 as b = 32; unit "
            "= one 8-bit MAC"
        ),
        unit="8-bit MAC",
        # Seed, eq. (7) and section 3.5: E_MAC(b) = (b/8)^2, i.e. 1 for an 8 x 8 MAC; the seed
        # has no separate add term.
        int_mult=1.0,
        int_add=0.0,
        # Seed: FP32 is costed as an integer MAC with b = 32: (32/8)^2 = 16; FP16 likewise (16/8)^2.
        fp32_mac=16.0,
        fp16_mac=4.0,
        # Seed: "MAC-to-memory energy ratio of 1:200" per 8-bit element, E_mem(b) = 200*(b/8),
        # i.e. 25 per bit, the same for weights, inputs and outputs.
        weight_mem=25.0,
        act_read=25.0,
        act_write=25.0,
        mac_rule="seed",
    )
)

_DRAM_PJ_PER_BIT = 1300.0 / 64
_SRAM_PJ_PER_BIT = 20.0 / 64

HOROWITZ45NM = register_profile(
    CostProfile(
        name="horowitz45nm",
        description=(
            "Horowitz ISSCC 2014, 45 nm 0.9 V, pJ: int mult 0.2 pJ at 8x8 scaled by the "
            "MAC rule's m1*m2/64, int add 0.03 pJ at 8 bit scaled linearly, FP32 MAC 3.7+0.9, "
            "FP16 1.1+0.4; memory: "
            "weights read from DRAM once per inference (1.3 nJ/64 bit), each layer's input read "
            "and output written once in a 32 KB SRAM (20 pJ/64 bit)"
        ),
        unit="pJ",
        # Horowitz 2014 (ENERGY.md table): 8-bit int multiply 0.2 pJ. Scaled by m1*m2/64 this
        # gives 3.2 pJ at 32 bit against the table's 3.1 pJ (the table's 15.5x is ~b^2).
        int_mult=0.2,
        # Horowitz 2014: 8-bit int add 0.03 pJ, linear in the width (16 / 32 bit: 0.06 / 0.12
        # against the table's 0.05 / 0.1). The MAC's add is at the product width m1 + m2.
        int_add=0.03,
        # Horowitz 2014: FP32 multiply 3.7 pJ + add 0.9 pJ; FP16 multiply 1.1 pJ + add 0.4 pJ.
        fp32_mac=3.7 + 0.9,
        fp16_mac=1.1 + 0.4,
        # Memory model (stated): every weight is read from DRAM once per inference (no on-chip
        # reuse across inferences, perfect reuse within one). Horowitz 2014: DRAM 64-bit read
        # 1.3-2.6 nJ; the low end, 1300/64 = 20.3 pJ/bit, agrees with Han et al. 2015's 640 pJ
        # per 32-bit DRAM access (20 pJ/bit).
        weight_mem=_DRAM_PJ_PER_BIT,
        # Activations stay on chip: each layer reads its input once and writes its output once
        # in a 32 KB SRAM. Horowitz 2014: 32 KB SRAM 64-bit read 20 pJ -> 0.3125 pJ/bit; a write
        # is taken to cost the same as a read.
        act_read=_SRAM_PJ_PER_BIT,
        act_write=_SRAM_PJ_PER_BIT,
        # Spingarn-Eliezer et al. (ICLR 2023): multiplier power follows the wider input.
        mac_rule="max",
    )
)
