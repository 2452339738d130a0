"""The Pareto front of (energy, accuracy) points: lower energy and higher accuracy are better.

Examples:
    >>> pareto_front([1.0, 0.5, 0.6, 0.2], [90.0, 89.0, 80.0, 10.0])
    [3, 1, 0]
"""

from __future__ import annotations

from collections.abc import Sequence


def dominates(e1: float, a1: float, e2: float, a2: float) -> bool:
    """Point 1 is no worse on both axes and better on one."""
    return e1 <= e2 and a1 >= a2 and (e1 < e2 or a1 > a2)


def pareto_front(energy: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of the non-dominated points, by increasing energy (duplicates: first kept)."""
    if len(energy) != len(accuracy):
        raise ValueError(f"{len(energy)} energies for {len(accuracy)} accuracies")
    order = sorted(range(len(energy)), key=lambda i: (energy[i], -accuracy[i], i))
    front: list[int] = []
    best = float("-inf")
    for i in order:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return front
