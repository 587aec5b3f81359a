"""Fit the context stage of the face model (``dpstream/face_model/context.py``) on LFW train faces.

    python tools/fit_context_model.py            # ~1 min (+40 s the first time: the data cache)

Reads the train textures and identity codes of ``tools/train_refiner.py``'s data cache (built
here when missing; ``train`` rows of ``lfw_split.tsv`` only), fits a ridge regression from the
context features (mean colours of angular cells of the ring outside the face mesh and of the
colour-matching band inside the outline) to the identity code, chooses the ridge strength on a
held-out fifth of the train faces, refits on all of them and writes
``dpstream/face_model/assets/context.npz`` and ``manifest_fitted.yaml`` (built-in model
``fitted``: ``manifest.yaml`` plus this stage; rerun after steps 2 and 2b, which rewrite
``manifest.yaml``). Deterministic (closed form, seed 0 for the held-out split). Prints the
held-out R² overall and per block.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dpstream.face_model import FaceModel  # noqa: E402
from dpstream.face_model.alignment import MESH_POINTS  # noqa: E402
from dpstream.face_model.context import ContextModel, context_features  # noqa: E402
from dpstream.face_model.manifest import BUILT_IN_MANIFESTS, DEFAULT_MANIFEST  # noqa: E402

ASSETS = DEFAULT_MANIFEST.parent
RIDGE_STRENGTHS = (1.0, 10.0, 100.0, 1000.0)
SHAPE_MODES, TEXTURE_MODES = slice(0, 24), slice(24, None)
"""The identity code's blocks (``fit_face_model.py --shape-modes 24``), for the printed figures."""


def context_cells(template, sectors: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, cells): the ring outside the mesh in ``sectors`` angular sectors x 2 depths, then
    the colour-matching band as the last cell (empty cells dropped)."""
    size = template.size
    ring = (template.hull_mask > 0) & (template.decoded_weight[..., 0] < 0.5)
    band = np.zeros(size * size, bool)
    band[template.band_pixels] = True
    centre = template.canonical_vertices[:MESH_POINTS].mean(0)
    y, x = np.mgrid[0:size, 0:size]
    sector = (((np.arctan2(y - centre[1], x - centre[0]) + np.pi) / (2 * np.pi) * sectors).astype(int)) % sectors
    radius = np.hypot(x - centre[0], y - centre[1])
    outer = np.zeros_like(ring)
    for s in range(sectors):  # the outer half of the ring in each sector
        inside = ring & (sector == s)
        if inside.any():
            outer |= inside & (radius > np.median(radius[inside]))
    ring_cell = (sector * 2 + outer).reshape(-1)
    ring_pixels = np.flatnonzero(ring.reshape(-1))
    band_pixels = np.flatnonzero(band & ~ring.reshape(-1))
    labels = np.concatenate([ring_cell[ring_pixels], np.full(len(band_pixels), 2 * sectors)])
    _, cells = np.unique(labels, return_inverse=True)
    return np.concatenate([ring_pixels, band_pixels]).astype(np.int32), cells.astype(np.int32)


def ridge(features: np.ndarray, codes: np.ndarray, strength: float) -> tuple[np.ndarray, np.ndarray]:
    intercept = codes.mean(0)
    weights = np.linalg.solve(features.T @ features + strength * np.eye(features.shape[1]), features.T @ (codes - intercept))
    return weights, intercept


def symmetric_power(covariance: np.ndarray, power: float) -> np.ndarray:
    values, vectors = np.linalg.eigh(covariance)
    return (vectors * np.maximum(values, 1e-12) ** power) @ vectors.T


def strongest_directions(predicted: np.ndarray, code_covariance: np.ndarray, rank: int) -> np.ndarray:
    """(D, D) map keeping the ``rank`` directions along which the (centred) predictions vary most,
    measured in whitened code units (identity when ``rank`` is 0 or ≥ D)."""
    if rank <= 0 or rank >= predicted.shape[1]:
        return np.eye(predicted.shape[1])
    whiten, unwhiten = symmetric_power(code_covariance, -0.5), symmetric_power(code_covariance, 0.5)
    _, _, directions = np.linalg.svd((predicted - predicted.mean(0)) @ whiten, full_matrices=False)
    kept = directions[:rank].T
    return whiten @ kept @ kept.T @ unwhiten


def r_squared(codes: np.ndarray, predicted: np.ndarray, columns: slice = slice(None)) -> float:
    residual = codes[:, columns] - predicted[:, columns]
    return float(1 - (residual**2).sum() / ((codes[:, columns] - codes[:, columns].mean(0)) ** 2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sectors", type=int, default=16, help="angular cells of the ring (each split in 2 depths)")
    parser.add_argument("--residual-scale", type=float, default=1.0,
                        help="spread of the drawn face around the one the context predicts (1: as real faces vary)")
    parser.add_argument("--rank", type=int, default=0,
                        help="keep only the prediction's K strongest directions (whitened code space; 0: all)")
    parser.add_argument("--out", type=Path, default=ASSETS, help="model folder (default: the package's assets)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from tools.train_refiner import DATA_PATH, build_data

    model = FaceModel.load("plain")
    if not DATA_PATH.exists():
        build_data(model)
    data = np.load(DATA_PATH)
    codes = data["codes"].astype(np.float64)
    template = model._backend.template
    pixels, cells = context_cells(template, args.sectors)
    features = np.concatenate([context_features(chunk, pixels, cells) for chunk in np.array_split(data["textures"], 20)])
    mean, scale = features.mean(0), features.std(0) + 1e-6
    standardized = (features - mean) / scale

    order = np.random.default_rng(args.seed).permutation(len(codes))
    held_out, fitted = order[: len(codes) // 5], order[len(codes) // 5 :]
    scores, fits = {}, {}
    for strength in RIDGE_STRENGTHS:
        weights, intercept = fits[strength] = ridge(standardized[fitted], codes[fitted], strength)
        scores[strength] = r_squared(codes[held_out], standardized[held_out] @ weights + intercept)
    strength = max(scores, key=scores.get)
    weights, intercept = fits[strength]
    weights = weights @ strongest_directions(standardized[fitted] @ weights, np.cov(codes.T), args.rank)
    predicted = standardized[held_out] @ weights + intercept
    held_out_r2 = r_squared(codes[held_out], predicted)
    print(f"{len(codes)} train faces, {features.shape[1]} context features, ridge {strength:g}, rank {args.rank or 'all'}")
    print(f"held-out R² {held_out_r2:.3f} (all codes), shape modes {r_squared(codes[held_out], predicted, SHAPE_MODES):.3f}, "
          f"texture modes {r_squared(codes[held_out], predicted, TEXTURE_MODES):.3f}")  # fmt: skip

    weights, intercept = ridge(standardized, codes, strength)
    weights = weights @ strongest_directions(standardized @ weights, np.cov(codes.T), args.rank)
    residual = codes - (standardized @ weights + intercept)
    transform = args.residual_scale * symmetric_power(np.cov(residual.T), 0.5) @ symmetric_power(np.cov(codes.T), -0.5)
    context = dict(pixels=pixels, cells=cells, feature_mean=mean, feature_scale=scale, weights=weights,
                   intercept=intercept, residual_transform=transform)  # fmt: skip
    np.savez(args.out / "context.npz", **{k: np.asarray(v, np.float32 if v.dtype.kind == "f" else v.dtype) for k, v in context.items()})
    ContextModel.load(args.out / "context.npz", model.dim, template.size)  # what the package will read

    command = "python tools/fit_context_model.py " + " ".join(sys.argv[1:])
    manifest = yaml.safe_load((args.out / DEFAULT_MANIFEST.name).read_text())
    manifest["name"] += "-fitted"
    manifest["context"] = {"file": "context.npz"}
    manifest["training"]["context"] = {"command": command.strip(), "ridge": strength, "rank": args.rank,
                                       "residual_scale": args.residual_scale, "held_out_r2": round(held_out_r2, 3)}  # fmt: skip
    fitted = args.out / BUILT_IN_MANIFESTS["fitted"].name
    fitted.write_text(yaml.safe_dump(manifest, sort_keys=False))
    print(f"-> {args.out / 'context.npz'}, {fitted} (the default model plus this stage)")


if __name__ == "__main__":
    main()
