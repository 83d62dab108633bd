"""The package's train step against the same step written in PyTorch, side by side in one process (issue 13).

The model is the 2-D Gaussian mixture on which the authors' PyTorch code was faster than this package's 0.1.0
(5 components, shared isotropic scale; `GaussianMixtureModel(5, 2)`), trained in the joint form with the fixed
regression (Gaussian kernel, median heuristic on a 512-row subsample, lambda = 1e-3) and the exact solve, on a
wake batch of `M = 100` points, one Adam step each. The PyTorch step is written here from the algorithm (Wenliang
et al., 2020, eq. 7-8), as a PyTorch user would write it: sleep draws by `torch.distributions`, the Gram matrix by
`torch.cdist`, LAPACK's Cholesky (`torch.linalg.cholesky`) and `torch.cholesky_solve`, the weighted log-joint
differentiated by autograd. It is not the authors' code (kevin-w-li/al-ws), which builds its Gram matrix from an
`N x N x D` tensor (issue 13). Repeats are interleaved; medians.

    pip install "torch==2.13.0+cpu"     # the CPU build (PyTorch is not a dependency of the package)
    python -m benchmarks.torch_step
    python -m benchmarks.torch_step --quick
"""

import keras
import numpy as np
import tensorflow as tf

from benchmarks._report import benchmark_parser, machine_header, markdown_table
from benchmarks.cholesky_speed import median_times
from tfp_amortised import KernelRidge, sleep
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models import GaussianMixtureModel

NUM_WAKE, NUM_COMPONENTS, DATA_DIM, RIDGE, SUBSAMPLE = 100, 5, 2, 1e-3, 512


def package_step(num_sleep):
    """`train_on_batch` of the package's learner on the mixture (joint form, fixed exact regression)."""
    keras.utils.set_random_seed(0)
    model = GaussianMixtureModel(NUM_COMPONENTS, DATA_DIM, seed=0)
    learner = AmortisedLearner(model, num_sleep=num_sleep, form="joint", regression=KernelRidge(solver="cholesky"),
                               num_holdout=0, seed=0)
    learner.compile(optimizer=keras.optimizers.Adam(1e-3))
    wake_x = sleep(model.joint_distribution(), NUM_WAKE, seed=[1, 2])["x"]
    return lambda: learner.train_on_batch(wake_x, return_dict=True), wake_x.numpy(), model.means.numpy()


def torch_step(num_sleep, wake_x, initial_means):
    """The same step in PyTorch, from the same initial parameters and with the same wake batch."""
    import torch  # pylint: disable=import-outside-toplevel

    torch.manual_seed(0)
    logits = torch.zeros(NUM_COMPONENTS, requires_grad=True)
    means = torch.tensor(initial_means, requires_grad=True)
    raw_scale = torch.tensor(float(np.log(np.expm1(1.))), requires_grad=True)
    optimiser = torch.optim.Adam([logits, means, raw_scale], lr=1e-3)
    wake = torch.as_tensor(wake_x)

    def step():
        scale = torch.nn.functional.softplus(raw_scale)
        with torch.no_grad():  # sleep: detached draws
            z = torch.distributions.Categorical(logits=logits).sample((num_sleep,))
            x = means[z] + scale * torch.randn(num_sleep, DATA_DIM)
            centre = x.mean(0)
            sleep_x, query_x = x - centre, wake - centre
            half = min(SUBSAMPLE, num_sleep) // 2
            bandwidth = torch.cdist(sleep_x[:half], sleep_x[half:2 * half]).flatten().median()
            gram = torch.exp(-torch.cdist(sleep_x, sleep_x)**2 / (2 * bandwidth**2))
            gram.diagonal().add_(num_sleep * RIDGE)
            cross = torch.exp(-torch.cdist(sleep_x, query_x)**2 / (2 * bandwidth**2))
            weights = torch.cholesky_solve(cross, torch.linalg.cholesky(gram))  # [N, M]
        log_joint = (torch.log_softmax(logits, 0)[z]
                     + torch.distributions.Normal(means[z], scale).log_prob(x).sum(-1))  # [N]
        loss = -(weights * log_joint[:, None]).sum() / NUM_WAKE
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return loss

    return step


def measure(num_sleep, repeats):
    """Median seconds of both steps at `N = num_sleep`, repeats interleaved after a warm-up call of each (each call
    waits for its result)."""
    package, wake_x, initial_means = package_step(num_sleep)
    step = torch_step(num_sleep, wake_x, initial_means)
    return median_times({"package": lambda: {key: float(value) for key, value in package().items()},
                         "torch": lambda: float(step())}, repeats)


def main():
    parser = benchmark_parser(__doc__, "N = 500 and 1000, 5 repeats")
    args = parser.parse_args()
    sizes, repeats = ((500, 1000), 5) if args.quick else ((1000, 2000, 4000), 15)
    import torch  # pylint: disable=import-outside-toplevel
    rows = []
    for num_sleep in sizes:
        result = measure(num_sleep, repeats)
        rows.append([num_sleep, result["package"], result["torch"], result["package"] / result["torch"]])
        print(f"N = {num_sleep} done", flush=True)
    print(machine_header())
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads; TensorFlow "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'} intra-op threads\n")
    print(markdown_table(["N", "package step (s)", "PyTorch step (s)", "package / PyTorch"], rows, "{:.3g}"))


if __name__ == "__main__":
    main()
