"""Exact maximum-likelihood references for the learning-quality benchmark: EM in NumPy, float64.

Factor analysis by EM (Rubin and Thayer, "EM algorithms for ML factor analysis", Psychometrika 1982) and the
Gaussian mixture with one shared isotropic scale by EM with restarts (Dempster, Laird and Rubin, 1977). Both
increase the exact log-likelihood monotonically; they run to a tolerance far below the 0.1-nat threshold.
"""

import numpy as np


def factor_analysis_em(x, latent_dim, iterations=5000, tolerance=1e-10, seed=0):
    """Maximum-likelihood factor analysis `x ~ N(mu, W W^T + diag(psi))`.

    Args:
      x: `[N, D]` data.
      latent_dim: columns of `W`.

    Returns:
      `(W [D, L], mu [D], psi [D])`.
    """
    x = np.asarray(x, np.float64)
    mu = x.mean(0)
    centred = x - mu
    covariance = centred.T @ centred / len(x)
    rng = np.random.default_rng(seed)
    loading = rng.normal(size=(x.shape[1], latent_dim))
    psi = np.diag(covariance).copy()
    previous = -np.inf
    for _ in range(iterations):
        # E-step: posterior moments of z given each x (shared covariance), summarised by sufficient statistics.
        beta = loading.T @ np.linalg.inv(loading @ loading.T + np.diag(psi))  # [L, D]
        second = np.eye(latent_dim) - beta @ loading + beta @ covariance @ beta.T  # E[z z^T] averaged
        loading = covariance @ beta.T @ np.linalg.inv(second)
        psi = np.maximum(np.diag(covariance - loading @ beta @ covariance), 1e-8)
        current = gaussian_log_likelihood(covariance, loading @ loading.T + np.diag(psi))
        if current - previous < tolerance:
            break
        previous = current
    return loading, mu, psi


def gaussian_log_likelihood(sample_covariance, covariance):
    """Mean log N(x; mean(x), covariance) per point, from the sample covariance about the sample mean."""
    _, logdet = np.linalg.slogdet(covariance)
    dim = covariance.shape[0]
    return -0.5 * (dim * np.log(2. * np.pi) + logdet + np.trace(np.linalg.solve(covariance, sample_covariance)))


def gaussian_mixture_em(x, num_components, restarts=20, iterations=2000, tolerance=1e-10, seed=0):
    """Maximum-likelihood mixture of `num_components` isotropic Gaussians with one shared scale.

    Each restart starts from `num_components` distinct random data points as means; the best is returned.

    Args:
      x: `[N, D]` data.

    Returns:
      `(log_weights [K], means [K, D], scale)` and the mean training log-likelihood per point.
    """
    x = np.asarray(x, np.float64)
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(restarts):
        means = x[rng.choice(len(x), num_components, replace=False)]
        log_weights, scale = np.full(num_components, -np.log(num_components)), x.std()
        previous = -np.inf
        for _ in range(iterations):
            log_joint = _mixture_log_joint(x, log_weights, means, scale)
            log_likelihood = logsumexp(log_joint, axis=1)
            responsibilities = np.exp(log_joint - log_likelihood[:, None])  # [N, K]
            counts = responsibilities.sum(0) + 1e-12
            log_weights = np.log(counts / len(x))
            means = responsibilities.T @ x / counts[:, None]
            square = ((x[:, None, :] - means[None]) ** 2).sum(-1)
            scale = np.sqrt((responsibilities * square).sum() / (len(x) * x.shape[1]))
            current = log_likelihood.mean()
            if current - previous < tolerance:
                break
            previous = current
        final = logsumexp(_mixture_log_joint(x, log_weights, means, scale), axis=1).mean()
        if best is None or final > best[1]:
            best = ((log_weights, means, scale), final)
    return best


def _mixture_log_joint(x, log_weights, means, scale):
    """`log pi_k + log N(x_n; mu_k, scale^2 I)`: `[N, K]`."""
    square = ((x[:, None, :] - means[None]) ** 2).sum(-1)
    dim = x.shape[1]
    return log_weights[None] - 0.5 * square / scale**2 - dim * np.log(scale) - 0.5 * dim * np.log(2. * np.pi)


def logsumexp(values, axis):
    """`log sum exp` along `axis`, stable."""
    peak = values.max(axis=axis, keepdims=True)
    return np.log(np.exp(values - peak).sum(axis=axis)) + np.squeeze(peak, axis)
