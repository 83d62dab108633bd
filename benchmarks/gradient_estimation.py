"""Accuracy of grad_b log p(x) estimators on the softplus-Gaussian model, against exact quadrature.

The amortised estimator (`surrogate_log_marginal`, joint and conditional forms, N sleep samples) is set beside
two estimators given the same budget of N latent draws per observation:

  - importance sampling from the prior: self-normalised weights `w_n ∝ p(x | z_n)`, `z_n ~ p(z)`;
  - the VAE / ELBO gradient `mean_n grad_b log p(x, z_n)`, `z_n ~ q(z | x)`, with `q` the Gaussian whose mean
    and covariance are the exact posterior moments computed by quadrature. This is the gradient a VAE would
    use with a (moment-matched) Gaussian encoder that is as good as its family allows, without any encoder
    training error: it isolates the bias of a Gaussian posterior.

Error: per observation, `||g_hat - g|| / ||g||` with `g` the quadrature gradient; the table shows the median
over observations, averaged over repeats (different seeds).

    python -m benchmarks.gradient_estimation [--quick]
"""

import time

import matplotlib
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from benchmarks._report import benchmark_parser, machine_header, markdown_table, plot_path, save_figure
from tfp_amortised.evaluation import median_relative_error, per_point_gradients
from tfp_amortised import KernelRidge, surrogate_log_marginal
from tfp_amortised.models.softplus import SoftplusGaussianModel

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

tfd = tfp.distributions

SETTINGS = (((1., 1.), 1.), ((1., 1.), 0.5), ((2., -1.), 1.), ((0.5, 0.5), 0.5))
SIZES = (100, 250, 500, 1000, 2000, 4000)
METHODS = ("joint", "conditional", "prior IS", "ELBO (moment q)")


def prior_importance_surrogate(model, x, num_samples, seed):
    """Self-normalised importance sampling from the prior: `sum_n stop(w_mn) log p(x_m | z_n)`, `[M]`."""
    z = tfd.Normal(0., 1.).sample([num_samples, 2], seed=seed)  # shared by every observation
    log_likelihood = tfd.Independent(tfd.Normal(model.mean(z), model.noise_scale), 1).log_prob(x[:, None, :])
    weights = tf.stop_gradient(tf.nn.softmax(log_likelihood, axis=-1))  # [M, N]
    return tf.reduce_sum(weights * log_likelihood, axis=-1)


def elbo_surrogate(model, x, num_samples, seed):
    """ELBO surrogate `mean_n log p(x_m, z_mn)`, `z_mn ~ N(posterior moments of x_m)`; its b-gradient, `[M]`."""
    mean, covariance = model.posterior_moments(x)
    q = tfd.MultivariateNormalTriL(tf.stop_gradient(mean), tf.stop_gradient(tf.linalg.cholesky(covariance)))
    z = tf.stop_gradient(q.sample(num_samples, seed=seed))  # [N, M, 2]
    return tf.reduce_mean(model.joint_distribution().log_prob(z, x), axis=0)


EXACT = KernelRidge(solver="cholesky")  # the default settings with the exact solve at every N, as measured


def gradient(model, x, method, num_samples, seed):
    """`Tensor[M, 2]`: the estimate of `grad_b log p(x_m)` by `method` with `num_samples` draws."""
    if method in ("joint", "conditional"):
        def surrogate():
            return surrogate_log_marginal(model.joint_distribution, x, num_sleep=num_samples, seed=seed,
                                          form=method, regression=EXACT)
    elif method == "prior IS":
        def surrogate():
            return prior_importance_surrogate(model, x, num_samples, seed)
    else:
        def surrogate():
            return elbo_surrogate(model, x, num_samples, seed)
    return per_point_gradients(surrogate, [model.loading])


def run(settings=SETTINGS, sizes=SIZES, repeats=3, num_wake=64):
    """Median relative error of every method at every size: dict `{(setting, method): [error per size]}`."""
    errors = {}
    for setting_index, (loading, noise_scale) in enumerate(settings):
        model = SoftplusGaussianModel(loading, noise_scale)
        x = model.joint_distribution().sample(num_wake, seed=[setting_index, 0])[1]
        exact = per_point_gradients(lambda: model.log_marginal(x), [model.loading])  # noqa: B023
        for method in METHODS:
            errors[(loading, noise_scale), method] = [
                np.mean([median_relative_error(gradient(model, x, method, size, [repeat, size]), exact)
                         for repeat in range(repeats)])
                for size in sizes]
    return errors


def plot(errors, sizes, path):
    """Error against N (log-log), one panel per setting."""
    settings = sorted({setting for setting, _ in errors}, key=str)
    figure, axes = plt.subplots(1, len(settings), figsize=(3.2 * len(settings), 3.2), sharey=True, squeeze=False)
    for axis, setting in zip(axes[0], settings):
        for method in METHODS:
            axis.loglog(sizes, errors[setting, method], "o-", label=method)
        axis.set_title(f"b={setting[0]}, σx={setting[1]}", fontsize=9)
        axis.set_xlabel("samples N")
    axes[0, 0].set_ylabel("median relative error of ∇b log p(x)")
    axes[0, -1].legend(fontsize=7)
    save_figure(figure, path)


def main():
    parser = benchmark_parser(__doc__, "two settings, N <= 1000, one repeat")
    args = parser.parse_args()
    settings, sizes, repeats = (SETTINGS[:2], SIZES[:4], 1) if args.quick else (SETTINGS, SIZES, 3)
    start = time.time()
    errors = run(settings, sizes, repeats)
    path = plot_path("gradient_estimation", quick=args.quick)
    plot(errors, sizes, path)
    rows = [[f"b={setting[0]}, σx={setting[1]}", method, *errors[setting, method]] for setting, method in errors]
    print(machine_header())
    print(markdown_table(["setting", "method", *[f"N={size}" for size in sizes]], rows, "{:.3f}"))
    print(f"\nplot: {path}; wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
