"""`VariationalLearner`: the variational autoencoder's ELBO, on any generative model and encoder."""

import keras
import tensorflow as tf

from tfp_amortised.baselines._encoder_learner import EncoderLearner, score_function_term


@keras.saving.register_keras_serializable(package="tfp_amortised")
class VariationalLearner(EncoderLearner):
    """Trains a generative model and an encoder jointly by maximising the evidence lower bound (VAE).

    For each data point `x_m`, with `K` samples `z_k ~ q_phi(z | x_m)`:

        ELBO(x_m) = mean_k [log p_theta(z_k, x_m) - log q_phi(z_k | x_m)]  <=  log p_theta(x_m)

    with equality when `q_phi(z | x_m)` is the posterior. Loss: `-mean_m ELBO(x_m)`, one gradient step on
    `theta` and `phi` together. Reparameterised latents carry path-wise gradients (Kingma and Welling, 2014);
    the others a score-function term with signal `log w_km - baseline` (moving average, `EncoderLearner`),
    so discrete latents train too, with higher variance. The ELBO gap `KL(q || p(z | x))` biases `theta`
    towards models whose posterior the encoder family can represent.

    Cost per step: `K M` evaluations of `log p(z, x)` and of the encoder's `log q`.

    Args:
      generative_model: a `GenerativeModel`.
      encoder: an `Encoder` over the model's latent nodes.
      num_samples: `K`, samples per data point (1 is the usual VAE).
      baseline_decay, seed: see `EncoderLearner`.

    #### Examples

    ```python
    model = GaussianMixtureModel(5, 2)
    learner = VariationalLearner(model, MeanFieldEncoder({"z": ("categorical", 5)}), seed=0)
    learner.compile(optimizer=keras.optimizers.Adam(1e-2))
    learner.fit(x_train, batch_size=100, epochs=20)
    ```

    #### References

    [1] Diederik P. Kingma, Max Welling. Auto-Encoding Variational Bayes. ICLR 2014.
    [2] Andriy Mnih, Karol Gregor. Neural Variational Inference and Learning in Belief Networks. ICML 2014.
    """

    def estimate(self, x, seed):
        _, log_p, log_q, log_q_score = self.encoder_samples(x, self.num_samples, seed)  # [K, M] each
        log_w = log_p - log_q
        surrogate = log_w + score_function_term(log_w, self.baseline, log_q_score)
        elbo = tf.reduce_mean(log_w, axis=0)
        return -tf.reduce_mean(surrogate), elbo, elbo
