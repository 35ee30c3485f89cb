"""The documentation site (issue 19): every public name has an API entry, and ``mkdocs build --strict`` passes."""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

import tfcam

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API = DOCS / "api"

# Modules with an API page: each page renders the module's whole ``__all__``.
PUBLIC_MODULES = [
    "tfcam",
    "tfcam.engine",
    "tfcam.targets",
    "tfcam.methods",
    "tfcam.methods.gradient",
    "tfcam.methods.zoo",
    "tfcam.methods.perturbation",
    "tfcam.methods.attribution",
    "tfcam.methods.fullgrad",
    "tfcam.attribution",
    "tfcam.callbacks",
    "tfcam.dataset",
    "tfcam.metrics",
    "tfcam.outputs",
    "tfcam.introspection",
    "tfcam.dff",
    "tfcam.viz",
    "tfcam.matrix",
    "tfcam.io",
    "tfcam.datasets",
    "tfcam.demo",
    "tfcam.errors",
    "tfcam.layers",
    "tfcam.maps",
    "tfcam.graph",
    "tfcam.context",
]

# Modules without a page of their own, and why. A new module must be added to one of the two lists.
INTERNAL_MODULES = {
    "tfcam._tracing": "private",
    "tfcam._hooks": "private: the thread-local Layer.__call__ hook behind tfcam.graph",
    "tfcam.validation": "internal argument checks",
    "tfcam.cli": "the command line, documented in docs/cli.md",
    "tfcam.methods.registry": "its public names are exported and documented by tfcam.methods",
    **{f"tfcam.callbacks.{m}": "exported by tfcam.callbacks" for m in ("base", "heatmap", "outputs")},
    **{f"tfcam.dataset.{m}": "exported by tfcam.dataset"
       for m in ("distribute", "inputs", "shards", "stream", "writers")},
    **{f"tfcam.metrics.{m}": "exported by tfcam.metrics"
       for m in ("coherence", "comparison", "faithfulness", "localization", "perturbation", "results",
                 "sanity", "scorer")},
}

_DIRECTIVE = re.compile(r"^::: *([\w.]+)\s*$")
_MEMBER = re.compile(r"^\s+- +([\w.]+)\s*$")
_REFERENCE = re.compile(r"\]\[([\w.]+)\]")


def api_directives() -> dict[str, list[str]]:
    """``{path: members}`` of every ``::: path`` directive in docs/api/*.md (members: its ``members:`` list)."""
    entries: dict[str, list[str]] = {}
    for page in sorted(API.glob("*.md")):
        current = None
        for line in page.read_text(encoding="utf-8").splitlines():
            m = _DIRECTIVE.match(line)
            if m:
                current = m.group(1)
                assert current not in entries, f"{current} is rendered twice ({page.name})"
                entries[current] = []
            elif current is not None and line and not line[0].isspace():
                current = None
            elif current is not None and _MEMBER.match(line):
                entries[current].append(_MEMBER.match(line).group(1))
    return entries


def test_every_module_is_public_or_internal():
    names = {m.name for m in pkgutil.walk_packages(tfcam.__path__, "tfcam.")}
    unclassified = sorted(names - set(PUBLIC_MODULES) - set(INTERNAL_MODULES))
    assert not unclassified, f"add these modules to PUBLIC_MODULES (with an API page) or INTERNAL_MODULES: {unclassified}"
    gone = sorted((set(PUBLIC_MODULES[1:]) | set(INTERNAL_MODULES)) - names)
    assert not gone, f"modules listed here that no longer exist: {gone}"


@pytest.mark.parametrize("module", PUBLIC_MODULES[1:])
def test_module_page_renders_its_whole_all(module):
    mod = importlib.import_module(module)
    entries = api_directives()
    assert module in entries, f"no '::: {module}' directive in docs/api/*.md"
    members = entries[module]
    assert len(members) == len(set(members)), f"duplicate members on the page of {module}: {members}"
    missing = [n for n in mod.__all__ if n not in members]
    extra = [n for n in members if n not in mod.__all__]
    assert not missing, f"{module}.__all__ names without an API entry: {missing}"
    assert not extra, f"API entries of {module} that are not in its __all__: {extra}"


def test_every_top_level_name_has_an_api_entry():
    entries = api_directives()
    top_page = (API / "tfcam.md").read_text(encoding="utf-8")
    references = set(_REFERENCE.findall(top_page))
    rendered_top = set(entries.get("tfcam", []))
    missing = []
    for name in tfcam.__all__:
        obj = getattr(tfcam, name)
        if isinstance(obj, types.ModuleType):
            ok = obj.__name__ in entries
        elif name in rendered_top:
            ok = True
        else:
            # a link [tfcam.X][tfcam.mod.X] on the tfcam page to the entry of the same object on a module page
            ok = False
            for ref in references:
                mod, _, attr = ref.rpartition(".")
                if attr == name and name in entries.get(mod, []) and getattr(importlib.import_module(mod), attr) is obj:
                    ok = True
        if not ok:
            missing.append(name)
    assert not missing, f"tfcam.__all__ names without an API entry or a link to one on docs/api/tfcam.md: {missing}"


def test_every_page_and_notebook_is_in_the_nav():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = config[config.index("\nnav:"):]
    pages = [p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")]
    pages += [f"notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")]
    absent = [p for p in pages if not re.search(rf"(^|[\s:]){re.escape(p)}\s*$", nav, re.M)]
    assert not absent, f"pages missing from the nav of mkdocs.yml: {absent}"
    assert len(list((ROOT / "notebooks").glob("*.ipynb"))) == 6


def _hooks():
    pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]') is not installed")
    pytest.importorskip("griffe", reason="the docs extra (pip install -e '.[docs]') is not installed")
    spec = importlib.util.spec_from_file_location("tfcam_docs_hooks", DOCS / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    return hooks


def test_hook_reports_missing_docstrings_and_names():
    hooks = _hooks()
    assert hooks.api_entries() == api_directives()
    problems = hooks.undocumented({"tfcam.targets": ["Target", "NoSuchTarget"], "tfcam.targets.ClassTarget.score": []})
    assert problems == ["tfcam.targets.NoSuchTarget: not found by griffe", "tfcam.targets.ClassTarget.score: no docstring"]
    assert hooks.undocumented(hooks.api_entries()) == []


def test_hook_fences_doctests():
    hooks = _hooks()
    text = "Example:\n\n>>> a = f(x)\n>>> a[0]\n1\n\nAfter."
    assert hooks.fence_doctests(text) == "Example:\n\n```pycon\n>>> a = f(x)\n>>> a[0]\n1\n```\n\nAfter."


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    for package in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "mkdocs_jupyter"):
        pytest.importorskip(package, reason="the docs extra (pip install -e '.[docs]') is not installed")
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(site)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    for page in ("index.html", "api/tfcam/index.html", "api/engine/index.html", "notebooks/01_quickstart/index.html",
                 "changelog/index.html", "images/notebook_quickstart.png"):
        assert (site / page).is_file(), page
    engine = (site / "api/engine/index.html").read_text(encoding="utf-8")
    assert 'id="tfcam.engine.Explainer"' in engine and 'id="tfcam.engine.Explainer.explain"' in engine
    assert seconds < 60, f"mkdocs build took {seconds:.1f} s"
