"""FID and KID between two image sets, on FID-Inception features (weights supplied by the user).

- FID (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to the two feature sets,
  ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``.
- KID (Bińkowski et al. 2018): the unbiased squared MMD with the cubic polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets (mean and standard deviation reported).

Images come from a stage folder's shards (``image*.jpg``, else ``shade.png``) or from a plain folder
of ``.png``/``.jpg`` files (searched recursively).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from hoigen.errors import HoigenError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (covariances symmetric PSD).

    ``Tr((S1 S2)^(1/2))`` is computed as the sum of the square roots of the eigenvalues of the
    symmetric PSD matrix ``S1^(1/2) S2 S1^(1/2)``, which has the same spectrum as ``S1 S2``.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root1 @ s2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * cross, 0.0))


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of (N, D) features; N >= 2."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise HoigenError(f"FID needs at least 2 images per set, got {f.shape[0] if f.ndim == 2 else 0}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two (N, D) feature sets."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def kid_from_features(
    a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (mean, std over ``subsets`` random subsets of ``min(subset_size, len(a), len(b))`` each)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise HoigenError(f"KID needs at least 2 images per set, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    values = [
        _mmd2_unbiased(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def iter_folder_images(folder: Path) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, RGB uint8 image)`` for a stage folder's shard images, else every image file under ``folder``."""
    from hoigen.data.shards import list_shards

    folder = Path(folder)
    if not folder.is_dir():
        raise HoigenError(f"{folder}: not a folder; pass a folder of images or a render/synthesize output folder")
    if list_shards(folder):
        from hoigen.imgeval.images import iter_images

        for key, _shard, member, image, _ann, _seg in iter_images(folder):
            yield f"{key}.{member}", image
        return
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise HoigenError(f"{path}: not a readable image; remove it or convert it to PNG/JPEG")
        yield str(path.relative_to(folder)), cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@torch.no_grad()
def folder_features(
    folder: Path, model: torch.nn.Module, batch: int = 32, device: str | torch.device = "cpu"
) -> np.ndarray:
    """(N, 2048) Inception features of every image of ``folder`` (each resized to 299 by the model)."""
    feats: list[np.ndarray] = []
    pending: list[torch.Tensor] = []

    def flush() -> None:
        if pending:
            feats.append(model(torch.stack(pending).to(device)).double().cpu().numpy())
            pending.clear()

    for _name, image in iter_folder_images(folder):
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        if pending and tensor.shape != pending[0].shape:  # images of different sizes cannot share a batch
            flush()
        pending.append(tensor)
        if len(pending) >= batch:
            flush()
    flush()
    if not feats:
        raise HoigenError(f"{folder}: no images found (.png/.jpg files, or shards with image*.jpg or shade.png)")
    return np.concatenate(feats)


def fid_kid(
    images: Path, reference: Path, inception: Path | None, device: str = "cpu", batch: int = 32,
    kid_subsets: int = 100, kid_subset_size: int = 1000,
) -> dict[str, Any]:
    """FID and KID of ``images`` against ``reference`` with the Inception weights in ``inception``."""
    from hoigen.imgeval.inception import load_inception

    model = load_inception(inception, device)
    a = folder_features(images, model, batch, device)
    b = folder_features(reference, model, batch, device)
    kid, kid_std = kid_from_features(a, b, kid_subsets, kid_subset_size)
    return {
        "images": int(len(a)),
        "reference_images": int(len(b)),
        "fid": fid_from_features(a, b),
        "kid": kid,
        "kid_std": kid_std,
        "inception": str(inception),
    }
