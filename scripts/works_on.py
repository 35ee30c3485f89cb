"""Prints (or writes) the "works on" column of the Methods table in docs/methods.md.

Runs the metamorphic method matrix of ``tests/test_method_matrix.py`` (every method of
``tfcam.METHODS`` on every equivalent-model configuration, about a minute on one CPU
core) and prints, for each method, the configurations where its map equals the
reference's. ``--write`` rewrites the column in docs/methods.md in place;
``tests/test_method_matrix.py::test_methods_page_works_on_column`` fails when the two disagree.

    python scripts/works_on.py            # print "method | works on" and the failing cells
    python scripts/works_on.py --write    # update docs/methods.md
"""

from __future__ import annotations

import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)  # this checkout's tfcam, not an installed one
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import test_method_matrix as matrix  # noqa: E402


def rewrite_methods_page(column: dict[str, str], path: str = matrix.METHODS_PAGE) -> int:
    """Replaces the "works on" cell of every method row; returns how many cells changed."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    header_i = next(i for i, line in enumerate(lines) if line.startswith("|") and "works on" in line)
    header = [c.strip() for c in lines[header_i].strip().strip("|").split("|")]
    col = header.index("works on")
    changed = 0
    for i in range(header_i + 2, len(lines)):
        if not lines[i].startswith("|"):
            break
        cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
        name = re.match(r"`([^`]+)`", cells[0])
        if name and name.group(1) in column and cells[col] != column[name.group(1)]:
            cells[col] = column[name.group(1)]
            lines[i] = "| " + " | ".join(cells) + " |"
            changed += 1
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the column in docs/methods.md")
    args = parser.parse_args()
    outcomes = matrix.run_matrix(methods=matrix.BUILTIN_METHODS)
    column = {m: matrix.works_on(m, outcomes) for m in matrix.BUILTIN_METHODS}
    width = max(map(len, column))
    print(f"configurations: {', '.join(f'{c.name}={c.token}' for c in matrix.CONFIGS.values())}")
    for m, cell in column.items():
        print(f"{m:<{width}} | {cell}")
    failures = [(k, o) for k, o in outcomes.items() if o.status == "fail"]
    if failures:
        print(f"\n{len(failures)} failing cells (neither the reference's map nor a MethodError refusal):")
        for (m, c), o in failures:
            print(f"  {m} x {c}: {o.detail.splitlines()[0] if o.detail else ''}")
    if args.write:
        print(f"\ndocs/methods.md: {rewrite_methods_page(column)} cell(s) updated")


if __name__ == "__main__":
    main()
