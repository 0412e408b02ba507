"""Python client of Gradient Service."""

__version__ = "0.1.0"
