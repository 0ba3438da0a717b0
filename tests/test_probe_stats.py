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


# ---------------------------------------------------------------- effect sizes and verdicts


def test_t_quantile_known_values():
    # Student-t table values (scipy.stats.t.ppf)
    assert stats.t_quantile(0.975, 2) == pytest.approx(4.302653, rel=1e-6)
    assert stats.t_quantile(0.975, 4) == pytest.approx(2.776445, rel=1e-6)
    assert stats.t_quantile(0.975, 9) == pytest.approx(2.262157, rel=1e-6)
    assert stats.t_quantile(0.025, 9) == pytest.approx(-2.262157, rel=1e-6)
    assert stats.t_cdf(stats.t_quantile(0.9, 3.5), 3.5) == pytest.approx(0.9, abs=1e-10)


def test_t_interval_of_seeds():
    res = stats.t_interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, half width t_{0.975,2} / sqrt(3)
    assert res["mean"] == 2.0 and res["half_width"] == pytest.approx(4.302653 / math.sqrt(3))
    assert res["ci"] == pytest.approx([2.0 - res["half_width"], 2.0 + res["half_width"]])
    one = stats.t_interval([5.0])
    assert one["mean"] == 5.0 and one["ci"] is None  # one seed: no interval, never a fake one


def test_bootstrap_finds_a_planted_effect():
    rng = np.random.default_rng(0)
    res = stats.bootstrap_mean(rng.normal(1.0, 1.0, size=40))  # ~6 standard errors from 0
    assert res["ci"][0] > 0 and res["ci"][0] < res["estimate"] < res["ci"][1]


@pytest.mark.slow
def test_bootstrap_ci_covers_no_effect_at_its_level():
    """No effect gives a CI including 0, 95% of the time: across 300 null samples the
    coverage is close to the stated level (binomial sd ~1.3%)."""
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(300):
        lo, hi = stats.bootstrap_mean(rng.normal(0.0, 1.0, size=30), n_resamples=1000)["ci"]
        covered += lo <= 0.0 <= hi
    assert 0.88 <= covered / 300 <= 0.99


def test_bootstrap_is_deterministic_and_paired():
    x = np.random.default_rng(2).normal(size=25)
    assert stats.bootstrap_mean(x, seed=3) == stats.bootstrap_mean(x, seed=3)
    a, b = stats.bootstrap_counts(25, 100, seed=3), stats.bootstrap_counts(25, 100, seed=3)
    assert (a == b).all() and (a.sum(axis=1) == 25).all()
    assert stats.bootstrap_mean(x, seed=4)["ci"] != stats.bootstrap_mean(x, seed=3)["ci"]


@pytest.mark.parametrize("ci, p, expected", [
    ([0.02, 0.05], 0.001, "PASS"),  # the whole CI beyond the threshold, p small
    ([0.02, 0.05], 0.2, "INCONCLUSIVE"),  # beyond, but the test cannot reach alpha
    ([0.005, 0.02], 0.001, "INCONCLUSIVE"),  # straddles the threshold
    ([0.001, 0.008], 0.001, "FAIL"),  # credibly below: significant yet too small
    ([-0.01, 0.01], 0.5, "FAIL"),
])
def test_threshold_verdict(ci, p, expected):
    assert stats.threshold_verdict(ci, 0.01, p, alpha=0.01) == expected


def test_threshold_verdict_two_sided():
    assert stats.threshold_verdict([-0.3, -0.1], 0.05, 0.001, 0.01, two_sided=True) == "PASS"
    assert stats.threshold_verdict([-0.04, 0.03], 0.05, 0.5, 0.01, two_sided=True) == "FAIL"
    assert stats.threshold_verdict([-0.08, 0.01], 0.05, 0.02, 0.01,
                                   two_sided=True) == "INCONCLUSIVE"


def test_combine_verdicts():
    assert stats.combine_verdicts(["PASS", "PASS"]) == "PASS"
    assert stats.combine_verdicts(["PASS", "INCONCLUSIVE"]) == "INCONCLUSIVE"
    assert stats.combine_verdicts(["INCONCLUSIVE", "FAIL"]) == "FAIL"


def _planted_r_entropy(coupling, n_seq=40, seq_len=64, seed=0):
    """(N, T, 2) R and (N, T) entropy: layer 1's R moves with entropy by `coupling`
    (negative: high R, confident), layer 0 is independent noise."""
    rng = np.random.default_rng(seed)
    ent = rng.normal(2.0, 0.3, size=(n_seq, seq_len))
    r = np.stack([rng.normal(0.4, 0.05, size=(n_seq, seq_len)),
                  0.4 + coupling * (ent - 2.0) + rng.normal(0, 0.05, size=(n_seq, seq_len))], -1)
    return r, ent


def test_correlation_test_finds_a_planted_layer_with_its_sign():
    from mlx_kssm.probe.causality import correlation_test
    r, ent = _planted_r_entropy(-0.1)
    c = correlation_test(r, ent, alpha=0.01, min_corr=0.05, n_resamples=2000, seed=0,
                         confidence=0.95)
    layer0, layer1 = c["per_layer"]
    assert c["verdict"] == "PASS" and layer1["verdict"] == "PASS" and layer1["sign"] == "-"
    assert layer1["ci"][1] < -0.05  # the planted effect: the CI excludes 0 and the threshold
    assert layer0["ci"][0] < 0 < layer0["ci"][1]  # no effect: the CI includes 0
    assert layer0["verdict"] != "PASS"


def test_correlation_test_without_effect_is_not_a_pass():
    from mlx_kssm.probe.causality import correlation_test
    r, ent = _planted_r_entropy(0.0, n_seq=200, seq_len=256)  # enough data: narrow CIs
    c = correlation_test(r, ent, alpha=0.01, min_corr=0.05, n_resamples=2000, seed=0,
                         confidence=0.95)
    assert all(t["ci"][0] < 0 < t["ci"][1] for t in c["per_layer"])
    assert c["verdict"] == "FAIL"  # every layer's CI inside +-0.05
