"""The ``tfcam`` TensorBoard plugin: a dynamic plugin with its own ES-module frontend.

Registered through the ``tensorboard_plugins`` entry point (``setup.cfg``), so
``tensorboard --logdir logs`` shows a "tfcam" tab once tfcam is installed. It reads the
log directory itself (``tfcam.tensorboard.loader``): every logged step (TensorBoard's
reservoir sampling does not apply), lazily, and ``explain_dataset`` shard directories
found under the log directory as well.

HTTP routes, under ``/data/plugin/tfcam/``: ``index.js`` (the viewer), ``runs``,
``samples``, ``sample``, ``history``, ``image`` (PNG), ``colormaps``. A bad request gets
status 400 and ``{"error": "..."}``; an unexpected failure 500 with the same shape, never a
traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from tfcam.summary import PLUGIN_NAME
from tfcam.tensorboard.loader import ExplanationStore, RequestError

__all__ = ["TfcamPlugin", "colormaps_json", "viewer_js"]

logger = logging.getLogger("tfcam")

_STATIC = os.path.join(os.path.dirname(__file__), "static")


@functools.cache
def viewer_js() -> str:
    """The viewer's ES module source (``static/index.js``).

    Returns:
        The JavaScript text.
    """
    with open(os.path.join(_STATIC, "index.js"), encoding="utf-8") as f:
        return f.read()


@functools.cache
def colormaps_json() -> str:
    """The bundled colormaps as JSON ``{name: [r, g, b, r, g, b, ...]}`` (256 entries each).

    Returns:
        The JSON text.
    """
    from tfcam.viz import COLORMAPS, colormap_lut

    return json.dumps({name: colormap_lut(name).reshape(-1).tolist() for name in COLORMAPS})


def _json(request: Any, payload: Any, code: int = 200) -> Any:
    return http_util.Respond(request, json.dumps(payload), "application/json", code=code)


def _route(fn: Callable[[TfcamPlugin, Any], Any]) -> Callable:
    """Turns RequestError into 400 ``{"error"}`` and anything else into 500 ``{"error"}`` (no traceback)."""

    @functools.wraps(fn)
    def wrapper(self: TfcamPlugin, request: Any) -> Any:
        try:
            return fn(self, request)
        except RequestError as err:
            return _json(request, {"error": str(err)}, code=400)
        except Exception as err:  # noqa: BLE001 - a viewer request must never show a traceback
            logger.warning("tfcam plugin: %s failed: %s: %s", request.path, type(err).__name__, err)
            return _json(request, {"error": f"{type(err).__name__}: {err}"}, code=500)

    return wrappers.Request.application(wrapper)


class TfcamPlugin(base_plugin.TBPlugin):
    """TensorBoard's "tfcam" tab: explanations logged by ``HeatmapCallback`` / ``tfcam.summary``.

    Args:
        context: TensorBoard's ``base_plugin.TBContext`` (its ``logdir`` is read).

    Example:

    >>> # installed as an entry point: `tensorboard --logdir logs` shows the tab
    >>> plugin = TfcamPlugin(base_plugin.TBContext(logdir="logs"))
    """

    plugin_name = PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext):
        super().__init__(context)
        logdir = getattr(context, "logdir", None) or getattr(getattr(context, "flags", None), "logdir", None) or ""
        self.store = ExplanationStore(logdir)

    def get_plugin_apps(self) -> dict[str, Callable]:
        """The plugin's WSGI routes.

        Returns:
            ``{route: wsgi_app}``.
        """
        return {
            "/index.js": self._serve_js,
            "/runs": self._serve_runs,
            "/samples": self._serve_samples,
            "/sample": self._serve_sample,
            "/history": self._serve_history,
            "/image": self._serve_image,
            "/colormaps": self._serve_colormaps,
        }

    def is_active(self) -> bool:
        """Always True: the tab shows how to log explanations when there are none yet.

        Returns:
            True.
        """
        return True

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        """A dynamic plugin whose frontend is the ES module ``/index.js``.

        Returns:
            The frontend metadata.
        """
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="tfcam", disable_reload=True)

    # ------------------------------------------------------------------ routes
    @staticmethod
    def _args(request: Any, *names: str) -> list[str]:
        missing = [n for n in names if request.args.get(n) is None]
        if missing:
            raise RequestError(f"Expected the query parameters {list(names)}. Received: {dict(request.args)} "
                               f"(missing {missing})")
        return [request.args.get(n) for n in names]

    @_route
    def _serve_js(self, request: Any) -> Any:
        return http_util.Respond(request, viewer_js(), "text/javascript")

    @_route
    def _serve_colormaps(self, request: Any) -> Any:
        return http_util.Respond(request, colormaps_json(), "application/json")

    @_route
    def _serve_runs(self, request: Any) -> Any:
        return _json(request, self.store.runs())

    @_route
    def _serve_samples(self, request: Any) -> Any:
        run, name, step = self._args(request, "run", "set", "step")
        a = request.args
        return _json(request, self.store.samples(run, name, step, sort=a.get("sort", "index"),
                                                 filter=a.get("filter", "all"), cls=a.get("cls"),
                                                 offset=a.get("offset", 0), limit=a.get("limit", 48)))

    @_route
    def _serve_sample(self, request: Any) -> Any:
        run, name, step, index = self._args(request, "run", "set", "step", "index")
        return _json(request, self.store.sample(run, name, step, index))

    @_route
    def _serve_history(self, request: Any) -> Any:
        run, name, index, key = self._args(request, "run", "set", "index", "key")
        return _json(request, self.store.history(run, name, index, key))

    @_route
    def _serve_image(self, request: Any) -> Any:
        run, name, step, index = self._args(request, "run", "set", "step", "index")
        png = self.store.image(run, name, step, index, thumb=request.args.get("thumb") == "1")
        if png is None:
            raise RequestError(f"No image was logged for this sample set. Received: run={run!r}, set={name!r}")
        return http_util.Respond(request, png, "image/png")
