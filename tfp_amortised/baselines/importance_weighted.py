"""`ImportanceWeightedLearner`: the importance-weighted autoencoder's bound (IWAE)."""

import keras
import tensorflow as tf

from tfp_amortised.baselines._encoder_learner import EncoderLearner, score_function_term


@keras.saving.register_keras_serializable(package="tfp_amortised")
class ImportanceWeightedLearner(EncoderLearner):
    """Trains a generative model and an encoder jointly by maximising the importance-weighted bound (IWAE).

    For each data point `x_m`, with `K` samples `z_k ~ q_phi(z | x_m)` and `log w_k = log p(z_k, x_m) -
    log q(z_k | x_m)`:

        IWAE_K(x_m) = log (1/K) sum_k w_k,     ELBO <= IWAE_1 <= IWAE_K <= IWAE_{K+1} <= log p_theta(x_m)

    (Burda et al., 2016). Loss: `-mean_m IWAE_K(x_m)`, one step on `theta` and `phi` together. Path-wise
    gradients for reparameterised latents; for the others a score-function term with the bound itself as the
    signal, `(IWAE_K(x_m) - baseline) * grad sum_k log q(z_k | x_m)`, with a moving-average baseline (a
    per-sample leave-one-out baseline, VIMCO, would have lower variance; not implemented). As `K` grows the
    encoder's gradient signal weakens (Rainforth et al., 2018).

    Cost per step: `K M` evaluations of `log p(z, x)` and of `log q`.

    Args:
      generative_model: a `GenerativeModel`.
      encoder: an `Encoder` over the model's latent nodes.
      num_samples: `K >= 1` importance samples per data point (`K = 1` is the ELBO).
      baseline_decay, seed: see `EncoderLearner`.

    #### References

    [1] Yuri Burda, Roger Grosse, Ruslan Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
    [2] Tom Rainforth et al. Tighter Variational Bounds are Not Necessarily Better. ICML 2018.
    """

    def __init__(self, generative_model, encoder, num_samples=10, **kwargs):
        super().__init__(generative_model, encoder, num_samples=num_samples, **kwargs)

    def estimate(self, x, seed):
        _, log_p, log_q, log_q_score = self.encoder_samples(x, self.num_samples, seed)  # [K, M] each
        log_w = log_p - log_q
        bound = importance_weighted_bound(log_w)
        surrogate = bound + score_function_term(bound, self.baseline, tf.reduce_sum(log_q_score, axis=0))
        return -tf.reduce_mean(surrogate), bound, bound


def importance_weighted_bound(log_w):
    """`log (1/K) sum_k exp(log_w[k, m])`: `Tensor[K, M] -> Tensor[M]`."""
    num_samples = tf.cast(tf.shape(log_w)[0], log_w.dtype)
    return tf.reduce_logsumexp(log_w, axis=0) - tf.math.log(num_samples)
