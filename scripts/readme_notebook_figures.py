"""Regenerates the README's notebook figures by executing the notebooks (CPU, a few minutes).

    python scripts/readme_notebook_figures.py [--out docs/images] [NOTEBOOK ...]

The figures come from the notebooks' own code: a code cell whose source holds a line
``# README figure: NAME.png`` has its last PNG output written to ``OUT/NAME.png`` (reduced to a
256-colour palette to keep the repository small). Only the
notebooks that mark a figure are executed (all of ``notebooks/*.ipynb`` are scanned unless
NOTEBOOKs are given), each in a fresh ``python3`` kernel with this checkout on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import base64
import os
import pathlib
import re
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
MARK = re.compile(r"^#\s*README figure:\s*(\S+\.png)\s*$", re.MULTILINE)


def marked_cells(nb) -> list[tuple[int, str]]:
    """(cell index, file name) of every code cell carrying a README figure mark."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            found += [(i, name) for name in MARK.findall(cell.source)]
    return found


def last_png(cell) -> bytes | None:
    pngs = [o["data"]["image/png"] for o in cell.get("outputs", [])
            if o.get("output_type") in ("display_data", "execute_result") and "image/png" in o.get("data", {})]
    return base64.b64decode(pngs[-1]) if pngs else None


def shrink(png: bytes) -> bytes:
    """The PNG with its colours reduced to a 256-entry palette (Pillow), about 3x smaller for figures."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue() if out.tell() < len(png) else png


def main(argv: list[str] | None = None) -> int:
    import nbclient
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebooks to execute (default: every marked one)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"), help="output directory")
    args = parser.parse_args(argv)
    paths = [pathlib.Path(p) for p in args.notebooks] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.makedirs(args.out, exist_ok=True)
    written = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        marks = marked_cells(nb)
        if not marks:
            continue
        print(f"executing {path.name} ...", flush=True)
        with tempfile.TemporaryDirectory() as work:
            nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                    resources={"metadata": {"path": work}}).execute()
        for index, name in marks:
            png = last_png(nb.cells[index])
            if png is None:
                print(f"  {name}: cell {index} drew no figure", file=sys.stderr)
                return 1
            png = shrink(png)
            target = os.path.join(args.out, name)
            with open(target, "wb") as f:
                f.write(png)
            print(f"  wrote {target} ({len(png) // 1024} KiB)")
            written += 1
    if not written:
        print("no notebook marks a README figure", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
