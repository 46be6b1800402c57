"""Pure mixture arithmetic: UniMax-style allocation, greedy fill, manifold precision/recall."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from udfs.mixing import Candidate, allocate_cells, greedy_fill, manifold_precision_recall

TOKENS = {"a": 1000.0, "b": 100.0, "c": 10.0}


def test_temperature_zero_is_uniform_and_one_is_proportional():
    uncapped = dict.fromkeys(TOKENS, 1e9)
    assert allocate_cells(300, TOKENS, uncapped, 0.0) == pytest.approx({"a": 100, "b": 100, "c": 100})
    assert allocate_cells(1110, TOKENS, uncapped, 1.0) == pytest.approx(TOKENS)


def test_saturated_cells_pass_their_remainder_to_the_others():
    caps = {k: 2 * v for k, v in TOKENS.items()}  # two epochs
    split = allocate_cells(600, TOKENS, caps, 0.0)
    assert split["c"] == pytest.approx(20)  # small clusters up-sampled only to their epoch cap
    assert split["b"] == pytest.approx(200)
    assert split["a"] == pytest.approx(380)  # takes what the saturated ones could not
    assert sum(split.values()) == pytest.approx(600)


def test_infeasible_target_fills_every_cap_and_reports_the_shortfall_by_its_sum():
    caps = dict(TOKENS)
    split = allocate_cells(5000, TOKENS, caps, 0.5)
    assert split == pytest.approx(caps)


def test_greedy_fill_tops_up_within_tolerance_serving_the_furthest_group_first():
    candidates = [Candidate(f"x{i}", "x", "sx", 10, False) for i in range(20)] + \
                 [Candidate(f"y{i}", "y", "sy", 10, False) for i in range(20)]
    added = greedy_fill(candidates, total=800, budget=1000, tolerance=0.01, group_tokens={"x": 500, "y": 300},
                        group_targets={"x": 500, "y": 500}, synthetic_room=0, source_room={})
    assert len(added) == 20 and all(key.startswith("y") for key in added)


def test_greedy_fill_respects_synthetic_room_source_room_and_upper_bound():
    candidates = [Candidate("s1", "g", "syn", 30, True), Candidate("s2", "g", "syn", 30, True),
                  Candidate("h1", "g", "capped", 50, False), Candidate("big", "g", "free", 500, False),
                  Candidate("h2", "g", "free", 40, False)]
    added = greedy_fill(candidates, total=900, budget=1000, tolerance=0.05, group_tokens={"g": 900},
                        group_targets={"g": 1000}, synthetic_room=40, source_room={"capped": 20})
    assert added == ["s1", "h2"]  # s2: no synthetic room; h1: source full; big: past 1050


def reference_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkäänniemi et al. with scikit-learn's exact neighbours, as an independent oracle."""
    def radii(points):
        distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
        return distances[:, k]

    real_r, fake_r = radii(real), radii(fake)
    d = np.linalg.norm(fake[:, None, :] - real[None, :, :], axis=2)
    return float(np.mean((d <= real_r[None, :]).any(1))), float(np.mean((d.T <= fake_r[None, :]).any(1)))


def test_manifold_precision_recall_equals_a_neighbour_search_oracle():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 16))
    fake = np.vstack([rng.normal(size=(200, 16)), rng.normal(loc=4.0, size=(100, 16))])
    assert manifold_precision_recall(real, fake, k=3) == pytest.approx(reference_precision_recall(real, fake, 3))
    same = manifold_precision_recall(real, real.copy(), k=3)
    assert same == (1.0, 1.0)
    far = manifold_precision_recall(real, real + 100.0, k=3)
    assert far == (0.0, 0.0)
