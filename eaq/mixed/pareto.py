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


def best_within(energy: Sequence[float], accuracy: Sequence[float], limit: float) -> int | None:
    """Index of the most accurate point whose energy is at most ``limit`` (None: no such point).

    This is the Pareto front read at ``limit``: what the best plan affordable at that energy
    reaches. Ties keep the cheaper point, then the first.

    Examples:
        >>> best_within([1.0, 0.5, 0.6], [90.0, 89.0, 89.5], 0.7)
        2
        >>> best_within([1.0], [90.0], 0.5) is None
        True
    """
    if len(energy) != len(accuracy):
        raise ValueError(f"{len(energy)} energies for {len(accuracy)} accuracies")
    inside = [i for i, e in enumerate(energy) if e <= limit * (1 + 1e-9)]
    if not inside:
        return None
    return max(inside, key=lambda i: (accuracy[i], -energy[i], -i))
