"""dpstream's own model: a shape-normalized appearance model (identity shape + shape-free texture).

The identity vector holds whitened identity-shape modes and whitened texture modes. From the
frame come only a similarity transform, a few pose/expression-mode coefficients, coarse colour
statistics and, for close-ups, one number: the strength of the frame's fine detail. The decoded
texture goes through the manifest's refiner (when there is one; post-processing of the
decoder's output), its rim inside the face outline is replaced by a smooth extension of its own
inner skin, its contrast is limited to the frame face's and its colour matched by a smooth
(affine) field fitted on a band just inside the face outline; it is lightly sharpened. A face
larger than the texture gets a fixed fine-noise pattern on a finer grid, weaker than the frame's
own detail. The face is drawn at the frame's resolution onto the resulting mesh and two
rings outside it: up to the inner ring it crossfades to the frame's own surroundings of the
face, moved onto the decoded outline and softened (hairline, ears and jaw edge lose their
detail), and from the inner to the outer ring it fades into the untouched frame.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dpstream.face_model.alignment import FACE_OVAL, MESH_POINTS, Similarity, fit_similarity, warp_vertices
from dpstream.face_model.errors import RenderError
from dpstream.face_model.kernels import blend_into, rasterize_attributes, sample_canonical
from dpstream.face_model.manifest import Manifest
from dpstream.face_model.runtime import open_network

MIN_FACE_SCALE_PX = 8.0
"""Smallest face handled: mesh RMS radius in pixels (a face about 20 px wide)."""
MAX_FOLDED_AREA = 0.10
"""Largest share of mesh area whose triangles flip orientation (a profile view) before refusing."""
RENDER_PX_PER_CANONICAL_PX = 2.0
"""Larger faces are drawn at this many pixels per texture pixel and enlarged (the texture and the
softened band have no finer detail); only the synthesized skin detail is added at full size."""
MAX_FINE_FACTOR = 4
"""The synthesized skin detail is laid on a grid up to this many times finer than the texture's."""
DETAIL_SIGMA_PX = 0.7
"""Blur (fine-grid pixels) of the white noise that becomes the synthesized skin detail."""
DETAIL_HIGH_PASS_SIGMA_PX = 1.5
"""Scale (frame pixels) of the frame detail whose strength sets the synthesized detail's."""
DETAIL_SHARE = 0.4
"""Synthesized detail as a share of the frame's. More looks more like real skin and makes dlib
more sure of a match. On LFW eval faces enlarged 2x (474 probes, ε = 1, paired draws), against
no detail: the full strength (as measured then) moved the mean distance to the original 0.0055
closer and the share under 0.65 from 4.7 % to 6.8 %; this share 0.0020 and 5.5 %, with the
verification rate (under 0.6) unchanged at 1.27 %."""
SHARPEN_AMOUNT = 0.6
"""Unsharp-mask strength on the decoded texture of a model without a refiner (linear decoders are soft)."""
REFINED_SHARE = 0.5
"""Share of the refiner's change that is applied. Fully refined faces look more real, and then
the cues the renderer keeps from the frame (hair, outline, pose, colour) count for more: dlib
accepted about 2 % of fully refined anonymized faces as the original person, about 1 % at half."""
GENERATED_SHARE = 1.0
"""Share of the generator's change that is applied."""
REFINED_SHARPEN_AMOUNT = 0.4
"""Unsharp-mask strength after the refiner (faces upscaled beyond the 128-px texture still soften)."""
SHARPEN_SIGMA_PX = 1.5
"""Scale (canonical pixels) of the detail the unsharp mask enhances."""
SOFTEN_SIGMA_PX = 1.5
"""Blur (canonical pixels, ~1/60 of the face, applied at the frame's resolution) of the frame kept
in the band outside the mesh. On LFW eval faces (paired draws) 4, 2 and 1 gave the same dlib
match rates within one face in 474; the stronger blur drew a visible halo around close-ups."""
STACK_BLUR_RADIUS_PER_SIGMA = 2.45
"""Stack-blur radius for a Gaussian-like blur of a given sigma (its kernel's sigma is ~radius/√6)."""
MAX_EXPRESSION_SD = 8.0
"""Pose/expression coefficients beyond this many standard deviations mean an implausible mesh."""
EXPRESSION_CLIP_SD = 4.0
"""Pose/expression coefficients are limited to this many standard deviations before decoding."""
OUTLINE_FILL_PX = 6.0
"""Depth (canonical pixels, ~1/18 of the face) inside the outline where the decoded face is
replaced by a smooth extension of its own inner skin."""
OUTLINE_FILL_SIGMA_PX = 4.0
"""Blur (canonical pixels) of that extension."""
CONTRAST_GAIN_RANGE = (0.55, 1.0)
"""Bounds of the per-channel contrast scale applied to the decoded face (it is only ever reduced)."""
COLOUR_STATISTICS_STRIDE = 3
"""Colour statistics (spread, colour field) are taken from every third pixel of their regions."""
DECODED_PEOPLE_KEPT = 64
"""Decoded people (texture and shape model of a noisy identity) kept for the next frames."""


@dataclass(frozen=True, slots=True)
class AppearanceTemplate:
    """The canonical face frame shared by encoder, decoder and renderer (``template.npz``)."""

    mean_shape: np.ndarray  # (468, 2) aligned shape units
    expression_basis: np.ndarray  # (936, E) orthonormal pose/expression modes
    expression_std: np.ndarray  # (E,)
    canonical_vertices: np.ndarray  # (540, 2) canonical pixels of the warp vertices
    triangles: np.ndarray  # (T, 3) int32 over the warp vertices
    pixel_triangle: np.ndarray  # (S, S) int32, -1 outside
    pixel_barycentric: np.ndarray  # (S, S, 3) float32
    canonical_scale: float  # canonical pixels per aligned shape unit
    canonical_offset: np.ndarray  # (2,) canonical pixels of the aligned origin
    decoded_weight: np.ndarray  # (S, S, 1) float32: decoded face vs softened frame in the outer band
    hull_mask: np.ndarray  # (S, S) float32: 1 where the warp covers the canonical grid
    band_pixels: np.ndarray  # (B,) flat indices of the colour-matching band (every third)
    interior_pixels: np.ndarray  # (I,) flat indices where only the decoded face is shown (every third)
    vertex_weights: np.ndarray  # (540, 2) per warp vertex: decoded-face weight, opacity
    inner_weight: np.ndarray  # (S, S, 1) 0 on the face outline, 1 from OUTLINE_FILL_PX inside it
    inner_weight_blurred: np.ndarray  # (S, S, 1) its blur, the normalizer of the outline fill
    colour_design: np.ndarray  # (S*S, 3) [1, u, v] per canonical pixel for the colour field
    mesh_triangle_areas: np.ndarray  # (M,) signed canonical areas of triangles inside the mesh
    mesh_triangles: np.ndarray  # (M, 3)

    @classmethod
    def load(cls, path: Path) -> AppearanceTemplate:
        data = np.load(path)
        size = data["pixel_triangle"].shape[0]
        grid = (np.stack(np.meshgrid(np.arange(size), np.arange(size)), -1).reshape(-1, 2) / (size - 1)) * 2 - 1
        triangles = data["triangles"].astype(np.int32)
        mesh_triangles = triangles[(triangles < MESH_POINTS).all(1)]
        inner_weight = depth_ramp(data["canonical_vertices"], size, OUTLINE_FILL_PX)
        return cls(
            mean_shape=data["mean_shape"].astype(np.float64),
            expression_basis=data["expression_basis"].astype(np.float64),
            expression_std=data["expression_std"].astype(np.float64),
            canonical_vertices=np.ascontiguousarray(data["canonical_vertices"], np.float64),
            triangles=triangles,
            pixel_triangle=data["pixel_triangle"].astype(np.int32),
            pixel_barycentric=data["pixel_barycentric"].astype(np.float32),
            canonical_scale=float(data["canonical_scale"]),
            canonical_offset=data["canonical_offset"].astype(np.float64),
            decoded_weight=data["decoded_weight"][..., None].astype(np.float32),
            hull_mask=(data["pixel_triangle"] >= 0).astype(np.float32),
            band_pixels=np.flatnonzero(data["colour_band"].reshape(-1) > 0)[::COLOUR_STATISTICS_STRIDE],
            interior_pixels=np.flatnonzero(data["decoded_weight"].reshape(-1) > 0.99)[::COLOUR_STATISTICS_STRIDE],
            vertex_weights=vertex_weights(len(data["canonical_vertices"])),
            inner_weight=inner_weight,
            inner_weight_blurred=np.maximum(cv2.GaussianBlur(inner_weight, (0, 0), OUTLINE_FILL_SIGMA_PX), 1e-3)[..., None],
            colour_design=np.hstack([np.ones((len(grid), 1)), grid]).astype(np.float32),
            mesh_triangle_areas=signed_areas(data["canonical_vertices"].astype(np.float64), mesh_triangles),
            mesh_triangles=mesh_triangles,
        )

    @property
    def size(self) -> int:
        return int(self.pixel_triangle.shape[0])


def vertex_weights(vertex_count: int) -> np.ndarray:
    """(V, 2) per warp vertex: the decoded face's weight against the softened frame (1 on the mesh,
    0 from the inner ring out) and the opacity (1 up to the inner ring, 0 on the outer ring)."""
    weights = np.zeros((vertex_count, 2), np.float32)
    weights[:MESH_POINTS, 0] = 1.0
    weights[: MESH_POINTS + len(FACE_OVAL), 1] = 1.0
    return weights


def smoothstep(ramp: np.ndarray) -> np.ndarray:
    ramp = np.clip(ramp, 0.0, 1.0)
    return ramp * ramp * (3 - 2 * ramp)


def signed_areas(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    a, b, c = points[triangles[:, 0]], points[triangles[:, 1]], points[triangles[:, 2]]
    return 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


def depth_ramp(canonical_vertices: np.ndarray, size: int, width_px: float) -> np.ndarray:
    """(S, S, 1) smoothstep from 0 on the face outline to 1 at ``width_px`` inside it."""
    oval = np.zeros((size, size), np.uint8)
    cv2.fillPoly(oval, [np.round(np.asarray(canonical_vertices)[list(FACE_OVAL)]).astype(np.int32)], 1)
    return smoothstep((cv2.distanceTransform(oval, cv2.DIST_L2, 5) - 1) / width_px).astype(np.float32)[..., None]


def context_planes(texture: np.ndarray, kept: np.ndarray, cell_px: int) -> np.ndarray:
    """(1, 4, S, S) float32: the (S, S, 3) canonical ``texture`` weighted by ``kept`` (S, S), as
    mean colours of ``cell_px`` cells times ``kept``, and ``kept`` (as the generator was trained)."""
    size, cells = kept.shape[0], kept.shape[0] // cell_px
    weighted = (texture * kept[..., None]).reshape(cells, cell_px, cells, cell_px, 3).mean((1, 3))
    weight = kept.reshape(cells, cell_px, cells, cell_px).mean((1, 3))
    colour = np.repeat(np.repeat(weighted / np.maximum(weight, 1e-3)[..., None], cell_px, 0), cell_px, 1)
    return np.concatenate([(colour * kept[..., None]).transpose(2, 0, 1), kept[None]]).reshape(1, 4, size, size).astype(np.float32)


def fill_outline(decoded: np.ndarray, template: AppearanceTemplate) -> np.ndarray:
    """``decoded`` with the strip inside its outline replaced by a smooth extension of its inner skin.

    The decoder's texture there averages skin, shadow and background over many faces and draws a
    dark rim around the rendered face. The fill uses the decoded face only, no frame pixels.
    """
    t = template
    fill = cv2.GaussianBlur(decoded * t.inner_weight, (0, 0), OUTLINE_FILL_SIGMA_PX) / t.inner_weight_blurred
    return t.inner_weight * decoded + (1.0 - t.inner_weight) * fill


def match_colour(original: np.ndarray, decoded: np.ndarray, template: AppearanceTemplate) -> np.ndarray:
    """``decoded`` (S, S, 3) with its contrast limited to the frame's and its colour matched to it.

    Per channel, the decoded face's spread around its mean is scaled down (never up) to that of
    the frame's face, so a crisp decoded face does not look painted onto a soft, flat-lit one
    (dark eye sockets on a low-contrast webcam face); then a smooth affine field fitted on a band
    just inside the outline matches the skin colour. Only coarse statistics of the frame are used.
    """
    t = template
    flat_original, flat_decoded = original.reshape(-1, 3), decoded.reshape(-1, 3)
    interior_original, interior_decoded = flat_original[t.interior_pixels], flat_decoded[t.interior_pixels]
    centre = interior_decoded.mean(0)
    gain = np.clip(interior_original.std(0) / np.maximum(interior_decoded.std(0), 1.0), *CONTRAST_GAIN_RANGE)
    adjusted = centre + (flat_decoded - centre) * gain.astype(np.float32)
    difference = flat_original[t.band_pixels] - adjusted[t.band_pixels]
    coefficients = fit_colour_field(difference, t.colour_design[t.band_pixels]).astype(np.float32)
    return (adjusted + t.colour_design @ coefficients).reshape(decoded.shape)


def fit_colour_field(difference: np.ndarray, design: np.ndarray) -> np.ndarray:
    """Robust per-channel affine fit (3, 3) of ``difference`` (B, 3) over ``design`` (B, 3)."""
    weights = np.ones(len(difference), np.float32)
    for _ in range(3):
        weighted = design * weights[:, None]
        coefficients = np.linalg.solve(weighted.T @ design + 1e-3 * np.eye(3), weighted.T @ difference)
        residual = np.linalg.norm(difference - design @ coefficients, axis=1)
        weights = 1.0 / (1.0 + (residual / (2.0 * np.median(residual) + 1e-6)) ** 2)
    return coefficients


def detail_pattern(size: int) -> np.ndarray:
    """(size, size) fixed fine noise (no frame data), scaled so ``detail_level`` measures 1 on it."""
    noise = cv2.GaussianBlur(np.random.default_rng(0).standard_normal((size, size)).astype(np.float32), (0, 0), DETAIL_SIGMA_PX)
    return noise / detail_level(noise)


def detail_level(grey: np.ndarray) -> float:
    """Robust strength (grey levels) of the fine detail in a grey image."""
    high = grey - cv2.GaussianBlur(grey, (0, 0), DETAIL_HIGH_PASS_SIGMA_PX)
    return float(1.4826 * np.median(np.abs(high[::2, ::2])))  # every 4th pixel is plenty for a median


def frame_detail_level(box_rgb: np.ndarray) -> float:
    """``detail_level`` of the middle of a face's box: one number."""
    height, width = box_rgb.shape[:2]
    middle = np.ascontiguousarray(box_rgb[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4])
    return detail_level(cv2.cvtColor(middle, cv2.COLOR_RGB2GRAY).astype(np.float32))


@dataclass(frozen=True, slots=True)
class SoftenedCrop:
    """A blurred, shrunk copy of the frame around a face: frame (x, y) is at
    ``gain * ((x, y) - origin) + shift`` in ``image``."""

    image: np.ndarray
    origin: tuple[int, int]
    gain: float
    shift: float

    @classmethod
    def around(cls, image_rgb: np.ndarray, points: np.ndarray, scale: float, sigma_px: float) -> SoftenedCrop:
        """The frame around ``points``, shrunk to about ``scale`` (halvings, then a linear resize)
        and blurred by about ``sigma_px`` frame pixels (stack blur at the shrunk size)."""
        height, width = image_rgb.shape[:2]
        x0, y0 = np.clip(np.floor(points.min(0)).astype(int) - 1, 0, (width - 1, height - 1))
        x1, y1 = np.clip(np.ceil(points.max(0)).astype(int) + 2, (x0 + 1, y0 + 1), (width, height))
        crop, gain, shift = image_rgb[y0:y1, x0:x1], 1.0, 0.0
        while gain / 2 >= scale and min(crop.shape[:2]) >= 4:
            crop, gain, shift = cv2.pyrDown(crop), gain / 2, shift / 2
        if scale < gain:
            factor = scale / gain
            crop = cv2.resize(crop, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
            gain, shift = gain * factor, (shift + 0.5) * factor - 0.5
        radius = int(round(STACK_BLUR_RADIUS_PER_SIGMA * sigma_px * gain))
        if radius > 0:
            crop = cv2.stackBlur(crop, (2 * radius + 1, 2 * radius + 1))
        return cls(crop, (int(x0), int(y0)), gain, shift)

    def remap(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Bilinear samples (h, w, 3) at frame positions ``x``, ``y`` (h, w)."""
        map_x = (x - self.origin[0]) * self.gain + self.shift
        map_y = (y - self.origin[1]) * self.gain + self.shift
        return cv2.remap(self.image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@dataclass(frozen=True, slots=True)
class DecodedPerson:
    """A separable decoder's output for one (noisy) identity."""

    texture: np.ndarray  # (S, S, 3) float32, refined and outline filled; read-only
    shape_at_rest: np.ndarray  # (468, 2) canonical shape at expression 0
    shape_per_expression: np.ndarray  # (E, 468, 2) change per unit of each expression coefficient

    def shape(self, expression: np.ndarray) -> np.ndarray:
        return self.shape_at_rest + np.tensordot(expression, self.shape_per_expression, axes=1)


class AppearanceModel:
    """Encoder/decoder sessions plus the template; one instance serves many faces."""

    def __init__(self, manifest: Manifest, threads: int = 2):
        self.manifest = manifest
        self.template = AppearanceTemplate.load(manifest.template_path)
        self.encoder = open_network(manifest.encoder, "encoder", threads)
        self.decoder = open_network(manifest.decoder, "decoder", threads)
        self.refiner = open_network(manifest.refiner, "refiner", threads) if manifest.refiner is not None else None
        self.generator = open_network(manifest.generator, "generator", threads) if manifest.generator is not None else None
        self._kept = (self.template.hull_mask * (1.0 - self.template.decoded_weight[..., 0])).astype(np.float32)
        modes = len(self.template.expression_std)
        kept = manifest.expression_from_frame if manifest.expression_from_frame is not None else range(modes)
        self._expression_kept = np.isin(np.arange(modes), kept).astype(np.float64)  # 1: taken from the frame
        self._people: OrderedDict[bytes, DecodedPerson] = OrderedDict()  # by noisy identity
        self._separable_decoder = self._decoder_is_separable()
        self._shared_shape_per_expression = self._shape_per_expression_if_shared() if self._separable_decoder else None
        self.detail_pattern = detail_pattern(self.template.size * MAX_FINE_FACTOR)

    def warm_up(self) -> None:
        """Encode and render the template's mean face on a grey image once, so that the first
        real face does not pay for the networks' and kernels' first runs (~0.4 s)."""
        t = self.template
        landmarks = 2.0 * (t.mean_shape * t.canonical_scale + t.canonical_offset)
        image = np.full((2 * t.size, 2 * t.size, 3), 128, np.uint8)
        identity = self.encode(image, landmarks)
        self.render(image, landmarks, np.zeros_like(identity))
        self._people.clear()

    def _pose(self, landmarks: np.ndarray) -> Similarity:
        """Similarity mapping aligned shape units onto this face, after sanity checks."""
        mesh = np.asarray(landmarks, np.float64)[:MESH_POINTS]
        if mesh.shape != (MESH_POINTS, 2) or not np.isfinite(mesh).all():
            raise RenderError("no usable face mesh")
        to_frame = fit_similarity(self.template.mean_shape, mesh)
        if to_frame.scale < MIN_FACE_SCALE_PX:
            raise RenderError(f"face too small ({to_frame.scale:.1f} px mesh radius)")
        frame_areas = signed_areas(mesh, self.template.mesh_triangles)  # similarities keep orientation
        folded = np.abs(frame_areas[np.sign(frame_areas) != np.sign(self.template.mesh_triangle_areas)]).sum()
        if folded > MAX_FOLDED_AREA * np.abs(frame_areas).sum():
            raise RenderError("extreme pose (mesh folds over)")
        return to_frame

    def texture(self, image_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(S, S, 3) float32 shape-free texture of the face at ``landmarks`` (checked like a render's)."""
        self._pose(landmarks)
        return self._texture(image_rgb, landmarks)

    def _texture(self, image_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(S, S, 3) float32 shape-free texture of the face at ``landmarks``."""
        t = self.template
        return sample_canonical(image_rgb, warp_vertices(landmarks), t.triangles, t.pixel_triangle, t.pixel_barycentric)

    def encode(self, image_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Raw (unclipped) identity vector of the face."""
        to_frame = self._pose(landmarks)
        aligned = to_frame.inverse().apply(np.asarray(landmarks, np.float64)[:MESH_POINTS])
        texture = self._texture(image_rgb, landmarks).transpose(2, 0, 1)[None]
        (identity,) = self.encoder.run(
            None, {"texture": np.ascontiguousarray(texture), "shape": aligned[None].astype(np.float32)}
        )
        return identity[0].astype(np.float64)

    def decode(self, identity: np.ndarray, expression: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(S, S, 3) float32 canonical texture and (468, 2) canonical shape for a code."""
        texture, shape = self.decoder.run(
            None,
            {
                "identity": np.asarray(identity, np.float32).reshape(1, -1),
                "expression": np.asarray(expression, np.float32).reshape(1, -1),
            },
        )
        return np.ascontiguousarray(texture[0].transpose(1, 2, 0)), shape[0].astype(np.float64)

    def face_texture(self, identity: np.ndarray, expression: np.ndarray, context: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The decoded texture (refined or generated, its outline filled) and the (468, 2)
        canonical shape. ``context``: the generator's kept-context input (``context_planes``).

        For a separable decoder (the default model: texture from the identity alone, shape
        affine in the expression) each person is decoded once and kept while in view; a frame
        then costs one small matrix product.
        """
        if not self._separable_decoder:
            texture, shape = self.decode(identity, expression)
            return fill_outline(self.refine(texture, context), self.template), shape
        key = np.asarray(identity, np.float32).tobytes() + (b"" if context is None else np.asarray(context, np.float32).tobytes())
        person = self._people.get(key)
        if person is None:
            person = self._people[key] = self._decode_person(identity, context)
            if len(self._people) > DECODED_PEOPLE_KEPT:
                self._people.popitem(last=False)
        self._people.move_to_end(key)
        return person.texture, person.shape(expression)

    def _decode_person(self, identity: np.ndarray, context: np.ndarray | None) -> DecodedPerson:
        texture, at_rest = self.decode(identity, np.zeros_like(self.template.expression_std))
        per_expression = self._shared_shape_per_expression
        if per_expression is None:
            per_expression = self._shape_per_expression(identity, at_rest)
        texture = fill_outline(self.refine(texture, context), self.template)
        texture.flags.writeable = False
        return DecodedPerson(texture, at_rest, per_expression)

    def context_planes(self, image_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(1, 4, S, S) the generator's context input for the face at ``landmarks``: the frame's
        canonical texture where the renderer keeps the frame (outside the face mesh), as mean
        colours of ``context_cell_px`` cells, times its weight there; and that weight."""
        return context_planes(self._texture(image_rgb, landmarks), self._kept, self.manifest.context_cell_px)

    def _shape_per_expression(self, identity: np.ndarray, at_rest: np.ndarray) -> np.ndarray:
        """(E, 468, 2) shape change per unit of each expression coefficient (one decoder pass each)."""
        steps = self.template.expression_std
        return np.stack([(self.decode(identity, step)[1] - at_rest) / steps[k] for k, step in enumerate(np.diag(steps))])

    def _shape_per_expression_if_shared(self) -> np.ndarray | None:
        """The shape change per expression coefficient when it is the same for every identity (a
        decoder whose shape is linear, like the default model's), else None (checked on random codes)."""
        rng = np.random.default_rng(1)
        zero = np.zeros_like(self.template.expression_std)
        first, second = (
            self._shape_per_expression(identity, self.decode(identity, zero)[1])
            for identity in rng.normal(0.0, 0.1, (2, self.manifest.embedding_dim))
        )
        return first if np.abs(first - second).max() <= 1e-4 * max(np.abs(first).max(), 1e-6) else None

    def _decoder_is_separable(self) -> bool:
        """Whether the decoder's texture ignores the expression and its shape is affine in it
        (checked on random codes)."""
        rng = np.random.default_rng(0)
        identity = rng.normal(0.0, 0.1, self.manifest.embedding_dim)
        steps = self.template.expression_std
        first, second = rng.normal(0.0, 1.0, (2, len(steps))) * steps
        rest_texture, rest = self.decode(identity, np.zeros_like(steps))
        texture_a, shape_a = self.decode(identity, first)
        texture_b, shape_b = self.decode(identity, second)
        _, shape_sum = self.decode(identity, first + second)
        affine_error = np.abs(shape_sum - rest - (shape_a - rest) - (shape_b - rest)).max()
        same_texture = np.array_equal(rest_texture, texture_a) and np.array_equal(rest_texture, texture_b)
        return same_texture and affine_error <= 1e-4 * max(np.abs(shape_a - rest).max(), 1e-6)

    def _skin_detail(self, image_rgb: np.ndarray, to_frame: Similarity, frame_px: float,
                     box: tuple[int, int, int, int], face_weight: np.ndarray) -> np.ndarray:  # fmt: skip
        """(h, w) grey levels added over the box: for a face larger than the texture, the fixed
        detail pattern on a grid up to MAX_FINE_FACTOR times finer, moving with the face, as
        strong as DETAIL_SHARE of the frame's own detail, where the decoded face is shown.
        ``frame_px``: frame pixels per texture pixel."""
        t = self.template
        x0, y0, x1, y1 = box
        detail_scale = int(np.clip(round(frame_px), 1, MAX_FINE_FACTOR))
        if detail_scale == 1:
            return np.zeros((y1 - y0, x1 - x0), np.float32)
        level = DETAIL_SHARE * frame_detail_level(image_rgb[y0:y1, x0:x1])
        # box pixel -> pattern pixel (the canonical grid, detail_scale times finer)
        to_aligned = to_frame.inverse().matrix
        linear = detail_scale * t.canonical_scale * to_aligned[:, :2]
        offset = detail_scale * (t.canonical_scale * to_aligned[:, 2] + t.canonical_offset + 0.5) - 0.5
        to_pattern = np.column_stack([linear, linear @ (x0, y0) + offset])
        pattern = cv2.warpAffine(
            self.detail_pattern, to_pattern, (x1 - x0, y1 - y0),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT,
        )  # fmt: skip
        return cv2.multiply(pattern, face_weight, scale=level)

    def refine(self, texture: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        """The refiner stage on a decoded (S, S, 3) texture: ``REFINED_SHARE`` of its change is
        applied (the texture is unchanged when the model has neither refiner nor generator).
        A generator stage draws the texture from it and ``context`` (the kept surroundings).

        It sees only the decoder's output and channels the renderer keeps anyway, never the
        inner face: post-processing of the DP release.
        """
        if self.generator is not None:
            inputs = {"texture": texture.transpose(2, 0, 1)[None], "context": np.asarray(context, np.float32)}
            (generated,) = self.generator.run(None, inputs)
            return np.ascontiguousarray(texture + GENERATED_SHARE * (generated[0].transpose(1, 2, 0) - texture))
        if self.refiner is None:
            return texture
        (refined,) = self.refiner.run(None, {self.manifest.refiner.input_name: texture.transpose(2, 0, 1)[None]})
        return np.ascontiguousarray(texture + REFINED_SHARE * (refined[0].transpose(1, 2, 0) - texture))

    def expression_code(self, landmarks: np.ndarray, to_frame: Similarity) -> np.ndarray:
        """This frame's pose/expression coefficients (the only shape information taken from it):
        the manifest's ``expression_from_frame`` modes, the others at 0."""
        t = self.template
        aligned = to_frame.inverse().apply(np.asarray(landmarks, np.float64)[:MESH_POINTS])
        code = (aligned - t.mean_shape).reshape(-1) @ t.expression_basis
        if np.abs(code / t.expression_std).max() > MAX_EXPRESSION_SD:
            raise RenderError("implausible pose/expression")
        limit = EXPRESSION_CLIP_SD * t.expression_std
        return np.clip(code, -limit, limit) * self._expression_kept

    def render(self, image_rgb: np.ndarray, landmarks: np.ndarray, identity: np.ndarray, context: np.ndarray | None = None) -> None:
        """Decode ``identity`` with this frame's pose/expression and blend it into the image in
        place. A generator model draws from ``context`` (the person's, kept from its first
        frame), else from this frame's."""
        t = self.template
        to_frame = self._pose(landmarks)
        original = self._texture(image_rgb, landmarks)
        if self.generator is not None and context is None:
            context = context_planes(original, self._kept, self.manifest.context_cell_px)
        texture, shape = self.face_texture(identity, self.expression_code(landmarks, to_frame), context)
        texture = match_colour(original, texture, t)
        sharpen = SHARPEN_AMOUNT if self.refiner is None and self.generator is None else REFINED_SHARPEN_AMOUNT
        if sharpen > 0:
            texture += sharpen * (texture - cv2.GaussianBlur(texture, (0, 0), SHARPEN_SIGMA_PX))
        texture = np.clip(texture, 0, 255)

        vertices = warp_vertices(to_frame.apply(shape))  # the decoded face, with its outline rings
        height, width = image_rgb.shape[:2]
        x0, y0 = np.maximum(np.floor(vertices.min(0)).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(vertices.max(0)).astype(int) + 1, (width, height))
        if x1 <= x0 or y1 <= y0:
            raise RenderError("face outside the image")
        frame_px = to_frame.scale / t.canonical_scale  # frame pixels per canonical pixel
        # the texture and the softened band hold no finer detail than this: draw them at up to
        # RENDER_PX_PER_CANONICAL_PX and enlarge
        scale = min(1.0, RENDER_PX_PER_CANONICAL_PX / frame_px)
        box_width, box_height = x1 - x0, y1 - y0
        small_width, small_height = max(int(np.ceil(box_width * scale)), 1), max(int(np.ceil(box_height * scale)), 1)
        # per pixel: where in the texture, where in the frame (the band outside the mesh is the
        # frame's own surroundings of this face, moved onto the decoded outline), and weights
        sources = warp_vertices(landmarks)
        attributes = np.column_stack([t.canonical_vertices, sources, t.vertex_weights])
        u, v, source_x, source_y, face_weight, opacity = rasterize_attributes(
            (vertices - (x0, y0) + 0.5) * scale - 0.5, t.canonical_vertices, t.triangles, attributes.astype(np.float32),
            small_width, small_height,
        )  # fmt: skip
        decoded = cv2.remap(texture, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # outside the mesh: the frame, softened, so hair/ear/outline detail does not survive
        surroundings = SoftenedCrop.around(image_rgb, sources, scale, SOFTEN_SIGMA_PX * frame_px).remap(source_x, source_y)
        face_weight = smoothstep(face_weight)
        colour_opacity = np.dstack([surroundings + face_weight[..., None] * (decoded - surroundings), smoothstep(opacity)])
        if scale < 1.0:
            colour_opacity, face_weight = (
                cv2.resize(plane, (box_width, box_height), interpolation=cv2.INTER_LINEAR)
                for plane in (colour_opacity, face_weight)
            )
        grain = self._skin_detail(image_rgb, to_frame, frame_px, (x0, y0, x1, y1), face_weight)
        blend_into(image_rgb, colour_opacity, grain, x0, y0)
