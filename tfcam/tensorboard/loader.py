"""Reads what the viewer shows: tfcam summaries from event files, and ``explain_dataset`` shards.

Both are read lazily. Event files are indexed once (and then only the bytes appended since
the last look): the small per-step meta records are kept, images and maps are remembered
by file offset and read when a sample is requested. Shard directories are indexed per
shard file (count and per-sample sort keys, cached by the file's size and mtime), and a
sample's maps are read from the ``.npz`` member with a memory map, so a 100k-example run
opens without loading every shard. A corrupt or truncated file is skipped from the point
where it breaks, with a message in ``warnings``.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import threading
import time
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfcam.errors import InputError
from tfcam.summary import FORMAT_VERSION, PLUGIN_NAME

__all__ = ["ExplanationStore", "RequestError", "SORTS", "FILTERS", "encode_png"]

SORTS = ("index", "score", "energy_outside", "misclassified")
"""Sample orders: example order, lowest score first, most energy outside the mask first, misclassified first."""

FILTERS = ("all", "misclassified", "correct")
"""Sample filters (a class filter is given separately)."""

_SHARDS_FORMAT = "tfcam.explain_dataset"
_SCAN_INTERVAL_S = 2.0


class RequestError(InputError):
    """A request names an unknown run, sample set, step, sample or map, or has a bad parameter."""


# ---------------------------------------------------------------------------- PNG
def encode_png(pixels: np.ndarray) -> bytes:
    """Encodes uint8 ``(H, W)`` (gray) or ``(H, W, 3|4)`` pixels as a PNG (zlib, no TensorFlow).

    Args:
        pixels: uint8 image.

    Returns:
        The PNG file bytes.

    Raises:
        InputError: not a 2-D gray, RGB or RGBA uint8 image.
    """
    a = np.ascontiguousarray(pixels, dtype=np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or a.size == 0:
        raise InputError(f"Expected a (H, W), (H, W, 3) or (H, W, 4) uint8 image. Received: shape={a.shape}")
    h, w = a.shape[:2]
    color = 0 if a.ndim == 2 else (2 if a.shape[2] == 3 else 6)
    rows = a.reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 3)) + chunk(b"IEND", b"")


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _as_2d(a: np.ndarray, channels: bool) -> np.ndarray:
    """A displayable 2-D (gray or RGB) layout of a signal / image / volume (volumes stack their slices)."""
    if channels:
        c = a.shape[-1]
        if c not in (1, 3):
            a = a[..., :1]  # other channel counts: the first channel, in gray
        body = a.shape[:-1]
    else:
        body = a.shape
    if len(body) == 1:
        return a.reshape((1,) + a.shape)
    if len(body) == 3:  # (D, H, W[, C]) -> (D*H, W[, C])
        return a.reshape((body[0] * body[1],) + a.shape[2:])
    return a


def _to_u8(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    v = np.nan_to_num(np.asarray(values, np.float32))
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    q = np.zeros(v.shape, np.uint8) if hi <= lo else np.rint((v - lo) / (hi - lo) * 255).clip(0, 255).astype(np.uint8)
    return q, lo, hi


# ---------------------------------------------------------------------------- event files
@dataclass
class _Step:
    meta: dict
    maps: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # key -> (file, offset, length)


@dataclass
class _EventSet:
    steps: dict[int, _Step] = field(default_factory=dict)
    images: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    masks: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    pending_maps: dict[int, dict[str, tuple[str, int, int]]] = field(default_factory=dict)


@dataclass
class _FileState:
    size: int = 0
    mtime: float = 0.0
    offset: int = 0
    records: int = 0
    broken: str | None = None
    tags: dict[str, dict] = field(default_factory=dict)  # tag -> plugin content (first occurrence)


def _read_records(path: str, start: int) -> Iterable[tuple[int, int, bytes | None, str | None]]:
    """Yields ``(offset, next_offset, data, error)``; stops at the first truncated or corrupt record."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    with open(path, "rb") as f:
        f.seek(start)
        offset = start
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                yield offset, offset, None, f"truncated record header at byte {offset}"
                return
            (length,), (crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
            if masked_crc32c(header[:8]) != crc:
                yield offset, offset, None, f"corrupt record length at byte {offset}"
                return
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                yield offset, offset, None, f"truncated record at byte {offset}"
                return
            nxt = offset + 12 + length + 4
            yield offset, nxt, data, None
            offset = nxt


def _read_tensor(path: str, offset: int, tag: str) -> np.ndarray:
    from tensorboard.compat.proto import event_pb2
    from tensorboard.util import tensor_util

    for _, _, data, err in _read_records(path, offset):
        if err is not None or data is None:
            raise RequestError(f"The event file changed or broke since it was indexed ({err}). Received: {path!r}")
        event = event_pb2.Event.FromString(data)
        for v in event.summary.value:
            if v.tag == tag:
                return tensor_util.make_ndarray(v.tensor)
        break
    raise RequestError(f"The summary {tag!r} is no longer at its place in the event file. Received: {path!r}")


# ---------------------------------------------------------------------------- shards
def _npz_member(path: str, key: str) -> np.ndarray:
    """One array of an ``.npz``: memory-mapped when the member is stored uncompressed, else loaded."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{key}.npy")
        stored = info.compress_type == zipfile.ZIP_STORED
        header_offset = info.header_offset
    if stored:
        with open(path, "rb") as f:
            f.seek(header_offset)
            local = f.read(30)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            start = header_offset + 30 + name_len + extra_len
            f.seek(start)
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            data_start = f.tell()
        if not fortran and not dtype.hasobject:
            return np.memmap(path, dtype=dtype, mode="r", offset=data_start, shape=shape)
    with np.load(path) as data:
        return data[key]


@dataclass
class _ShardInfo:
    key: tuple[int, float]
    start: int
    count: int
    scores: np.ndarray
    predictions: np.ndarray | None
    pred_scores: np.ndarray | None
    labels: np.ndarray | None


class _ShardSet:
    """One ``explain_dataset`` output directory."""

    def __init__(self, path: str):
        self.path = path
        self.infos: dict[str, _ShardInfo] = {}
        self.methods: list[str] = []
        self.entries: list[dict] = []
        self.fingerprint: dict = {}
        self.map_shape: list[int] = []
        self.warnings: list[str] = []
        self._index_key: tuple | None = None
        self._table: dict[str, np.ndarray] | None = None

    def refresh(self) -> None:
        p = os.path.join(self.path, "index.json")
        st = os.stat(p)
        key = (st.st_size, st.st_mtime)
        if key == self._index_key:
            for e in self.entries:  # a shard rewritten in place
                f = os.path.join(self.path, e["file"])
                if os.path.exists(f) and self.infos.get(e["file"]) and \
                        self.infos[e["file"]].key != (os.path.getsize(f), os.path.getmtime(f)):
                    break
            else:
                return
        with open(p) as f:
            index = json.load(f)
        self._index_key = key
        self.methods = list(index.get("fingerprint", {}).get("methods", []))
        self.fingerprint = index.get("fingerprint", {})
        self.entries = sorted(index.get("shards", {}).values(), key=lambda e: e["start"])
        self.warnings = []
        good = []
        for e in self.entries:
            f = os.path.join(self.path, e["file"])
            try:
                st = os.stat(f)
                k = (st.st_size, st.st_mtime)
                info = self.infos.get(e["file"])
                if info is None or info.key != k:
                    if st.st_size != e.get("bytes"):
                        raise InputError(f"size {st.st_size} differs from the index ({e.get('bytes')})")
                    info = self._read_info(f, e, k)
                    self.infos[e["file"]] = info
                good.append(e)
            except Exception as err:  # noqa: BLE001 - one bad shard must not hide the others
                self.warnings.append(f"shard {e.get('file')} in {self.path} skipped: {type(err).__name__}: {err}")
                self.infos.pop(e.get("file"), None)
        self.entries = good
        self._table = None
        if good and not self.map_shape:
            f = os.path.join(self.path, good[0]["file"])
            self.map_shape = list(_npz_member(f, self.methods[0]).shape[1:])

    def _read_info(self, path: str, entry: dict, key: tuple[int, float]) -> _ShardInfo:
        with np.load(path) as data:  # only the small arrays are read
            scores = np.asarray(data["scores"], np.float32)
            preds = np.asarray(data["predictions"]) if "predictions" in data.files else None
            labels = np.asarray(data["labels"]) if "labels" in data.files else None
        pred_cls = pred_scores = None
        if preds is not None and preds.ndim == 2 and preds.shape[1] > 1:
            pred_cls, pred_scores = preds.argmax(axis=1), preds.max(axis=1).astype(np.float32)
        elif preds is not None and preds.ndim == 1:
            pred_cls = preds.astype(np.int64)
        if labels is not None:
            labels = labels.argmax(axis=1) if labels.ndim == 2 and labels.shape[1] > 1 else labels.reshape(len(labels), -1)[:, 0]
        if len(scores) != entry["count"]:
            raise InputError(f"{len(scores)} scores for {entry['count']} examples")
        return _ShardInfo(key, int(entry["start"]), int(entry["count"]), scores, pred_cls, pred_scores, labels)

    def table(self) -> dict[str, np.ndarray]:
        if self._table is None:
            infos = [self.infos[e["file"]] for e in self.entries]
            n = sum(i.count for i in infos)

            def cat(attr: str, dtype: Any) -> np.ndarray | None:
                parts = [getattr(i, attr) for i in infos]
                if not parts or any(p is None for p in parts):
                    return None
                return np.concatenate(parts).astype(dtype)

            self._table = {
                "index": np.concatenate([np.arange(i.start, i.start + i.count) for i in infos]) if infos
                else np.zeros(0, np.int64),
                "score": cat("scores", np.float32) if n else np.zeros(0, np.float32),
                "prediction": cat("predictions", np.int64),
                "pred_score": cat("pred_scores", np.float32),
                "label": cat("labels", np.int64),
            }
        return self._table

    def locate(self, index: int) -> tuple[str, int]:
        for e in self.entries:
            if e["start"] <= index < e["start"] + e["count"]:
                return os.path.join(self.path, e["file"]), index - e["start"]
        raise RequestError(f"Expected a sample index of this dataset's shards. Received: index={index}")


# ---------------------------------------------------------------------------- the store
def _param_int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise RequestError(f"Expected an integer {name}. Received: {name}={value!r}") from None


class ExplanationStore:
    """Everything the viewer can show under one path (a TensorBoard logdir or a shards directory).

    Args:
        path: a log directory (event files with tfcam summaries, at any depth, and/or
            ``explain_dataset`` output directories) or one ``explain_dataset`` output.
        max_thumb: longest side of the thumbnails of the sample list, in pixels.

    Example:

    >>> store = tfcam.tensorboard.ExplanationStore("logs")
    >>> store.runs()["runs"][0]["sets"][0]["steps"]
    [0, 1, 2]
    """

    def __init__(self, path: str | os.PathLike, max_thumb: int = 96):
        self.path = os.path.abspath(os.fspath(path))
        self.max_thumb = int(max_thumb)
        self._lock = threading.RLock()
        self._files: dict[str, _FileState] = {}
        self._events: dict[str, dict[str, _EventSet]] = {}  # run -> set -> data
        self._shards: dict[str, _ShardSet] = {}
        self._warnings: dict[str, str] = {}
        self._scanned = 0.0
        self._cache: OrderedDict[tuple, Any] = OrderedDict()

    # ---------------------------------------------------------------- scanning
    def refresh(self, force: bool = False) -> None:
        """Looks for new or grown event files and shard directories (at most every 2 s unless forced)."""
        with self._lock:
            if not force and time.monotonic() - self._scanned < _SCAN_INTERVAL_S:
                return
            self._scanned = time.monotonic()
            if not os.path.isdir(self.path):
                self._warnings["path"] = f"{self.path} is not a directory"
                return
            for root, dirs, files in os.walk(self.path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                run = os.path.relpath(root, self.path).replace(os.sep, "/")
                if "index.json" in files:
                    self._scan_shards(run, root)
                    dirs[:] = [d for d in dirs if d != "overlays"]
                for name in sorted(files):
                    if "tfevents" in name:
                        self._scan_file(run, os.path.join(root, name))

    def _scan_shards(self, run: str, root: str) -> None:
        try:
            with open(os.path.join(root, "index.json")) as f:
                head = json.load(f)
            if not isinstance(head, dict) or head.get("format") != _SHARDS_FORMAT:
                return
            s = self._shards.get(run) or _ShardSet(root)
            s.refresh()
            self._shards[run] = s
            self._warnings.pop(f"shards:{run}", None)
        except Exception as err:  # noqa: BLE001
            self._warnings[f"shards:{run}"] = f"shards in {root} skipped: {type(err).__name__}: {err}"

    def _scan_file(self, run: str, path: str) -> None:
        from tensorboard.compat.proto import event_pb2
        from tensorboard.util import tensor_util

        st = os.stat(path)
        state = self._files.get(path)
        if state is None or st.st_size < state.size:
            state = _FileState()
            self._files[path] = state
            self._drop_file(path)
        if state.broken is not None or (st.st_size == state.size and st.st_mtime == state.mtime):
            return
        state.size, state.mtime = st.st_size, st.st_mtime
        sets = self._events.setdefault(run, {})
        for offset, nxt, data, err in _read_records(path, state.offset):
            if err is not None:
                # a record cut by a writer that is still writing is retried at the next scan
                if time.time() - st.st_mtime > 10 or "corrupt" in err:
                    state.broken = err
                    self._warnings[f"file:{path}"] = (
                        f"{os.path.relpath(path, self.path)}: {err}; read {state.records} records before it")
                break
            state.offset = nxt
            state.records += 1
            try:
                event = event_pb2.Event.FromString(data)
            except Exception as e:  # noqa: BLE001 - protobuf's DecodeError
                state.broken = str(e)
                self._warnings[f"file:{path}"] = (f"{os.path.relpath(path, self.path)}: undecodable record at byte "
                                                  f"{offset} ({type(e).__name__}); later records skipped")
                break
            if not event.HasField("summary"):
                continue
            for v in event.summary.value:
                content = state.tags.get(v.tag)
                if v.metadata.plugin_data.plugin_name == PLUGIN_NAME:
                    try:
                        content = json.loads(v.metadata.plugin_data.content.decode() or "{}")
                    except ValueError:
                        content = {"version": -1}
                    state.tags[v.tag] = content
                if content is None:
                    continue
                if int(content.get("version", -1)) > FORMAT_VERSION or int(content.get("version", -1)) < 1:
                    self._warnings[f"version:{v.tag}"] = (
                        f"{v.tag}: format version {content.get('version')} is not supported "
                        f"(this tfcam reads version {FORMAT_VERSION})")
                    continue
                name, kind, step = str(content.get("set", "")), content.get("kind"), int(event.step)
                es = sets.setdefault(name, _EventSet())
                loc = (path, offset, len(data))
                if kind == "meta":
                    try:
                        meta = json.loads(tensor_util.make_ndarray(v.tensor).item())
                    except Exception as e:  # noqa: BLE001
                        self._warnings[f"meta:{path}:{step}"] = f"{v.tag} at step {step}: unreadable ({e})"
                        continue
                    pending = es.pending_maps.pop(step, {})
                    es.steps[step] = _Step(meta=meta, maps=pending)
                elif kind == "map":
                    key = v.tag.split("/map/", 1)[-1]
                    target = es.steps[step].maps if step in es.steps else es.pending_maps.setdefault(step, {})
                    target[key] = loc
                elif kind == "image":
                    es.images[step] = loc
                elif kind == "mask":
                    es.masks[step] = loc

    def _drop_file(self, path: str) -> None:
        for sets in self._events.values():
            for es in sets.values():
                for step in [s for s, st in es.steps.items() if any(loc[0] == path for loc in st.maps.values())]:
                    del es.steps[step]
                for d in (es.images, es.masks):
                    for step in [s for s, loc in d.items() if loc[0] == path]:
                        del d[step]

    # ---------------------------------------------------------------- listing
    def warnings(self) -> list[str]:
        """Messages about skipped files, shards and records."""
        with self._lock:
            out = list(self._warnings.values())
            for s in self._shards.values():
                out += s.warnings
            return out

    def runs(self) -> dict:
        """The runs and their sample sets, with steps, maps and the sorts they support.

        Returns:
            ``{"runs": [{"run", "kind", "sets": [...]}], "warnings": [...], "path": ...}``.
        """
        self.refresh()
        with self._lock:
            runs = []
            for run in sorted(self._events):
                sets = []
                for name, es in sorted(self._events[run].items()):
                    steps = sorted(s for s, st in es.steps.items() if st.maps)
                    if not steps:
                        continue
                    meta = es.steps[steps[-1]].meta
                    maps = meta.get("maps", [])
                    truth = meta.get("labels") or meta.get("targets") or []
                    sets.append({
                        "set": name, "steps": steps, "n": int(meta.get("n", 0)),
                        "keys": [m["key"] for m in maps], "methods": list(dict.fromkeys(m["method"] for m in maps)),
                        "map_shape": maps[0]["shape"] if maps else [], "class_names": meta.get("class_names"),
                        "has_image": bool(es.images), "has_mask": bool(es.masks),
                        "classes": sorted({int(c) for c in truth if c is not None}),
                        "sorts": self._sorts(meta.get("energy_in_mask") is not None,
                                             meta.get("predictions") is not None and (meta.get("labels") or meta.get("targets")) is not None),
                    })
                if sets:
                    runs.append({"run": run, "kind": "events", "sets": sets})
            for run in sorted(self._shards):
                s = self._shards[run]
                if not s.entries:
                    continue
                t = s.table()
                runs.append({"run": run, "kind": "shards", "sets": [{
                    "set": "dataset", "steps": [0], "n": int(len(t["index"])), "keys": list(s.methods),
                    "methods": list(s.methods), "map_shape": s.map_shape, "class_names": None,
                    "has_image": False, "has_mask": False,
                    "classes": [] if t["label"] is None else np.unique(t["label"])[:1000].astype(int).tolist(),
                    "sorts": self._sorts(False, t["prediction"] is not None and t["label"] is not None),
                }]})
            return {"runs": runs, "warnings": self.warnings(), "path": self.path, "version": FORMAT_VERSION}

    @staticmethod
    def _sorts(energy: bool, correctness: bool) -> list[str]:
        return [s for s in SORTS if (s != "energy_outside" or energy) and (s != "misclassified" or correctness)]

    def _event_set(self, run: str, name: str) -> _EventSet:
        es = self._events.get(run, {}).get(name)
        if es is None or not es.steps:
            known = sorted(f"{r}:{s}" for r, sets in self._events.items() for s in sets)
            raise RequestError(f"Expected a known run and sample set ({known}). Received: run={run!r}, set={name!r}")
        return es

    def _step(self, es: _EventSet, step: Any) -> _Step:
        s = _param_int(step, "step")
        if s not in es.steps:
            raise RequestError(f"Expected a logged step ({sorted(es.steps)}). Received: step={s}")
        return es.steps[s]

    def _table(self, run: str, name: str, step: Any) -> dict[str, np.ndarray | None]:
        """Columns of one (run, set, step): index, score, prediction, pred_score, label, target, energy."""
        if run in self._shards and name == "dataset":
            if _param_int(step, "step") != 0:
                raise RequestError(f"Expected step=0 (a dataset has one step). Received: step={step!r}")
            t = dict(self._shards[run].table())
            t["target"], t["energy"] = None, None
            return t
        meta = self._step(self._event_set(run, name), step).meta
        n = int(meta.get("n", 0))

        def col(key: str, dtype: Any) -> np.ndarray | None:
            v = meta.get(key)
            return None if v is None else np.array([np.nan if x is None else x for x in v], dtype=dtype)

        energy = None
        if meta.get("energy_in_mask"):
            energy = np.mean([np.asarray(v, np.float32) for v in meta["energy_in_mask"].values()], axis=0)
        return {"index": np.arange(n), "score": col("scores", np.float32), "prediction": col("predictions", np.float64),
                "pred_score": col("pred_scores", np.float32), "label": col("labels", np.float64),
                "target": col("targets", np.float64), "energy": energy}

    def samples(self, run: str, name: str, step: Any, sort: str = "index", filter: str = "all",  # noqa: A002
                cls: Any = None, offset: Any = 0, limit: Any = 48) -> dict:
        """One page of the sample list of a (run, set, step), sorted and filtered.

        Args:
            run: the run.
            name: the sample set.
            step: the step.
            sort: one of ``SORTS``.
            filter: one of ``FILTERS``.
            cls: keep only samples whose label (or target) is this class.
            offset: the first row of the page.
            limit: rows per page (at most 1000).

        Returns:
            ``{"total", "total_all", "offset", "rows": [{"index", "target", "prediction", ...}]}``.

        Raises:
            RequestError: unknown run, set, step, sort or filter; bad numbers.
        """
        self.refresh()
        if sort not in SORTS:
            raise RequestError(f"Expected sort in {SORTS}. Received: sort={sort!r}")
        if filter not in FILTERS:
            raise RequestError(f"Expected filter in {FILTERS}. Received: filter={filter!r}")
        offset, limit = _param_int(offset, "offset"), _param_int(limit, "limit")
        if offset < 0 or not 1 <= limit <= 1000:
            raise RequestError(f"Expected offset >= 0 and 1 <= limit <= 1000. Received: offset={offset}, limit={limit}")
        with self._lock:
            t = self._table(run, name, step)
        n = len(t["index"])
        truth = t["label"] if t["label"] is not None else t.get("target")
        correct = None
        if t["prediction"] is not None and truth is not None:
            correct = t["prediction"] == truth
        keep = np.ones(n, bool)
        if filter != "all":
            if correct is None:
                raise RequestError(f"This sample set has no predictions and labels to filter on. Received: filter={filter!r}")
            keep &= ~correct if filter == "misclassified" else correct
        if cls not in (None, "", "all"):
            c = _param_int(cls, "cls")
            if truth is None:
                raise RequestError(f"This sample set has no labels or targets to filter on. Received: cls={c}")
            keep &= truth == c
        idx = np.flatnonzero(keep)
        if sort == "score":
            if t["score"] is None:
                raise RequestError("This sample set has no scores to sort on. Received: sort='score'")
            idx = idx[np.argsort(np.nan_to_num(t["score"][idx], nan=np.inf), kind="stable")]
        elif sort == "energy_outside":
            if t["energy"] is None:
                raise RequestError("This sample set has no masks to sort on. Received: sort='energy_outside'")
            idx = idx[np.argsort(t["energy"][idx], kind="stable")]
        elif sort == "misclassified":
            if correct is None:
                raise RequestError("This sample set has no predictions and labels. Received: sort='misclassified'")
            idx = idx[np.argsort(correct[idx], kind="stable")]
        page = idx[offset:offset + limit]

        def val(col: str, i: int, kind: type) -> Any:
            c = t.get(col)
            if c is None or (kind is not str and np.isnan(float(c[i]))):
                return None
            return kind(c[i])

        rows = [{"index": int(t["index"][i]), "target": val("target", i, int), "prediction": val("prediction", i, int),
                 "label": val("label", i, int), "score": val("score", i, float), "pred_score": val("pred_score", i, float),
                 "energy": val("energy", i, float), "correct": None if correct is None else bool(correct[i])}
                for i in page]
        return {"total": int(len(idx)), "total_all": int(n), "offset": offset, "rows": rows}

    # ---------------------------------------------------------------- one sample
    def _cached(self, key: tuple, fn: Any) -> Any:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = fn()
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > 64:
                self._cache.popitem(last=False)
        return value

    def _event_array(self, loc: tuple[str, int, int], tag: str) -> np.ndarray:
        return self._cached(("tensor",) + loc, lambda: _read_tensor(loc[0], loc[1], tag))

    @staticmethod
    def _latest(d: dict[int, tuple], step: int) -> tuple | None:
        before = [s for s in d if s <= step]
        return d[max(before)] if before else (d[min(d)] if d else None)

    def _check_index(self, index: Any, n: int) -> int:
        i = _param_int(index, "index")
        if not 0 <= i < n:
            raise RequestError(f"Expected a sample index in [0, {n}). Received: index={i}")
        return i

    def image(self, run: str, name: str, step: Any, index: Any, thumb: bool = False) -> bytes | None:
        """The PNG of one sample's input (None when no image was logged).

        Raises:
            RequestError: unknown run, set, step or sample.
        """
        self.refresh()
        with self._lock:
            if run in self._shards and name == "dataset":
                return None
            es = self._event_set(run, name)
            st = self._step(es, step)
            i = self._check_index(index, int(st.meta.get("n", 0)))
            loc = self._latest(es.images, int(step))
            map_rank = len(st.meta["maps"][0]["shape"]) if st.meta.get("maps") else 2
        if loc is None:
            return None
        img = self._event_array(loc, f"tfcam/{name}/image")[i]
        disp = _as_2d(img, channels=img.ndim > map_rank)
        if thumb and disp.shape[0] > 1:
            f = max(1, int(np.ceil(max(disp.shape[:2]) / self.max_thumb)))
            disp = disp[::f, ::f]
        return encode_png(disp)

    def sample(self, run: str, name: str, step: Any, index: Any) -> dict:
        """Everything the viewer shows for one sample at one step.

        Returns:
            ``{"index", "step", "image", "image_shape", "mask", "maps": [{"key", "method", "layer",
            "png", "shape", "min", "max"}], "target", "prediction", "label", "score", "pred_score",
            "energy"}``; images and maps are PNG data URLs (maps quantized to 8 bits).

        Raises:
            RequestError: unknown run, set, step, or sample index.
        """
        self.refresh()
        with self._lock:
            is_shards = run in self._shards and name == "dataset"
        if is_shards:
            return self._shard_sample(run, _param_int(step, "step"), index)
        with self._lock:
            es = self._event_set(run, name)
            st = self._step(es, step)
            meta = st.meta
            n = int(meta.get("n", 0))
            i = self._check_index(index, n)
            maps_loc = dict(st.maps)
            img_loc = self._latest(es.images, int(step))
            mask_loc = self._latest(es.masks, int(step))
        maps = []
        for entry in meta.get("maps", []):
            loc = maps_loc.get(entry["key"])
            if loc is None:
                continue
            arr = self._event_array(loc, entry["tag"])[i]
            maps.append(self._map_payload(entry, arr, i))
        image = image_shape = None
        if img_loc is not None:
            img = self._event_array(img_loc, f"tfcam/{name}/image")[i]
            image_shape = list(img.shape)
            image = _data_url(encode_png(_as_2d(img, channels=img.ndim > len(meta["maps"][0]["shape"]))))
        mask = None
        if mask_loc is not None:
            m = self._event_array(mask_loc, f"tfcam/{name}/mask")[i]
            mask = _data_url(encode_png(_as_2d(m.astype(np.uint8) * 255, channels=False)))

        def pick(key: str) -> Any:
            v = meta.get(key)
            return None if v is None else v[i]

        energy = {k: v[i] for k, v in (meta.get("energy_in_mask") or {}).items()}
        return {"index": i, "step": int(step), "image": image, "image_shape": image_shape, "mask": mask,
                "maps": maps, "target": pick("targets"), "prediction": pick("predictions"), "label": pick("labels"),
                "score": pick("scores"), "pred_score": pick("pred_scores"), "energy": energy or None}

    def _map_payload(self, entry: dict, arr: np.ndarray, i: int) -> dict:
        if entry.get("dtype") == "uint8" and "min" in entry:
            q, lo, hi = np.asarray(arr, np.uint8), float(entry["min"][i]), float(entry["max"][i])
        else:
            q, lo, hi = _to_u8(arr)
        return {"key": entry["key"], "method": entry["method"], "layer": entry.get("layer", ""),
                "png": _data_url(encode_png(_as_2d(q, channels=False))), "shape": list(arr.shape), "min": lo, "max": hi}

    def _shard_sample(self, run: str, step: int, index: Any) -> dict:
        with self._lock:
            s = self._shards[run]
            t = s.table()
            if step != 0:
                raise RequestError(f"Expected step=0 (a dataset has one step). Received: step={step}")
            i = _param_int(index, "index")
            path, row = s.locate(i)
            methods = list(s.methods)
        maps = []
        for m in methods:
            try:
                arr = np.asarray(self._cached(("shard", path, m), lambda m=m: _npz_member(path, m))[row])
            except Exception as err:  # noqa: BLE001
                raise RequestError(f"Could not read {m!r} from {os.path.basename(path)}: {err}. Received: index={i}") from None
            maps.append(self._map_payload({"key": m, "method": m, "layer": ""}, arr, 0))
        pos = int(np.searchsorted(t["index"], i))

        def pick(col: str, kind: type) -> Any:
            c = t.get(col)
            return None if c is None else kind(c[pos])

        return {"index": i, "step": 0, "image": None, "image_shape": None, "mask": None, "maps": maps, "target": None,
                "prediction": pick("prediction", int), "label": pick("label", int), "score": pick("score", float),
                "pred_score": pick("pred_score", float), "energy": None}

    def history(self, run: str, name: str, index: Any, key: str) -> dict:
        """One sample's map ``key`` at every logged step (the strip across epochs).

        Returns:
            ``{"key", "steps": [{"step", "png", "min", "max"}]}``.

        Raises:
            RequestError: unknown run, set, sample or map key.
        """
        self.refresh()
        with self._lock:
            if run in self._shards and name == "dataset":
                return {"key": key, "steps": []}
            es = self._event_set(run, name)
            items = []
            for step in sorted(es.steps):
                st = es.steps[step]
                entry = next((e for e in st.meta.get("maps", []) if e["key"] == key), None)
                if entry is not None and key in st.maps:
                    items.append((step, entry, st.maps[key], int(st.meta.get("n", 0))))
        if not items:
            raise RequestError(f"Expected a map key of this sample set. Received: key={key!r}")
        i = self._check_index(index, items[-1][3])
        out = []
        for step, entry, loc, _ in items:
            arr = self._event_array(loc, entry["tag"])[i]
            p = self._map_payload(entry, arr, i)
            out.append({"step": step, "png": p["png"], "min": p["min"], "max": p["max"]})
        return {"key": key, "steps": out}
