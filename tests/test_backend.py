import os
import subprocess
import sys


def test_non_tensorflow_backend_gives_a_clear_error():
    env = dict(os.environ, KERAS_BACKEND="numpy")
    proc = subprocess.run([sys.executable, "-c", "import tfcam"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "BackendError" in proc.stderr and "KERAS_BACKEND=tensorflow" in proc.stderr
    assert "Received: keras backend='numpy'" in proc.stderr
