"""Explanation methods. Importing a family's module registers its methods."""

from tfcam.methods import attribution, fullgrad, gradient, perturbation, zoo  # noqa: F401  (importing registers the methods)
from tfcam.methods.registry import REGISTRY, Method, Option, get_method, method_names, register, unregister

__all__ = ["Method", "Option", "REGISTRY", "get_method", "method_names", "register", "unregister"]
