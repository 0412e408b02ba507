"""Gradient Service: values and derivatives from PyTorch autograd, over HTTP."""

__version__ = "0.1.0"
