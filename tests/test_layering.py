"""Layering: the engine never imports the layers above it (tfcam.dataset, tfcam.metrics)."""

import ast
import os

import numpy as np
import pytest

import tfcam
from tfcam import engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABOVE_ENGINE = ("tfcam.dataset", "tfcam.metrics")


def _imported_modules(path):
    """Every module an ``import`` anywhere in the file names (top level, functions, methods)."""
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
            # `from tfcam import dataset` names the module in the imported names
            found += [f"{node.module}.{a.name}" for a in node.names]
    return found


def test_engine_imports_neither_dataset_nor_metrics():
    mods = _imported_modules(os.path.join(ROOT, "tfcam", "engine.py"))
    assert "tfcam.layers" in mods  # the walk sees the engine's real imports
    bad = [m for m in mods if any(m == p or m.startswith(p + ".") for p in ABOVE_ENGINE)]
    assert bad == []
    with open(os.path.join(ROOT, "tfcam", "engine.py")) as f:
        source = f.read()
    assert "import_module" not in source and "__import__" not in source


def test_dataset_registers_itself_with_the_engine():
    assert engine._dataset_runner is tfcam.dataset.explain_dataset


def test_explain_dataset_without_a_registered_runner(monkeypatch, cnn):
    ex = tfcam.Explainer(cnn, layer="c2")
    x = np.zeros((2, 16, 16, 3), np.float32)
    monkeypatch.setattr(engine, "_dataset_runner", None)
    with pytest.raises(tfcam.TfcamError, match="tfcam.dataset.*Received: no registered dataset runner"):
        ex.explain_dataset(x, verbose=0)
    calls = []
    engine.register_dataset_runner(lambda *args, **kwargs: calls.append((args, kwargs)) or "done")
    assert ex.explain_dataset(x, 1, "gradcam", None, verbose=0) == "done"
    assert calls == [((ex, x, 1, "gradcam", None), {"verbose": 0})]
    with pytest.raises(tfcam.InputTypeError, match="Received: fn=3"):
        engine.register_dataset_runner(3)
