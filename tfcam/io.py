"""Image files in, model-ready batches out: reading (OpenCV, RGB order), resizing,
preprocessing, directories and globs, batching.

Everything here works on the host with NumPy and OpenCV (``opencv-python-headless``,
imported lazily); it feeds ``tfcam.Explainer`` and the ``tfcam explain`` command.

Example:

>>> paths = tfcam.io.expand_paths(["photos/", "more/*.jpg"])
>>> for batch in tfcam.io.iter_batches(paths, size=(224, 224), batch_size=16):
...     x = tfcam.io.preprocess(batch.images, "resnet50")
...     maps = explainer(x)
"""

from __future__ import annotations

import glob
import importlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from tfcam.errors import InputError, InputTypeError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageBatch",
    "expand_paths",
    "read_image",
    "resize_image",
    "preprocess",
    "preprocess_function",
    "iter_batches",
    "write_image",
    "keras_application",
    "application_names",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""File extensions ``expand_paths`` picks from directories (lower case)."""


def _cv2():
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Reading and writing image files needs OpenCV: pip install opencv-python-headless"
        ) from err
    return cv2


def _is_image_file(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def expand_paths(specs: str | Sequence[str], recursive: bool = False) -> list[str]:
    """Expands files, directories and glob patterns to a list of image paths.

    Files are kept as given (in order, whatever their extension, so that an unreadable
    file is reported rather than skipped); directories contribute their image files
    (``IMAGE_EXTENSIONS``, sorted by name; sub-directories too when ``recursive``); glob
    patterns (``*``, ``?``, ``[...]``, ``**``) contribute their sorted image matches.
    Duplicates are dropped, keeping the first occurrence.

    Args:
        specs: one path/pattern or a sequence of them.
        recursive: also list images in sub-directories of directories.

    Returns:
        The image paths.

    Raises:
        InputError: a path that does not exist, a pattern or directory with no images.

    Example:

    >>> tfcam.io.expand_paths(["cat.png", "dogs/", "birds/*.jpg"])
    """
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    out: list[str] = []
    for spec in specs:
        spec = os.fspath(spec)
        if os.path.isdir(spec):
            if recursive:
                found = [os.path.join(root, f) for root, _, files in os.walk(spec) for f in files]
            else:
                found = [os.path.join(spec, f) for f in os.listdir(spec)]
            found = sorted(p for p in found if os.path.isfile(p) and _is_image_file(p))
            if not found:
                raise InputError(
                    f"Expected image files ({', '.join(IMAGE_EXTENSIONS)}) in directory {spec!r}; "
                    f"found none. Received: path={spec!r}"
                )
            out.extend(found)
        elif os.path.exists(spec):
            out.append(spec)
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p) and _is_image_file(p))
            if not found:
                raise InputError(f"Expected the pattern to match image files; it matched none. Received: pattern={spec!r}")
            out.extend(found)
        else:
            raise InputError(f"Expected an existing image file, directory or glob pattern. Received: path={spec!r}")
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def read_image(path: str, size: tuple[int, int] | int | None = None) -> np.ndarray:
    """Reads one image file as uint8 RGB ``(H, W, 3)`` with OpenCV.

    PNG, JPEG, BMP, TIFF, WebP (whatever the installed OpenCV decodes); grayscale images
    are repeated to three channels, an alpha channel is dropped, 16-bit images are scaled
    to 8 bits. Paths with non-ASCII characters work.

    Args:
        path: the image file.
        size: optional ``(height, width)`` (or one int for a square) to resize to.

    Returns:
        ``(H, W, 3)`` uint8 RGB array.

    Raises:
        InputError: the file does not exist or cannot be decoded as an image.
    """
    cv2 = _cv2()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"Expected an existing image file. Received: path={path!r}")
    data = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise InputError(
            f"Could not decode {path!r} as an image (expected PNG, JPEG, BMP, TIFF or WebP). "
            f"Received: path={path!r}"
        )
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if size is not None:
        img = resize_image(img, size)
    return img


def _as_hw(size: tuple[int, int] | int) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError) as err:
        raise InputError(f"Expected size as (height, width) or one int. Received: size={size!r}") from err
    if h < 1 or w < 1:
        raise InputError(f"Expected a positive size. Received: size={size!r}")
    return h, w


def resize_image(image: np.ndarray, size: tuple[int, int] | int) -> np.ndarray:
    """Resizes one ``(H, W[, C])`` image to ``size = (height, width)``.

    Area interpolation when shrinking (no aliasing), bilinear when enlarging.
    """
    cv2 = _cv2()
    h, w = _as_hw(size)
    if image.shape[:2] == (h, w):
        return image
    shrink = h * w < image.shape[0] * image.shape[1]
    out = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if image.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    return out


def write_image(path: str, image: np.ndarray) -> str:
    """Writes a uint8 RGB ``(H, W, 3)`` (or ``(H, W)``) image; the extension picks the format.

    Returns:
        ``path``.

    Raises:
        InputError: OpenCV could not encode or write the file.
    """
    cv2 = _cv2()
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ext = os.path.splitext(path)[1] or ".png"
    ok, buf = cv2.imencode(ext, img)
    if not ok:
        raise InputError(f"Could not encode an image as {ext!r}. Received: path={path!r}")
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    buf.tofile(path)
    return path


def _normalize(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def _application_modules() -> dict[str, str]:
    """Normalized keras.applications constructor/module names -> module path."""
    import keras

    table: dict[str, str] = {}
    apps = keras.applications
    for mod_name in dir(apps):
        mod = getattr(apps, mod_name)
        if not hasattr(mod, "preprocess_input"):
            continue
        table[_normalize(mod_name)] = f"keras.applications.{mod_name}"
        for attr in dir(mod):
            if attr[:1].isupper() and callable(getattr(mod, attr)):
                table.setdefault(_normalize(attr), f"keras.applications.{mod_name}")
    return table


def _application_constructors() -> dict[str, tuple[str, str]]:
    """Normalized constructor name -> (constructor name, module path) for keras.applications."""
    import keras

    modules = _application_modules()
    table: dict[str, tuple[str, str]] = {}
    for attr in dir(keras.applications):
        obj = getattr(keras.applications, attr)
        if attr[:1].isupper() and callable(obj):
            key = _normalize(attr)
            mod = modules.get(key)
            if mod is None:  # e.g. MobileNetV3Small lives in mobilenet_v3 without being exported there
                prefixes = [k for k in modules if key.startswith(k)]
                mod = modules[max(prefixes, key=len)] if prefixes else None
            if mod is not None:
                table[_normalize(attr)] = (attr, mod)
    return table


def application_names() -> list[str]:
    """Lower-case names of the ``keras.applications`` models (``resnet50``, ``mobilenetv2``, ...)."""
    return sorted(_application_constructors())


def keras_application(name: str) -> tuple[Callable, Callable[[np.ndarray], np.ndarray]]:
    """A ``keras.applications`` model constructor and its preprocessing, by name.

    Names are matched ignoring case, ``_`` and ``-``: ``"resnet50"``, ``"ResNet50"``,
    ``"mobilenet_v2"``, ``"efficientnet_b0"``, ``"inception_v3"`` ...

    Args:
        name: the model name.

    Returns:
        ``(constructor, preprocess)``: e.g. ``keras.applications.ResNet50`` and a function
        of float32 RGB images in [0, 255] (``preprocess_function``).

    Raises:
        InputError: unknown name (the message suggests close ones).

    Example:

    >>> build, prep = tfcam.io.keras_application("mobilenet_v2")
    >>> model = build(weights=None, input_shape=(96, 96, 3))
    """
    import keras

    if not isinstance(name, str):
        raise InputTypeError(f"Expected a model name. Received: name={name!r}")
    table = _application_constructors()
    key = _normalize(name)
    if key not in table:
        import difflib

        close = difflib.get_close_matches(key, list(table), n=3)
        hint = f" Did you mean {close}?" if close else f" Known: {', '.join(sorted(table)[:8])}, ..."
        raise InputError(f"Expected the name of a keras.applications model.{hint} Received: name={name!r}")
    attr, module = table[key]
    return getattr(keras.applications, attr), preprocess_function(module.rsplit(".", 1)[1])


def preprocess_function(mode: str) -> Callable[[np.ndarray], np.ndarray]:
    """The preprocessing a mode names, as a function of float32 RGB images in [0, 255].

    Args:
        mode: ``"none"`` (pixels as read, 0-255), ``"unit"`` (scaled to 0-1), or the name
            of a ``keras.applications`` model or module (``"resnet50"``, ``"mobilenet_v2"``,
            ``"efficientnet"``, ``"vgg16"``, ...), whose ``preprocess_input`` is used.

    Returns:
        A function ``images -> float32 images``.

    Raises:
        InputError: unknown mode (the message lists the choices).
    """
    if not isinstance(mode, str):
        raise InputTypeError(f"Expected the preprocessing as a string. Received: mode={mode!r}")
    key = _normalize(mode)
    if key == "none":
        return lambda x: np.asarray(x, np.float32)
    if key == "unit":
        return lambda x: np.asarray(x, np.float32) / 255.0
    table = _application_modules()
    if key not in table:
        import difflib

        close = difflib.get_close_matches(key, list(table), n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise InputError(
            "Expected preprocessing 'none', 'unit' or the name of a keras.applications model "
            f"(e.g. 'resnet50', 'mobilenet_v2', 'efficientnet').{hint} Received: preprocess={mode!r}"
        )
    fn = importlib.import_module(table[key]).preprocess_input

    def run(x: np.ndarray) -> np.ndarray:
        out = fn(np.array(x, dtype=np.float32, copy=True))
        return np.asarray(out, np.float32)

    return run


def preprocess(images: np.ndarray, mode: str = "unit") -> np.ndarray:
    """Preprocesses uint8/float RGB images in [0, 255] (see ``preprocess_function``).

    Example:

    >>> x = tfcam.io.preprocess(images, "resnet50")   # caffe-style BGR, mean-subtracted
    """
    return preprocess_function(mode)(images)


@dataclass
class ImageBatch:
    """One batch of images read from files.

    Attributes:
        paths: the paths read successfully, in order.
        images: ``(len(paths), H, W, 3)`` uint8 RGB at the requested size.
        originals: each image as read, before resizing (uint8 RGB, own size).
        errors: ``(path, message)`` for each file of this batch that could not be read.
    """

    paths: list[str]
    images: np.ndarray
    originals: list[np.ndarray] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)


def iter_batches(
    paths: Sequence[str],
    size: tuple[int, int] | int,
    batch_size: int = 16,
    keep_originals: bool = True,
) -> Iterator[ImageBatch]:
    """Reads images in batches, resized to ``size``; unreadable files do not stop the rest.

    Args:
        paths: image paths (see ``expand_paths``).
        size: ``(height, width)`` every image is resized to (the model's input size).
        batch_size: images per batch.
        keep_originals: also keep each image at its own size (for full-size overlays).

    Yields:
        ``ImageBatch`` objects; a batch may hold only errors (then ``images`` is empty).
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"Expected a positive integer batch_size. Received: batch_size={batch_size!r}")
    h, w = _as_hw(size)
    paths = list(paths)
    for start in range(0, len(paths), int(batch_size)):
        ok, imgs, originals, errors = [], [], [], []
        for p in paths[start:start + int(batch_size)]:
            try:
                img = read_image(p)
            except InputError as err:
                errors.append((p, str(err)))
                continue
            ok.append(p)
            imgs.append(resize_image(img, (h, w)))
            if keep_originals:
                originals.append(img)
        images = np.stack(imgs) if imgs else np.zeros((0, h, w, 3), np.uint8)
        yield ImageBatch(ok, images, originals, errors)
