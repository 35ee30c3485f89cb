"""Independent NumPy transcriptions of the equations in shared/methods.md.

Written from the papers' equations, not from tfcam's code; used by the tests only.
A: (|S|, C) activations of one example (spatial axes flattened), G: same, gradients.
"""

import numpy as np


def relu(x):
    return np.maximum(x, 0.0)


def weighted(A, w):
    return relu(A @ w)


def gradcam(A, G):
    return weighted(A, G.mean(axis=0))


def gradcampp(A, G):
    S = A.sum(axis=0)  # spatial sum per channel
    num = G**2
    den = 2 * G**2 + S[None, :] * G**3
    alpha = np.zeros_like(G)
    nz = den != 0
    alpha[nz] = num[nz] / den[nz]
    w = (alpha * relu(G)).sum(axis=0)
    return weighted(A, w)


def xgradcam(A, G):
    S = A.sum(axis=0)
    w = np.zeros(A.shape[1])
    for k in range(A.shape[1]):
        if S[k] != 0:
            w[k] = (A[:, k] / S[k] * G[:, k]).sum()
    return weighted(A, w)


def hirescam(A, G):
    return relu((G * A).sum(axis=1))


def layercam(A, G):
    return relu((relu(G) * A).sum(axis=1))


def eigen(M):
    X = M - M.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(X, full_matrices=False)
    p = X @ vt[0]
    total = M.sum(axis=1)
    if np.corrcoef(p, total)[0, 1] < 0:
        p = -p
    return relu(p)


def eigencam(A, G):
    return eigen(A)


def eigengradcam(A, G):
    return eigen(A * G)


def normalize(m):
    lo, hi = m.min(), m.max()
    return np.zeros_like(m) if hi == lo else (m - lo) / (hi - lo)


REFERENCES = {
    "gradcam": gradcam,
    "gradcam++": gradcampp,
    "xgradcam": xgradcam,
    "hirescam": hirescam,
    "layercam": layercam,
    "eigencam": eigencam,
    "eigengradcam": eigengradcam,
}


def gradcam_elementwise(A, G):
    return relu(relu(G * A).sum(axis=1))


def segeigencam(A, G):
    M = np.abs(G) * A
    X = M - M.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(X, full_matrices=False)
    p = X @ vt[0]
    if abs(p.max()) < abs(p.min()):
        p = -p
    return relu(p)


def fem(A, G, k=2.0):
    t = A.mean(axis=0) + k * A.std(axis=0)
    w = (A > t[None, :]).mean(axis=0)
    return weighted(A, w)


def kpcacam(A, G, gamma=None, coef0=1.0):
    X = A - A.mean(axis=0, keepdims=True)
    gamma = 1.0 / A.shape[1] if gamma is None else gamma
    K = np.tanh(gamma * X @ X.T + coef0)
    P = K.shape[0]
    one = np.full((P, P), 1.0 / P)
    Kc = K - one @ K - K @ one + one @ K @ one
    lam, vec = np.linalg.eigh(Kc)
    p = vec[:, -1] * np.sqrt(max(lam[-1], 0.0))
    if np.corrcoef(p, A.sum(axis=1))[0, 1] < 0:
        p = -p
    return relu(p)


REFERENCES.update({"gradcam_elementwise": gradcam_elementwise, "segeigencam": segeigencam, "fem": fem,
                   "kpcacam": kpcacam})


def applicable(explainer):
    """Names of the registered methods that do not refuse ``explainer``'s model (e.g. the
    attention methods refuse a CNN), for tests that run "every method" on one model."""
    import tfcam
    from tfcam.methods import get_method

    names = []
    for name in tfcam.METHODS:
        method = get_method(name)
        if method.refuses is None or not method.refuses(explainer.view):
            names.append(name)
    return names
