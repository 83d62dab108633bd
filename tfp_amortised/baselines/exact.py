"""`ExactGradientLearner`: gradient ascent on the exact log-likelihood, the oracle for every learning claim."""

import keras
import tensorflow as tf

from tfp_amortised import distributed
from tfp_amortised.base_learner import Learner


@keras.saving.register_keras_serializable(package="tfp_amortised")
class ExactGradientLearner(Learner):
    """Trains a generative model by gradient ascent on its exact log-likelihood `mean_m log p_theta(x_m)`.

    Needs a model with an exact `log_marginal(x) -> Tensor[M]` (closed form, quadrature, enumeration or a Kalman
    filter). It is the fair reference for a stochastic-gradient learner: started from the same initial weights,
    with the same optimiser, learning rate, batches and number of steps, it shows where the exact gradient goes,
    so that what an estimator loses is measured as the gap to it rather than to the truth or to another
    estimator. Metric: `log_likelihood`, the mean exact `log p(x_m)` of the batches (`loss` is its negative).

    Cost per step: `M` evaluations of `log_marginal` and its gradient.

    Args:
      generative_model: a `GenerativeModel` with `log_marginal`.
      seed: unused by the objective (kept for the common constructor).

    #### Examples

    ```python
    oracle = ExactGradientLearner(FactorAnalysisModel(1, 2, seed=0))
    oracle.compile(optimizer=keras.optimizers.Adam(1e-2))
    oracle.fit(x_train, batch_size=100, epochs=20, shuffle=False)
    ```
    """

    metric_names = ("loss", "log_likelihood")

    def __init__(self, generative_model, seed=None, **kwargs):
        super().__init__(generative_model, seed=seed, **kwargs)
        if not callable(getattr(generative_model, "log_marginal", None)):
            raise TypeError("ExactGradientLearner needs a generative_model with an exact log_marginal(x). "
                            f"Received: generative_model of type {type(generative_model).__name__}")

    def objective(self, wake_x, seed, training=True):
        """`-mean_m log p(x_m)` (divided by the number of replicas, whose gradients Keras sums) and its logs (the
        same in training and evaluation)."""
        log_likelihood = tf.reduce_mean(self.generative_model.log_marginal(wake_x))
        _, num_replicas = distributed.replica_id_and_count()
        return -log_likelihood / num_replicas, {"loss": tf.stop_gradient(-log_likelihood),
                                                "log_likelihood": tf.stop_gradient(log_likelihood)}
