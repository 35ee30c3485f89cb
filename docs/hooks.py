"""MkDocs hooks of the tfcam site (``hooks:`` in mkdocs.yml).

1. The notebooks live in ``notebooks/`` at the repository root (the test suite executes them there), outside
   ``docs/``. ``on_files`` adds each ``notebooks/*.ipynb`` as a page ``notebooks/<name>/``, before
   mkdocs-jupyter's own ``on_files`` runs (higher event priority), so that plugin renders them like files of
   ``docs/``. No copy or symlink is made.
2. ``on_pre_build`` fails a ``--strict`` build when an object the API reference renders (the ``::: path``
   directives of ``docs/api/*.md`` and the names listed under their ``members:``) has no docstring, or does not
   exist: mkdocstrings itself silently skips an undocumented member.
3. ``DoctestFences``, a griffe extension (``extensions:`` of the mkdocstrings python handler), renders the
   docstrings' unindented ``>>>`` examples as code blocks instead of Markdown block quotes.
"""

from __future__ import annotations

import re
from pathlib import Path

import griffe
from mkdocs.plugins import event_priority, get_plugin_logger
from mkdocs.structure.files import File, Files

log = get_plugin_logger("tfcam")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
API_DIR = Path(__file__).resolve().parent / "api"

_DIRECTIVE = re.compile(r"^::: *([\w.]+)\s*$")
_MEMBER = re.compile(r"^\s+- +([\w.]+)\s*$")


def notebook_paths() -> list[Path]:
    """The notebooks the site renders, in name order."""
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def api_entries(api_dir: Path = API_DIR) -> dict[str, list[str]]:
    """Objects rendered by the API pages: ``{directive path: [members listed under it]}``.

    A directive is a line ``::: dotted.path``; its members are the ``- name`` items of the
    ``members:`` list in its indented options block.
    """
    entries: dict[str, list[str]] = {}
    for page in sorted(api_dir.glob("*.md")):
        current = None
        in_members = False
        for line in page.read_text(encoding="utf-8").splitlines():
            m = _DIRECTIVE.match(line)
            if m:
                current = m.group(1)
                entries.setdefault(current, [])
                in_members = False
                continue
            if current is None:
                continue
            if line and not line[0].isspace():  # end of the directive's options block
                current, in_members = None, False
                continue
            stripped = line.strip()
            if stripped == "members:":
                in_members = True
            elif in_members and _MEMBER.match(line):
                entries[current].append(_MEMBER.match(line).group(1))
            elif stripped.endswith(":") or (stripped and not stripped.startswith("-")):
                in_members = False
    return entries


def undocumented(entries: dict[str, list[str]]) -> list[str]:
    """Rendered objects without a docstring (or missing), as messages; empty when all are documented."""
    loader = griffe.GriffeLoader(search_paths=[str(ROOT)], docstring_parser=griffe.Parser.google)
    package = loader.load("tfcam")
    loader.resolve_aliases(external=False, implicit=False)
    problems = []
    for path, members in entries.items():
        paths = [f"{path}.{m}" for m in members] if members else [path]
        for p in paths:
            try:
                obj = package[p[len("tfcam."):]] if p != "tfcam" else package
                target = obj.final_target if obj.is_alias else obj
            except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
                problems.append(f"{p}: not found by griffe")
                continue
            if not (target.docstring and target.docstring.value.strip()):
                problems.append(f"{p}: no docstring")
    return problems


def fence_doctests(text: str) -> str:
    """Wraps each run of ``>>>`` / ``...`` lines (and the output lines after them, up to a blank line) in a
    ``pycon`` code fence."""
    out: list[str] = []
    in_block = False
    indent = ""
    for line in text.split("\n"):
        stripped = line.lstrip()
        if stripped.startswith(">>>") and not in_block:
            indent = line[: len(line) - len(stripped)]
            out.append(f"{indent}```pycon")
            in_block = True
        elif in_block and not stripped:
            out.append(f"{indent}```")
            in_block = False
        out.append(line)
    if in_block:
        out.append(f"{indent}```")
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Griffe extension: ``>>>`` examples in docstrings become ``pycon`` code blocks."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)


@event_priority(100)  # before mkdocs-jupyter's on_files, which wraps the .ipynb files it finds
def on_files(files: Files, config) -> Files:
    for nb in notebook_paths():
        src_uri = f"notebooks/{nb.name}"
        if files.get_file_from_path(src_uri) is not None:
            log.warning(f"docs/{src_uri} shadows {nb}; keep notebooks only in notebooks/")
            continue
        files.append(File(src_uri, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def on_pre_build(config) -> None:
    for problem in undocumented(api_entries()):
        log.warning(f"API reference: {problem}")
