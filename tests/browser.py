"""A headless Chromium driven over the DevTools protocol on a pipe (stdlib only, no websocket package),
and ``tensorboard_server``: TensorBoard with the tfcam plugin on loopback.

Chromium's ``--remote-debugging-pipe`` reads JSON commands, each ended by a NUL byte, on
file descriptor 3 and writes replies and events the same way on descriptor 4. Used by the
viewer's browser tests and by ``benchmarks/browser_first_paint.py``. Chromium comes from
Debian's ``chromium`` package (``make browser`` installs it).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import importlib.metadata
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--mute-audio", "--hide-scrollbars", "--allow-file-access-from-files"]


def chromium_path() -> str | None:
    """The Chromium executable, or None when it is not installed."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    """The browser did not answer, or a DevTools command failed."""


class Chromium:
    """One headless Chromium with one page; ``close()`` (or a ``with`` block) ends it."""

    def __init__(self, executable: str | None = None, width: int = 1400, height: int = 1000):
        exe = executable or chromium_path()
        if exe is None:
            raise BrowserError("chromium is not installed (make browser: apt-get install -y chromium)")
        self.profile = tempfile.mkdtemp(prefix="tfcam-chromium-")
        # pipe ends for the child get numbers above 9, so dup2 to 3/4 cannot clobber them
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        child_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
        child_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        os.close(to_child_r)
        os.close(from_child_w)

        def preexec() -> None:
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4, child_r, child_w), preexec_fn=preexec)  # noqa: PLW1509
        os.close(child_r)
        os.close(child_w)
        self._out = os.fdopen(to_child_w, "wb", buffering=0)
        self._in = os.fdopen(from_child_r, "rb", buffering=0)
        self._id = 0
        self._replies: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self.console: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page.enable", "Runtime.enable"):
            self.send(domain, session=True)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=True)

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self._in.read(1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._lock:
                        q = self._replies.get(msg["id"])
                    if q is not None:
                        q.put(msg)
                elif msg.get("method") == "Runtime.consoleAPICalled":
                    args = msg["params"].get("args", [])
                    self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
                elif msg.get("method") == "Runtime.exceptionThrown":
                    d = msg["params"]["exceptionDetails"]
                    self.console.append("exception: " + str(d.get("exception", {}).get("description", d.get("text"))))

    def send(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 60) -> dict:
        """Sends one DevTools command and returns its result."""
        with self._lock:
            self._id += 1
            mid = self._id
            self._replies[mid] = queue.Queue()
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        self._out.write(json.dumps(msg).encode() + b"\0")
        try:
            reply = self._replies[mid].get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(f"no reply to {method} within {timeout} s") from None
        finally:
            with self._lock:
                self._replies.pop(mid, None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def goto(self, url: str) -> None:
        """Navigates the page (returns at once; use ``wait_for``)."""
        self.send("Page.navigate", {"url": url}, session=True)

    def eval(self, expression: str, timeout: float = 60) -> Any:
        """Evaluates JavaScript in the page (promises are awaited) and returns the value."""
        r = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True},
                      session=True, timeout=timeout)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise BrowserError(f"JavaScript error: {d.get('exception', {}).get('description', d.get('text'))}")
        return r.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 30, interval: float = 0.05) -> Any:
        """Polls ``expression`` until it is truthy; returns its value."""
        end = time.monotonic() + timeout
        last_err = None
        while time.monotonic() < end:
            try:
                value = self.eval(expression)
                if value:
                    return value
            except BrowserError as err:
                last_err = err
            time.sleep(interval)
        raise BrowserError(f"timed out after {timeout} s waiting for {expression!r} (last error: {last_err}); "
                           f"console: {self.console[-10:]}")

    def screenshot(self, path: str) -> str:
        """Saves a PNG screenshot of the page."""
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self) -> None:
        """Ends the browser and removes its profile."""
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for f in (self._out, self._in):
            try:
                f.close()
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def entry_point_installed() -> bool:
    """Whether the installed tfcam registers its plugin through ``tensorboard_plugins``."""
    return any(ep.name == "tfcam" for ep in importlib.metadata.entry_points(group="tensorboard_plugins"))


@contextlib.contextmanager
def tensorboard_server(logdir: str, log_path: str | None = None) -> Iterator[str]:
    """TensorBoard with the tfcam plugin on loopback, until the block ends; yields its URL.

    The plain ``tensorboard`` command when the entry point is installed (what users run),
    else ``python -m tfcam.tensorboard.serve`` (the same server with the plugin added
    explicitly). Waits until it answers (60 s at most); its output goes to ``log_path``.
    """
    port = free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if entry_point_installed():
        exe = os.path.join(os.path.dirname(sys.executable), "tensorboard")
        cmd = [exe, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port), "--load_fast=false"]
    else:
        cmd = [sys.executable, "-m", "tfcam.tensorboard.serve", "--logdir", str(logdir), "--port", str(port)]
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                tail = open(log_path).read()[-3000:] if log_path else f"exit code {proc.returncode}"
                raise RuntimeError(f"tensorboard exited: {tail}")
            try:
                urllib.request.urlopen(url + "/data/plugins_listing", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        else:
            raise RuntimeError("tensorboard did not answer within 60 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if log_path:
            log.close()
