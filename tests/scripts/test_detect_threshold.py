"""benchmarks/detect_threshold.py: one-to-one box matching, checked against an exhaustive search."""

from __future__ import annotations

import numpy as np
import pytest

from dynamicvis_cli.train.metrics import box_iou
from tests.scripts.conftest import load_script

bench = load_script("benchmarks/detect_threshold.py")


def _best_assignment(found: np.ndarray, truth: np.ndarray) -> int:
    """The largest one-to-one matching at IoU >= 0.5: each box unmatched or on a free object."""
    ok = box_iou(found, truth) >= 0.5

    def best(i: int, used: frozenset[int]) -> int:
        if i == len(found):
            return 0
        options = [best(i + 1, used)]
        options += [1 + best(i + 1, used | {j}) for j in np.flatnonzero(ok[i]) if j not in used]
        return max(options)

    return best(0, frozenset())


def test_two_boxes_on_one_object_count_once_and_empty_sides_match_nothing() -> None:
    truth = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], dtype=np.float64)
    found = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [100, 100, 110, 110]], dtype=np.float64)
    scores = np.array([0.4, 0.9, 0.5])
    assert bench.matched(found, scores, truth) == 1
    assert bench.matched(found[:0], scores[:0], truth) == 0
    assert bench.matched(found, scores, truth[:0]) == 0


@pytest.mark.parametrize("seed", range(5))
def test_greedy_matching_agrees_with_the_best_assignment_on_separated_objects(seed: int) -> None:
    rng = np.random.default_rng(seed)
    corners = np.array(
        [[x, y] for x in range(0, 400, 100) for y in range(0, 200, 100)], dtype=np.float64
    )
    truth = np.hstack([corners, corners + 40])[rng.permutation(len(corners))[:5]]
    # jittered copies of some objects (duplicates included) and a few strays
    picks = rng.integers(0, len(truth), 6)
    found = np.vstack(
        [
            truth[picks] + rng.uniform(-6, 6, (6, 4)),
            np.hstack([strays := rng.uniform(0, 400, (2, 2)), strays + 30]),
        ]
    )
    scores = rng.uniform(0, 1, len(found))
    assert bench.matched(found, scores, truth) == _best_assignment(found, truth)
