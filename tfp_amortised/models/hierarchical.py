"""A hierarchical Gamma-Poisson model: groups of counts sharing a random rate, with an exact log-likelihood."""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised.generative import GenerativeModel

tfd = tfp.distributions
Root = tfd.JointDistributionCoroutine.Root


@keras.saving.register_keras_serializable(package="tfp_amortised")
class HierarchicalPoissonModel(GenerativeModel):
    """Random-effects Poisson counts: each observation is a group of counts with its own Gamma rate.

    Generative process for one group, with `x: [group_size]` counts:

        rate ~ Gamma(concentration alpha, rate beta)          (node `rate`, latent)
        x_i | rate ~ Poisson(rate),  i = 1..group_size        (node `x`, observed)

    with `alpha = softplus(raw_concentration)`, `beta = softplus(raw_rate)`. Learning `(alpha, beta)` from many
    groups is empirical Bayes for the hyperparameters of a hierarchical model. The rate integrates out exactly
    (`log_marginal`), with `S = sum_i x_i`, `n = group_size`:

        log p(x) = alpha log beta - lgamma(alpha) + lgamma(alpha + S) - (alpha + S) log(beta + n)
                   - sum_i lgamma(x_i + 1)

    so the exact gradient of `log p(x)` is ground truth for the amortised estimator (Wenliang et al., 2020),
    which sees only samples of `(rate, x)` and integer-valued observations. The paper lists hierarchical
    models among its examples; the Gamma-Poisson choice here is ours, picked for its exact likelihood.

    Args:
      group_size: `n`, the number of counts in a group.
      concentration: initial `alpha > 0`.
      rate: initial `beta > 0`.

    #### References

    [1] Li K. Wenliang, Theodore Moskovitz, Heishiro Kanagawa, Maneesh Sahani. Amortised Learning by
        Wake-Sleep. ICML 2020.
    [2] Andrew Gelman et al. Bayesian Data Analysis, 3rd edition, CRC Press, 2013 (hierarchical models,
        the Poisson-Gamma model).
    """

    def __init__(self, group_size, concentration=1., rate=1., **kwargs):
        super().__init__(**kwargs)
        if not (isinstance(group_size, int) and group_size >= 1):
            raise ValueError(f"group_size must be a positive integer. Received: group_size={group_size!r}")
        for name, value in (("concentration", concentration), ("rate", rate)):
            if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ValueError(f"{name} must be a positive finite number. Received: {name}={value!r}")
        self.group_size, self.initial_concentration, self.initial_rate = group_size, float(concentration), float(rate)
        self.raw_concentration = self.add_positive_weight("raw_concentration", concentration)
        self.raw_rate = self.add_positive_weight("raw_rate", rate)

    @property
    def concentration(self):
        """Scalar `Tensor`: `alpha`."""
        return tf.nn.softplus(self.raw_concentration.value)

    @property
    def rate(self):
        """Scalar `Tensor`: `beta`."""
        return tf.nn.softplus(self.raw_rate.value)

    def joint_distribution(self):
        concentration, rate = self.concentration, self.rate

        def model():
            group_rate = yield Root(tfd.Gamma(concentration, rate, name="rate"))
            yield tfd.Sample(tfd.Poisson(group_rate), self.group_size, name="x")

        return tfd.JointDistributionCoroutine(model)

    def log_marginal(self, x):
        """Exact `log p(x)`: `Tensor[M, group_size] -> Tensor[M]`."""
        x = tf.convert_to_tensor(x, self.compute_dtype)
        total = tf.reduce_sum(x, -1)
        alpha, beta = self.concentration, self.rate
        return (alpha * tf.math.log(beta) - tf.math.lgamma(alpha) + tf.math.lgamma(alpha + total)
                - (alpha + total) * tf.math.log(beta + self.group_size) - tf.reduce_sum(tf.math.lgamma(x + 1.), -1))

    def get_config(self):
        return {**super().get_config(), "group_size": self.group_size, "concentration": self.initial_concentration,
                "rate": self.initial_rate}
