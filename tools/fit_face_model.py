"""Fit the default DP face model (a shape-normalized appearance model) on the LFW train split.

    python tools/prepare_lfw.py          # once, ~2 min: face-mesh landmarks -> tools/_runs/
    python tools/fit_face_model.py       # 45-95 s on 2 cores; writes dpstream/face_model/assets/

Defaults: 6 pose/expression modes, 24 identity-shape modes, 104 texture modes (dim 128), clip
norm 1.5, codebook mixes 2 entries, released norm 0.8 x the median code norm. Closed-form
(Procrustes, PCA): no training loop, so no checkpoints; a rerun takes about a minute.
Deterministic (randomized SVD and codebook pairing seeded with ``--seed``, default 0); only rows
whose split is ``train`` in ``../shared/data/lfw_split.tsv`` are read. The model:

* shape: face-mesh points aligned by generalized Procrustes. Pose/expression modes are the top
  principal components of *within-person* deviations (people with >= 2 train images); those
  listed in ``--expression-from-frame`` (default 0, 1, 3: turn, nod, mouth opening) come from
  each frame, the others stay at 0: on LFW eval people 12-31 % of their variance is between
  people, and with them a close-up's rendered face was matched to the original by dlib more
  often (tools/README.md). Identity shape modes are the principal components of what remains
  after projecting those out; they are whitened and go into the noised identity vector.
* texture: each face warped piecewise-affinely to the mean shape on a 128x128 canonical grid
  (MediaPipe's tessellation, its eye/mouth holes filled, plus a band over two rings pushed out
  from the face outline towards hairline, ears and chin); whitened PCA.
* identity vector = [whitened shape-identity code, whitened texture code] / sqrt(dim).
* post-processing codebook: averages of two random train people (distinct identities), so that
  a noisy release is mapped to a mix of plausible faces and never to one real person; the
  quarter of faces with the darkest eyes (glasses, shadow) is left out.

Exports ``encoder.onnx`` (canonical texture + aligned shape -> identity), ``decoder.onnx``
(identity + expression code -> canonical texture + canonical shape), ``template.npz`` (mean
shape, triangulation, pixel lookup, blend masks, expression basis), ``codebook.npy`` and
``manifest_plain.yaml`` (the exact command and seed are recorded in it) and ``manifest.yaml``,
the default model: the same, with the ``refiner`` stage ``tools/train_refiner.py`` declared there
kept.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import yaml
from matplotlib.path import Path as MplPath
from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION
from scipy.spatial import Delaunay

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dpstream.face_model.alignment import FACE_OVAL, MESH_POINTS, fit_similarity, warp_vertices  # noqa: E402
from dpstream.face_model.kernels import sample_canonical  # noqa: E402
from tools.onnx_export import export_linear_decoder, export_linear_encoder  # noqa: E402
from tools.prepare_lfw import LANDMARKS_PATH, REPO_ROOT, shared_dir  # noqa: E402

ASSETS_DIR = REPO_ROOT / "dpstream" / "face_model" / "assets"
CANONICAL_SIZE = 128
CANONICAL_MARGIN = 2.0


def procrustes_align(shapes: np.ndarray, iterations: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Generalized Procrustes: (aligned shapes (N, P, 2), mean shape (P, 2) centred, unit RMS)."""
    centred = shapes - shapes.mean(1, keepdims=True)
    centred /= np.sqrt((centred**2).sum(2).mean(1))[:, None, None]
    mean = centred[0].copy()
    for _ in range(iterations):
        covariance = np.einsum("npi,pj->nij", centred, mean)
        u, _, vt = np.linalg.svd(covariance)
        determinant_sign = np.sign(np.linalg.det(u @ vt))
        u[:, :, 1] *= determinant_sign[:, None]
        rotations = u @ vt  # maps each shape onto the mean: x @ R
        aligned = np.einsum("npi,nij->npj", centred, rotations)
        scale = np.einsum("npi,pi->n", aligned, mean) / (aligned**2).sum((1, 2))
        aligned *= scale[:, None, None]
        mean = aligned.mean(0)
        mean -= mean.mean(0)
        mean /= np.sqrt((mean**2).sum(1).mean())
    return aligned, mean


def principal_components(data: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``count`` principal directions (D, count) and variances of centred ``data`` (N, D)."""
    rng = np.random.default_rng(seed)
    if data.shape[1] <= 4 * count:
        _, singular, vt = np.linalg.svd(data, full_matrices=False)
    else:  # randomized SVD with power iterations
        basis = data @ rng.standard_normal((data.shape[1], count + 20)).astype(data.dtype)
        for _ in range(3):
            basis, _ = np.linalg.qr(basis)
            basis = data @ (data.T @ basis)
        basis, _ = np.linalg.qr(basis)
        _, singular, vt = np.linalg.svd(basis.T @ data, full_matrices=False)
    return vt[:count].T.astype(np.float64), singular[:count] ** 2 / (len(data) - 1)


def canonical_frame(mean_shape: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Canonical pixel positions of the warp vertices, and the (scale, offset) from shape units."""
    vertices = warp_vertices(mean_shape)
    low, high = vertices.min(0), vertices.max(0)
    scale = (CANONICAL_SIZE - 1 - 2 * CANONICAL_MARGIN) / float((high - low).max())
    offset = (CANONICAL_SIZE - 1) / 2 - scale * (low + high) / 2
    return vertices * scale + offset, scale, offset


def barycentric_in_triangle(points: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """(N, 3) barycentric weights of ``points`` (N, 2) in the triangle ``corners`` (3, 2)."""
    a, b, c = corners
    determinant = (b[1] - c[1]) * (a[0] - c[0]) + (c[0] - b[0]) * (a[1] - c[1])
    wa = ((b[1] - c[1]) * (points[:, 0] - c[0]) + (c[0] - b[0]) * (points[:, 1] - c[1])) / determinant
    wb = ((c[1] - a[1]) * (points[:, 0] - c[0]) + (a[0] - c[0]) * (points[:, 1] - c[1])) / determinant
    return np.stack([wa, wb, 1 - wa - wb], 1)


def pixel_lookup(canonical_vertices: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Triangle index (S, S) (-1 outside) and barycentric weights (S, S, 3) of each canonical pixel."""
    grid = np.stack(np.meshgrid(np.arange(CANONICAL_SIZE), np.arange(CANONICAL_SIZE)), -1).reshape(-1, 2).astype(float)
    triangle = np.full(len(grid), -1, np.int32)
    barycentric = np.zeros((len(grid), 3))
    for index, corners in enumerate(canonical_vertices[triangles]):
        weights = barycentric_in_triangle(grid, corners)
        inside = (weights >= -1e-9).all(1) & (triangle < 0)
        triangle[inside], barycentric[inside] = index, weights[inside]
    return (
        triangle.reshape(CANONICAL_SIZE, CANONICAL_SIZE),
        barycentric.reshape(CANONICAL_SIZE, CANONICAL_SIZE, 3).astype(np.float32),
    )


def triangulate(canonical_vertices: np.ndarray) -> np.ndarray:
    """(T, 3) warp triangles: MediaPipe's mesh tessellation, its holes (eyes, mouth) filled by
    Delaunay, and a Delaunay band over the outline and the two rings.

    The tessellation follows the face surface, so its triangles flip only where the surface
    really turns away; a Delaunay triangulation of the mean shape has slivers that flip with
    small expression changes.
    """
    edges = {tuple(sorted(edge)) for edge in FACEMESH_TESSELATION}
    neighbours: dict[int, set[int]] = {}
    for a, b in edges:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    surface = np.array(sorted({tuple(sorted((a, b, c))) for a, b in edges for c in neighbours[a] & neighbours[b]}))
    mesh_points = canonical_vertices[:MESH_POINTS]
    filled = Delaunay(mesh_points).simplices
    centroids = mesh_points[filled].mean(1)
    covered = np.zeros(len(filled), bool)
    for corners in mesh_points[surface]:
        covered |= (barycentric_in_triangle(centroids, corners) >= 0).all(1)
    inside_outline = MplPath(mesh_points[list(FACE_OVAL)]).contains_points(centroids)
    holes = filled[~covered & inside_outline]
    band_ids = np.concatenate([list(FACE_OVAL), np.arange(MESH_POINTS, len(canonical_vertices))])
    band = band_ids[Delaunay(canonical_vertices[band_ids]).simplices]
    band = band[~np.isin(band, list(FACE_OVAL)).all(1)]  # triangles inside the outline belong to the mesh
    return np.vstack([surface, holes, band]).astype(np.int32)


def blend_masks(triangles, pixel_triangle, pixel_barycentric, canonical_vertices):
    """Decoded-face weight (1 on the mesh, 0 from the inner ring out) and the colour band.

    The colour band is the strip just inside the face outline where the frame's skin colour is
    measured (coarse statistics only) to match the decoded face to its surroundings.
    """
    def vertex_ramp(opaque_vertices: int) -> np.ndarray:
        """Smoothstep of a value that is 1 at the first ``opaque_vertices`` vertices and 0 at the rest."""
        values = np.zeros(len(canonical_vertices), np.float32)
        values[:opaque_vertices] = 1.0
        ramp = (values[triangles[np.maximum(pixel_triangle, 0)]] * pixel_barycentric).sum(-1)
        ramp[pixel_triangle < 0] = 0.0
        return ramp * ramp * (3 - 2 * ramp)

    decoded_weight = vertex_ramp(MESH_POINTS)  # the decoded face inside the mesh, the softened frame outside
    oval_mask = np.zeros((CANONICAL_SIZE, CANONICAL_SIZE), np.uint8)
    cv2.fillPoly(oval_mask, [np.round(canonical_vertices[list(FACE_OVAL)]).astype(np.int32)], 1)
    depth = cv2.distanceTransform(oval_mask, cv2.DIST_L2, 5)
    colour_band = ((depth > 1) & (depth <= 8)).astype(np.float32)
    return decoded_weight.astype(np.float32), colour_band


EYE_POINTS = ((33, 133, 159, 145), (362, 263, 386, 374))
CHEEK_POINTS = (205, 425)


def eye_contrast(textures: np.ndarray, canonical_vertices: np.ndarray) -> np.ndarray:
    """(N,) mean brightness around the eyes over that of the cheeks, per canonical texture.

    Low values are dark glasses, heavy shadow or sunglasses: faces that decode to dark sockets.
    """
    grid = np.stack(np.meshgrid(np.arange(CANONICAL_SIZE), np.arange(CANONICAL_SIZE)), -1).reshape(-1, 2)

    def near(centres: list[np.ndarray], radius: float) -> np.ndarray:
        return np.any([np.linalg.norm(grid - c, axis=1) <= radius for c in centres], axis=0)

    eyes = near([canonical_vertices[list(points)].mean(0) for points in EYE_POINTS], 4.0)
    cheeks = near([canonical_vertices[point] for point in CHEEK_POINTS], 5.0)
    brightness = textures.reshape(len(textures), -1, 3).mean(2)
    return brightness[:, eyes].mean(1) / np.maximum(brightness[:, cheeks].mean(1), 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--expression-modes", type=int, default=6)
    parser.add_argument("--shape-modes", type=int, default=24)
    parser.add_argument("--texture-modes", type=int, default=104)
    parser.add_argument("--clip-norm", type=float, default=1.5)
    parser.add_argument("--dark-eyes-quantile", type=float, default=0.25,
                        help="leave this share of train faces with the darkest eyes (glasses, shadow) out of the codebook")
    parser.add_argument("--neighbours", type=int, default=2, help="codebook entries mixed per release")
    parser.add_argument("--sample-norm-factor", type=float, default=0.8, help="released norm / median code norm")
    parser.add_argument("--expression-from-frame", default="0,1,3",
                        help="pose/expression modes the renderer takes from the frame (the rest carry identity)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ASSETS_DIR)
    args = parser.parse_args()
    started = time.time()

    cache = np.load(LANDMARKS_PATH)
    has_mesh = ~np.isnan(cache["landmarks"]).any(axis=(1, 2))
    train = np.flatnonzero((cache["splits"] == "train") & has_mesh)
    paths, identities = cache["paths"][train], cache["identities"][train]
    landmarks = cache["landmarks"][train].astype(np.float64)
    print(f"{len(train)} train faces with a mesh ({(cache['splits'] == 'train').sum()} train images)")

    # --- shape: Procrustes, pose/expression modes (within person), identity modes (the rest)
    _, mean_shape = procrustes_align(landmarks[:, :MESH_POINTS])
    aligned = np.stack([fit_similarity(p, mean_shape).apply(p) for p in landmarks[:, :MESH_POINTS]])
    flat = aligned.reshape(len(aligned), -1) - mean_shape.reshape(-1)
    names, person = np.unique(identities, return_inverse=True)
    counts = np.bincount(person)
    person_means = np.zeros((len(names), flat.shape[1]))
    np.add.at(person_means, person, flat)
    person_means /= counts[:, None]
    repeated = counts[person] >= 2
    within = flat[repeated] - person_means[person[repeated]]
    expression_basis, expression_variance = principal_components(within, args.expression_modes, args.seed)
    residual = flat - (flat @ expression_basis) @ expression_basis.T
    shape_basis, shape_variance = principal_components(residual, args.shape_modes, args.seed)
    print(
        f"shape: {args.expression_modes} pose/expression modes keep "
        f"{expression_variance.sum() / (within**2).sum() * (len(within) - 1):.0%} of within-person variance; "
        f"{args.shape_modes} identity modes keep "
        f"{shape_variance.sum() / (residual**2).sum() * (len(residual) - 1):.0%} of the rest"
    )

    # --- canonical grid, triangulation, blend masks
    canonical_vertices, canonical_scale, canonical_offset = canonical_frame(mean_shape)
    triangles = triangulate(canonical_vertices)
    pixel_triangle, pixel_barycentric = pixel_lookup(canonical_vertices, triangles)
    decoded_weight, colour_band = blend_masks(triangles, pixel_triangle, pixel_barycentric, canonical_vertices)

    # --- shape-free textures and their whitened PCA
    lfw = shared_dir() / "data" / "lfw"
    textures = np.zeros((len(train), CANONICAL_SIZE * CANONICAL_SIZE * 3), np.float32)
    for index, (relative_path, points) in enumerate(zip(paths, landmarks)):
        image = cv2.cvtColor(cv2.imread(str(lfw / relative_path)), cv2.COLOR_BGR2RGB)
        textures[index] = sample_canonical(
            image, warp_vertices(points), triangles, pixel_triangle, pixel_barycentric
        ).reshape(-1)
    mean_texture = textures.mean(0)
    textures -= mean_texture
    texture_basis, texture_variance = principal_components(textures, args.texture_modes, args.seed)
    total_texture_variance = float((textures.astype(np.float64) ** 2).sum() / (len(textures) - 1))
    print(f"texture: {args.texture_modes} modes keep {texture_variance.sum() / total_texture_variance:.0%} of variance")

    # --- post-processing codebook: identities that are each the average of two train people
    dim = args.shape_modes + args.texture_modes
    train_codes = np.hstack(
        [flat @ (shape_basis / np.sqrt(shape_variance)), textures @ (texture_basis / np.sqrt(texture_variance))]
    ) / np.sqrt(dim)
    clear_eyes = eye_contrast(textures + mean_texture, canonical_vertices) >= np.quantile(
        eye_contrast(textures + mean_texture, canonical_vertices), args.dark_eyes_quantile
    )
    order = np.random.default_rng(args.seed).permutation(np.flatnonzero(clear_eyes))
    first, second = order[0::2][: len(order) // 2], order[1::2]
    distinct = identities[first] != identities[second]
    codebook = (train_codes[first[distinct]] + train_codes[second[distinct]]) / 2
    typical_norm = float(np.median(np.linalg.norm(train_codes, axis=1))) * args.sample_norm_factor

    # --- export
    args.out.mkdir(parents=True, exist_ok=True)
    export_linear_encoder(
        args.out / "encoder.onnx", mean_shape, mean_texture,
        shape_basis, shape_variance, texture_basis, texture_variance, CANONICAL_SIZE,
    )  # fmt: skip
    export_linear_decoder(
        args.out / "decoder.onnx", mean_shape, mean_texture, expression_basis,
        shape_basis, shape_variance, texture_basis, texture_variance, CANONICAL_SIZE,
    )  # fmt: skip
    np.save(args.out / "codebook.npy", codebook.astype(np.float16))
    np.savez_compressed(
        args.out / "template.npz",
        mean_shape=mean_shape.astype(np.float32),
        expression_basis=expression_basis.astype(np.float32),
        expression_std=np.sqrt(expression_variance).astype(np.float32),
        canonical_vertices=canonical_vertices.astype(np.float32),
        canonical_scale=np.float32(canonical_scale),
        canonical_offset=canonical_offset.astype(np.float32),
        triangles=triangles,
        pixel_triangle=pixel_triangle,
        pixel_barycentric=pixel_barycentric,
        decoded_weight=decoded_weight,
        colour_band=colour_band,
    )
    manifest = {
        "format": "dpstream-face-model/1",
        "kind": "appearance",
        "name": "dpstream-lfw-appearance-v1",
        "embedding_dim": dim,
        "clip_norm": args.clip_norm,
        "typical_norm": round(typical_norm, 4),
        "post_processing": {"codebook": "codebook.npy", "neighbours": args.neighbours},
        "expression_from_frame": [int(m) for m in args.expression_from_frame.split(",")],
        "encoder": {
            "file": "encoder.onnx",
            "inputs": {"texture": [1, 3, CANONICAL_SIZE, CANONICAL_SIZE], "shape": [1, MESH_POINTS, 2]},
            "output": "identity",
            "normalization": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "channel_order": "RGB"},
        },
        "decoder": {
            "file": "decoder.onnx",
            "inputs": {"identity": [1, dim], "expression": [1, args.expression_modes]},
            "outputs": {"texture": [1, 3, CANONICAL_SIZE, CANONICAL_SIZE], "shape": [1, MESH_POINTS, 2]},
            "normalization": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "channel_order": "RGB"},
        },
        "alignment": {
            "template": "template.npz",
            "crop_size": CANONICAL_SIZE,
            "landmarks": "mediapipe-face-mesh-468",
        },
        "training": {
            "data": "LFW deep-funneled, train split of lfw_split.tsv",
            "faces": int(len(train)),
            "seed": args.seed,
            "command": "python tools/fit_face_model.py "
            f"--expression-modes {args.expression_modes} --shape-modes {args.shape_modes} "
            f"--texture-modes {args.texture_modes} --clip-norm {args.clip_norm} --neighbours {args.neighbours} "
            f"--dark-eyes-quantile {args.dark_eyes_quantile} "
            f"--sample-norm-factor {args.sample_norm_factor} --expression-from-frame {args.expression_from_frame} "
            f"--seed {args.seed}",
        },
    }
    (args.out / "manifest_plain.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    manifest_path = args.out / "manifest.yaml"
    previous = yaml.safe_load(manifest_path.read_text()) if manifest_path.exists() else {}
    if previous.get("refiner") and (args.out / previous["refiner"]["file"]).exists():
        # keep the refiner trained on this decoder (tools/train_refiner.py); the fit is deterministic
        manifest = {**{k: v for k, v in manifest.items() if k not in ("alignment", "training")},
                    "refiner": previous["refiner"], "alignment": manifest["alignment"],
                    "training": {**manifest["training"], "refiner": previous["training"].get("refiner")}}  # fmt: skip
        manifest["name"] = previous["name"]
    manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    size_mb = sum(p.stat().st_size for p in args.out.iterdir()) / 1e6
    print(f"wrote {args.out} ({size_mb:.1f} MB) in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
