"""The model manifest: a YAML file beside the ONNX files declaring how to feed and read them.

Two kinds are supported:

* ``appearance`` (dpstream's own model): the encoder maps a canonical shape-free ``texture``
  (1x3xSxS) and an aligned ``shape`` (1x468x2) to ``identity`` (1xD); the decoder maps
  ``identity`` and a pose/expression code ``expression`` (1xE) to ``texture`` and ``shape``.
  ``alignment.template`` names an ``.npz`` with the mean shape, triangulation and blend mask.
* ``face_swap`` (the common swap form): the encoder maps an aligned crop (1x3xAxA) to an identity
  embedding (1xD); the decoder maps a target crop (1x3xSxS, its one 4-D input) and an identity
  (1xD, its one 2-D input) to the swapped crop (1x3xSxS). Crops are aligned by five points
  (eye centres, nose tip, mouth corners) to ``alignment.five_points`` given as fractions of
  the crop size (default: the ArcFace template).

Optional ``refiner`` (appearance models): a network from the decoder's canonical texture
(1x3xSxS, 0..255 RGB, its one input) to a refined texture of the same shape, run after the
decoder and before colour matching. It sees only the decoder's output, so it is
post-processing of the DP release like the codebook below.

Optional ``generator`` (appearance models, instead of a refiner): a network from the decoder's
canonical ``texture`` (1x3xSxS) and the face's kept ``context`` (1x4xSxS: the frame's canonical
texture outside the face mesh as mean colours of ``context_cell_px`` cells, and its weight) to
the texture drawn (1x3xSxS). Its inputs are the release and channels the renderer keeps anyway:
post-processing, like the context stage below (``tools/train_generator.py``).

Optional ``expression_from_frame`` (appearance models): the indices of the pose/expression
modes taken from the frame; the others are left at 0 (the average face's). Default: all.

Optional ``context`` (appearance models): ``file`` names a ``context.npz``
(``dpstream/face_model/context.py``) that fits the released identity to the head around the
face (its kept surroundings and outline colour); post-processing like the codebook.

Optional ``post_processing``: ``codebook`` (a .npy of K plausible identity vectors) and
``neighbours``: a noisy release is replaced by the mean of the ``neighbours`` codebook entries
most aligned with it, scaled to ``typical_norm`` (without a codebook: the noisy vector itself,
scaled). Either is post-processing of the DP output and costs no privacy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from dpstream.face_model.errors import ManifestError

FORMAT = "dpstream-face-model/1"
KINDS = ("appearance", "face_swap")
ARCFACE_FIVE_POINTS = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
) / 112.0
"""The usual 5-point face-swap/recognition template as fractions of the crop size."""

DEFAULT_MANIFEST = Path(__file__).resolve().parent / "assets" / "manifest.yaml"
BUILT_IN_MANIFESTS = {
    "default": DEFAULT_MANIFEST,
    "plain": DEFAULT_MANIFEST.with_name("manifest_plain.yaml"),
    "fitted": DEFAULT_MANIFEST.with_name("manifest_fitted.yaml"),
}
"""Models shipped in the package, by name: the default has the refiner stage (sharper eyes, brows
and lips); ``plain`` is the same model without it (softer faces; a recognizer matches them to the
original person slightly less often, see PRIVACY.md)."""


@dataclass(frozen=True, slots=True)
class Normalization:
    """network value = (pixel value 0..255 in ``channel_order`` - mean) / std, per channel."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str  # "RGB" or "BGR"

    def to_network(self, image_rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) RGB 0..255 -> (1, 3, H, W) float32 network input."""
        channels = image_rgb if self.channel_order == "RGB" else image_rgb[..., ::-1]
        scaled = (channels.astype(np.float32) - np.float32(self.mean)) / np.float32(self.std)
        return np.ascontiguousarray(scaled.transpose(2, 0, 1)[None])

    def from_network(self, tensor: np.ndarray) -> np.ndarray:
        """(1, 3, H, W) network output -> (H, W, 3) RGB float32 0..255."""
        image = tensor[0].transpose(1, 2, 0) * np.float32(self.std) + np.float32(self.mean)
        return np.ascontiguousarray(image if self.channel_order == "RGB" else image[..., ::-1], np.float32)


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """One ONNX file and its declared tensors (name -> shape)."""

    path: Path
    inputs: dict[str, tuple[int, ...]]
    outputs: dict[str, tuple[int, ...]]
    normalization: Normalization

    @property
    def input_name(self) -> str:
        return next(iter(self.inputs))


@dataclass(frozen=True, slots=True)
class Manifest:
    path: Path
    kind: str
    name: str
    embedding_dim: int
    clip_norm: float
    typical_norm: float  # post-processing projects noisy vectors to this norm
    encoder: NetworkSpec
    decoder: NetworkSpec
    crop_size: int
    template_path: Path | None  # appearance: the .npz template
    five_points: np.ndarray  # face_swap: (5, 2) alignment template, fractions of the crop size
    codebook_path: Path | None = None  # post-processing: plausible identities (K, D)
    codebook_neighbours: int = 1  # how many nearest codebook identities a release is mixed from
    refiner: NetworkSpec | None = None  # appearance: post-decoder texture refiner
    expression_from_frame: tuple[int, ...] | None = None  # appearance: modes taken from the frame (None: all)
    context_path: Path | None = None  # appearance: context model fitting the release to the head (.npz)
    generator: NetworkSpec | None = None  # appearance: texture generator from the release and the kept context
    context_cell_px: int = 4  # generator: cell size of its context input


def _require(mapping: dict, key: str, where: str):
    if not isinstance(mapping, dict) or key not in mapping:
        raise ManifestError(f"model manifest: missing key '{where}{key}'")
    return mapping[key]


def _positive(value, key: str, kind=float):
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ManifestError(f"model manifest: '{key}' must be a number, got {value!r}") from None
    if number <= 0:
        raise ManifestError(f"model manifest: '{key}' must be positive, got {value!r}")
    return number


def _tensors(raw, key: str) -> dict[str, tuple[int, ...]]:
    if not isinstance(raw, dict) or not raw:
        raise ManifestError(f"model manifest: '{key}' must map tensor names to shapes")
    try:
        return {str(name): tuple(int(d) for d in shape) for name, shape in raw.items()}
    except (TypeError, ValueError):
        raise ManifestError(f"model manifest: '{key}' shapes must be lists of integers") from None


def _normalization(raw, key: str) -> Normalization:
    raw = raw or {"mean": [0, 0, 0], "std": [1, 1, 1]}
    mean, std = raw.get("mean", [0, 0, 0]), raw.get("std", [1, 1, 1])
    mean, std = [mean] * 3 if np.isscalar(mean) else mean, [std] * 3 if np.isscalar(std) else std
    if len(mean) != 3 or len(std) != 3 or any(float(s) == 0 for s in std):
        raise ManifestError(f"model manifest: '{key}' needs 3 means and 3 non-zero stds")
    order = str(raw.get("channel_order", "RGB")).upper()
    if order not in ("RGB", "BGR"):
        raise ManifestError(f"model manifest: '{key}.channel_order' must be RGB or BGR, got {order!r}")
    return Normalization(tuple(map(float, mean)), tuple(map(float, std)), order)


def _network(raw, key: str, folder: Path) -> NetworkSpec:
    path = folder / str(_require(raw, "file", f"{key}."))
    if not path.is_file():
        raise ManifestError(f"model manifest: '{key}.file' not found: {path}")
    inputs = _tensors(_require(raw, "inputs", f"{key}."), f"{key}.inputs")
    raw_outputs = raw.get("outputs") or {str(_require(raw, "output", f"{key}.")): []}
    outputs = _tensors(raw_outputs, f"{key}.outputs") if isinstance(raw_outputs, dict) else {}
    return NetworkSpec(path, inputs, outputs, _normalization(raw.get("normalization"), f"{key}.normalization"))


def _check_appearance(manifest: Manifest) -> None:
    dim = manifest.embedding_dim
    expected = {
        "encoder.inputs": (set(manifest.encoder.inputs), {"texture", "shape"}),
        "decoder.inputs": (set(manifest.decoder.inputs), {"identity", "expression"}),
        "decoder.outputs": (set(manifest.decoder.outputs), {"texture", "shape"}),
    }
    for key, (declared, wanted) in expected.items():
        if declared != wanted:
            raise ManifestError(f"model manifest: '{key}' must be {sorted(wanted)}, got {sorted(declared)}")
    if manifest.decoder.inputs["identity"][-1] != dim:
        raise ManifestError(f"model manifest: 'decoder.inputs.identity' must end in embedding_dim {dim}")
    if manifest.template_path is None or not manifest.template_path.is_file():
        raise ManifestError(f"model manifest: 'alignment.template' not found: {manifest.template_path}")
    modes = manifest.decoder.inputs["expression"][-1]
    if manifest.expression_from_frame is not None and not all(0 <= m < modes for m in manifest.expression_from_frame):
        raise ManifestError(f"model manifest: 'expression_from_frame' must list mode indices below {modes}")
    if manifest.refiner is not None:
        texture = (1, 3, manifest.crop_size, manifest.crop_size)
        if list(manifest.refiner.inputs.values()) != [texture] or list(manifest.refiner.outputs.values()) != [texture]:
            raise ManifestError(f"model manifest: 'refiner' must map one {texture} texture to one {texture} texture")
    if manifest.generator is not None:
        size = manifest.crop_size
        wanted = {"texture": (1, 3, size, size), "context": (1, 4, size, size)}
        if manifest.generator.inputs != wanted or list(manifest.generator.outputs.values()) != [wanted["texture"]]:
            raise ManifestError(f"model manifest: 'generator' must map inputs {wanted} to one {wanted['texture']} texture")
        if manifest.refiner is not None:
            raise ManifestError("model manifest: give a 'refiner' or a 'generator', not both")
        if size % manifest.context_cell_px:
            raise ManifestError(f"model manifest: 'generator.context_cell_px' must divide the crop size {size}")


def _check_face_swap(manifest: Manifest) -> None:
    dim = manifest.embedding_dim
    encoder_images = [s for s in manifest.encoder.inputs.values() if len(s) == 4]
    if len(manifest.encoder.inputs) != 1 or not encoder_images or encoder_images[0][1] != 3:
        raise ManifestError("model manifest: 'encoder.inputs' must be one 1x3xAxA crop")
    crops = [s for s in manifest.decoder.inputs.values() if len(s) == 4]
    identities = [s for s in manifest.decoder.inputs.values() if len(s) == 2]
    if len(manifest.decoder.inputs) != 2 or len(crops) != 1 or len(identities) != 1:
        raise ManifestError("model manifest: 'decoder.inputs' must be one 1x3xSxS crop and one 1xD identity")
    if identities[0][1] != dim:
        raise ManifestError(f"model manifest: decoder identity input must have embedding_dim {dim}, got {identities[0]}")
    if crops[0][1] != 3 or crops[0][2] != crops[0][3] or crops[0][2] != manifest.crop_size:
        raise ManifestError(f"model manifest: decoder crop input must be 1x3x{manifest.crop_size}x{manifest.crop_size}")
    if manifest.five_points.shape != (5, 2):
        raise ManifestError("model manifest: 'alignment.five_points' must be 5 [x, y] pairs")


def _mode_list(raw) -> tuple[int, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(m, int) and not isinstance(m, bool) for m in raw) or len(set(raw)) != len(raw):
        raise ManifestError(f"model manifest: 'expression_from_frame' must be a list of distinct mode indices, got {raw!r}")
    return tuple(raw)


def load_manifest(path: str | Path | None = None) -> Manifest:
    """Read and validate a manifest: a path, the name of a built-in model (``BUILT_IN_MANIFESTS``),
    or ``None`` for the default model."""
    path = BUILT_IN_MANIFESTS.get(str(path), Path(path)) if path is not None else DEFAULT_MANIFEST
    if not path.is_file():
        raise ManifestError(f"model manifest not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ManifestError(f"model manifest {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"model manifest {path} must be a mapping")
    try:
        return _parse_manifest(raw, path)
    except ManifestError as error:
        raise ManifestError(f"{path}: {error}") from None


def _parse_manifest(raw: dict, path: Path) -> Manifest:
    if raw.get("format", FORMAT) != FORMAT:
        raise ManifestError(f"model manifest: 'format' must be {FORMAT!r}, got {raw.get('format')!r}")
    kind = str(_require(raw, "kind", ""))
    if kind not in KINDS:
        raise ManifestError(f"model manifest: 'kind' must be one of {KINDS}, got {kind!r}")
    folder = path.parent
    alignment = raw.get("alignment") or {}
    template = alignment.get("template")
    post_processing = raw.get("post_processing") or {}
    codebook = post_processing.get("codebook")
    if codebook is not None and not (folder / str(codebook)).is_file():
        raise ManifestError(f"model manifest: 'post_processing.codebook' not found: {folder / str(codebook)}")
    five_points = np.asarray(alignment.get("five_points", ARCFACE_FIVE_POINTS), np.float64)
    context_raw = raw.get("context")
    if context_raw is not None and not (isinstance(context_raw, dict) and context_raw.get("file")):
        raise ManifestError("model manifest: 'context' must be a mapping with a 'file'")
    context = context_raw["file"] if context_raw is not None else None
    if context is not None and not (folder / str(context)).is_file():
        raise ManifestError(f"model manifest: 'context.file' not found: {folder / str(context)}")
    manifest = Manifest(
        path=path,
        kind=kind,
        name=str(raw.get("name", path.parent.name)),
        embedding_dim=_positive(_require(raw, "embedding_dim", ""), "embedding_dim", int),
        clip_norm=_positive(_require(raw, "clip_norm", ""), "clip_norm"),
        typical_norm=_positive(raw.get("typical_norm", raw["clip_norm"]), "typical_norm"),
        encoder=_network(_require(raw, "encoder", ""), "encoder", folder),
        decoder=_network(_require(raw, "decoder", ""), "decoder", folder),
        crop_size=_positive(_require(alignment, "crop_size", "alignment."), "alignment.crop_size", int),
        template_path=folder / str(template) if template else None,
        five_points=five_points,
        codebook_path=folder / str(codebook) if codebook is not None else None,
        codebook_neighbours=_positive(post_processing.get("neighbours", 1), "post_processing.neighbours", int),
        refiner=_network(raw["refiner"], "refiner", folder) if raw.get("refiner") is not None else None,
        expression_from_frame=_mode_list(raw.get("expression_from_frame")),
        context_path=folder / str(context) if context is not None else None,
        generator=_network(raw["generator"], "generator", folder) if raw.get("generator") is not None else None,
        context_cell_px=_positive((raw.get("generator") or {}).get("context_cell_px", 4), "generator.context_cell_px", int),
    )
    for stage in ("refiner", "context", "generator"):
        if raw.get(stage) is not None and kind != "appearance":
            raise ManifestError(f"model manifest: '{stage}' is only supported for kind 'appearance'")
    (_check_appearance if kind == "appearance" else _check_face_swap)(manifest)
    return manifest
