"""Shared pieces of the Jetson edge classifier: model registry, preprocessing, metadata, video sources, runtime."""

__version__ = "0.1.0"
