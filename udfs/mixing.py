"""Pure arithmetic of mixture building (no Spark): budget allocation across clusters, the final
greedy fill to the budget, and the fidelity of a synthetic set to a human reference.

The sampling job (jobs/sample.py) does the per-document work in Spark; these functions see only
per-cell totals and small candidate lists, so they run on the driver whatever the corpus size.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def allocate_cells(target: float, cell_tokens: Mapping[Hashable, float], cell_caps: Mapping[Hashable, float],
                   temperature: float) -> dict[Hashable, float]:
    """Split a group's token ``target`` across its cells (clusters) UniMax-style.

    Each cell's share is proportional to ``tokens ** temperature`` (0: uniform across clusters, as
    UniMax (Chung et al., 2023) spreads a budget uniformly across languages; 1: proportional to size,
    the natural distribution). A cell never gets more than its cap (its tokens times the epochs its
    sources allow): what a saturated cell cannot take is redistributed over the others (water
    filling). If every cell saturates, the sum is below ``target`` and the caller reports the shortfall.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    allocation = dict.fromkeys(cell_tokens, 0.0)
    active = {cell for cell, tokens in cell_tokens.items() if tokens > 0 and cell_caps[cell] > 0}
    remaining = float(target)
    while remaining > 1e-9 and active:
        weights = {cell: float(cell_tokens[cell]) ** temperature for cell in active}
        total = sum(weights.values())
        shares = {cell: remaining * weight / total for cell, weight in weights.items()}
        saturated = {cell for cell in active if allocation[cell] + shares[cell] >= cell_caps[cell]}
        if not saturated:
            for cell, share in shares.items():
                allocation[cell] += share
            break
        for cell in saturated:
            remaining -= cell_caps[cell] - allocation[cell]
            allocation[cell] = float(cell_caps[cell])
        active -= saturated
    return allocation


@dataclass(frozen=True)
class Candidate:
    """A document (copy) that could still be added: its group, tokens, and whether it is synthetic."""

    key: Hashable
    group: Hashable
    source: Hashable
    tokens: int
    synthetic: bool


def greedy_fill(candidates: Sequence[Candidate], total: float, budget: float, tolerance: float,
                group_tokens: Mapping[Hashable, float], group_targets: Mapping[Hashable, float],
                synthetic_room: float, source_room: Mapping[Hashable, float]) -> list[Hashable]:
    """Add candidates while the mixture is below ``budget``, never passing ``budget * (1 + tolerance)``.

    Candidates are offered in their given order (the caller's priority and hash order) but the group
    furthest below its target, relative to that target, is served first, so topping up keeps the
    weights close. A candidate is skipped when it would pass the budget's upper bound, the synthetic
    room or its source's room. Returns the keys added, in the order added.
    """
    upper = budget * (1 + tolerance)
    tokens = dict(group_tokens)
    rooms = dict(source_room)
    queues: dict[Hashable, list[Candidate]] = {}
    for candidate in candidates:
        queues.setdefault(candidate.group, []).append(candidate)
    added: list[Hashable] = []
    while total < budget and any(queues.values()):
        group = min((g for g, q in queues.items() if q),
                    key=lambda g: (tokens.get(g, 0.0) / group_targets[g] if group_targets.get(g) else float("inf"),
                                   str(g)))
        candidate = queues[group].pop(0)
        if (total + candidate.tokens > upper or (candidate.synthetic and candidate.tokens > synthetic_room)
                or candidate.tokens > rooms.get(candidate.source, float("inf"))):
            continue
        added.append(candidate.key)
        total += candidate.tokens
        tokens[group] = tokens.get(group, 0.0) + candidate.tokens
        rooms[candidate.source] = rooms.get(candidate.source, float("inf")) - candidate.tokens
        if candidate.synthetic:
            synthetic_room -= candidate.tokens
    return added


def manifold_precision_recall(reference: np.ndarray, candidates: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall of a generated set (Kynkäänniemi et al., 2019) in embedding space.

    Each set's manifold is the union of balls around its points with radius the distance to the
    point's k-th nearest neighbour in the same set. Precision: share of ``candidates`` inside the
    reference manifold (are the generated texts realistic?). Recall: share of ``reference`` inside
    the candidates' manifold (do they cover the human distribution?). Rows need not be normalised.
    """
    if len(reference) <= k or len(candidates) <= k:
        raise ValueError(f"need more than k={k} points in each set, got {len(reference)} and {len(candidates)}")
    reference = np.asarray(reference, dtype=np.float64)
    candidates = np.asarray(candidates, dtype=np.float64)

    def radii(points: np.ndarray) -> np.ndarray:
        distances = _pairwise(points, points)
        return np.sort(distances, axis=1)[:, k]  # column 0 is the point itself

    cross = _pairwise(candidates, reference)
    precision = float(np.mean((cross <= radii(reference)[None, :]).any(axis=1)))
    recall = float(np.mean((cross.T <= radii(candidates)[None, :]).any(axis=1)))
    return precision, recall


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0))
