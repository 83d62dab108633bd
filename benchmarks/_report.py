"""Shared pieces of the benchmark scripts: command line, machine header, markdown tables and figures."""

import argparse
import os
import platform
import subprocess

import keras
import matplotlib
import tensorflow as tf
import tensorflow_probability as tfp

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PLOT_DIR = os.path.join(os.path.dirname(__file__), "plots")


def machine_header():
    """One markdown line: commit, CPU model and count, Python/TF/TFP/Keras versions."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(__file__), check=False).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"commit {commit}; {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}, TFP {tfp.__version__}, Keras {keras.__version__}")


def markdown_table(header, rows, float_format="{:.4g}"):
    """Formats `rows` (sequences of cells) under `header` as a markdown table; floats use `float_format`."""
    def cell(value):
        return float_format.format(value) if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_path(stem, quick=False):
    """Path of a benchmark's PNG `stem.png` under benchmarks/plots/ (`stem_quick.png` for a `--quick` run, which
    must not overwrite the plot of a full run), creating the folder."""
    os.makedirs(PLOT_DIR, exist_ok=True)
    return os.path.join(PLOT_DIR, f"{stem}{'_quick' if quick else ''}.png")


def save_figure(figure, path):
    """Lays out `figure`, writes it to `path` as a 120-dpi PNG and closes it."""
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def benchmark_parser(doc, quick_help):
    """The command line every benchmark shares: its description is `doc`'s first line, `--quick` runs small sizes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return parser


class EpochRecorder(keras.callbacks.Callback):
    """Records `fn()` before training and after every epoch, in the list `values`."""

    def __init__(self, fn):
        super().__init__()
        self.fn, self.values = fn, [fn()]

    def on_epoch_end(self, epoch, logs=None):
        self.values.append(self.fn())
