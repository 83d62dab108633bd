"""Machinery shared by the encoder-based baselines: encoder samples, the log-joint at them, score functions.

Every baseline evaluates the generative model's JointDistribution at `K` samples of the encoder per data
point: `z_k ~ q_phi(z | x_m)`, `log w_km = log p_theta(z_k, x_m) - log q_phi(z_k | x_m)`, shape `[K, M]`.
Reparameterisable encoder nodes carry path-wise gradients; the others get a score-function term
`stop_gradient(signal - baseline) * log q_phi(z_k | x_m)` with a moving-average baseline (Williams, 1992;
Mnih and Gregor, "Neural Variational Inference and Learning in Belief Networks", ICML 2014).
"""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised import _joint, _observations, distributed
from tfp_amortised.base_learner import Learner
from tfp_amortised.estimator import sleep

tfd = tfp.distributions


def sample_encoder(posterior, num_samples, seed, detach=False):
    """Draws `K` samples per data point from the encoder and splits `log q` by reparameterisation.

    Args:
      posterior: the encoder's `tfd.JointDistribution` with batch shape `[M]`.
      num_samples: Python int `K`.
      seed: a stateless seed.
      detach: stop gradients through the samples (then `log q` is differentiable in `phi` only through the
        density, as the wake-phase updates of reweighted wake-sleep need).

    Returns:
      `(z, log_q, log_q_score)`: dict `{latent name: Tensor[K, M, *event_shape]}`, `Tensor[K, M]` the whole
      `log q(z | x)`, and `Tensor[K, M]` the part from nodes that are not reparameterised (zero if none), whose
      gradient the score-function estimator needs.
    """
    z = _joint.as_named(posterior, posterior.sample(num_samples, seed=_stateless(seed)))
    z = _joint.stop_gradient(z) if detach else z
    parts = _joint.as_named(posterior, posterior.log_prob_parts(z))
    kinds = _joint.as_named(posterior, posterior.reparameterization_type)
    log_q = tf.add_n(list(parts.values()))
    score_parts = [part for name, part in parts.items() if kinds[name] != tfd.FULLY_REPARAMETERIZED]
    return z, log_q, (tf.add_n(score_parts) if score_parts else tf.zeros_like(log_q))


def log_joint(joint, z, x, observed):
    """`log p_theta(z_k, x_m)` for latents `z: {name: Tensor[K, M, ...]}` and `x: Tensor[M, ...]` (a dict of them
    for several observed nodes) -> `[K, M]`."""
    x = _observations.as_named(x, observed)
    return _joint.log_prob(joint, {**z, **{name: value[tf.newaxis] for name, value in x.items()}})


def score_function_term(signal, baseline, log_q_score):
    """Surrogate whose gradient is `(signal - baseline) * grad log q` and whose value is zero.

    Args:
      signal: `Tensor[...]` learning signal, detached here.
      baseline: scalar control variate, detached here.
      log_q_score: `Tensor[...]` (broadcasting with `signal`), the non-reparameterised part of `log q`.
    """
    centred = tf.stop_gradient(signal - baseline)
    return centred * (log_q_score - tf.stop_gradient(log_q_score))


def _is_discrete(distribution):
    """Whether `distribution` is discrete: TFP gives discrete distributions no event-space bijector (a custom
    distribution that does not implement one counts as continuous)."""
    try:
        return distribution.experimental_default_event_space_bijector() is None
    except NotImplementedError:
        return False


def _kind(distribution):
    """The name of a distribution's family, looking inside `tfd.Independent` and `tfd.Sample`."""
    while isinstance(distribution, (tfd.Independent, tfd.Sample)):
        distribution = distribution.distribution
    return type(distribution).__name__


def _stateless(seed):
    return tfp.random.sanitize_seed(tf.cast(seed, tf.int32) if tf.is_tensor(seed) else seed)


class EncoderLearner(Learner):
    """Base of the baselines: a generative model and an encoder trained together with `model.fit`.

    A subclass implements `estimate(x, seed) -> (loss, bound, signal)`: the scalar loss whose gradient with
    respect to all trainable variables is the method's update, the per-point bound `[M]` it reports, and the
    per-point learning signal `[M]` that updates the moving-average baseline of the score-function terms after
    each training step. Metrics: `loss` and `bound` (mean over the minibatch). Everything else (seeds, checks,
    the non-finite guard, saving) is `Learner`'s.

    Args:
      generative_model: a `GenerativeModel` (the same object `AmortisedLearner` takes).
      encoder: an `Encoder`: `call(x)` returns a JointDistribution over the model's latent nodes.
      num_samples: number `K >= 1` of encoder samples per data point.
      baseline_decay: decay of the moving average of the learning signal (score-function baseline).
      seed: integer seed of all sampling.
    """

    metric_names = ("loss", "bound")

    def __init__(self, generative_model, encoder, num_samples=1, baseline_decay=0.9, seed=None, **kwargs):
        super().__init__(generative_model, seed=seed, **kwargs)
        if not (isinstance(num_samples, int) and num_samples >= 1):
            raise ValueError(f"num_samples must be an integer >= 1. Received: num_samples={num_samples!r}")
        if not 0. <= baseline_decay < 1.:
            raise ValueError(f"baseline_decay must be in [0, 1). Received: baseline_decay={baseline_decay!r}")
        self.encoder = encoder
        self.num_samples, self.baseline_decay = num_samples, baseline_decay
        self._check_encoder()
        # Bias-corrected moving average: baseline = total / weight (zero before the first step).
        self.baseline_total = self.add_weight(shape=(), initializer="zeros", trainable=False, name="baseline_total")
        self.baseline_weight = self.add_weight(shape=(), initializer="zeros", trainable=False, name="baseline_weight")

    @property
    def baseline(self):
        """Scalar: the moving average of past learning signals (0 before the first step)."""
        return tf.math.divide_no_nan(self.baseline_total, self.baseline_weight)

    def estimate(self, x, seed):
        """Returns `(loss, bound, signal)`: scalar, `Tensor[M]`, `Tensor[M]` (see the class docstring)."""
        raise NotImplementedError(f"{type(self).__name__} must implement estimate(x, seed).")

    def objective(self, wake_x, seed, training=True):
        """`estimate`'s loss, divided by the number of replicas (Keras sums their gradients), and its logs (the same
        in training and evaluation)."""
        loss, bound, signal = self.estimate(wake_x, seed)
        _, num_replicas = distributed.replica_id_and_count()
        return loss / num_replicas, {"loss": tf.stop_gradient(loss), "bound": tf.reduce_mean(bound),
                                     "signal": tf.stop_gradient(tf.reduce_mean(signal))}

    def after_train_step(self, logs):
        """Moves the score-function baseline towards the step's mean learning signal."""
        self.baseline_total.assign(self.baseline_decay * self.baseline_total
                                   + (1. - self.baseline_decay) * logs["signal"])
        self.baseline_weight.assign(self.baseline_decay * self.baseline_weight + (1. - self.baseline_decay))

    def bound(self, x, seed=None):
        """The method's per-point bound on `log p_theta(x_m)`: `Tensor[M, *event_shape] -> Tensor[M]`."""
        return self.estimate(self.wake_batch(x), self.next_seed(seed))[1]

    def encoder_samples(self, x, num_samples, seed, detach=False):
        """Samples the encoder and evaluates both densities there (see `sample_encoder`).

        Args:
          x: `Tensor[M, *event_shape]` observations.
          num_samples: `K`.
          seed: stateless seed.
          detach: stop gradients through the samples `z`.

        Returns:
          `z: {latent: Tensor[K, M, ...]}`, `log_p = log p(z, x)`, `log_q = log q(z | x)` and `log_q_score`
          (non-reparameterised part of `log_q`), each `Tensor[K, M]`.
        """
        z, log_q, log_q_score = sample_encoder(self.encoder(x), num_samples, seed, detach)
        return z, log_joint(self.joint_distribution(), z, x, self.observed), log_q, log_q_score

    def sleep_sample(self, num_sleep, seed):
        """`num_sleep` detached samples `{node: Tensor[N, ...]}` of the generative model."""
        return sleep(self.joint_distribution(), num_sleep, seed)

    def get_config(self):
        return {**super().get_config(), "encoder": keras.saving.serialize_keras_object(self.encoder),
                "num_samples": self.num_samples, "baseline_decay": self.baseline_decay}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return super().from_config(config)

    def _check_encoder(self):
        """Checks, on two model samples, that the encoder's nodes are the model's latent nodes."""
        reference = sleep(self.joint_distribution(), 2, [0, 0])
        latents = sorted(name for name in reference if name not in _observations.names(self.observed))
        posterior = self.encoder(_observations.select(reference, self.observed))
        if not isinstance(posterior, tfd.JointDistribution):
            raise TypeError("encoder(x) must return a tfd.JointDistribution over the latent nodes. "
                            f"Received: {type(posterior).__name__}")
        if sorted(_joint.node_names(posterior)) != latents:
            raise ValueError(f"encoder(x) must return a JointDistribution over the latent nodes {latents}. "
                             f"Received: nodes {sorted(_joint.node_names(posterior))}")
        z = _joint.as_named(posterior, posterior.sample(seed=(0, 0)))
        model_nodes, _ = self.joint_distribution().sample_distributions(seed=(0, 0))
        model_nodes = _joint.as_named(self.joint_distribution(), model_nodes)
        encoder_nodes = _joint.as_named(posterior, posterior.sample_distributions(seed=(0, 0))[0])
        for name in latents:
            expected, received = reference[name], z[name]
            if received.dtype != expected.dtype or received.shape[1:] != expected.shape[1:]:
                raise ValueError(
                    f"encoder(x) must give the latent {name!r} the model's dtype and event shape "
                    f"({expected.dtype.name}, {expected.shape[1:]}). "
                    f"Received: {received.dtype.name}, {received.shape[1:]}")
            if _is_discrete(model_nodes[name]) and not _is_discrete(encoder_nodes[name]):
                raise ValueError(
                    f"The model's latent {name!r} is discrete ({_kind(model_nodes[name])}) but the encoder gives it a "
                    "continuous distribution, whose samples are not values of the latent: give it a discrete one (for "
                    "a vector of binary latents, a custom Encoder with a Bernoulli node). Received: encoder "
                    f"distribution {_kind(encoder_nodes[name])} for {name!r}")
