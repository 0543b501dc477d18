"""relmon: label-free monitoring of image classifiers by the quality of their explanations."""

__version__ = "0.1.0"
