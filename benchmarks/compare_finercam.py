"""tfcam's Finer-CAM next to pytorch-grad-cam's ``FinerCAM`` on one tiny network (issue 16).

Run with tfcam's Python::

    .venv/bin/python benchmarks/compare_finercam.py

Two processes exchange ``.npz`` files: this script (tfcam's Python) builds a tiny Keras
CNN with seeded weights, ``Input(16,16,3) -> Conv2D(6,3,relu,'c1') -> Conv2D(5,3,relu,'c2')
-> GAP -> Dense(6)`` (logits, no softmax; 6 classes so Finer's 3 comparison classes are a
real choice), saves the weights, 4 images and their target classes, and runs itself again
as ``/tmp/torchenv/bin/python compare_finercam.py --torch IN.npz OUT.npz``. That side builds
the same network in PyTorch (NCHW, kernels ``(kh,kw,in,out) -> (out,in,kh,kw)``) and runs
``pytorch_grad_cam.FinerCAM(model, target_layers=[c2])`` with its defaults (base method
GradCAM, ``alpha=1``, ``comparison_categories=[1,2,3]`` of the classes sorted by
``|y_j - y_target|``), one image at a time with ``target_idx`` = that image's class (its only
way to pick a target per image when it builds the targets itself), plus one batched call
with no target (its argmax default); then plain ``GradCAM`` with ``ClassifierOutputTarget``
as a control of the pipeline. Hooks on the base CAM also return the layer-resolution
channel weights and raw (pre-ReLU) maps.

The torch side needs (none of it is a dependency of tfcam)::

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 numpy opencv-python-headless
    /tmp/torchenv/bin/pip install --no-deps grad-cam ttach tqdm
    /tmp/torchenv/bin/pip install scipy matplotlib scikit-learn pillow

PyPI's torchvision does not import beside that torch, and pytorch-grad-cam imports it in
modules FinerCAM does not use (``utils/image.py``: ``Compose, Normalize, ToTensor``;
``utils/model_targets.py``: ``torchvision.ops`` for detection targets; ``sess.py``:
``transforms.functional.resize``). So the torch run gets a stub ``torchvision`` package,
written to a temporary folder and put first on its ``PYTHONPATH``, defining only those
names, none of which is called here. Without ``/tmp/torchenv/bin/python`` (or
``$TORCH_PYTHON``) the script prints ``skipped: no torch venv`` and exits 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np

TORCH_PYTHON = os.environ.get("TORCH_PYTHON", "/tmp/torchenv/bin/python")
SEED = 16
N_CLASSES = 6

TORCHVISION_STUB = {
    "__init__.py": "from . import transforms, ops  # noqa: F401\n",
    "transforms/__init__.py": (
        "# stub: pytorch-grad-cam imports these names; FinerCAM/GradCAM never call them\n"
        "class _Unused:\n"
        "    def __init__(self, *a, **k):\n"
        "        raise RuntimeError('torchvision stub')\n"
        "Compose = Normalize = ToTensor = _Unused\n"
        "from . import functional  # noqa: F401,E402\n"
    ),
    "transforms/functional.py": "def resize(*a, **k):\n    raise RuntimeError('torchvision stub')\n",
    "ops.py": "def box_iou(*a, **k):\n    raise RuntimeError('torchvision stub')\n",
}


# --------------------------------------------------------------------------- torch side


def torch_side(in_path: str, out_path: str) -> None:
    import torch
    from pytorch_grad_cam import FinerCAM, GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    d = np.load(in_path)
    torch.manual_seed(0)

    class ConvReLU(torch.nn.Module):
        """Keras' ``Conv2D(activation="relu")`` as one module, so a hook on it sees the
        post-ReLU output that tfcam's layer "c2" gives (a bare ``nn.Conv2d`` target would be
        pre-ReLU: different activations and gradients, not a method difference)."""

        def __init__(self, cin, cout):
            super().__init__()
            self.conv = torch.nn.Conv2d(cin, cout, 3)  # padding 0 == Keras "valid"

        def forward(self, x):
            return torch.relu(self.conv(x))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = ConvReLU(3, 6)
            self.c2 = ConvReLU(6, 5)
            self.head = torch.nn.Linear(5, N_CLASSES)

        def forward(self, x):
            return self.head(self.c2(self.c1(x)).mean(dim=(2, 3)))

    net = Net().eval()
    with torch.no_grad():
        for name in ("c1", "c2"):
            conv = getattr(net, name).conv
            conv.weight.copy_(torch.from_numpy(d[f"{name}_k"].transpose(3, 2, 0, 1).copy()))
            conv.bias.copy_(torch.from_numpy(d[f"{name}_b"]))
        net.head.weight.copy_(torch.from_numpy(d["head_k"].T.copy()))
        net.head.bias.copy_(torch.from_numpy(d["head_b"]))
    x = torch.from_numpy(d["images"].transpose(0, 3, 1, 2).copy())  # NHWC -> NCHW
    classes = [int(c) for c in d["classes"]]

    def hooked(cam):
        """Records the base CAM's channel weights and raw (pre-ReLU) layer maps."""
        rec = {"w": [], "raw": []}
        base = cam.base_cam if hasattr(cam, "base_cam") else cam
        get_w, get_img = base.get_cam_weights, base.get_cam_image

        def w_hook(*a, **k):
            w = get_w(*a, **k)
            rec["w"].append(np.array(w))
            return w

        def img_hook(*a, **k):
            m = get_img(*a, **k)
            rec["raw"].append(np.array(m))
            return m

        base.get_cam_weights, base.get_cam_image = w_hook, img_hook
        return rec

    out = {}
    with torch.no_grad():
        out["logits"] = net(x).numpy()

    finer = FinerCAM(net, target_layers=[net.c2])  # defaults: GradCAM base
    rec = hooked(finer)
    maps = [finer(x[i:i + 1], target_idx=c)[0] for i, c in enumerate(classes)]  # alpha=1, [1,2,3]
    out["finer_map"] = np.stack(maps)
    out["finer_w"] = np.concatenate(rec["w"])
    out["finer_raw"] = np.concatenate(rec["raw"])

    finer2 = FinerCAM(net, target_layers=[net.c2])
    rec = hooked(finer2)
    out["finer_default_map"] = finer2(x)  # no target: argmax of each row
    out["finer_default_raw"] = np.concatenate(rec["raw"])

    grad = GradCAM(net, target_layers=[net.c2])
    rec = hooked(grad)
    out["grad_map"] = grad(x, targets=[ClassifierOutputTarget(c) for c in classes])
    out["grad_w"] = np.concatenate(rec["w"])
    out["grad_raw"] = np.concatenate(rec["raw"])
    np.savez(out_path, **out)


# --------------------------------------------------------------------------- keras side


def build_model():
    import keras

    keras.utils.set_random_seed(SEED)
    inp = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(6, 3, activation="relu", name="c1")(inp)
    h = keras.layers.Conv2D(5, 3, activation="relu", name="c2")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(N_CLASSES, name="head")(h)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(SEED)
    for name in ("c1", "c2", "head"):  # nonzero biases so the ReLUs and the head matter
        k, b = model.get_layer(name).get_weights()
        model.get_layer(name).set_weights([k, rng.normal(0, 0.1, b.shape).astype(np.float32)])
    return model


def keras_finer_weights(model, images, classes):
    """Grad-CAM channel weights (spatial mean of d score / d c2) of tfcam's ``finer_score``
    (k=3, alpha=1) and of the plain target logit, by a direct GradientTape."""
    import tensorflow as tf

    from tfcam.methods.zoo import finer_score

    c1, c2, head = (model.get_layer(n) for n in ("c1", "c2", "head"))
    gap = model.layers[3]
    out = []
    for kind in ("finer", "logit"):
        with tf.GradientTape() as tape:
            a = c2(c1(tf.constant(images)))
            tape.watch(a)
            logits = head(gap(a))
            if kind == "finer":
                s = finer_score(logits, tf.constant(classes), 3, 1.0)
            else:
                s = tf.gather(logits, classes, axis=1, batch_dims=1)
            s = tf.reduce_sum(s)
        out.append(tf.reduce_mean(tape.gradient(s, a), axis=(1, 2)).numpy())
    return out


def main() -> int:
    if not os.path.exists(TORCH_PYTHON):
        print(f"skipped: no torch venv ({TORCH_PYTHON})")
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tfcam

    model = build_model()
    rng = np.random.default_rng(SEED + 1)
    images = rng.uniform(size=(4, 16, 16, 3)).astype(np.float32)
    logits = model.predict(images, verbose=0)
    argmax = logits.argmax(-1)
    # two argmax targets, two others (not the argmax) so the comparison set differs
    classes = np.array([argmax[0], (argmax[1] + 2) % N_CLASSES, argmax[2], (argmax[3] + 3) % N_CLASSES],
                       dtype=np.int32)

    with tempfile.TemporaryDirectory() as tmp:
        weights = {f"{n}_{s}": w for n in ("c1", "c2", "head")
                   for s, w in zip("kb", model.get_layer(n).get_weights())}
        in_path, out_path = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(in_path, images=images, classes=classes, **weights)
        stub = os.path.join(tmp, "stub")
        for rel, text in TORCHVISION_STUB.items():
            path = os.path.join(stub, "torchvision", rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        env = dict(os.environ, PYTHONPATH=stub)  # stub torchvision, see the docstring
        subprocess.run([TORCH_PYTHON, os.path.abspath(__file__), "--torch", in_path, out_path],
                       check=True, env=env)
        t = dict(np.load(out_path))

    finer = tfcam.Explainer(model, "c2", method="finercam")  # finer_k=3, finer_alpha=1, gradcam base
    grad = tfcam.Explainer(model, "c2", method="gradcam")
    k_finer = np.asarray(finer(images, classes))
    k_finer_raw = np.asarray(finer(images, classes, resize=False, normalize=False))
    k_finer_def = np.asarray(finer(images, argmax))
    k_finer_def_raw = np.asarray(finer(images, argmax, resize=False, normalize=False))
    k_grad = np.asarray(grad(images, classes))
    k_grad_raw = np.asarray(grad(images, classes, resize=False, normalize=False))
    kw_finer, kw_grad = keras_finer_weights(model, images, classes)

    def relu(a):
        return np.maximum(a, 0)

    def per_image(a, b):
        return np.abs(a.reshape(len(a), -1) - b.reshape(len(b), -1)).max(axis=1)

    def fmt(v):
        return " ".join(f"{x:.2e}" for x in v)

    print(f"logits max |keras - torch|: {np.abs(logits - t['logits']).max():.2e}")
    print(f"targets: {classes.tolist()} (argmax {argmax.tolist()})")
    for i, c in enumerate(classes):
        order = np.argsort(np.abs(logits[i] - logits[i, c]))
        print(f"  image {i}: target {c}, comparison classes (pytorch order) {order[1:4].tolist()}, "
              f"raw map max {k_finer_raw[i].max():.3e}")
    rows = [
        ("Finer-CAM maps (16x16, normalized)", k_finer, t["finer_map"]),
        ("Finer-CAM raw maps (12x12, ReLU)", k_finer_raw, relu(t["finer_raw"])),
        ("Finer-CAM channel weights", kw_finer, t["finer_w"]),
        ("Finer-CAM default target (argmax) maps", k_finer_def, t["finer_default_map"]),
        ("Finer-CAM default target raw maps", k_finer_def_raw, relu(t["finer_default_raw"])),
        ("Grad-CAM control maps (16x16, normalized)", k_grad, t["grad_map"]),
        ("Grad-CAM control raw maps (12x12, ReLU)", k_grad_raw, relu(t["grad_raw"])),
        ("Grad-CAM control channel weights", kw_grad, t["grad_w"]),
    ]
    # sensitivity: how far apart the compared things would be if a convention were off
    k2 = np.asarray(tfcam.Explainer(model, "c2", method="finercam", finer_k=2)(images, classes))
    rows += [
        ("(sensitivity) tfcam Finer-CAM vs tfcam Grad-CAM maps", k_finer, k_grad),
        ("(sensitivity) tfcam Finer-CAM finer_k=2 vs pytorch k=3 maps", k2, t["finer_map"]),
    ]
    print("\n| comparison | max |diff| per image | max | max / max|ref| |")
    print("|---|---|---|---|")
    for name, a, b in rows:
        d = per_image(a, b)
        rel = (d / np.abs(b.reshape(len(b), -1)).max(axis=1)).max()
        print(f"| {name} | {fmt(d)} | {d.max():.2e} | {rel:.2e} |")
    # resize convention alone: tfcam's pipeline applied to torch's raw maps
    import tensorflow as tf
    for name, raw, ref in (("Finer", t["finer_raw"], t["finer_map"]), ("Grad", t["grad_raw"], t["grad_map"])):
        r = tf.image.resize(relu(raw)[..., None], (16, 16), method="bilinear").numpy()[..., 0]
        lo, hi = r.min(axis=(1, 2), keepdims=True), r.max(axis=(1, 2), keepdims=True)
        r = (r - lo) / np.where(hi > lo, hi - lo, 1)
        print(f"{name}: torch raw map through tf bilinear resize + min-max vs pytorch-grad-cam map: "
              f"{per_image(r, ref).max():.2e}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--torch":
        torch_side(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
