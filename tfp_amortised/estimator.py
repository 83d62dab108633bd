"""The amortised gradient estimator: sleep, regress, weight the log-joint (Wenliang et al., 2020).

`amortised_step` composes one step of amortised learning, the only place in the package that does:

  1. sleep: `N` detached samples `(z_n, x_n) ~ p_theta` (plus `H` held out of the regression);
  2. regress: kernel ridge weights `alpha: [M, N]` from the sleep observations to the wake observations;
  3. weight: the surrogate `s_m` of each wake observation `x_m`, whose gradient with respect to the model
     parameters estimates `grad_theta log p_theta(x_m) = E_{p(z | x_m)}[grad_theta log p_theta(z, x_m)]`:

    joint form:        s_m = sum_n alpha_n(x_m) log p_theta(z_n, x_n)
    conditional form:  s_m = sum_n alpha_n(x_m) log p_theta(z_n, x_m)
                           = sum_n alpha_n(x_m) [log p_theta(x_m | z_n) + log p_theta(z_n)]

with `alpha` held constant. The joint form regresses the gradient of the log-joint on `x`; the conditional form
regresses functions of `z` only (the paper's natural-parameter regression for exponential-family likelihoods),
which removes the observation noise from the target, at `M x N` likelihood terms. Neither form is better on every
model: the conditional form's targets `log p(x_m | z_n)` span hundreds of nats when the likelihood is sharp and
long (the blowfly series), where its regression fails and the joint form's does not; elsewhere the conditional
form is the more accurate (the sigmoid belief network, the state-space series). The `"auto"` form measures both
on held-out sleep samples at every step and keeps the conditional form unless its error is an order of magnitude
above the joint form's (`amortised_step`). `surrogate_log_marginal`,
`AmortisedLearner`, export and the benchmarks all call `amortised_step`; under a `tf.distribute` strategy it
shares the work between replicas (`tfp_amortised.distributed`).

With several observed nodes (`observed=("x", "y")`), `x` is all of them: observations are dicts
`{node: Tensor[M, *event_shape]}`, the regression acts on the concatenation of their flattened values
(`tfp_amortised.ridge.concatenate_events`: scales matter) and the conditional form sets every observed node to
its wake value.
"""

import typing

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised import _joint, _observations, distributed
from tfp_amortised.linalg import in_xla_context
from tfp_amortised.ridge import check_regression, regression_weights

SURROGATE_FORMS = ("joint", "conditional")
FORMS = SURROGATE_FORMS + ("auto",)
# The "auto" form keeps the conditional form unless its held-out error is more than this many times the joint
# form's (`choose_conditional`). Measured: at most 4.3 at the start of the six models of
# benchmarks/regression_quality (where the conditional form trains as well as the exact gradient) and never above
# 10 in their training; 32-253 at the start of the blowfly series, where it fails.
CONDITIONAL_TOLERANCE = 10.


class AmortisedStep(typing.NamedTuple):
    """What one amortised step returns (`amortised_step`).

    Attributes:
      surrogate: `Tensor[M]`, the surrogate `s_m` of every wake point (module docstring). Under a `tf.distribute`
        strategy, this replica's part: the sum over its own sleep samples; the parts add up to the surrogate.
      loss: scalar `Tensor`, `-mean_m s_m` (this replica's share under a strategy: the shares add up to it).
      diagnostics: dict of scalar `Tensor`s, detached: `bandwidth`, `jitter` and `condition` of the regression
        (`RegressionDiagnostics`) and, with held-out sleep samples, `ridge_r2`, the out-of-sample R^2 of the ridge
        regression at the held-out points (`1 - regression_loss`, of the form used), with the `"auto"` form
        `conditional_form` (1 when the step used the conditional form, 0 for the joint one), and with
        `log_likelihood=True` the mean over the wake points of `prior_log_likelihood`.
      regression_loss: scalar `Tensor`, the held-out error of the regression (`regression_loss`), differentiable
        with respect to the regression's hyperparameters only (0 without held-out samples). Under a strategy, this
        replica's share.
    """

    surrogate: tf.Tensor
    loss: tf.Tensor
    diagnostics: dict
    regression_loss: tf.Tensor


def sleep(joint, num_sleep, seed):
    """Draws `num_sleep` detached samples `(z_n, x_n) ~ p_theta` (the sleep phase).

    Args:
      joint: a `tfd.JointDistribution` with scalar batch shape, or a zero-argument callable returning one.
      num_sleep: the number `N` of samples: a Python or NumPy integer >= 1, or a scalar integer Tensor.
      seed: a stateless seed (`int32[2]` Tensor or pair of ints).

    Returns:
      dict `{node name: Tensor[N, *event_shape]}`, with gradients stopped.
    """
    joint = _joint.resolve_joint(joint)
    num_sleep = check_num_sleep(num_sleep, minimum=1)
    sample = _joint.as_named(joint, joint.sample(num_sleep, seed=check_seed(seed)))
    check_finite_sample(sample)
    return _joint.stop_gradient(sample)


def check_seed(seed):
    """`seed` as an `int32[2]` Tensor (Keras seeds are int64); a ValueError naming it unless it is two integers."""
    seed = tf.convert_to_tensor(seed)
    if not (seed.dtype.is_integer and seed.shape.is_compatible_with([2])):
        raise ValueError("seed must be a stateless seed: two integers (or an integer Tensor of shape [2]). "
                         f"Received: seed of shape {seed.shape} and dtype {seed.dtype.name}")
    return tf.cast(seed, tf.int32)


def check_finite_sample(sample):
    """Eagerly, a ValueError naming the first node of `sample` (`{node: Tensor}`) with NaN or infinite values.

    A model whose samples overflow (a LogNormal with a large scale, a Normal with scale 1e20 whose squared
    distances overflow float32) cannot be regressed on; inside a compiled training step the step is skipped and
    counted instead (`Learner`).
    """
    if not tf.executing_eagerly():
        return
    for name, value in sample.items():
        if value.dtype.is_floating and not tf.reduce_all(tf.math.is_finite(value)):
            count = int(tf.reduce_sum(tf.cast(~tf.math.is_finite(value), tf.int32)))
            raise ValueError(f"The model's samples of node {name!r} are not finite ({count} NaN or infinite values of "
                             f"{value.shape.num_elements()}): its parameters or its distributions overflow "
                             f"{value.dtype.name}.")


def check_finite_log_density(log_density, what):
    """Eagerly, a ValueError when `log_density` (of the model's own samples, or of wake observations under its
    latents) holds NaN or infinite values, naming `what` it is: a NaN or zero scale, or samples whose squares
    overflow, give a surrogate that is not finite. In a compiled training step the step is skipped instead."""
    if tf.executing_eagerly() and not tf.reduce_all(tf.math.is_finite(log_density)):
        count = int(tf.reduce_sum(tf.cast(~tf.math.is_finite(log_density), tf.int32)))
        raise ValueError(f"The model's log-density of {what} is not finite ({count} NaN or infinite values of "
                         f"{log_density.shape.num_elements()}): a NaN or zero scale, a sample outside the support, or "
                         f"values whose squares overflow {log_density.dtype.name}.")


def weighted_log_joint(joint, sleep_sample, weights, wake_x, *, observed="x", form="joint"):
    """The surrogate `s_m` of each wake point from sleep samples and ridge weights already computed.

    Args:
      joint: the `tfd.JointDistribution` the sleep samples came from, built inside the gradient tape.
      sleep_sample: dict `{node name: Tensor[N, *event_shape]}`, detached (see `sleep`).
      weights: `Tensor[M, N]` ridge weights, treated as constants.
      wake_x: `Tensor[M, *event_shape]`, observations of the node named `observed` (a dict of them for several).
      observed: name of the observed node, or a list of names.
      form: `"joint"` or `"conditional"` (see module docstring).

    Returns:
      `Tensor[M]`.
    """
    check_form(form, SURROGATE_FORMS)
    weights = tf.stop_gradient(weights)
    if form == "joint":
        log_joint = _joint.log_prob(joint, sleep_sample)  # [N]
        check_finite_log_density(log_joint, "its own samples")
        return tf.linalg.matvec(weights, tf.cast(log_joint, weights.dtype))
    # Conditional form: every latent draw z_n paired with every wake observation x_m; log p(z_n, x_m): [M, N].
    observed = _observations.normalise(observed)
    wake_x = _observations.cast_like(wake_x, _observations.select(sleep_sample, observed))
    log_joint = _joint.paired_log_prob(joint, sleep_sample, wake_x, observed)
    check_finite_log_density(log_joint, "the wake observations paired with its latent samples")
    log_joint = tf.broadcast_to(log_joint, tf.shape(weights))
    return tf.reduce_sum(weights * tf.cast(log_joint, weights.dtype), axis=-1)


def amortised_step(joint, wake_x, *, num_sleep, seed, observed="x", regression=None, form="joint", num_holdout=0,
                   variables=None, log_likelihood=False, held_out_error=True, conditional_allowed=True):
    """One step of amortised learning: sleep, ridge weights, weighted log-joint and diagnostics (Wenliang et al.).

    Draws `num_sleep + num_holdout` detached sleep samples with `seed`, computes kernel ridge weights from the
    first `num_sleep` sleep observations to the wake observations (and to the held-out ones), and weights the
    log-joint by them (module docstring, both forms). Call it inside a `tf.GradientTape` in which `joint` was
    built (pass the model's `joint_distribution` method: it is called here).

    With held-out samples, the step also measures how well the regression predicts, at the held-out
    observations, what it is used for: the gradient of the log-joint. With `variables`, the targets are the
    per-sample directional derivatives `v_k . grad_theta log p(z_n, x_n)` along `K = 2` random directions `v_k`
    in parameter space, drawn afresh each step (`gradient_projections`), whose
    expected squared error is the squared error of the regressed gradient; without `variables`, the log-joint
    itself. `regression_loss` is the held-out mean squared error divided by the targets' variance (so `ridge_r2 =
    1 - regression_loss`), differentiable with respect to the regression's hyperparameters: the objective on
    which a learning `KernelRidge` is trained (the authors' online kernel learning). For a learning layer with
    `variance_weight = w < 1`, the step returns instead that error less `(1 - w)` times the predictions' variance
    over sleep sets (`split_half_variance`), i.e. noise + bias^2 + w variance: learning then averages the
    estimate's variance over steps, but not its bias (`KernelRidge`).

    The `"auto"` form measures the held-out error of both forms at every step, on the same held-out samples and
    directions (a paired comparison), and weights the log-joint in the conditional form unless its error exceeds
    `CONDITIONAL_TOLERANCE` times the joint form's (`choose_conditional`) or `conditional_allowed` is false. The
    held-out error reported and learned from is the chosen form's.

    Under a `tf.distribute` strategy with `R` replicas (call it in the replica context), replica `r` draws
    `num_sleep / R` sleep samples (and `num_holdout` held-out ones) with the seed folded with `r`, the sleep and
    wake observations are all-gathered so every replica solves the same global regression, and each replica
    weights only its own sleep samples: the replicas' losses add up to the single-device loss on the global
    sleep set (`tfp_amortised.distributed`). With one replica this is the plain single-device step.

    Cost: `N` (joint form) or `M N` (conditional form) log-density terms, an `N x N` Gram matrix and one
    Cholesky factorisation, O(N^3 / 3), for the exact solver (the default up to N = 1000). Measuring the
    held-out error with `variables` costs one more log-density pass over the `N + H` sleep samples (`H x N`
    pairs in the conditional form) with a double backward pass, or `K` forward passes for an AutoBatched joint
    (`gradient_projections`); `AmortisedLearner` pays it in training only when the regression learns from it,
    and in evaluation. The `"auto"` form always measures both (about the conditional form's cost plus the joint
    form's measurement).

    Args:
      joint: a `tfd.JointDistribution` (Coroutine, Sequential or Named; batched or AutoBatched) with scalar
        batch shape, or a zero-argument callable returning one (called here, so inside the caller's tape; it
        must be a callable when `variables` are given).
      wake_x: `Tensor[M, *event_shape]` of observations of the node `observed` (this replica's share); with
        several observed nodes, a dict `{node: Tensor[M, *event_shape]}` keyed by exactly them.
      num_sleep: `N >= 2`, the number of sleep samples of the regression (global, across replicas): a Python or
        NumPy integer, or a scalar integer Tensor (one device only).
      seed: a stateless seed (`int32[2]`); the same seed gives the same step.
      observed: name of the observed node in `joint`, or a list of names (module docstring).
      regression: a `KernelRidge` layer, or None (default) for `KernelRidge`'s defaults computed by pure functions
        (`regression_weights`), which create no Keras variables.
      form: `"joint"`, `"conditional"` or `"auto"` (the conditional form unless its held-out error is more than
        `CONDITIONAL_TOLERANCE` times the joint form's, at each step).
      num_holdout: number `H >= 0` of extra sleep samples held out of the regression for its diagnostics (`H >= 1`
        for the `"auto"` form, which chooses by them).
      variables: None, or the model's trainable variables, whose gradient the held-out targets project.
      log_likelihood: also estimate `log p(x_m)` from the step's sleep samples, at `M (N + H)` more log-density
        terms (`prior_log_likelihood`), as the diagnostic `log_likelihood` (mean over the wake points).
      held_out_error: measure the regression's held-out error (`ridge_r2`, `regression_loss`) on the `H`
        held-out samples. With False they are still drawn, so the sleep set and the surrogate do not depend on
        it, but not used: `regression_loss` is 0 and `ridge_r2` is absent. The `"auto"` form measures it always.
      conditional_allowed: scalar bool (Python or Tensor); with the `"auto"` form, False takes the joint form
        whatever the errors (`AmortisedLearner` passes False once the conditional form has failed).

    Returns:
      `AmortisedStep(surrogate [M], loss [], diagnostics {name: []}, regression_loss [])`.
    """
    joint_fn = joint
    joint = _joint.resolve_joint(joint)
    check_form(form)
    observed = _joint.check_observed(joint, observed)
    check_regression(regression)
    num_sleep = check_num_sleep(num_sleep)
    num_local = distributed.local_num_sleep(num_sleep)
    step_seed = distributed.replica_seed(check_seed(seed))
    with tf.name_scope("sleep"):
        sample = sleep(joint, num_local + check_num_holdout(num_holdout), step_seed)
    fit = {name: value[:num_local] for name, value in sample.items()}
    sleep_x = _observations.select(sample, observed)
    wake_x = _observations.cast_like(check_wake_x(wake_x, sleep_x, observed), sleep_x)
    if form == "auto" and not num_holdout:
        raise ValueError("The 'auto' form chooses between the joint and conditional forms by their error on "
                         "held-out sleep samples: num_holdout must be positive. Received: num_holdout=0")
    measure = bool(num_holdout) and (held_out_error or form == "auto")
    queries = tf.nest.map_structure(lambda wake, sleep: tf.concat([wake, sleep[num_local:]], axis=0),
                                    wake_x, sleep_x) if measure else wake_x  # wake, then held-out sleep
    fit_x = distributed.gather(_observations.select(fit, observed))  # every replica's sleep observations
    weights, regression_diagnostics = regression_weights(regression, fit_x, queries)
    num_wake = _observations.num_rows(wake_x)
    diagnostics = {"bandwidth": tf.reduce_mean(regression_diagnostics.bandwidth),
                   "jitter": regression_diagnostics.jitter, "condition": regression_diagnostics.condition}
    held_out_loss = tf.zeros([], weights.dtype)
    if measure:
        held_out = {name: value[num_local:] for name, value in sample.items()}
        fitted, target, held_out_loss, use_conditional = _held_out_error(
            joint_fn, fit, held_out, observed, form, variables, tf.random.experimental.stateless_fold_in(step_seed, 1),
            weights[num_wake:], conditional_allowed)
        if form == "auto":
            diagnostics["conditional_form"] = tf.cast(use_conditional, weights.dtype)
        diagnostics["ridge_r2"] = 1. - held_out_loss
        if regression is not None and regression.learn and regression.variance_weight < 1.:
            held_out_loss -= (1. - regression.variance_weight) * split_half_variance(
                regression, fit_x, _observations.select(held_out, observed), fitted, target, weights[num_wake:])
        _, num_replicas = distributed.replica_id_and_count()
        held_out_loss /= num_replicas
    all_weights = distributed.gather(weights[:num_wake])  # [M, N]: every replica's wake rows
    own_weights, all_wake_x = distributed.own_columns(all_weights, num_local), distributed.gather(wake_x)

    def surrogate_of(surrogate_form):
        return weighted_log_joint(joint, fit, own_weights, all_wake_x, observed=observed, form=surrogate_form)

    surrogate = (tf.cond(use_conditional, lambda: surrogate_of("conditional"), lambda: surrogate_of("joint"))
                 if form == "auto" else surrogate_of(form))
    loss = -tf.reduce_sum(surrogate) / tf.cast(tf.shape(surrogate)[0], surrogate.dtype)
    if log_likelihood:
        diagnostics["log_likelihood"] = tf.reduce_mean(
            prior_log_likelihood(joint, sample, all_wake_x, observed=observed))
    return AmortisedStep(surrogate, loss, {name: tf.stop_gradient(value) for name, value in diagnostics.items()},
                         held_out_loss)


def _held_out_error(joint, fit, held_out, observed, form, variables, seed, holdout_weights, conditional_allowed):
    """The held-out error of the step's form and what it was computed from; for `"auto"`, of the form it chooses.

    Returns:
      `(fitted, target, error, use_conditional)`: the regressed values (`[N, K]` or `[H, N, K]`; for `"auto"`
      always `[H, N, K]`), the held-out targets `[H, K]` (`held_out_targets`), the scalar `regression_loss`, and
      for `"auto"` the scalar bool choice (None for the other forms).
    """
    fitted, errors, target = {}, {}, None
    for measured in (SURROGATE_FORMS if form == "auto" else (form,)):
        fitted[measured], target = held_out_targets(joint, fit, held_out, observed, measured, variables, seed)
        errors[measured] = regression_loss(fitted[measured], target, holdout_weights)
    if form != "auto":
        return fitted[form], target, errors[form], None
    use_conditional = tf.logical_and(conditional_allowed, choose_conditional(errors))
    fitted = tf.where(use_conditional, fitted["conditional"],
                      tf.broadcast_to(fitted["joint"], tf.shape(fitted["conditional"])))
    return fitted, target, tf.where(use_conditional, errors["conditional"], errors["joint"]), use_conditional


def choose_conditional(errors):
    """Whether the `"auto"` form uses the conditional form: a scalar bool, the same on every replica.

    Not simply the form with the lower error: that error is measured at the model's own samples, while where
    training ends depends on the estimate's bias at the data. Choosing the lower error at every step, training on
    the state-space series ended 2.1 nats per series behind the exact gradient, against 0.05 for the conditional
    form (`benchmarks/RESULTS.md`). So the conditional form, which removes the observation noise from the
    regression's targets, is kept unless it fails outright: on the blowfly series its error was 32-253 times the
    joint form's. The errors are summed over the replicas before they are compared.

    Args:
      errors: dict `{"joint": [], "conditional": []}`, this replica's held-out errors of the two forms
        (`regression_loss`, on the same held-out samples and directions).

    Returns:
      Scalar bool `Tensor`, true when the conditional form's error summed over the replicas is at most
      `CONDITIONAL_TOLERANCE` times the joint form's; detached.
    """
    joint_error, conditional_error = (distributed.total(tf.stop_gradient(errors[name])) for name in SURROGATE_FORMS)
    return conditional_error <= CONDITIONAL_TOLERANCE * joint_error


def prior_log_likelihood(joint, sleep_sample, wake_x, *, observed="x"):
    """Prior importance-sampling estimate of `log p(x_m)` from sleep samples: `log (1/N) sum_n p(x_m | z_n)`.

    The sleep latents `z_n` are draws from the prior, so `(1/N) sum_n p(x_m | z_n)` is an unbiased estimate of
    `p(x_m)`, and its log is on average a lower bound on `log p(x_m)` (Jensen), whose gap shrinks as `N` grows and
    is large when the posterior is much narrower than the prior (few draws land where it is). `log p(x_m | z_n)` is
    the observed node's own term of the log-density (`log_prob_parts`) at `x_m`, with the nodes before it at sleep
    sample `n`: `log p(z_n, x_m) - log p(z_n)` when the observed node is the last one, and correct whatever the
    order of the nodes (a latent drawn after the observed node does not enter that term). With several observed
    nodes, `log p(x_m | z_n)` is the sum of their terms, which is the likelihood when no observed node depends on
    a latent drawn after another observed node.

    Under a `tf.distribute` strategy, `wake_x` holds every replica's rows and `sleep_sample` this replica's
    samples: the per-replica sums are combined into the estimate on the global sleep set, the same on every replica.

    Cost: the log-density at `M x N` pairs (latents `[1, N, ...]` against observations `[M, 1, ...]`), the
    conditional form's count of terms.

    Args:
      joint: a `tfd.JointDistribution` (or a zero-argument callable returning one).
      sleep_sample: dict `{node name: Tensor[N, *event_shape]}` of samples of `joint` (see `sleep`).
      wake_x: `Tensor[M, *event_shape]`, observations of the node `observed` (a dict of them for several).
      observed: name of the observed node, or a list of names.

    Returns:
      `Tensor[M]`, detached.
    """
    joint = _joint.resolve_joint(joint)
    observed = _observations.normalise(observed)
    wake_x = _observations.cast_like(wake_x, _observations.select(sleep_sample, observed))
    paired = {name: tf.stop_gradient(value)[tf.newaxis] for name, value in sleep_sample.items()}
    paired.update({name: value[:, tf.newaxis] for name, value in _observations.as_named(wake_x, observed).items()})
    num_local = _observations.num_rows(sleep_sample)
    parts = _joint.log_prob_parts(joint, paired)
    log_likelihood = tf.broadcast_to(tf.add_n([parts[name] for name in _observations.names(observed)]),
                                     tf.stack([_observations.num_rows(wake_x), num_local]))  # [M, N_r]
    local = tf.reduce_logsumexp(log_likelihood, axis=-1)  # [M]
    num_samples = distributed.total(tf.cast(num_local, local.dtype))
    return tf.stop_gradient(tf.reduce_logsumexp(distributed.gather(local[tf.newaxis]), axis=0)
                            - tf.math.log(num_samples))


def held_out_targets(joint, fit, held_out, observed, form, variables, seed):
    """What the regression predicts at the held-out sleep samples, and what it should predict there.

    The step's estimate at a held-out observation `x_h` is `sum_n alpha_n(x_h) g_n(x_h)`, with `g_n(x) =
    grad log p(z_n, x_n)` (joint form) or `grad log p(z_n, x)` (conditional form); the held-out sample's own
    `grad log p(z_h, x_h)` has that estimate's target, `grad log p(x_h)`, as its conditional mean given `x_h`.
    Their expected squared difference is the estimator's squared error plus a constant, so it is the objective
    to select the regression by. Gradients are projected on `K = 2` random directions (`gradient_projections`);
    without `variables` the log-joint itself stands in for them. Under a `tf.distribute` strategy the fitted
    values are every replica's (all-gathered samples or values), in the order of the global sleep set.

    Args:
      joint: a zero-argument callable returning the `tfd.JointDistribution` (a distribution, without variables).
      fit: dict `{node: Tensor[N_r, *event_shape]}`, this replica's sleep samples the regression is fitted on.
      held_out: dict `{node: Tensor[H, *event_shape]}`, this replica's held-out sleep samples.
      observed: name of the observed node, or a tuple of names.
      form: `"joint"` or `"conditional"`.
      variables: the model's variables, or None.
      seed: stateless seed of the projections.

    Returns:
      `(fitted, target)`: `Tensor[N, K]` (joint form) or `Tensor[H, N, K]` (conditional form: `g_n(x_h)`), and
      `Tensor[H, K]`, detached.
    """
    def values(named, log_density=_joint.log_prob):
        if variables is None:
            return log_density(_joint.resolve_joint(joint), named)[..., tf.newaxis]
        return gradient_projections(joint, named, variables, seed, log_density=log_density)

    if form == "joint":
        num_fit = _observations.num_rows(fit)
        both = values({name: tf.concat([fit[name], held_out[name]], axis=0) for name in fit})
        return distributed.gather(both[:num_fit]), both[num_fit:]
    held_out_x = _observations.select(held_out, observed)
    fitted = values({name: distributed.gather(value) for name, value in fit.items()},  # g_n(x_h): [H, N, K]
                    lambda built, sample: _joint.paired_log_prob(built, sample, held_out_x, observed))
    return fitted, values(held_out)


def gradient_projections(joint, named_value, variables, seed, num_projections=2, *, log_density=_joint.log_prob):
    """Directional derivatives of the log-joint along random directions in parameter space, per sample.

    `t_bk = v_k . grad_theta log p_theta(value_b)` with `v_k ~ N(0, I)` over all parameters. Since
    `E_v[(v . e)^2] = |e|^2`, a squared error of these projections estimates the squared error of the gradient.
    Each column is a Jacobian-vector product `J v_k`, computed by reverse mode twice (the gradient with respect to
    `u` of `(J^T u) . v_k`), which needs no more of the model than the learner's own gradient does. An AutoBatched
    joint is differentiated in forward mode instead (`tf.autodiff.ForwardAccumulator`, the same values): reverse
    mode twice through its vectorised map cost about 200 times as much on a Gaussian mixture
    (`benchmarks/RESULTS.md`). Forward mode fails on some models (one whose distribution runs a `tf.scan`, for
    one); there, for Keras variables behind no `tf.Variable`, and under XLA (where forward mode through the
    vectorised map gave zeros), the reverse-mode path is taken.

    Args:
      joint: a zero-argument callable returning the `tfd.JointDistribution` (built inside the tapes).
      named_value: dict `{node name: Tensor[*batch, *event_shape]}` (broadcasting batches), detached.
      variables: list of the model's variables `theta` (Keras or TensorFlow variables).
      seed: stateless seed `int32[2]` of the directions.
      num_projections: number `K` of directions.
      log_density: `(joint, named_value) -> Tensor[*batch]`, the log-density to differentiate: `log_prob` of the
        values (default), or for instance `_joint.paired_log_prob` of sleep draws against observations.

    Returns:
      `Tensor[*batch, K]`, detached.
    """
    if isinstance(joint, tfp.distributions.JointDistribution):
        raise TypeError("Projected gradient targets need joint as a zero-argument callable that builds the "
                        "JointDistribution from the variables (e.g. model.joint_distribution). Received: joint of "
                        f"type {type(joint).__name__}")
    directions = [_random_directions(variables, tf.random.experimental.stateless_fold_in(seed, k))
                  for k in range(num_projections)]
    if getattr(_joint.resolve_joint(joint), "use_vectorized_map", False) and not in_xla_context():
        try:
            return _forward_projections(joint, named_value, variables, directions, log_density)
        except (TypeError, ValueError, LookupError, NotImplementedError):
            pass  # forward mode is not supported by some op of the model: reverse mode below
    return _reverse_projections(joint, named_value, variables, directions, log_density)


def _random_directions(variables, seed):
    """One direction `v ~ N(0, I)` in parameter space: a standard normal Tensor shaped like each variable."""
    seeds = tf.random.experimental.stateless_split(seed, max(len(variables), 1))
    return [tf.random.stateless_normal(tf.shape(variable), seeds[i], dtype=tf.as_dtype(variable.dtype))
            for i, variable in enumerate(variables)]


def _forward_projections(joint, named_value, variables, directions, log_density):
    """`gradient_projections` by forward-mode differentiation: one forward pass per direction."""
    watched = [variable.value if isinstance(variable, keras.Variable) else variable for variable in variables]
    if not all(isinstance(variable, tf.Variable) for variable in watched):
        raise TypeError("forward-mode differentiation needs tf.Variables")
    columns = []
    for tangents in directions:
        with tf.autodiff.ForwardAccumulator(watched, tangents) as accumulator:
            log_joint = log_density(_joint.resolve_joint(joint), named_value)  # [*batch]
        columns.append(accumulator.jvp(log_joint, unconnected_gradients=tf.UnconnectedGradients.ZERO))
    return tf.stop_gradient(tf.stack(columns, axis=-1))


def _reverse_projections(joint, named_value, variables, directions, log_density):
    """`gradient_projections` by reverse mode twice: the gradient with respect to `u` of `(J^T u) . v`."""
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            log_joint = log_density(_joint.resolve_joint(joint), named_value)  # [*batch]
        cotangent = tf.zeros_like(log_joint)
        outer.watch(cotangent)
        vjp = inner.gradient(log_joint, variables, output_gradients=cotangent,
                             unconnected_gradients=tf.UnconnectedGradients.ZERO)  # J^T u, one per variable
        products = [tf.add_n([tf.reduce_sum(g * v) for g, v in zip(vjp, direction)]) for direction in directions]
    columns = [outer.gradient(product, cotangent, unconnected_gradients=tf.UnconnectedGradients.ZERO)
               for product in products]
    del outer
    return tf.stop_gradient(tf.stack(columns, axis=-1))


def split_half_variance(regression, fit_x, held_out_x, fitted, target, holdout_weights):
    """Variance over sleep sets of the regression's held-out predictions, relative to the targets' variance.

    The variance of a prediction `sum_n alpha_hn y_n` is `sigma_h^2 |alpha_h|^2` for targets of noise variance
    `sigma_h^2`. The noise is measured between the two halves `A`, `B` of the sleep set: their predictions differ
    by `sigma_h^2 (|alpha^A_h|^2 + |alpha^B_h|^2)` in expected square, so
    `v_h = |p^A_h - p^B_h|^2 |alpha_h|^2 / (|alpha^A_h|^2 + |alpha^B_h|^2)`; returned is `mean_h v_h / sum_k
    var_h(t_hk)`. Measured against the variance of the predictions over 300 sleep sets of a 1-D regression, it is
    within 0.88-1.17x of it for lambda from 1e-6 to 1e-2 and three bandwidths (the cruder `|p^A - p^B|^2 / 4`,
    which assumes the variance falls as `1 / N`, was 4.7x at lambda = 1e-6). The noise estimate is held constant:
    the hyperparameter gradient flows through `|alpha_h|^2`. Costs two solves of `N / 2`.

    Args:
      regression: the learning `KernelRidge` layer.
      fit_x: `Tensor[N, *event_shape]` (or a dict of them), the sleep observations of the fit, every replica's.
      held_out_x: `Tensor[H, *event_shape]` (or a dict of them), the held-out sleep observations.
      fitted: `Tensor[N, K]` or `Tensor[H, N, K]`, the regressed values (`held_out_targets`).
      target: `Tensor[H, K]`, the held-out samples' own values (for the scale only).
      holdout_weights: `Tensor[H, N]`, the full sleep set's ridge weights at the held-out observations.

    Returns:
      Scalar `Tensor`.
    """
    half = _observations.num_rows(fit_x) // 2
    values = tf.stop_gradient(tf.cast(fitted, holdout_weights.dtype))
    predictions, norms = [], []
    for rows in (slice(0, half), slice(half, 2 * half)):
        weights = regression(tf.nest.map_structure(lambda x: x[rows], fit_x), held_out_x)  # [H, N / 2]
        predictions.append(_predict(weights, values[rows] if values.shape.rank == 2 else values[:, rows]))
        norms.append(tf.reduce_sum(tf.square(weights), axis=-1))
    noise = tf.stop_gradient(tf.reduce_sum(tf.square(predictions[0] - predictions[1]), axis=-1)
                             / (norms[0] + norms[1]))  # [H]
    variance = tf.reduce_mean(noise * tf.reduce_sum(tf.square(holdout_weights), axis=-1))
    return variance / _total_variance(tf.cast(target, variance.dtype))


def _predict(holdout_weights, fitted):
    """`[H, N] x ([N, K] or [H, N, K]) -> [H, K]`: the regression's predictions at the held-out observations."""
    if fitted.shape.rank == 2:
        return holdout_weights @ fitted
    return tf.einsum("hn,hnk->hk", holdout_weights, fitted)


def _total_variance(target):
    """`sum_k var_h(t_hk)`, kept away from 0."""
    return tf.reduce_sum(tf.math.reduce_variance(target, axis=0)) + np.finfo(np.float32).tiny


def regression_loss(fitted, target, holdout_weights):
    """Held-out squared error of the step's estimate, relative to the targets' variance.

    `sum_hk (t_hk - sum_n alpha_hn g_nk(x_h))^2 / (H sum_k var_h(t_hk))`, with `g_nk(x_h) = fitted[n, k]` (joint
    form) or `fitted[h, n, k]` (conditional form): about 1 for an estimate no better than the mean, smaller the
    better the regression (its floor is the targets' own noise given `x`). Differentiable with respect to what the
    held-out weights depend on (the hyperparameters of a learning `KernelRidge`); the targets are detached.

    Args:
      fitted: `Tensor[N, K]` or `Tensor[H, N, K]`, the regressed values (see `held_out_targets`).
      target: `Tensor[H, K]`, the held-out samples' own values.
      holdout_weights: `Tensor[H, N]` ridge weights at the held-out observations.

    Returns:
      Scalar `Tensor`.
    """
    fitted = tf.stop_gradient(tf.cast(fitted, holdout_weights.dtype))
    target = tf.stop_gradient(tf.cast(target, holdout_weights.dtype))
    squared_error = tf.reduce_sum(tf.reduce_mean(tf.square(target - _predict(holdout_weights, fitted)), axis=0))
    return squared_error / _total_variance(target)


def surrogate_log_marginal(joint, wake_x, *, num_sleep, seed, observed="x", regression=None, form="joint"):
    """Per-observation surrogate whose parameter gradient estimates `grad log p_theta(wake_x[m])`.

    The surrogate of `amortised_step`, with no held-out samples: draw `num_sleep` detached samples from the model,
    compute kernel ridge weights from the sleep observations to the wake observations, and weight the log-joint
    by them (module docstring, both forms). Differentiate the result inside a `tf.GradientTape` in which `joint`
    was built (`tape.jacobian` for one gradient per wake point, or the mean for a minibatch gradient). Its value
    is not `log p(x)`: only its gradient is meaningful.

    Args:
      joint: a `tfd.JointDistribution` (Coroutine, Sequential or Named; batched or AutoBatched) with scalar
        batch shape, or a zero-argument callable returning one (called here, so inside the caller's tape).
      wake_x: `Tensor[M, *event_shape]` of observations of the node `observed`; with several observed nodes, a
        dict `{node: Tensor[M, *event_shape]}`.
      num_sleep: integer `N >= 2`, the number of sleep samples.
      seed: a stateless seed (`int32[2]`); the same seed gives the same estimate.
      observed: name of the observed node in `joint`, or a list of names (module docstring).
      regression: a `KernelRidge` layer, or None (default) for its defaults computed by pure functions.
      form: `"joint"` or `"conditional"`.

    Returns:
      `Tensor[M]`.

    #### Examples

    ```python
    with tf.GradientTape() as tape:
        surrogate = surrogate_log_marginal(model.joint_distribution, x, num_sleep=1000, seed=[0, 1])
        loss = -tf.reduce_mean(surrogate)
    grads = tape.gradient(loss, model.trainable_variables)
    ```

    #### References

    [1] Li K. Wenliang, Theodore Moskovitz, Heishiro Kanagawa, Maneesh Sahani. Amortised Learning by
        Wake-Sleep. ICML 2020.
    """
    return amortised_step(joint, wake_x, num_sleep=num_sleep, seed=seed, observed=observed, regression=regression,
                          form=form).surrogate


def ridge_expectation(sleep_x, query_x, values, regression=None):
    """Kernel ridge estimate of `E[values | x]` at each query: `sum_n alpha_n(x_m) values_n`.

    With sleep pairs `(z_n, x_n) ~ p` and `values_n = f(z_n)`, this estimates the posterior expectation
    `E[f(z) | x_m]` with no encoder (Wenliang et al., ICML 2020).

    Args:
      sleep_x: `Tensor[N, *event_shape]` sleep observations (or any features of them), or a dict of them
        (several observed nodes).
      query_x: `Tensor[M, *event_shape]` the same for the query points (a dict with the same keys).
      values: `Tensor[N, ...]` one target per sleep sample.
      regression: a `KernelRidge` layer, or None for the default kernel ridge weights (`regression_weights`).

    Returns:
      `Tensor[M, ...]`.
    """
    values = tf.convert_to_tensor(values)
    if not (values.dtype.is_floating or values.dtype.is_integer or values.dtype.is_bool):
        raise TypeError("values must hold numbers, one row per sleep sample. "
                        f"Received: values.dtype={values.dtype.name}")
    sleep_x = _observations.as_tensor(sleep_x, "sleep_x")
    num_sleep = tf.nest.flatten(sleep_x)[0].shape[:1]
    if values.shape.rank == 0 or not values.shape[:1].is_compatible_with(num_sleep):
        raise ValueError(f"values must have one row per sleep sample: shape [{num_sleep[0]}, ...]. "
                         f"Received: values.shape={values.shape}")
    weights, _ = regression_weights(regression, sleep_x, query_x)  # [M, N]
    return tf.tensordot(weights, tf.cast(values, weights.dtype), axes=1)


def check_wake_x(wake_x, sleep_x, observed):
    """Checks wake observations against the observed nodes' sleep samples; returns them as observations.

    `wake_x` is an array-like `[M, *event_shape]` or a one-key dict `{observed: array-like}` for one observed
    node, a dict keyed by exactly the observed nodes for several (`_observations.convert`); it is returned as a
    Tensor, or a dict of Tensors in the order of `observed`. Observations `[M, 1]` of a scalar node (a column) are
    returned as `[M]`.

    Raises a ValueError (TypeError for the dtype) naming the node and the expected shape `[M, *event_shape]` or
    dtype, a ValueError for missing or unexpected dict keys, ragged data, or (when running eagerly) NaN or
    infinite values.
    """
    observed = _observations.normalise(observed)
    wake_x = _observations.convert(wake_x, observed, "wake_x")
    if isinstance(observed, str):
        return _check_node(wake_x, sleep_x, observed, "wake_x")
    return {name: _check_node(wake_x[name], sleep_x[name], name, f"wake_x[{name!r}]") for name in observed}


def _check_node(wake_x, sleep_x, observed, argument):
    """`check_wake_x` of one observed node's Tensor `wake_x`, named `argument` in the messages."""
    event_shape = sleep_x.shape[1:]
    if event_shape.rank == 0 and wake_x.shape.rank == 2 and wake_x.shape[1] == 1:
        wake_x = wake_x[:, 0]
    if not (wake_x.dtype.is_floating or wake_x.dtype.is_integer or wake_x.dtype.is_bool):
        raise TypeError(
            f"{argument} must hold numbers for the observed node {observed!r} (dtype {sleep_x.dtype.name}). "
            f"Received: {argument}.dtype={wake_x.dtype.name}")
    if wake_x.shape.rank != event_shape.rank + 1 or not wake_x.shape[1:].is_compatible_with(event_shape):
        raise ValueError(
            f"{argument} must have shape [{', '.join(['M', *map(str, event_shape)])}]: a batch of the observed node "
            f"{observed!r}, whose event shape is {event_shape}. Received: {argument}.shape={wake_x.shape}")
    if tf.executing_eagerly() and wake_x.dtype.is_floating and not tf.reduce_all(tf.math.is_finite(wake_x)):
        raise ValueError(f"{argument} contains NaN or infinite values.")
    return wake_x


def check_num_sleep(num_sleep, minimum=2, argument="num_sleep"):
    """`num_sleep` as a Python int (or the scalar integer Tensor itself); a ValueError naming it when invalid."""
    if tf.is_tensor(num_sleep) and num_sleep.dtype.is_integer and num_sleep.shape.rank == 0:
        if tf.executing_eagerly() and int(num_sleep) < minimum:
            raise ValueError(f"{argument} must be an integer >= {minimum}. Received: {argument}={int(num_sleep)}")
        return num_sleep
    if isinstance(num_sleep, (int, np.integer)) and not isinstance(num_sleep, bool) and num_sleep >= minimum:
        return int(num_sleep)
    raise ValueError(f"{argument} must be an integer >= {minimum}. Received: {argument}={num_sleep!r}")


def check_num_holdout(num_holdout):
    """`num_holdout` as a Python int >= 0; a ValueError naming it otherwise."""
    if isinstance(num_holdout, (int, np.integer)) and not isinstance(num_holdout, bool) and num_holdout >= 0:
        return int(num_holdout)
    raise ValueError(f"num_holdout must be a non-negative integer. Received: num_holdout={num_holdout!r}")


def check_form(form, forms=FORMS):
    """A ValueError naming `form` unless it is one of `forms` (default `FORMS`)."""
    if not isinstance(form, str) or form not in forms:
        raise ValueError(f"form must be one of {forms}. Received: form={form!r}")
