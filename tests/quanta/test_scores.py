"""Transferability estimates and study statistics, on cases with a known answer (no TF)."""

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import optimize, stats

from quanta import scores
from quanta_jobs import study_stats
from tests.support import REPO


@pytest.fixture(scope="module")
def separable_and_noise():
    """Three classes far apart in 5-D against the same labels on pure noise."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    centres = 10.0 * np.eye(3, 5)
    separable = centres[y] + 0.1 * rng.standard_normal((90, 5))
    noise = rng.standard_normal((90, 5))
    return separable, noise, y


@pytest.mark.parametrize("name", scores.FEATURE_SCORES)
def test_separable_features_score_above_noise(separable_and_noise, name):
    separable, noise, y = separable_and_noise
    function = getattr(scores, name)
    good, bad = function(separable, y), function(noise, y)
    assert math.isfinite(good) and math.isfinite(bad)
    assert good > bad


def test_every_feature_score_ignores_how_labels_are_spelled(separable_and_noise):
    separable, _, y = separable_and_noise
    as_strings = np.array(["cat", "dog", "eel"])[y]
    assert scores.feature_scores(separable, as_strings) == scores.feature_scores(separable, y)


# --- H-score ---------------------------------------------------------------------------
def test_h_score_by_hand():
    # Centred feature (-3, -1, 1, 3): variance 5; class means 1 and 5 are ±2 from the
    # overall mean: variance 4. H = 4 / 5.
    y = [0, 0, 1, 1]
    assert scores.h_score([[0], [2], [4], [6]], y) == pytest.approx(0.8)
    # A second feature uncorrelated with the first and equal in mean across classes adds
    # variance but no between-class variance: H is unchanged.
    assert scores.h_score([[0, 1], [2, -1], [4, -1], [6, 1]], y) == pytest.approx(0.8)


def test_h_score_is_k_minus_1_with_few_samples_unless_shrunk():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 3)
    f = rng.standard_normal((4, 6))[y]  # every sample sits on its class mean
    assert scores.h_score(f, y) == pytest.approx(3.0)
    # With fewer samples than dimensions even pure noise reaches K − 1; shrinkage of
    # cov(f) tells noise from class structure again.
    noise = rng.standard_normal((12, 20))
    separable = 3.0 * np.eye(4, 20)[y] + rng.standard_normal((12, 20))
    assert scores.h_score(noise, y) == pytest.approx(3.0)
    assert (scores.h_score(noise, y, shrinkage=0.1)
            < scores.h_score(separable, y, shrinkage=0.1))


# --- LogME -----------------------------------------------------------------------------
def _direct_log_evidence(f, t, alpha, beta):
    """The paper's evidence formula, term by term, with a dense solve and log-determinant."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ t)
    _, log_det = np.linalg.slogdet(a)
    return (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
            - beta / 2 * np.sum((f @ m - t) ** 2) - alpha / 2 * m @ m - log_det / 2)


def test_logme_is_the_maximum_of_its_evidence_formula():
    rng = np.random.default_rng(2)
    n, d = 40, 3
    f = rng.standard_normal((n, d))
    y = (f[:, 0] + 0.7 * rng.standard_normal(n) > 0).astype(int)
    best = []
    for c in (0, 1):
        t = (y == c).astype(float)

        def negative(log_ab, t=t):
            return -_direct_log_evidence(f, t, *np.exp(log_ab))

        found = optimize.minimize(negative, x0=[0.0, 0.0], method="Nelder-Mead",
                                  options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 10_000})
        alpha, beta = np.exp(found.x)
        # The formula is the log density of t under t ~ N(0, f fᵀ/α + I/β).
        marginal = stats.multivariate_normal(np.zeros(n), f @ f.T / alpha + np.eye(n) / beta)
        assert -found.fun == pytest.approx(marginal.logpdf(t), rel=1e-9)
        best.append(-found.fun)
    assert scores.logme(f, y) == pytest.approx(np.mean(best) / n, rel=1e-7)


def test_logme_stays_finite_with_more_dimensions_than_samples_and_dead_features():
    rng = np.random.default_rng(3)
    f = np.hstack([rng.standard_normal((8, 12)), np.zeros((8, 4))])
    assert math.isfinite(scores.logme(f, np.arange(8) % 2))
    assert math.isfinite(scores.logme(np.zeros((6, 3)), [0, 1, 0, 1, 0, 1]))


# --- TransRate -------------------------------------------------------------------------
def test_transrate_equals_its_log_det_formula():
    rng = np.random.default_rng(4)
    f = rng.standard_normal((10, 3)) + 2.0
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    eps = 0.1

    def rate(z):
        return 0.5 * np.linalg.slogdet(np.eye(3) + z.T @ z / (len(z) * eps))[1]

    z = f - f.mean(axis=0)
    expected_raw = rate(z) - 0.4 * rate(z[:4]) - 0.6 * rate(z[4:])
    assert scores.transrate(f, y, eps=eps, normalize=False) == pytest.approx(expected_raw)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    expected = rate(z) - 0.4 * rate(z[:4]) - 0.6 * rate(z[4:])
    assert scores.transrate(f, y, eps=eps) == pytest.approx(expected)
    # Normalised, it does not depend on the scale of the activations.
    assert scores.transrate(1000 * f, y, eps=eps) == pytest.approx(expected)


# --- GBC -------------------------------------------------------------------------------
def test_gbc_by_hand_in_one_and_two_dimensions():
    # Means 1 and 5, variances 1: D_B = (5 - 1)² / 8 = 2, both ordered pairs count.
    one_d = scores.gbc([[0], [2], [4], [6]], [0, 0, 1, 1])
    assert one_d == pytest.approx(-2 * math.exp(-2))
    # Class a: variances (1, 3) -> spherical 2; class b: (5, 7) -> 6; their mean 4.
    # Means differ by (4, 0): D_B = 16 / (8 * 4) + (2 / 2) ln(4 / sqrt(2 * 6)).
    r3, r5, r7 = math.sqrt(3), math.sqrt(5), math.sqrt(7)
    f = [[-1, -r3], [1, r3], [4 - r5, -r7], [4 + r5, r7]]
    distance = 0.5 + math.log(4 / math.sqrt(12))
    assert scores.gbc(f, [0, 0, 1, 1]) == pytest.approx(-2 * math.exp(-distance))
    # Diagonal: D_B = 16 / (8 * 3) + 1/2 [ln(3 / sqrt(5)) + ln(5 / sqrt(21))].
    distance = 16 / 24 + 0.5 * (math.log(3 / r5) + math.log(5 / math.sqrt(21)))
    assert scores.gbc(f, [0, 0, 1, 1], covariance="diagonal") == pytest.approx(
        -2 * math.exp(-distance))


def test_gbc_limits_identical_and_far_apart_classes():
    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(3), 4000)
    same = rng.standard_normal((12_000, 4))
    assert scores.gbc(same, y) == pytest.approx(-6.0, rel=0.01)  # BC = 1 for 3·2 pairs
    apart = same + 100.0 * np.eye(3, 4)[y]
    assert -1e-12 < scores.gbc(apart, y) <= 0.0


def test_gbc_reduces_wide_features_with_pca():
    rng = np.random.default_rng(6)
    y = np.repeat(np.arange(2), 50)
    f = rng.standard_normal((100, 80)) + 3.0 * np.eye(2, 80)[y]
    reduced = scores.gbc(f, y, pca_dims=64)
    assert reduced != scores.gbc(f, y, pca_dims=None)
    # Only the PCA projection, not the rotation, changes the score.
    rotation = np.linalg.qr(rng.standard_normal((80, 80)))[0]
    assert scores.gbc(f @ rotation, y, pca_dims=64) == pytest.approx(reduced)


# --- LEEP and NCE ----------------------------------------------------------------------
PROBABILITIES = [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]]
LABELS = ["a", "a", "b", "b"]


def test_leep_on_a_hand_computed_joint():
    # P̂(y, z) · 4: a -> (1.5, 0.5), b -> (1.1, 0.9); P̂(z) · 4 = (2.6, 1.4).
    a0, a1, b0, b1 = 1.5 / 2.6, 0.5 / 1.4, 1.1 / 2.6, 0.9 / 1.4  # P̂(y | z)
    expected = np.mean(np.log([0.9 * a0 + 0.1 * a1, 0.6 * a0 + 0.4 * a1,
                               0.3 * b0 + 0.7 * b1, 0.8 * b0 + 0.2 * b1]))
    assert scores.leep(PROBABILITIES, LABELS) == pytest.approx(expected)


def test_nce_on_a_hand_computed_joint():
    # Pseudo-labels (0, 0, 1, 0): P̂(a, 0) = 1/2, P̂(b, 0) = 1/4, P̂(b, 1) = 1/4.
    expected = 0.5 * math.log(0.5 / 0.75) + 0.25 * math.log(0.25 / 0.75) + 0.25 * math.log(1)
    assert scores.nce(PROBABILITIES, LABELS) == pytest.approx(expected)
    assert scores.nce([0, 0, 1, 0], LABELS) == pytest.approx(expected)


def test_a_classifier_that_maps_onto_the_labels_beats_a_random_one():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, 400)
    mapped = np.full((400, 6), 0.01)
    mapped[np.arange(400), (y + 2) % 6] = 0.95  # source class y + 2 means target class y
    random = rng.dirichlet(np.ones(6), 400)
    assert scores.leep(mapped, y) > scores.leep(random, y)
    assert scores.nce(mapped, y) == pytest.approx(0.0)  # labels known from pseudo-labels
    assert scores.nce(random, y) < -1.0  # close to −H(Y) = −ln 4
    assert set(scores.classifier_scores(mapped, y)) == set(scores.CLASSIFIER_SCORES)


def test_bad_inputs_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="2 labels for 3 samples"):
        scores.logme(np.ones((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        scores.h_score([[0.0], [math.nan]], [0, 1])
    with pytest.raises(ValueError, match="unknown score options"):
        scores.feature_scores(np.ones((3, 2)), [0, 1, 0], logmee={})


def test_scores_and_study_stats_need_no_tensorflow():
    # `study_stats` and `quanta_spec.statistics` live below the API process, which
    # never loads TensorFlow; `import quanta` loads no Keras either.
    code = (
        "import sys\n"
        "import quanta.scores, quanta.summary, quanta_jobs.study_stats, quanta_spec.statistics\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --- study statistics ------------------------------------------------------------------
def test_rank_correlations_by_hand():
    # Ranks (1, 2, 3) against (1, 3, 2): ρ = 1 − 6·2 / (3·8) = 0.5; one discordant pair of
    # three: τ = (2 − 1) / 3.
    result = study_stats.rank_correlations([1, 2, 3], [0.1, 0.9, 0.5])
    assert result["spearman"] == pytest.approx(0.5)
    assert result["kendall"] == pytest.approx(1 / 3)
    assert result["n"] == 3 and 0 < result["kendall_p"] <= 1
    assert study_stats.rank_correlations([4, 3, 2, 1], [1, 2, 30, 400])["kendall"] == -1.0


def test_rank_correlations_degenerate_cases_are_none():
    assert study_stats.rank_correlations([1, 2], [1, 2])["spearman"] is None
    assert study_stats.rank_correlations([1, 1, 1], [1, 2, 3])["kendall"] is None
    result = study_stats.rank_correlations([1, math.nan, 2, 3], [1, 5, 2, 3])
    assert result["n"] == 3 and result["spearman"] == pytest.approx(1.0)


def test_score_correlations_across_common_layers():
    layer_scores = {"0": {"logme": 1.0, "gbc": -3.0}, "1": {"logme": 2.0, "gbc": -2.0},
                    "2": {"logme": 3.0, "gbc": -5.0}, "6": {"logme": 9.0, "gbc": -1.0}}
    lambdas = {"0": 0.1, "1": 0.2, "2": 0.3}  # layer 6 has no λ_s: left out
    result = study_stats.score_correlations(layer_scores, lambdas)
    assert set(result) == {"gbc", "logme"}
    assert result["logme"]["spearman"] == pytest.approx(1.0) and result["logme"]["n"] == 3
    assert result["gbc"]["spearman"] == pytest.approx(-0.5)


def test_welch_p_value_by_hand():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 5
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 4)  # Welch–Satterthwaite
    assert study_stats.welch_p_value(a, b) == pytest.approx(2 * stats.t.sf(abs(t), df))
    comparison = study_stats.compare_runs(a, b)
    assert comparison["difference"] == pytest.approx(3.5)
    assert comparison["n_a"] == 4 and comparison["n_b"] == 5
    assert comparison["p_value"] == pytest.approx(study_stats.welch_p_value(a, b))


def test_welch_degenerate_cases_are_none():
    assert study_stats.welch_p_value([0.5], [0.1, 0.2]) is None
    assert study_stats.welch_p_value([0.5, 0.5], [0.1, 0.1]) is None
    assert study_stats.welch_p_value([0.5, 0.5], [0.1, 0.2]) is not None
    assert study_stats.compare_runs([], [0.1, 0.2]) == {
        "n_a": 0, "n_b": 2, "mean_a": None, "mean_b": pytest.approx(0.15),
        "difference": None, "p_value": None}
