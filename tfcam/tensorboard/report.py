"""``tfcam report``: one self-contained HTML file with the viewer and the data inlined.

The page embeds the same ES module as the TensorBoard tab (``static/index.js``) and a JSON
bundle (images and maps as PNG data URLs), so it opens from disk with no server and no
network. Big runs are capped: at most ``max_samples`` samples per sample set and
``max_steps`` steps (evenly spaced, the last one included); the page says what was left out.
"""

from __future__ import annotations

import hashlib
import html
import json
import os

import numpy as np

from tfcam.errors import InputError
from tfcam.tensorboard.loader import ExplanationStore
from tfcam.tensorboard.plugin import colormaps_json, viewer_js

__all__ = ["write_report", "report_bundle"]

_SEP = "\u0001"


def _pick_steps(steps: list[int], max_steps: int) -> list[int]:
    if len(steps) <= max_steps:
        return list(steps)
    pos = np.unique(np.round(np.linspace(0, len(steps) - 1, max_steps)).astype(int))
    return [steps[i] for i in pos]


def report_bundle(path: str | os.PathLike, max_samples: int = 500, max_steps: int = 20) -> tuple[dict, str]:
    """The data of a report: what the viewer's static source reads, and the note on the caps.

    Args:
        path: a log directory or an ``explain_dataset`` output directory.
        max_samples: samples per sample set at most (the first ones in sample order).
        max_steps: logged steps per sample set at most.

    Returns:
        ``(bundle, note)``.

    Raises:
        InputError: ``path`` is not a directory, or bad caps.
    """
    if not os.path.isdir(path):
        raise InputError(f"Expected a log directory or an explain_dataset output. Received: path={os.fspath(path)!r}")
    for name, v in (("max_samples", max_samples), ("max_steps", max_steps)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"Expected a positive integer {name}. Received: {name}={v!r}")
    store = ExplanationStore(path)
    store.refresh(force=True)
    runs = store.runs()
    tables: dict[str, list] = {}
    samples: dict[str, dict] = {}
    images: dict[str, str] = {}  # an image repeats at every step: stored once, referenced as "@<hash>"
    notes = []
    for r in runs["runs"]:
        for s in r["sets"]:
            all_steps = s["steps"]
            steps = _pick_steps(all_steps, max_steps)
            n = s["n"]
            keep = min(n, max_samples)
            for step in steps:
                page = store.samples(r["run"], s["set"], step, limit=1000)
                rows = list(page["rows"])
                while len(rows) < keep:
                    rows += store.samples(r["run"], s["set"], step, offset=len(rows), limit=1000)["rows"]
                rows = rows[:keep]
                tables[_SEP.join([r["run"], s["set"], str(step)])] = rows
                for row in rows:
                    key = _SEP.join([r["run"], s["set"], str(step), str(row["index"])])
                    sample = store.sample(r["run"], s["set"], step, row["index"])
                    for field in ("image", "mask"):
                        if sample.get(field):
                            h = hashlib.sha1(sample[field].encode()).hexdigest()[:16]
                            images[h] = sample[field]
                            sample[field] = "@" + h
                    samples[key] = sample
            s["steps"] = steps
            s["n"] = keep
            if keep < n or len(steps) < len(all_steps):
                notes.append(f"{r['run']} · {s['set']}: showing {keep} of {n} samples, "
                             f"{len(steps)} of {len(all_steps)} steps")
    note = ("This report is capped: " + "; ".join(notes) + f" (limits: {max_samples} samples, {max_steps} steps; "
            "change them with --max-samples / --max-steps).") if notes else ""
    bundle = {"runs": runs, "tables": tables, "samples": samples, "images": images,
              "colormaps": json.loads(colormaps_json())}
    return bundle, note


def write_report(path: str | os.PathLike, output: str | os.PathLike, max_samples: int = 500,
                 max_steps: int = 20, title: str | None = None) -> dict:
    """Writes one self-contained HTML report of a log directory or a shards directory.

    Args:
        path: a log directory (tfcam summaries) or an ``explain_dataset`` output directory.
        output: the HTML file to write.
        max_samples: samples per sample set at most (the page states the cap).
        max_steps: logged steps per sample set at most (evenly spaced, last included).
        title: the page title (default: the path).

    Returns:
        ``{"path", "bytes", "samples", "note", "warnings"}``.

    Raises:
        InputError: bad path or caps.

    Example:

    >>> tfcam.tensorboard.write_report("logs/run1", "report.html")["samples"]
    16
    """
    bundle, note = report_bundle(path, max_samples=max_samples, max_steps=max_steps)
    data = json.dumps(bundle, separators=(",", ":")).replace("</", "<\\/")
    js = "\n".join(line[len("export "):] if line.startswith("export ") else line
                   for line in viewer_js().splitlines())
    title = title or f"tfcam report: {os.path.abspath(path)}"
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title></head><body>\n"
        f"<script type=\"application/json\" id=\"tfcam-data\">{data}</script>\n"
        f"<script type=\"application/json\" id=\"tfcam-note\">{json.dumps(note)}</script>\n"
        "<script type=\"module\">\n" + js + "\n"
        "const bundle = JSON.parse(document.getElementById('tfcam-data').textContent);\n"
        "const note = JSON.parse(document.getElementById('tfcam-note').textContent);\n"
        "mount(document.body, staticSource(bundle), { note });\n"
        "</script></body></html>\n"
    )
    output = os.fspath(output)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        f.write(page)
    return {"path": output, "bytes": len(page.encode()), "samples": len(bundle["samples"]), "note": note,
            "warnings": bundle["runs"]["warnings"]}
