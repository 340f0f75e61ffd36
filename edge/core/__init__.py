"""The shared core: errors, atomic files, the model registry, preprocessing, model metadata and model files.

Imports nothing from the rest of the project (runtime, service, cli, train, export, capture all build on it).
"""
