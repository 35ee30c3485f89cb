"""Explanation methods. Importing a family's module registers its methods."""

from tfcam.methods import attribution, fullgrad, gradient, perturbation, zoo  # noqa: F401  (importing registers the methods)
from tfcam.methods.registry import REGISTRY, Method, Option, get_method, method_names, register, unregister

__all__ = ["Method", "Option", "REGISTRY", "get_method", "method_names", "register", "unregister"]

# the transformer methods register after the CNN methods (tfcam.METHODS keeps its order)
from tfcam.methods import attention  # noqa: E402, F401
