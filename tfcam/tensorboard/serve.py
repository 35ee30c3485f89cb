"""Starts TensorBoard with the tfcam plugin (``tfcam view``; ``python -m tfcam.tensorboard.serve``).

The plugin is added explicitly, so this works even where the ``tensorboard_plugins`` entry
point is not installed (e.g. a source checkout on ``PYTHONPATH``); where it is, it is not
added twice.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

__all__ = ["tensorboard_plugins", "run_tensorboard"]


def tensorboard_plugins() -> list:
    """TensorBoard's default and dynamic plugins, with tfcam's added once.

    Returns:
        The plugin list for ``tensorboard.program.TensorBoard``.
    """
    from tensorboard import default

    from tfcam.tensorboard.plugin import TfcamPlugin

    plugins = list(default.get_plugins())  # static + entry-point (dynamic) plugins
    if not any(getattr(p, "plugin_name", None) == TfcamPlugin.plugin_name for p in plugins):
        plugins.append(TfcamPlugin)
    return plugins


def run_tensorboard(path: str | os.PathLike, host: str = "127.0.0.1", port: int = 6006,
                    extra: Sequence[str] = ()) -> None:
    """Runs TensorBoard on ``path`` with the tfcam tab until interrupted.

    Args:
        path: a log directory or an ``explain_dataset`` output directory.
        host: the address to listen on (loopback by default).
        port: the port (0 picks a free one).
        extra: more TensorBoard flags.

    Example:

    >>> run_tensorboard("runs/val_cams", port=6007)   # then open http://127.0.0.1:6007/#tfcam
    """
    from tensorboard import program

    tb = program.TensorBoard(plugins=tensorboard_plugins())
    tb.configure(argv=[None, "--logdir", os.fspath(path), "--host", host, "--port", str(int(port)),
                       "--load_fast=false", *extra])
    tb.main()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tfcam.tensorboard.serve --logdir PATH [--host H] [--port P]``."""
    p = argparse.ArgumentParser(prog="python -m tfcam.tensorboard.serve")
    p.add_argument("--logdir", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6006)
    a = p.parse_args(argv)
    run_tensorboard(a.logdir, a.host, a.port)


if __name__ == "__main__":
    main()
