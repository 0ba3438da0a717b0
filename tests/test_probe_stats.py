"""numpy-only statistics of the causality suite, checked against known values (scipy's)."""

import math

import numpy as np
import pytest

from mlx_kssm.probe import stats


@pytest.mark.parametrize("a, b, x, expected", [
    (2.5, 0.5, 0.3, 0.018927124071945658),
    (10.0, 3.0, 0.9, 0.889130022255),
    (0.5, 0.5, 0.5, 0.5),
    (1.0, 1.0, 0.37, 0.37),  # I_x(1, 1) = x
])
def test_betainc_known_values(a, b, x, expected):
    assert stats.betainc(a, b, x) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_betainc_edges_and_errors():
    assert stats.betainc(2, 3, 0.0) == 0.0 and stats.betainc(2, 3, 1.0) == 1.0
    with pytest.raises(ValueError):
        stats.betainc(0, 1, 0.5)


@pytest.mark.parametrize("fn, t, df, expected", [
    (stats.t_sf, 2.0, 5, 0.050969739414929174),
    (stats.t_sf, -1.3, 12, 0.8909914144582429),
    (stats.t_cdf, 3.5, 30, 0.9992615962811778),
    (stats.t_sf, 10.0, 2, 0.004926228511662845),
])
def test_student_t_known_values(fn, t, df, expected):
    assert fn(t, df) == pytest.approx(expected, rel=1e-9)


def test_normal_cdf():
    assert stats.normal_cdf(1.96) == pytest.approx(0.9750021048517795, rel=1e-12)
    assert stats.normal_sf(0.0) == pytest.approx(0.5)


def test_one_sample_t_matches_scipy_values():
    x = [0.2, 1.1, -0.3, 0.8, 1.5, 0.4, 0.9]
    two = stats.one_sample_t(x)
    assert two["t"] == pytest.approx(2.886296703635529, rel=1e-12)
    assert two["p"] == pytest.approx(0.027827826076215256, rel=1e-9)
    assert stats.one_sample_t(x, alternative="greater")["p"] == pytest.approx(0.013913913038107628,
                                                                               rel=1e-9)


def test_paired_t_matches_scipy_values():
    a, b = [1, 2, 3, 4, 5, 6.5], [2, 1.5, 3.9, 4.2, 6, 8]
    res = stats.paired_t(a, b)
    assert res["t"] == pytest.approx(-2.3445803249056314, rel=1e-12)
    assert res["p"] == pytest.approx(0.06600321211065774, rel=1e-9)


def test_t_test_zero_spread():
    assert stats.one_sample_t([0.0, 0.0, 0.0])["p"] == 1.0  # exactly zero effect: never passes
    res = stats.one_sample_t([1e-9] * 5, alternative="greater")
    assert res["p"] == 0.0 and math.isinf(res["t"])  # why the suite also needs a minimum effect


def test_pearson_matches_scipy_values():
    res = stats.pearson([1, 2, 3, 4, 5, 6.5], [2, 1.5, 3.9, 4.2, 6, 8])
    assert res["r"] == pytest.approx(0.9672999921707357, rel=1e-12)
    assert res["p"] == pytest.approx(0.0015864528639932857, rel=1e-9)
    assert stats.pearson([1, 1, 1], [1, 2, 3])["p"] == 1.0  # constant input: no evidence


def test_sign_flip_exact():
    # all of 3 values positive: only the identity pattern is as large -> p = 1/8
    assert stats.sign_flip_test([1.0, 2.0, 3.0], alternative="greater")["p"] == pytest.approx(1 / 8)
    # two-sided: the identity and the all-flipped pattern -> 2/8
    assert stats.sign_flip_test([1.0, 2.0, 3.0])["p"] == pytest.approx(2 / 8)
    # symmetric data: no evidence
    assert stats.sign_flip_test([1.0, -1.0, 2.0, -2.0])["p"] == pytest.approx(1.0)
    res = stats.sign_flip_test(np.ones(12), alternative="greater")
    assert res["exact"] and res["p"] == pytest.approx(2.0 ** -12)


def test_sign_flip_monte_carlo_is_deterministic():
    x = np.linspace(-0.5, 1.5, 40)
    a = stats.sign_flip_test(x, alternative="greater", n_resamples=5000, seed=3)
    b = stats.sign_flip_test(x, alternative="greater", n_resamples=5000, seed=3)
    assert not a["exact"] and a["p"] == b["p"] and 0 < a["p"] < 0.01


def test_fisher_z_clips():
    assert np.isfinite(stats.fisher_z([1.0, -1.0])).all()
