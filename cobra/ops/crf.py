"""denseCRF refinement (SPEC "Masks"): hard label maps for IR labels, soft maps for final masks.

Both functions take an (H, W, 3) uint8 RGB image and run pydensecrf's mean-field inference with
one Gaussian (smoothness) and one bilateral (appearance) pairwise term, as IRN's
`crf_inference_label` and the authors' mask CRF do."""

import numpy as np


def _image(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) → C-contiguous uint8 copy (the C++ bilateral term reads raw bytes)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def _infer(image: np.ndarray, unary: np.ndarray, n_labels: int, iters: int, gauss_sxy: float,
           gauss_compat: float, bi_sxy: float, bi_srgb: float, bi_compat: float) -> np.ndarray:
    """Run mean field on a (n_labels, H·W) float32 unary → (n_labels, H, W) marginals."""
    import pydensecrf.densecrf as dcrf  # here: importing the stages must not need pydensecrf

    h, w = image.shape[:2]
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    d.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    d.addPairwiseBilateral(sxy=bi_sxy, srgb=bi_srgb, rgbim=image, compat=bi_compat)
    return np.array(d.inference(iters), dtype=np.float32).reshape(n_labels, h, w)


def crf_label(image: np.ndarray, labels: np.ndarray, n_labels: int, *, gt_prob: float = 0.7,
              iters: int = 10, gauss_sxy: float = 3.0, gauss_compat: float = 3.0,
              bi_sxy: float = 50.0, bi_srgb: float = 5.0, bi_compat: float = 10.0) -> np.ndarray:
    """(H, W, 3) uint8 image + (H, W) labels in 0..n_labels-1 → (H, W) int64 refined labels.

    Every label (0 included) is a real class (`zero_unsure=False`), each pixel trusting its
    label with probability `gt_prob` (must lie in (0, 1), as pydensecrf asserts)."""
    labels = np.asarray(labels)
    if n_labels <= 1:
        # One label: nothing to refine, and unary_from_labels would divide by n_labels - 1 = 0.
        return np.zeros(labels.shape, dtype=np.int64)
    if labels.min() < 0 or labels.max() >= n_labels:
        raise ValueError(f"labels must lie in 0..{n_labels - 1}, got {labels.min()}..{labels.max()}")
    img = _image(image)
    if img.shape[:2] != labels.shape:
        raise ValueError(f"image {img.shape[:2]} and labels {labels.shape} differ in size")
    from pydensecrf.utils import unary_from_labels

    unary = unary_from_labels(labels.astype(np.int64), n_labels, gt_prob, zero_unsure=False)
    q = _infer(img, unary, n_labels, iters, gauss_sxy, gauss_compat, bi_sxy, bi_srgb, bi_compat)
    return q.argmax(axis=0).astype(np.int64)


def crf_probs(image: np.ndarray, probs: np.ndarray, *, iters: int = 10, gauss_sxy: float = 2.0,
              gauss_compat: float = 3.0, bi_sxy: float = 45.0, bi_srgb: float = 5.0,
              bi_compat: float = 4.0) -> np.ndarray:
    """(H, W, 3) uint8 image + (K, H, W) probabilities → (K, H, W) float32 CRF marginals.

    Defaults are the authors' mask CRF (SPEC: sxy 2 compat 3; bilateral sxy 45 srgb 5 compat 4).
    Probabilities are clipped to [1e-5, 1] so that −log stays finite."""
    probs = np.asarray(probs, dtype=np.float32)
    k = probs.shape[0]
    img = _image(image)
    if img.shape[:2] != probs.shape[1:]:
        raise ValueError(f"image {img.shape[:2]} and probs {probs.shape[1:]} differ in size")
    if k <= 1:
        return np.ones_like(probs)
    from pydensecrf.utils import unary_from_softmax

    unary = unary_from_softmax(probs, clip=1e-5)
    return _infer(img, unary, k, iters, gauss_sxy, gauss_compat, bi_sxy, bi_srgb, bi_compat)
