"""Every ```python block of README.md and docs/*.md is executed, so no example can rot.

The blocks of one page run in order in one shared namespace, like the cells of a notebook,
with the working directory set to a temporary directory of that page (examples write
``logs/``, ``runs/`` ...). Each block is one test (``page.md:LINE``); a block that
genuinely needs a download or a large model is marked by an HTML comment on the line just
before its fence, ``<!-- skip: <reason> -->``, and reported as skipped with that reason.
A block that needs an optional package is marked ``<!-- needs: <module> -->`` there
instead: it runs when the module is importable and is skipped otherwise. ``bash`` and
``text`` blocks are not executed. Methods registered by a page are unregistered after it. Also checked: README.md is at most 12 kB and its relative links
point to existing files.
"""

from __future__ import annotations

import importlib.util
import os
import re
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
SLOW_PAGES = {"metrics.md"}  # over ~20 s on one CPU core
README_LIMIT = 12 * 1024

FENCE = re.compile(r"^\s*```(\S*)\s*$")  # list items indent their fences
SKIP = re.compile(r"^\s*<!--\s*skip:\s*(.+?)\s*-->\s*$")
NEEDS = re.compile(r"^\s*<!--\s*needs:\s*([\w.]+)\s*-->\s*$")


def _skip_reason(line: str) -> str | None:
    """The reason to skip the block after ``line``: a ``skip:`` comment, or a ``needs:`` module that is absent."""
    m = SKIP.match(line)
    if m:
        return m.group(1)
    m = NEEDS.match(line)
    if m and importlib.util.find_spec(m.group(1)) is None:
        return f"needs {m.group(1)}, which is not installed"
    return None


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None


def code_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a Markdown page, with their skip reason (or None)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        if lang == "python":
            skip = _skip_reason(lines[start - 1]) if start else None
            blocks.append(Block(path.name, start + 1, textwrap.dedent("\n".join(lines[start + 1 : i])), skip))
        i += 1
    return blocks


BLOCKS = {p.name: code_blocks(p) for p in PAGES}


def _params():
    for page, blocks in BLOCKS.items():
        marks = [pytest.mark.slow] if page in SLOW_PAGES else []
        for index, block in enumerate(blocks):
            yield pytest.param(page, index, id=f"{page}:{block.line}", marks=marks)


@dataclass
class PageRun:
    """The shared namespace of one page and how far it got."""

    cwd: Path
    namespace: dict = field(default_factory=lambda: {"__name__": "__doc_example__"})
    done: int = 0  # blocks run (or skipped) so far
    failed: str | None = None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import tfcam

    before = set(tfcam.methods.method_names())
    state: dict[str, PageRun] = {}
    yield lambda page: state.setdefault(page, PageRun(tmp_path_factory.mktemp(page.replace(".", "_"))))
    for name in set(tfcam.methods.method_names()) - before:  # methods a page registered
        tfcam.methods.unregister(name)


def _run(block: Block, run: PageRun, monkeypatch) -> None:
    monkeypatch.chdir(run.cwd)
    try:
        exec(compile(block.code, f"{block.page}:{block.line}", "exec"), run.namespace)
    except BaseException as e:
        run.failed = f"{block.page}:{block.line}"
        raise AssertionError(f"example at {block.page}:{block.line} failed: {type(e).__name__}: {e}") from e


@pytest.mark.parametrize("page, index", list(_params()))
def test_example(page, index, runs, monkeypatch):
    """Runs block ``index`` of ``page`` after the page's earlier blocks (run here if not yet run)."""
    import matplotlib

    matplotlib.use("Agg")
    run, blocks = runs(page), BLOCKS[page]
    if run.failed:
        pytest.fail(f"an earlier block of {page} failed ({run.failed})")
    while run.done <= index:
        block = blocks[run.done]
        run.done += 1
        if block.skip is None:
            t0 = time.perf_counter()
            _run(block, run, monkeypatch)
            if run.done - 1 == index:
                print(f"{page}:{block.line} ran in {time.perf_counter() - t0:.1f} s")
    if blocks[index].skip is not None:
        pytest.skip(f"{page}:{blocks[index].line}: {blocks[index].skip}")


def test_every_page_is_collected():
    """The pages checked here: the README and every docs page, with at least one executed block overall."""
    assert "README.md" in BLOCKS and "index.md" in BLOCKS and "methods.md" in BLOCKS
    assert sum(b.skip is None for bs in BLOCKS.values() for b in bs) > 10


def test_readme_is_short():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes, more than {README_LIMIT}: move content into docs/"


def test_readme_relative_links_exist():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [link.split("#", 1)[0] for link in links if not re.match(r"[a-z]+:", link) and link[0] != "#"]
    assert relative, "no relative link found in README.md"
    missing = [link for link in relative if not (ROOT / link).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
