"""Transferability estimates computed from a frozen source, without training a target.

QUANTA measures transferability by training; these are the field's cheap estimates, put
beside it layer by layer. Each is implemented here from its paper's formula (no well-kept
package provides them), in NumPy and SciPy only, so that the API process may import it.
For every score, higher means "more transferable".

Feature scores take `f`, the features (n samples × D) that the frozen source extracts from
target samples, and `y`, the target labels (any n integers or strings):

- LogME (You, Zhang, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for
  Transfer Learning", ICML 2021): the evidence (marginal likelihood) of a Bayesian linear
  model from the features to each one-hot label column, maximised over its two
  precisions, per sample, averaged over classes.
- H-score (Bao, Li, Huang, Zhang, Zheng, Zamir, Guibas, "An Information-Theoretic Approach
  to Transferability in Task Transfer Learning", ICIP 2019): tr(cov(f)⁻¹ cov(E[f|y])), how
  much of the features' variance lies between the classes.
- TransRate (Huang, Huang, Rong, Yang, Wei, "Frustratingly Easy Transferability
  Estimation", ICML 2022): the coding rate of all features minus the class-wise coding
  rate, an estimate of the mutual information between features and labels.
- GBC (Pándy, Agostinelli, Uijlings, Ferrari, Mensink, "Transferability Estimation using
  Bhattacharyya Class Separability", CVPR 2022): minus the summed Bhattacharyya
  coefficients (overlaps) between per-class Gaussians fitted to the features.

Classifier scores take `probabilities`, the source classifier's softmax output over its own
(source) classes for each target sample, and the target labels:

- LEEP (Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate
  Transferability of Learned Representations", ICML 2020): the mean log-likelihood of the
  target labels under the source's predictions passed through the empirical
  P(target label | source label).
- NCE (Tran, Nguyen, Hassner, "Transferability and Hardness of Supervised Classification
  Tasks", ICCV 2019): −H(Y | Z), the negative conditional entropy of the target labels given
  the source's argmax pseudo-labels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

#: The per-layer scores, in the order reports list them.
FEATURE_SCORES = ("logme", "h_score", "transrate", "gbc")
#: The scores of the source classifier as a whole.
CLASSIFIER_SCORES = ("leep", "nce")

#: LogME's precisions are kept in this range: a degenerate fit (labels outside the span of
#: the features, or fitted exactly when there are fewer samples than dimensions) would
#: otherwise send one of them to 0 or infinity.
_PRECISION_RANGE = (1e-12, 1e12)


def _features(f: ArrayLike) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be a 2-D array (samples × dimensions), got shape "
                         f"{f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"scores need at least 2 samples, got {f.shape[0]}")
    if not np.all(np.isfinite(f)):
        raise ValueError("features contain NaN or infinite values")
    return f


def _labels(y: ArrayLike, n: int) -> tuple[np.ndarray, int]:
    """The labels as codes 0..K-1 and K: any label values (ints, strings) are accepted."""
    y = np.asarray(y).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"{y.shape[0]} labels for {n} samples")
    classes, codes = np.unique(y, return_inverse=True)
    return codes.reshape(-1), len(classes)


# --- LogME -----------------------------------------------------------------------------
def logme(f: ArrayLike, y: ArrayLike, *, max_iter: int = 1000, tol: float = 1e-8) -> float:
    """LogME: the maximum log evidence per sample, averaged over the K one-hot label columns.

    For each class k, the model is t_k = f w + noise with w ~ N(0, α⁻¹ I) and noise
    ~ N(0, β⁻¹ I); its log evidence is

        L(α, β) = n/2 log β + D/2 log α − n/2 log 2π − β/2 ‖f m − t_k‖² − α/2 ‖m‖²
                  − 1/2 log det A,   A = α I + β fᵀf,   m = β A⁻¹ fᵀ t_k,

    maximised by the paper's fixed-point iteration (Algorithm 1) on α and β, using the SVD
    of the features so that each step costs O(min(n, D)). The iteration runs until both
    change by less than `tol` (relative), as the paper's "until convergence" asks; the
    authors' code stops at 1 % after at most 11 steps, slightly short of the maximum. The
    evidence is evaluated at the final α, β. Features are used as they come (no centring).
    """
    f = _features(f)
    n, d = f.shape
    codes, k = _labels(y, n)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    s2 = s**2
    total = 0.0
    for c in range(k):
        t = (codes == c).astype(np.float64)
        total += _log_evidence(t, u, s2, d, max_iter, tol)
    return float(total / (k * n))


def _log_evidence(t: np.ndarray, u: np.ndarray, s2: np.ndarray, d: int, max_iter: int,
                  tol: float) -> float:
    n = t.shape[0]
    z = u.T @ t  # the labels in the features' left singular basis
    outside = max(float(t @ t - z @ z), 0.0)  # the part no weights can fit
    low, high = _PRECISION_RANGE

    def fit(alpha: float, beta: float) -> tuple[float, float, float]:
        denom = alpha + beta * s2
        gamma = float(np.sum(beta * s2 / denom))  # effective number of parameters
        m_norm2 = float(np.sum(beta**2 * s2 * z**2 / denom**2))  # ‖m‖²
        residual = float(np.sum((alpha * z / denom) ** 2)) + outside  # ‖f m − t‖²
        return gamma, m_norm2, residual

    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        gamma, m_norm2, residual = fit(alpha, beta)
        new_alpha = min(max(gamma / m_norm2, low), high) if m_norm2 > 0 else high
        new_beta = min(max((n - gamma) / residual, low), high) if residual > 0 else high
        done = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
        alpha, beta = new_alpha, new_beta
        if done:
            break
    _, m_norm2, residual = fit(alpha, beta)
    # log det A: the D − rank(f) eigenvalues of fᵀf beyond the SVD's are 0.
    log_det = float(np.sum(np.log(alpha + beta * s2))) + (d - s2.shape[0]) * math.log(alpha)
    return (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
            - beta / 2 * residual - alpha / 2 * m_norm2 - log_det / 2)


# --- H-score ---------------------------------------------------------------------------
def h_score(f: ArrayLike, y: ArrayLike, *, shrinkage: float = 0.0,
            rcond: float = 1e-10) -> float:
    """H-score: tr(cov(f)⁻¹ cov(E[f | y])), between 0 and K − 1.

    cov(f) is often singular (correlated or dead feature channels, or fewer samples than
    dimensions), so its inverse is the Moore-Penrose pseudo-inverse, cutting eigenvalues
    below `rcond` × the largest (the authors' code uses a pseudo-inverse too, with a cut at
    1e-15, where rounding noise can already be inverted). With at most D + 1 samples the
    score is K − 1 whatever the features; `shrinkage` a in [0, 1] then replaces cov(f) by
    (1 − a) cov(f) + a tr(cov(f))/D I, a fixed-intensity form of the shrinkage H-score of
    Ibrahim, Ponomareva and Mazumder ("Newer is not always better", 2022). The default 0
    is the paper's score.
    """
    f = _features(f)
    n, d = f.shape
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    codes, k = _labels(y, n)
    centred = f - f.mean(axis=0)
    cov_f = centred.T @ centred / n
    class_means = np.zeros((k, d))
    np.add.at(class_means, codes, centred)
    class_means /= np.bincount(codes, minlength=k)[:, None]
    g = class_means[codes]  # E[f | y] of each sample, centred like f
    cov_g = g.T @ g / n
    if shrinkage:
        cov_f = (1 - shrinkage) * cov_f + shrinkage * np.trace(cov_f) / d * np.eye(d)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=rcond, hermitian=True) @ cov_g))


# --- TransRate -------------------------------------------------------------------------
def coding_rate(z: ArrayLike, eps: float = 1e-4) -> float:
    """R(Z, ε) = 1/2 log det(I + Zᵀ Z / (n ε²)), from Z's singular values; `eps` is ε²."""
    z = np.asarray(z, dtype=np.float64)
    if z.shape[0] == 0:
        return 0.0
    s = np.linalg.svd(z, compute_uv=False)
    return float(0.5 * np.sum(np.log1p(s**2 / (z.shape[0] * eps))))


def transrate(f: ArrayLike, y: ArrayLike, *, eps: float = 1e-4, normalize: bool = True) -> float:
    """TransRate: R(Z, ε) − R(Z | Y, ε), with R(Z | Y, ε) = Σ_k (n_k / n) R(Z_k, ε).

    Z are the centred features and, as in the authors' released code (`normalize`), each
    sample's feature vector is then scaled to unit L2 norm, so the score does not depend on
    the scale of a layer's activations. `eps` is ε² (the distortion): 1e-4 is the authors'
    default. The class-wise rate is weighted by class frequency, as in the coding-rate
    definition and the authors' evaluation code; their ten-line listing weights every class
    by 1/K, the same for balanced classes.
    """
    f = _features(f)
    n, _ = f.shape
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    codes, k = _labels(y, n)
    z = f - f.mean(axis=0)
    if normalize:
        norms = np.linalg.norm(z, axis=1, keepdims=True)
        z = z / np.maximum(norms, np.finfo(np.float64).tiny)
    conditional = sum(np.count_nonzero(codes == c) / n * coding_rate(z[codes == c], eps)
                      for c in range(k))
    return float(coding_rate(z, eps) - conditional)


# --- GBC -------------------------------------------------------------------------------
def _pca(f: np.ndarray, dims: int) -> np.ndarray:
    centred = f - f.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    return u[:, :dims] * s[:dims]


def bhattacharyya_distance(mean1: np.ndarray, var1: np.ndarray, mean2: np.ndarray,
                           var2: np.ndarray) -> float:
    """D_B between two Gaussians with diagonal covariances (variances per dimension):
    1/8 Δμᵀ Σ⁻¹ Δμ + 1/2 ln(det Σ / √(det Σ₁ det Σ₂)), with Σ = (Σ₁ + Σ₂) / 2."""
    var = (var1 + var2) / 2
    return float(np.sum((mean1 - mean2) ** 2 / var) / 8
                 + 0.5 * np.sum(np.log(var) - 0.5 * np.log(var1) - 0.5 * np.log(var2)))


def gbc(f: ArrayLike, y: ArrayLike, *, covariance: str = "spherical", pca_dims: int | None = 64,
        min_variance: float = 1e-4) -> float:
    """GBC: −Σ_{i≠j} BC(c_i, c_j), BC = exp(−D_B), over ordered pairs of classes; at most 0.

    Each class is a Gaussian with the class's mean and (population) variances; `spherical`
    (the authors' default) uses one variance per class, their mean over dimensions,
    `diagonal` one per dimension. As in the authors' setup, features wider than `pca_dims`
    are first reduced to that many principal components (None: never), and variances are
    floored at `min_variance` so constant features do not divide by zero. The distance is
    the paper's formula; for spherical Gaussians the authors' code counts the determinant
    term once instead of once per dimension.
    """
    f = _features(f)
    n, d = f.shape
    if covariance not in ("spherical", "diagonal"):
        raise ValueError(f"covariance must be 'spherical' or 'diagonal', got {covariance!r}")
    codes, k = _labels(y, n)
    if pca_dims is not None and d > pca_dims:
        f = _pca(f, pca_dims)
    stats = []
    for c in range(k):
        members = f[codes == c]
        var = np.maximum(members.var(axis=0), min_variance)
        if covariance == "spherical":
            var = np.full_like(var, var.mean())
        stats.append((members.mean(axis=0), var))
    total = 0.0
    for i in range(k):
        for j in range(k):
            if i != j:
                total += math.exp(-bhattacharyya_distance(*stats[i], *stats[j]))
    return -total


# --- LEEP and NCE ----------------------------------------------------------------------
def _probabilities(p: ArrayLike) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be a 2-D array (samples × source classes), got "
                         f"shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probabilities must be finite and non-negative")
    return p


def leep(probabilities: ArrayLike, y: ArrayLike) -> float:
    """LEEP: (1/n) Σ_i log Σ_z P̂(y_i | z) θ(x_i)_z, at most 0.

    θ(x) are the source's probabilities over its classes z; the empirical joint is
    P̂(y, z) = (1/n) Σ_{i: y_i = y} θ(x_i)_z and P̂(y | z) = P̂(y, z) / P̂(z).
    """
    p = _probabilities(probabilities)
    n = p.shape[0]
    codes, k = _labels(y, n)
    joint = np.zeros((k, p.shape[1]))
    np.add.at(joint, codes, p)
    joint /= n
    marginal = joint.sum(axis=0)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    expected = np.sum(conditional[codes] * p, axis=1)
    return float(np.mean(np.log(np.maximum(expected, np.finfo(np.float64).tiny))))


def nce(probabilities: ArrayLike, y: ArrayLike) -> float:
    """NCE: −H(Y | Z) = Σ_{y,z} P̂(y, z) log P̂(y | z), at most 0, with Z the pseudo-labels.

    Z is the source's most probable class for each sample; a 1-D `probabilities` is taken
    as those pseudo-labels already.
    """
    p = np.asarray(probabilities)
    pseudo = p.reshape(-1) if p.ndim == 1 else np.argmax(_probabilities(p), axis=1)
    n = pseudo.shape[0]
    codes, k = _labels(y, n)
    z_codes, nb_z = _labels(pseudo, n)
    joint = np.zeros((k, nb_z))
    np.add.at(joint, (codes, z_codes), 1.0 / n)
    marginal = np.broadcast_to(joint.sum(axis=0), joint.shape)
    seen = joint > 0
    return float(np.sum(joint[seen] * np.log(joint[seen] / marginal[seen])))


# --- all at once -----------------------------------------------------------------------
def feature_scores(f: ArrayLike, y: ArrayLike, **options: Any) -> dict[str, float]:
    """LogME, H-score, TransRate and GBC of one layer's features.

    `options` go to the score they name: `h_score={"shrinkage": 0.01}`, `gbc={...}`, ...
    """
    unknown = set(options) - set(FEATURE_SCORES)
    if unknown:
        raise ValueError(f"unknown score options {sorted(unknown)}; scores are "
                         f"{', '.join(FEATURE_SCORES)}")
    f = _features(f)
    functions = {"logme": logme, "h_score": h_score, "transrate": transrate, "gbc": gbc}
    return {name: functions[name](f, y, **options.get(name, {})) for name in FEATURE_SCORES}


def classifier_scores(probabilities: ArrayLike, y: ArrayLike) -> dict[str, float]:
    """LEEP and NCE of the source classifier's output on the target samples."""
    return {"leep": leep(probabilities, y), "nce": nce(probabilities, y)}
