#!/usr/bin/env python3
"""Which class-activation map reads best for the small students: Grad-CAM, HiResCAM and LayerCAM, on their 6x6
last layer, on the 12x12 layer before it, and on both combined.

Two measurements, neither used to train anything:

- **Where the evidence is known.** dsnet and lite0_tiny trained (3 seeds each) to tell whether a dark blob is in
  generated 96 px skin-toned noise; on 60 held-out blob images: how often the map's peak falls inside the blob
  (pointing game) and the share of the map's mass inside it (energy; chance = the blob's area share).
- **Real photos, against a proxy.** The shipped students on their locked test split: the same two scores against
  a lesion mask from Otsu's threshold on the blurred photo (the darker region, its largest component away from
  the border; photos whose mask covers under 3% or over 85% are skipped). A proxy: dermoscopic lesions are
  darker than the skin around them, but the mask is not a clinician's outline.

    .venv/bin/python scripts/cam_methods.py --data ../shared/data/isic9 --out docs/results/cam_methods.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from skinapp.explain import gradcam  # noqa: E402
from skinapp.synthetic import blob_images  # noqa: E402

#: (method, layers) per network: its 6x6 last layer (the cards' layer until now), the 12x12 one, both
CANDIDATES = {
    "dsnet": [("gradcam", "block3"), ("gradcam", "block2"), ("hirescam", "block2"), ("layercam", "block2"),
              ("layercam", "block2,block3"), ("gradcam", "block2,block3")],
    "lite0_tiny": [("gradcam", "blocks.3"), ("gradcam", "blocks.2"), ("hirescam", "blocks.2"),
                   ("layercam", "blocks.2"), ("layercam", "blocks.2,blocks.3"), ("gradcam", "blocks.2,blocks.3")],
    # at 112 px (mobilenetv3-kd): blocks.5 is 4x4, blocks.1 14x14 (12x12 at the blobs' 96 px)
    "mobilenetv3_small_100": [("gradcam", "blocks.5"), ("gradcam", "blocks.1"), ("hirescam", "blocks.1"),
                              ("layercam", "blocks.1"), ("layercam", "blocks.1,blocks.5"),
                              ("gradcam", "blocks.1,blocks.5")],
}
SHIPPED = {"dsnet": "dsnet-kd", "lite0_tiny": "lite0-tiny-kd", "mobilenetv3_small_100": "mobilenetv3-kd"}


def scores(heat: np.ndarray, mask: np.ndarray) -> tuple[bool, float, float]:
    """(peak inside the mask, share of the map's mass inside it, the mask's share of the image)."""
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    return bool(mask[peak]), float((heat * mask).sum() / max(heat.sum(), 1e-9)), float(mask.mean())


def train_blob_model(arch: str, seed: int, epochs: int = 6):
    from skinapp.models import create_model

    torch.manual_seed(seed)
    x, y, _ = blob_images(320, seed=100 + seed)
    model = create_model(arch, num_classes=2, pretrained="none")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def blob_study(seeds: list[int], networks: list[str]) -> list[dict]:
    hx, hy, masks = blob_images(60, seed=2)
    rows = []
    for arch in networks:
        candidates = CANDIDATES[arch]
        for seed in seeds:
            model = train_blob_model(arch, seed)
            with torch.no_grad():
                acc = float((model(hx).argmax(1) == hy).float().mean())
            for method, layers in candidates:
                got = [scores(gradcam(model, hx[i:i + 1], layers, [1], method), masks[i])
                       for i in np.flatnonzero(hy.numpy() == 1)]
                rows.append({"study": "blob", "network": arch, "seed": seed, "accuracy": acc, "method": method,
                             "layers": layers, **_summary(got)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def lesion_mask(img) -> np.ndarray | None:
    """The darker region by Otsu's threshold on the blurred grey photo, its largest component off the border."""
    from PIL import ImageFilter
    from scipy import ndimage

    grey = np.asarray(img.convert("L").filter(ImageFilter.GaussianBlur(3)), dtype=np.float64)
    hist, edges = np.histogram(grey, bins=256, range=(0, 256))
    w = np.cumsum(hist) / hist.sum()
    mu = np.cumsum(hist * edges[:-1]) / hist.sum()
    between = (mu[-1] * w - mu) ** 2 / np.maximum(w * (1 - w), 1e-12)
    dark = grey < edges[int(np.argmax(between))]
    labels, n = ndimage.label(dark)
    if n == 0:
        return None
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))) - {0}
    sizes = ndimage.sum(dark, labels, range(1, n + 1))
    inner = [(s, k + 1) for k, s in enumerate(sizes) if k + 1 not in border]
    _, best = max(inner or [(s, k + 1) for k, s in enumerate(sizes)])
    mask = labels == best
    return mask if 0.03 <= mask.mean() <= 0.85 else None


def real_study(data: str, limit: int, networks: list[str]) -> list[dict]:
    from PIL import Image

    from skinapp.data import decode_dataset, load_image, scan_dataset
    from skinapp.inference import Predictor, split_logits

    rows = []
    for arch in networks:
        name = SHIPPED[arch]
        pred = Predictor.from_registry(name)
        ds = scan_dataset(data, pred.card.task)
        decoded = decode_dataset(ds, pred.card.input_size)
        test = split_logits(pred, ds, "test", decoded)
        if test.selection.split != "test":
            raise SystemExit(f"{data} is not {name}'s own data: {test.selection.note}")
        photos = []
        for path in [decoded.paths[i] for i in test.selection.index[:limit]]:
            img = load_image(path)
            mask = lesion_mask(img)
            if mask is not None:
                photos.append((img, mask))
        for method, layers in CANDIDATES[arch]:
            got, t0 = [], time.perf_counter()
            for img, mask in photos:
                x = pred.preprocess(img)
                p = float(pred.probabilities(pred.logits(x))[0])
                target = pred.card.task_labels[1] if p >= 0.5 else pred.card.task_labels[0]
                idx = [i for i, g in enumerate(pred.card.groups) if g == target]
                heat = gradcam(pred.model, x, layers, idx, method)
                heat = np.asarray(Image.fromarray(heat).resize(img.size, Image.BILINEAR))
                got.append(scores(heat, mask))
            rows.append({"study": "lesion-proxy", "network": arch, "model": name, "method": method,
                         "layers": layers, "ms_per_map": round(1000 * (time.perf_counter() - t0) / len(photos), 1),
                         **_summary(got)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _summary(got: list[tuple[bool, float, float]]) -> dict:
    hit, energy, area = (np.array(v, dtype=float) for v in zip(*got))
    return {"n": len(got), "pointing": round(float(hit.mean()), 4), "energy": round(float(energy.mean()), 4),
            "area": round(float(area.mean()), 4), "energy_lift": round(float((energy / area).mean()), 3)}


def table(rows: list[dict]) -> list[str]:
    """Markdown: per network and candidate, the blob scores (mean and worst seed) beside the lesion-proxy ones."""
    out = ["| network | method | layers | blobs: peak inside (mean, worst seed) | blobs: energy lift | "
           "lesions: peak inside | lesions: energy lift |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for arch, candidates in CANDIDATES.items():
        for method, layers in candidates:
            mine = [r for r in rows if (r["network"], r["method"], r["layers"]) == (arch, method, layers)]
            blob = [r for r in mine if r["study"] == "blob"]
            real = next((r for r in mine if r["study"] == "lesion-proxy"), None)
            if not blob:
                continue
            out.append(f"| {arch} | {method} | {layers} | {np.mean([r['pointing'] for r in blob]):.2f} "
                       f"({min(r['pointing'] for r in blob):.2f}) | {np.mean([r['energy_lift'] for r in blob]):.1f} | "
                       + (f"{real['pointing']:.2f} (n = {real['n']}) | {real['energy_lift']:.2f} |" if real
                          else "— | — |"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a dataset folder the shipped students were trained on (for the proxy study)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--limit", type=int, default=160, help="test photos per student in the proxy study")
    ap.add_argument("--networks", default=",".join(CANDIDATES), help="comma-separated: " + ", ".join(CANDIDATES))
    ap.add_argument("--append", action="store_true", help="add these rows to --out's instead of replacing them")
    ap.add_argument("--table", action="store_true", help="run nothing: print --out's rows as a Markdown table")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "cam_methods.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    if args.table:
        print("\n".join(table(json.loads(out.read_text()))))
        return 0
    networks = args.networks.split(",")
    unknown = sorted(set(networks) - set(CANDIDATES))
    if unknown:
        raise SystemExit(f"unknown network(s) {', '.join(unknown)}; choose from: {', '.join(CANDIDATES)}")
    rows = json.loads(out.read_text()) if args.append and out.exists() else []
    rows += blob_study([int(s) for s in args.seeds.split(",")], networks)
    if args.data:
        rows += real_study(args.data, args.limit, networks)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
