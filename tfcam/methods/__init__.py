"""Explanation methods. Importing a family's module registers its methods."""

from tfcam.methods import gradient  # noqa: F401  (registers the gradient family)
from tfcam.methods import perturbation as _perturbation  # noqa: F401  (registers the perturbation family)
from tfcam.methods.registry import REGISTRY, Method, get_method, method_names, register

__all__ = ["Method", "REGISTRY", "get_method", "method_names", "register"]
