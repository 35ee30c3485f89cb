"""explain_dataset under tf.distribute: MirroredStrategy over two logical CPU devices, and
MultiWorkerMirroredStrategy over two worker processes on loopback.

Logical devices must be configured before TensorFlow initializes its devices, which the
test process has already done, and each worker of a cluster is its own process; so the
bodies run in fresh interpreters (small scripts) that print their measurements as JSON or
write shards, and the assertions are made here.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    r'''
    import json, os, sys, tempfile
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

    import tfcam
    from conftest import small_cnn

    N, METHODS = 11, ["gradcam", "gradcam++", "layercam", "eigencam"]
    rng = np.random.default_rng(3)
    x = rng.normal(size=(N, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 4, N)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {"replicas": strategy.num_replicas_in_sync}

    def maxdiff(res, ref):
        d = max(float(np.max(np.abs(res[m] - ref[m]))) for m in METHODS)
        d = max(d, float(np.max(np.abs(res.scores - ref.scores))),
                float(np.max(np.abs(res.predictions - ref.predictions))))
        return d

    # 1. strategy= argument, a model built outside the scope; odd global batches (5, 5, 1):
    #    the last one leaves replica 1 with a padded share only
    model = small_cnn()
    ex = tfcam.Explainer(model, layer="c2", batch_size=4)
    single = ex.explain(x, y, METHODS, verbose=0)
    traced = []

    def top_logit_of_label(outputs):
        ctx = tf.distribute.get_replica_context()
        traced.append(None if ctx is None else tf.get_static_value(ctx.replica_id_in_sync_group))
        return tf.reduce_max(outputs, axis=-1)

    for batch in (5, 2, 11):
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
        res = ex.explain_dataset(ds, targets="labels", methods=METHODS, strategy=strategy, verbose=0)
        out[f"diff_batch{batch}"] = maxdiff(res, single)
        out[f"order_batch{batch}"] = res.indices.tolist() == list(range(N))
    # a callable target records which replicas traced the step
    res = ex.explain_dataset(tf.data.Dataset.from_tensor_slices(x).batch(4), targets=top_logit_of_label,
                             methods=METHODS, strategy=strategy, verbose=0)
    out["diff_callable"] = maxdiff(res, ex.explain(x, top_logit_of_label, METHODS, verbose=0))
    out["traced_replicas"] = sorted({int(t) for t in traced if t is not None})

    # 2. the current strategy scope, with a model whose variables are mirrored
    with strategy.scope():
        scoped = small_cnn()
        ex2 = tfcam.Explainer(scoped, layer="c2", batch_size=4)
        res = ex2.explain_dataset(tf.data.Dataset.from_tensor_slices(x), methods=METHODS, verbose=0)
    out["mirrored_variables"] = type(scoped.weights[0].value).__name__
    out["diff_scope"] = maxdiff(res, single_top := ex.explain(x, None, METHODS, verbose=0))

    # 3. shards on disk under the strategy, interrupted after 2 shards, resumed
    path = tempfile.mkdtemp()

    def killed():
        for i in range(0, N, 3):
            if i >= 9:
                raise KeyboardInterrupt
            yield x[i:i + 3], y[i:i + 3]

    try:
        ex.explain_dataset(killed(), targets="labels", methods=METHODS, output=path, shard_size=4,
                           strategy=strategy, verbose=0)
    except KeyboardInterrupt:
        pass
    shards = ex.explain_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(6), targets="labels",
                                methods=METHODS, output=path, shard_size=4, strategy=strategy, verbose=0)
    loaded = shards.load()
    out["resume_skipped"] = shards.skipped_examples
    out["resume_computed"] = shards.computed_examples
    out["diff_resumed"] = maxdiff(loaded, single)
    out["order_resumed"] = loaded.indices.tolist() == list(range(N))
    print("RESULT " + json.dumps(out))
    '''
)


@pytest.mark.slow
def test_mirrored_strategy_equals_single_device(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
               TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["replicas"] == 2
    assert out["traced_replicas"] == [0, 1]  # both replicas ran the step
    assert out["mirrored_variables"] == "MirroredVariable"
    for key in ("diff_batch5", "diff_batch2", "diff_batch11", "diff_callable", "diff_scope", "diff_resumed"):
        assert out[key] < 1e-5, (key, out[key])
    assert out["order_batch5"] and out["order_batch2"] and out["order_batch11"] and out["order_resumed"]
    assert out["resume_skipped"] == 8 and out["resume_computed"] == 3


WORKER = textwrap.dedent(
    r'''
    import json, os, sys
    import numpy as np
    import tensorflow as tf

    import tfcam
    from conftest import small_cnn

    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG
    task = strategy.cluster_resolver.task_id
    rng = np.random.default_rng(3)
    x = rng.normal(size=(11, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 4, 11)
    ex = tfcam.Explainer(small_cnn(), layer="c2", batch_size=2)  # seeded: the same weights in every process
    # every worker reads the same, unsharded dataset; global batches 4, 4, 3 (the last one padded)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    shards = ex.explain_dataset(ds, targets="labels", methods=["gradcam", "layercam"],
                                output=os.path.join(sys.argv[1], f"worker{task}"), shard_size=4,
                                strategy=strategy, verbose=0)
    print("RESULT " + json.dumps({"task": task, "replicas": strategy.num_replicas_in_sync,
                                  "examples": len(shards), "computed": shards.computed_examples}))
    '''
)


def _free_ports(n):
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_mirrored_strategy_two_processes(tmp_path, cnn):
    """Two worker processes on loopback, one CPU replica each: the chief's shards equal a single-process run."""
    import numpy as np
    import tensorflow as tf

    import tfcam

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "out"
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for i in range(2):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
                   TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=120))
    finally:
        for p in procs:  # a worker left waiting for its peer must not outlive the test
            if p.poll() is None:
                p.kill()
                p.communicate()
    results = {}
    for p, (stdout, stderr) in zip(procs, logs):
        lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
        assert p.returncode == 0 and lines, stdout[-3000:] + stderr[-3000:]
        r = json.loads(lines[-1][len("RESULT "):])
        results[r["task"]] = r
    assert sorted(results) == [0, 1]
    for r in results.values():
        assert r["replicas"] == 2 and r["examples"] == 11 and r["computed"] == 11

    rng = np.random.default_rng(3)
    x = rng.normal(size=(11, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 4, 11)
    ex = tfcam.Explainer(cnn, layer="c2", batch_size=2)
    single = ex.explain_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), targets="labels",
                                methods=["gradcam", "layercam"], output=str(tmp_path / "single"), shard_size=4,
                                verbose=0)
    chief = tfcam.ExplanationShards(out / "worker0")
    with open(out / "worker0" / "index.json") as f, open(tmp_path / "single" / "index.json") as g:
        assert json.load(f)["fingerprint"] == json.load(g)["fingerprint"]  # same model weights, settings
    assert chief.complete and [e["count"] for e in chief.shards] == [4, 4, 3]
    for name in ("worker0", "worker1"):
        got = tfcam.ExplanationShards(out / name)
        for a, b in zip(got, single, strict=True):
            np.testing.assert_array_equal(a.indices, b.indices)
            np.testing.assert_array_equal(a.labels, b.labels)
            for m in ("gradcam", "layercam"):
                np.testing.assert_allclose(a[m], b[m], atol=1e-5)
            np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(a.predictions, b.predictions, rtol=1e-5, atol=1e-5)
