"""Generated images whose evidence is known, for checks of the activation maps (the localisation test and
``scripts/cam_methods.py`` read the same ones, so a score in one means the same in the other)."""
from __future__ import annotations

import numpy as np
import torch


def blob_images(n: int, seed: int, size: int = 96) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Skin-toned noise; every other image holds one dark blob at a random place, and its label says so.
    Returns (images normalised with mean = std = 0.5, labels, the blob's pixels per image as boolean masks; an
    image without a blob keeps the mask of where it would have been)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    xs, ys, masks = [], [], []
    for i in range(n):
        img = np.empty((size, size, 3), np.float32)
        img[...] = np.array([214, 170, 150]) + rng.normal(0, 6, 3)
        img += rng.normal(0, 14, img.shape)
        cy, cx, r = rng.uniform(14, size - 14), rng.uniform(14, size - 14), rng.uniform(7, 11)
        mask = np.hypot(yy - cy, xx - cx) < r
        if i % 2 == 0:
            img[mask] *= 0.35
        xs.append(np.clip(img, 0, 255) / 255.0)
        ys.append(int(i % 2 == 0))
        masks.append(mask)
    x = (torch.tensor(np.stack(xs), dtype=torch.float32).permute(0, 3, 1, 2) - 0.5) / 0.5
    return x, torch.tensor(ys), np.stack(masks)
