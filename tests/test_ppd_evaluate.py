"""The personalization judge: Wilson intervals and oracle-utility win rates on rendered images."""

import numpy as np
import pytest
from scipy.stats import binomtest

from pixpref.errors import PixprefError
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


def test_opposed_pairs_pairs_the_most_conflicting_tastes_first():
    from pixpref.personalize.evaluate import opposed_pairs, taste_correlations

    x = np.array([0.0, 1.0, 2.0, 3.0])
    utilities = np.stack([
        x,                              # 0
        -x + 0.1 * np.array([0, 1, 0, 0]),  # 1: almost exactly opposed to 0
        np.array([0.0, 1.0, 0.0, 1.0]),  # 2
        np.array([1.0, 0.0, 1.0, 0.0]),  # 3: exactly opposed to 2
        x + 5.0,                        # 4: same taste as 0 (a shift does not change a ranking)
        np.full(4, 2.0),                # 5: indifferent
    ])
    corr = taste_correlations(utilities)
    assert corr[0, 4] == pytest.approx(1.0) and corr[2, 3] == pytest.approx(-1.0) and corr[5, 0] == 0.0
    # (2, 3) is the most negative pair, then (0, 1); 4 and 5 are left over
    assert opposed_pairs(utilities, 2) == [(2, 3), (0, 1)]
    assert opposed_pairs(utilities, 3)[-1] == (4, 5)
    assert opposed_pairs(utilities, 0) == []
    with pytest.raises(PixprefError, match="4 pairs need 8 users"):
        opposed_pairs(utilities, 4)
    with pytest.raises(PixprefError, match="NaN"):
        opposed_pairs(np.array([[0.0, np.nan], [1.0, 0.0]]), 1)


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
    assert "monotone_within_noise" not in s  # curves without standard errors


def test_monotone_within_noise_forgives_only_steps_inside_their_standard_error():
    from pixpref.personalize.evaluate import interpolation_summary, paired_step_se

    # user a's utility of 4 images at 3 alphas; the same image noises at each alpha
    a = np.array([[1.0, 2.0, 3.0, 4.0], [0.9, 1.9, 2.9, 3.9], [0.95, 2.05, 2.85, 4.05]])
    se = paired_step_se(a)
    d2 = a[2] - a[1]
    assert len(se) == 2 and se[0] == pytest.approx(0.0) and se[1] == pytest.approx(d2.std(ddof=1) / 2)
    # step 2 moves a the wrong way (+0.075 mean) but inside 1.96 SE (0.094): monotone within noise, not strictly
    b = np.array([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]])  # user b: a clear wrong-way step (SE 0)
    curve = {"alpha": [0, 0.5, 1], "utility_a": a.mean(axis=1).tolist(), "utility_b": b.mean(axis=1).tolist(),
             "step_se_a": se, "step_se_b": paired_step_se(b)}
    s = interpolation_summary([curve])
    assert s["monotone"] == 0.0 and s["monotone_within_noise"] == pytest.approx(0.5)
    with pytest.raises(PixprefError, match="images>=2"):
        paired_step_se(np.ones((3, 1)))
