"""Helper package of the MNIST-under-20k notebook series: data, models, training, receptive fields, plots."""

__version__ = "0.1.0"
