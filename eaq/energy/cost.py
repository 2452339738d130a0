"""The energy and BOPs of a plan: pure functions over :class:`~eaq.energy.stats.ModelStats`.

``E = sum_l N_MAC,l * E_MAC(l) + sum_l N_mem,l * E_mem(l)``, per layer and in total, in the
profile's unit, and relative to the same model in FP32. What each element costs:

=========================  ======================================================================
rule                       MAC operands (m1, m2) and memory widths
=========================  ======================================================================
``bw_ba``                  MAC ~ ``b_w * b_a``; weights at ``b_w``; input and output at ``b_a``
``max``                    MAC ~ ``max(b_w, b_a)^2``; memory as ``bw_ba``
``seed``                   one width ``b = max(b_w, b_a)`` for the MAC and for every element
                           (parameters, input, output), as the seed's formula has one ``b``
=========================  ======================================================================

A matmul (Q*K^T, softmax*V) has no weights: both operands are activations at ``b_a``, so its
``b_w`` is taken to be ``b_a``. A width of None means floating point: the layer's MAC costs
the profile's float MAC (FP32 unless the profile says ``float_format: fp16``) and its float
tensors are stored at 32 (16) bits; in the ``seed`` rule a float operand makes ``b = 32``.
With the same width everywhere every rule gives the same energy, and under profile ``seed``
that is the seed's model exactly. The FP32 baseline costs every layer with ``fp32_mac`` and 32
bits. Element-wise work (softmax, norms, activations, residual adds) is not costed.

BOPs are ``MACs * b_w * b_a`` (a matmul ``b_a * b_a``; float as 32), whatever the profile.

Examples:
    >>> from eaq.energy.stats import LayerStats, ModelStats
    >>> from eaq.energy.profiles import get_profile
    >>> stats = ModelStats((LayerStats("fc", "linear", 100, 100, 10, 10),))
    >>> r = energy(stats, [(8, 8)], get_profile("seed"))
    >>> r.energy, r.energy_fp32  # 100 * 1 + 120 * 200 ; 100 * 16 + 120 * 800
    (24100.0, 97600.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eaq.energy.profiles import MAC_RULES, CostProfile, get_profile
from eaq.energy.stats import ModelStats
from eaq.errors import EaqError, choices_hint
from eaq.plan import LayerRef, Plan

Widths = list[tuple[int | None, int | None]]
MAX_BITS = 32


def layer_widths(stats: ModelStats, plan: Plan) -> Widths:
    """Each layer's ``(w_bits, a_bits)`` under ``plan`` (None: float; a matmul's w_bits is None).

    Raises:
        EaqError: the plan names a layer the model does not have.
    """
    resolved = plan.resolve([LayerRef(layer.name, layer.kind) for layer in stats.layers])
    widths: Widths = []
    for layer in stats.layers:
        cfg = resolved[layer.name]
        if cfg is None:
            widths.append((None, None))
        elif layer.kind == "matmul":
            widths.append((None, cfg.a_bits))
        else:
            widths.append((cfg.w_bits, cfg.a_bits))
    return widths


def _resolve_rule(profile: CostProfile, mac_rule: str | None) -> str:
    rule = profile.mac_rule if mac_rule is None else mac_rule
    if rule not in MAC_RULES:
        raise EaqError(f"unknown MAC rule {rule!r}; {choices_hint(MAC_RULES)}")
    return rule


def _check_bits(name: str, which: str, b: int | None) -> None:
    if b is None:
        return
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= MAX_BITS:
        raise EaqError(
            f"layer {name}: {which} must be an integer in 1..{MAX_BITS} or None, got {b!r}"
        )


def _int_mac(profile: CostProfile, m1: int, m2: int) -> float:
    return profile.int_mult * (m1 * m2) / 64 + profile.int_add * (m1 + m2) / 8


@dataclass(frozen=True)
class LayerEnergy:
    """One layer's row of an :class:`EnergyReport` (energies in the profile's unit)."""

    name: str
    kind: str
    w_bits: int | None
    a_bits: int | None
    macs: int
    bops: int
    mac_energy: float
    mem_energy: float
    energy_fp32: float
    mac_energy_fp32: float

    @property
    def energy(self) -> float:
        return self.mac_energy + self.mem_energy

    def to_dict(self) -> dict:
        return {**self.__dict__, "energy": self.energy}


@dataclass(frozen=True)
class EnergyReport:
    """Energy and BOPs of one plan, per layer and in total."""

    profile: str
    unit: str
    mac_rule: str
    layers: tuple[LayerEnergy, ...]

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.layers)

    @property
    def bops(self) -> int:
        return sum(r.bops for r in self.layers)

    @property
    def bops_fp32(self) -> int:
        return self.macs * 32 * 32

    @property
    def relative_bops(self) -> float:
        return self.bops / self.bops_fp32 if self.bops_fp32 else 0.0

    @property
    def mac_energy(self) -> float:
        return sum(r.mac_energy for r in self.layers)

    @property
    def mem_energy(self) -> float:
        return sum(r.mem_energy for r in self.layers)

    @property
    def energy(self) -> float:
        return self.mac_energy + self.mem_energy

    @property
    def energy_fp32(self) -> float:
        return sum(r.energy_fp32 for r in self.layers)

    @property
    def mac_share_fp32(self) -> float:
        """The MAC part of the FP32 baseline's energy (its memory part is ``1 -`` this)."""
        fp32 = self.energy_fp32
        return sum(r.mac_energy_fp32 for r in self.layers) / fp32 if fp32 else 0.0

    @property
    def relative_energy(self) -> float:
        return self.energy / self.energy_fp32 if self.energy_fp32 else 0.0

    @property
    def mac_share(self) -> float:
        return self.mac_energy / self.energy if self.energy else 0.0

    @property
    def memory_share(self) -> float:
        return self.mem_energy / self.energy if self.energy else 0.0

    def to_dict(self) -> dict:
        return {
            "profile": self.profile,
            "unit": self.unit,
            "mac_rule": self.mac_rule,
            "macs": self.macs,
            "bops": self.bops,
            "bops_fp32": self.bops_fp32,
            "relative_bops": self.relative_bops,
            "energy": self.energy,
            "mac_energy": self.mac_energy,
            "mem_energy": self.mem_energy,
            "energy_fp32": self.energy_fp32,
            "relative_energy": self.relative_energy,
            "mac_share": self.mac_share,
            "memory_share": self.memory_share,
            "mac_share_fp32": self.mac_share_fp32,
            "layers": [r.to_dict() for r in self.layers],
        }


def energy(
    stats: ModelStats,
    widths: Sequence[tuple[int | None, int | None]],
    profile: CostProfile | str,
    mac_rule: str | None = None,
) -> EnergyReport:
    """Energy of one plan, given each layer's ``(w_bits, a_bits)`` (see :func:`layer_widths`).

    Args:
        stats: from :func:`~eaq.energy.stats.collect_stats`.
        widths: one pair per layer of ``stats.layers``; None is float.
        profile: a :class:`CostProfile` or a name / YAML path for :func:`get_profile`.
        mac_rule: ``bw_ba``, ``max`` or ``seed`` (default: the profile's); see the module docs.
    """
    profile = get_profile(profile)
    rule = _resolve_rule(profile, mac_rule)
    if len(widths) != len(stats.layers):
        raise ValueError(f"{len(widths)} widths for {len(stats.layers)} layers")
    fb = profile.float_bits
    rows = []
    for layer, (w, a) in zip(stats.layers, widths, strict=True):
        _check_bits(layer.name, "w_bits", w)
        _check_bits(layer.name, "a_bits", a)
        if layer.kind == "matmul":
            w = a
        is_float = w is None or a is None
        if rule == "seed":
            b = None if is_float else max(w, a)
            mac = profile.float_mac if b is None else _int_mac(profile, b, b)
            wb = ab = fb if b is None else b
        else:
            if is_float:
                mac = profile.float_mac
            elif rule == "max":
                mac = _int_mac(profile, max(w, a), max(w, a))
            else:
                mac = _int_mac(profile, w, a)
            wb = fb if w is None else w
            ab = fb if a is None else a
        mem = (
            layer.weight_elems * wb * profile.weight_mem
            + layer.input_elems * ab * profile.act_read
            + layer.output_elems * ab * profile.act_write
        )
        mem32 = 32 * (
            layer.weight_elems * profile.weight_mem
            + layer.input_elems * profile.act_read
            + layer.output_elems * profile.act_write
        )
        rows.append(
            LayerEnergy(
                name=layer.name,
                kind=layer.kind,
                w_bits=None if layer.kind == "matmul" else w,
                a_bits=a,
                macs=layer.macs,
                bops=layer.macs * (w or 32) * (a or 32),
                mac_energy=layer.macs * mac,
                mem_energy=mem,
                energy_fp32=layer.macs * profile.fp32_mac + mem32,
                mac_energy_fp32=layer.macs * profile.fp32_mac,
            )
        )
    return EnergyReport(profile=profile.name, unit=profile.unit, mac_rule=rule, layers=tuple(rows))


def plan_energy(
    stats: ModelStats, plan: Plan, profile: CostProfile | str, mac_rule: str | None = None
) -> EnergyReport:
    """:func:`energy` of ``plan`` resolved against ``stats`` (a convenience)."""
    return energy(stats, layer_widths(stats, plan), profile, mac_rule)
