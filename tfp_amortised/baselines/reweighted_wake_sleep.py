"""`ReweightedWakeSleepLearner`: reweighted wake-sleep (RWS), with wake- and sleep-phase encoder updates."""

import keras
import tensorflow as tf

from tfp_amortised import _joint, _observations
from tfp_amortised.baselines._encoder_learner import EncoderLearner
from tfp_amortised.baselines.importance_weighted import importance_weighted_bound


@keras.saving.register_keras_serializable(package="tfp_amortised")
class ReweightedWakeSleepLearner(EncoderLearner):
    """Trains a generative model by self-normalised importance sampling from an encoder (RWS).

    Each step, for a minibatch `x_1..x_M`, with `K` detached samples `z_k ~ q_phi(z | x_m)` and normalised
    weights `w~_k = softmax_k [log p_theta(z_k, x_m) - log q_phi(z_k | x_m)]`:

        wake-theta:  theta += grad_theta sum_k w~_k log p_theta(z_k, x_m)   (= grad of IWAE_K, z detached)
        wake-phi:    phi   += grad_phi   sum_k w~_k log q_phi(z_k | x_m)    (w~ detached)
        sleep-phi:   phi   += grad_phi   mean_n log q_phi(z_n | x_n),  (z_n, x_n) ~ p_theta, detached

    The encoder update is `insomnia * wake-phi + (1 - insomnia) * sleep-phi` (Pyro's convention). The updates
    are separated by construction: the wake-theta term is evaluated with `log q` detached, the encoder terms
    with weights and samples detached, so one gradient of their sum moves `theta` by wake-theta only and
    `phi` by the encoder terms only. No term differentiates through a sample, so discrete latents need no
    score function. Metric `bound` is `IWAE_K`; `loss` is `-IWAE_K` plus the encoder loss.

    Cost per step: `K M` evaluations of `log p(z, x)` and `log q`, plus `num_sleep` model samples and
    encoder evaluations when `insomnia < 1`.

    Args:
      generative_model: a `GenerativeModel`.
      encoder: an `Encoder` over the model's latent nodes.
      num_samples: `K >= 1` importance samples per data point.
      insomnia: weight in `[0, 1]` of wake-phi against sleep-phi (1: wake-phi only, as Le et al. recommend;
        0: sleep-phi only, the original Helmholtz-machine encoder update).
      num_sleep: model samples per step for sleep-phi.
      baseline_decay, seed: see `EncoderLearner` (no score function is used, so the baseline is unused).

    #### References

    [1] Jorg Bornschein, Yoshua Bengio. Reweighted Wake-Sleep. ICLR 2015.
    [2] Tuan Anh Le, Adam R. Kosiorek, N. Siddharth, Yee Whye Teh, Frank Wood. Revisiting Reweighted
        Wake-Sleep for Models with Stochastic Control Flow. UAI 2019.
    """

    def __init__(self, generative_model, encoder, num_samples=10, insomnia=1., num_sleep=100, **kwargs):
        super().__init__(generative_model, encoder, num_samples=num_samples, **kwargs)
        if not 0. <= insomnia <= 1.:
            raise ValueError(f"insomnia must be in [0, 1]. Received: insomnia={insomnia!r}")
        if not (isinstance(num_sleep, int) and num_sleep >= 1):
            raise ValueError(f"num_sleep must be an integer >= 1. Received: num_sleep={num_sleep!r}")
        self.insomnia, self.num_sleep = float(insomnia), num_sleep

    def estimate(self, x, seed):
        wake_seed, sleep_seed = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int32)))
        _, log_p, log_q, _ = self.encoder_samples(x, self.num_samples, wake_seed, detach=True)  # [K, M] each
        bound = importance_weighted_bound(log_p - tf.stop_gradient(log_q))  # theta-gradient: wake-theta
        loss = -tf.reduce_mean(bound)
        if self.insomnia > 0.:
            weights = tf.stop_gradient(tf.nn.softmax(log_p - log_q, axis=0))
            loss += self.insomnia * -tf.reduce_mean(tf.reduce_sum(weights * log_q, axis=0))
        if self.insomnia < 1.:
            loss += (1. - self.insomnia) * self.sleep_phi_loss(sleep_seed)
        return loss, bound, bound

    def sleep_phi_loss(self, seed):
        """`-mean_n log q_phi(z_n | x_n)` over `num_sleep` detached model samples: scalar."""
        sample = self.sleep_sample(self.num_sleep, seed)
        latents = {name: value for name, value in sample.items() if name not in _observations.names(self.observed)}
        return -tf.reduce_mean(_joint.log_prob(self.encoder(_observations.select(sample, self.observed)), latents))

    def get_config(self):
        return {**super().get_config(), "insomnia": self.insomnia, "num_sleep": self.num_sleep}
