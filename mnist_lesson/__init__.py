"""Helper package of the MNIST-under-20k notebook series: data, models, training, receptive fields, plots."""

__version__ = "0.2.0"  # a release is the git tag v<version>: see mnist_lesson/colab.py
