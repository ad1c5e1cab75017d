"""The personalization judge: Wilson intervals and oracle-utility win rates on rendered images."""

import numpy as np
import pytest
from scipy.stats import binomtest

from pixpref.personalize.evaluate import WinResult, wilson, win_rate
from pixpref.toyworld.render import render
from pixpref.toyworld.scene import Scene
from pixpref.toyworld.users import Term, User


@pytest.mark.parametrize("wins,n", [(8, 10), (50, 100), (0, 20), (20, 20)])
def test_wilson_matches_scipy(wins, n):
    ci = binomtest(wins, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson(wins, n)
    assert abs(lo - ci.low) < 2e-3 and abs(hi - ci.high) < 2e-3


def _images(scenes):
    return np.stack([render(s) for s in scenes])


def test_win_rate_judges_by_each_users_utility():
    # user 0 likes large objects, user 1 likes small ones
    big = User(0, (Term("size", "linear", 5.0),))
    small = User(1, (Term("size", "linear", -5.0),))
    prompts = ["a red circle", "a blue square"]
    n = 3
    base = np.stack([_images([Scene(shape=s, colour=c, size=0.2) for _ in range(n)])
                     for c, s in [("red", "circle"), ("blue", "square")]])  # (P, n, H, W, 3)
    def variant(size):
        return np.stack([_images([Scene(shape=s, colour=c, size=size) for _ in range(n)])
                         for c, s in [("red", "circle"), ("blue", "square")]])
    personal = np.stack([variant(0.28), variant(0.13)])  # each user gets what they like
    res = win_rate([big, small], personal, base, prompts)
    assert isinstance(res, WinResult)
    assert res.win_rate == 1.0 and res.comparisons == 2 * 2 * n
    assert res.per_user == {"0": 1.0, "1": 1.0}
    assert res.adherence_base == 1.0 and res.adherence_personal == 1.0
    swapped = win_rate([big, small], personal[::-1], base, prompts)
    assert swapped.win_rate == 0.0 and swapped.mean_utility_gain < 0
    ties = win_rate([big, small], np.stack([base, base]), base, prompts)
    assert ties.win_rate == 0.5  # identical images count half


def test_interpolation_summary_counts_each_users_direction():
    from pixpref.personalize.evaluate import interpolation_summary

    curves = [
        # user a falls monotonically (change 0.3); user b rises end to end (0.1) but dips on the way
        {"alpha": [0, 0.5, 1], "utility_a": [1.0, 0.8, 0.7], "utility_b": [0.2, 0.1, 0.3]},
        # user a rises (wrong way, change -0.2); user b flat (monotone, change 0: not the right direction)
        {"alpha": [0, 0.5, 1], "utility_a": [0.0, 0.1, 0.2], "utility_b": [0.5, 0.5, 0.5]},
    ]
    s = interpolation_summary(curves)
    assert s["users"] == 4
    assert s["monotone"] == pytest.approx(2 / 4)
    assert s["right_direction"] == pytest.approx(2 / 4)
    assert s["mean_change"] == pytest.approx((0.3 + 0.1 - 0.2 + 0.0) / 4)
    assert interpolation_summary([]) == {"users": 0}
