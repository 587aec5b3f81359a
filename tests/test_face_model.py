"""The shipped DP face model with real ONNX Runtime, manifest validation and the face-swap form."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from dpstream.face_model import FaceModel, ManifestError, RenderError, load_manifest
from dpstream.face_model.alignment import MESH_POINTS, fit_similarity, warp_vertices
from dpstream.face_model.appearance import AppearanceTemplate
from dpstream.face_model.manifest import BUILT_IN_MANIFESTS, DEFAULT_MANIFEST

SHARED = Path(os.environ.get("DPSTREAM_SHARED", Path(__file__).resolve().parents[2] / "shared"))


@pytest.fixture(scope="module")
def model() -> FaceModel:
    return FaceModel.load()


@pytest.fixture(scope="module")
def fitted() -> FaceModel:
    return FaceModel.load("fitted")


def synthetic_face(size: int = 256, radius: float = 60.0, angle: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """A textured image and (468, 2) landmarks: the model's mean shape, rotated and placed."""
    mean_shape = AppearanceTemplate.load(load_manifest().template_path).mean_shape
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    mesh = mean_shape @ rotation.T * radius + size / 2
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return image, mesh.astype(np.float32)


def test_encode_gives_a_bounded_vector_of_the_declared_dimension(model):
    image, landmarks = synthetic_face()
    identity = model.encode(image, landmarks)
    assert identity.shape == (model.dim,)
    assert np.isfinite(identity).all()
    assert np.linalg.norm(identity) <= model.clip_norm + 1e-9
    assert model.dim == load_manifest().embedding_dim


def test_post_processing_releases_a_codebook_mix_at_the_typical_norm(model):
    noisy = np.random.default_rng(1).normal(0, 5, model.dim)
    released = model.post_process(noisy)
    assert np.linalg.norm(released) == pytest.approx(model.manifest.typical_norm)
    codebook = np.load(model.manifest.codebook_path).astype(np.float64)
    neighbours = model.manifest.codebook_neighbours
    nearest = np.argsort(-(codebook / np.linalg.norm(codebook, axis=1, keepdims=True)) @ noisy)[:neighbours]
    expected = codebook[nearest].mean(0)
    assert np.allclose(released, expected * model.manifest.typical_norm / np.linalg.norm(expected))


def test_decoder_output_depends_on_the_identity(model):
    backend = model._backend
    expression = np.zeros(backend.template.expression_std.shape)
    first = backend.decode(np.zeros(model.dim), expression)
    code = model.post_process(np.random.default_rng(2).normal(size=model.dim))
    second = backend.decode(code, expression)
    assert first[0].shape == (128, 128, 3) and first[1].shape == (MESH_POINTS, 2)
    assert np.abs(first[0] - second[0]).mean() > 2.0  # texture changes
    assert np.abs(first[1] - second[1]).max() > 1e-3  # identity shape changes


def test_each_person_is_decoded_once_with_the_decoders_own_result(model):
    backend = model._backend
    assert backend._separable_decoder  # the default model's texture ignores the expression
    assert backend._shared_shape_per_expression is not None  # and its shape is linear: one decoder pass per person
    rng = np.random.default_rng(4)
    code = model.post_process(rng.normal(size=model.dim))
    for _ in range(3):
        expression = rng.normal(size=backend.template.expression_std.shape) * backend.template.expression_std
        texture, shape = backend.decode(code, expression)
        kept_texture, kept_shape = backend.face_texture(code, expression)
        assert np.abs(kept_shape - shape).max() < 1e-5 * np.abs(shape).max()
    assert len(backend._people) >= 1 and not kept_texture.flags.writeable


def test_a_decoder_whose_texture_follows_the_expression_is_decoded_every_frame(tmp_path):
    from onnx import TensorProto, helper, numpy_helper, save

    manifest = load_manifest(None)
    template = AppearanceTemplate.load(manifest.template_path)
    expressions = template.expression_std.shape[0]
    rng = np.random.default_rng(5)
    texture_weights = rng.normal(size=(manifest.embedding_dim + expressions, 3 * 128 * 128)).astype(np.float32)
    shape_weights = rng.normal(size=(manifest.embedding_dim + expressions, MESH_POINTS * 2)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Concat", ["identity", "expression"], ["code"], axis=1),
            helper.make_node("MatMul", ["code", "texture_weights"], ["texture_flat"]),
            helper.make_node("Reshape", ["texture_flat", "texture_dims"], ["texture"]),
            helper.make_node("MatMul", ["code", "shape_weights"], ["shape_flat"]),
            helper.make_node("Reshape", ["shape_flat", "shape_dims"], ["shape"]),
        ],
        "expression_texture_decoder",
        [
            helper.make_tensor_value_info("identity", TensorProto.FLOAT, [1, manifest.embedding_dim]),
            helper.make_tensor_value_info("expression", TensorProto.FLOAT, [1, expressions]),
        ],
        [
            helper.make_tensor_value_info("texture", TensorProto.FLOAT, [1, 3, 128, 128]),
            helper.make_tensor_value_info("shape", TensorProto.FLOAT, [1, MESH_POINTS, 2]),
        ],
        [
            numpy_helper.from_array(texture_weights, "texture_weights"),
            numpy_helper.from_array(np.array([1, 3, 128, 128], np.int64), "texture_dims"),
            numpy_helper.from_array(shape_weights, "shape_weights"),
            numpy_helper.from_array(np.array([1, MESH_POINTS, 2], np.int64), "shape_dims"),
        ],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "decoder.onnx")
    raw = yaml.safe_load(manifest.path.read_text())
    for name in ("encoder.onnx", "template.npz", "codebook.npy", "refiner.onnx"):
        os.symlink(manifest.path.parent / name, tmp_path / name)
    raw["decoder"]["file"] = "decoder.onnx"
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(raw))
    backend = FaceModel.load(tmp_path / "manifest.yaml")._backend
    assert not backend._separable_decoder
    code, expression = np.zeros(manifest.embedding_dim), template.expression_std.copy()
    texture, _ = backend.face_texture(code, expression)
    assert np.abs(texture - backend.face_texture(code, -expression)[0]).mean() > 1.0
    assert len(backend._people) == 0


def test_render_changes_the_face_region_and_only_it(model):
    image, landmarks = synthetic_face()
    rendered = image.copy()
    model.render(rendered, landmarks, model.post_process(np.random.default_rng(3).normal(size=model.dim)))
    changed = (rendered != image).any(axis=2)
    inside = np.zeros_like(changed)
    import cv2

    hull = cv2.convexHull(warp_vertices(landmarks).astype(np.float32)).astype(np.int32)
    cv2.fillConvexPoly(inside.view(np.uint8), hull, 1)
    assert changed[inside].mean() > 0.5  # the face is redrawn
    outside = ~cv2.dilate(inside.view(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert not changed[outside].any()  # nothing else is touched


def test_only_the_declared_pose_and_expression_modes_come_from_the_frame(model):
    backend = model._backend
    template = backend.template
    assert model.manifest.expression_from_frame == (0, 1, 3)  # turn, nod, mouth opening
    _, landmarks = synthetic_face()
    to_frame = fit_similarity(template.mean_shape, landmarks[:MESH_POINTS])
    for mode in range(len(template.expression_std)):
        step = 2 * template.expression_std[mode] * template.expression_basis[:, mode].reshape(-1, 2)
        moved = to_frame.apply(template.mean_shape + step)
        code = backend.expression_code(moved, backend._pose(moved))
        assert np.all(code[[2, 4, 5]] == 0)  # modes that carry identity stay at the average face's
        if mode in (0, 1, 3):
            assert code[mode] == pytest.approx(2 * template.expression_std[mode], rel=0.05)


def test_render_refuses_tiny_and_folded_faces(model):
    image, landmarks = synthetic_face(radius=3.0)
    with pytest.raises(RenderError, match="too small"):
        model.render(image.copy(), landmarks, np.zeros(model.dim))
    image, landmarks = synthetic_face()
    folded = landmarks.copy()
    centre_x = folded[:MESH_POINTS, 0].mean()
    folded[:MESH_POINTS, 0] = centre_x + np.abs(folded[:MESH_POINTS, 0] - centre_x)  # both halves on one side
    untouched = image.copy()
    with pytest.raises(RenderError):
        model.render(image, folded, np.zeros(model.dim))
    assert (image == untouched).all()
    with pytest.raises(RenderError, match="mesh"):
        model.encode(image, np.full((MESH_POINTS, 2), np.nan, np.float32))


def test_render_rejects_identities_of_the_wrong_size(model):
    image, landmarks = synthetic_face()
    with pytest.raises(RenderError, match="identity"):
        model.render(image, landmarks, np.zeros(model.dim + 1))


def test_default_manifest_fields_and_package_size():
    manifest = load_manifest(None)
    assert manifest.kind == "appearance"
    assert manifest.crop_size == 128
    assert manifest.clip_norm > 0 and manifest.typical_norm > 0
    assert manifest.decoder.inputs["identity"] == (1, manifest.embedding_dim)
    assets = DEFAULT_MANIFEST.parent
    assert sum(p.stat().st_size for p in assets.iterdir()) < 40e6


def test_refiner_stage_runs_and_changes_the_rendered_face(model):
    unrefined_model = FaceModel.load("plain")
    backend = model._backend
    assert backend.refiner is not None and model.manifest.refiner is not None
    texture, _ = backend.decode(model.post_process(np.random.default_rng(5).normal(size=model.dim)),
                                np.zeros(backend.template.expression_std.shape))  # fmt: skip
    refined = backend.refine(texture)
    assert refined.shape == texture.shape and np.isfinite(refined).all()
    assert np.abs(refined - texture).mean() > 1.0  # it really changes the decoded texture
    assert np.abs(refined - texture).mean() < 40.0  # and keeps it a face of the same colours

    assert unrefined_model._backend.refiner is None  # the plain model has no refiner
    image, landmarks = synthetic_face()
    identity = model.post_process(np.random.default_rng(6).normal(size=model.dim))
    with_refiner, without_refiner = image.copy(), image.copy()
    model.render(with_refiner, landmarks, identity)
    unrefined_model.render(without_refiner, landmarks, identity)
    centre = landmarks[:MESH_POINTS].mean(0).astype(int)
    face = (slice(centre[1] - 20, centre[1] + 20), slice(centre[0] - 20, centre[0] + 20))
    assert np.abs(with_refiner[face].astype(int) - without_refiner[face]).mean() > 1.0


def write_manifest(folder: Path, data: dict) -> Path:
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("embedding_dim"), "embedding_dim"),
        (lambda m: m.update(kind="gan"), "kind"),
        (lambda m: m.update(clip_norm=-1), "clip_norm"),
        (lambda m: m["encoder"].update(file="missing.onnx"), "encoder.file"),
        (lambda m: m["decoder"]["inputs"].update(identity=[1, 7]), "embedding_dim"),
        (lambda m: m["decoder"]["normalization"].update(channel_order="XYZ"), "channel_order"),
        (lambda m: m["alignment"].update(template="missing.npz"), "alignment.template"),
        (lambda m: m["post_processing"].update(codebook="missing.npy"), "post_processing.codebook"),
        (lambda m: m["post_processing"].update(neighbours=0), "post_processing.neighbours"),
        (lambda m: m["refiner"].update(file="missing.onnx"), "refiner.file"),
        (lambda m: m["refiner"]["inputs"].update(texture=[1, 3, 64, 64]), "refiner"),
        (lambda m: m.update(expression_from_frame=[0, 6]), "expression_from_frame"),
        (lambda m: m.update(expression_from_frame="0,1"), "expression_from_frame"),
        (lambda m: m.update(context={"file": "missing.npz"}), "context.file"),
        (lambda m: m.update(context="context.npz"), "'context' must be a mapping"),
    ],
)
def test_manifest_validation_names_the_bad_key(tmp_path, change, message):
    raw = yaml.safe_load(BUILT_IN_MANIFESTS["default"].read_text())
    for name in ("encoder.onnx", "decoder.onnx", "template.npz", "codebook.npy", "refiner.onnx", "context.npz"):
        (tmp_path / name).symlink_to(DEFAULT_MANIFEST.parent / name)
    change(raw)
    with pytest.raises(ManifestError, match=message):
        load_manifest(write_manifest(tmp_path, raw))


def test_a_context_file_that_does_not_fit_the_model_is_refused(tmp_path):
    raw = yaml.safe_load(BUILT_IN_MANIFESTS["fitted"].read_text())
    for name in ("encoder.onnx", "decoder.onnx", "template.npz", "codebook.npy", "refiner.onnx"):
        (tmp_path / name).symlink_to(DEFAULT_MANIFEST.parent / name)
    context = dict(np.load(DEFAULT_MANIFEST.parent / "context.npz"))
    np.savez(tmp_path / "context.npz", **{**context, "weights": context["weights"][:, :-1]})
    with pytest.raises(ManifestError, match="does not fit a 128-d model"):
        FaceModel.load(write_manifest(tmp_path, raw))
    (tmp_path / "context.npz").write_bytes(b"not an npz")
    with pytest.raises(ManifestError, match="not a context model"):
        FaceModel.load(write_manifest(tmp_path, raw))


def test_manifest_errors_for_missing_or_invalid_files(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("kind: [unclosed")
    with pytest.raises(ManifestError, match="YAML"):
        load_manifest(tmp_path / "bad.yaml")


def build_face_swap_pair(folder: Path) -> None:
    """A tiny encoder (1x3x112x112 -> 1x512) and swapper (1x3x128x128 + 1x512 -> 1x3x128x128)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    encoder = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["crop"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "weights"], ["embedding"]),
        ],
        "tiny_encoder",
        [helper.make_tensor_value_info("crop", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 512])],
        [numpy_helper.from_array(rng.normal(size=(3, 512)).astype(np.float32), "weights")],
    )
    swapper = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["source"], ["shift"], keepdims=1),
            helper.make_node("Mul", ["shift", "gain"], ["scaled_shift"]),
            helper.make_node("Sub", ["one", "target"], ["inverted"]),
            helper.make_node("Add", ["inverted", "scaled_shift"], ["output"]),
        ],
        "tiny_swapper",
        [
            helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, 128, 128]),
            helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 512]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 128, 128])],
        [
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(5.0, np.float32), "gain"),
        ],
    )
    for graph, name in ((encoder, "encoder.onnx"), (swapper, "swapper.onnx")):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, str(folder / name))


def test_face_swap_form_manifest_encodes_and_renders(tmp_path):
    build_face_swap_pair(tmp_path)
    path = write_manifest(
        tmp_path,
        {
            "kind": "face_swap",
            "embedding_dim": 512,
            "clip_norm": 1.0,
            "encoder": {
                "file": "encoder.onnx",
                "inputs": {"crop": [1, 3, 112, 112]},
                "output": "embedding",
                "normalization": {"mean": 127.5, "std": 127.5},
            },
            "decoder": {
                "file": "swapper.onnx",
                "inputs": {"target": [1, 3, 128, 128], "source": [1, 512]},
                "outputs": {"output": [1, 3, 128, 128]},
                "normalization": {"mean": 0.0, "std": 255.0},
            },
            "alignment": {"crop_size": 128},
        },
    )
    model = FaceModel.load(path)
    assert (model.dim, model.clip_norm) == (512, 1.0)
    image, landmarks = synthetic_face(radius=40.0)
    identity = model.encode(image, landmarks)
    assert identity.shape == (512,) and np.linalg.norm(identity) == pytest.approx(1.0)
    rendered = image.copy()
    model.render(rendered, landmarks, model.post_process(np.ones(512)))
    changed = (rendered != image).any(axis=2)
    face_centre = landmarks[:MESH_POINTS].mean(0).astype(int)
    assert changed[face_centre[1] - 10 : face_centre[1] + 10, face_centre[0] - 10 : face_centre[0] + 10].all()
    assert not changed[:5].any() and not changed[-5:].any()  # the frame's edges are untouched


def test_face_swap_manifest_rejects_a_wrong_signature(tmp_path):
    build_face_swap_pair(tmp_path)
    raw = {
        "kind": "face_swap",
        "embedding_dim": 256,
        "clip_norm": 1.0,
        "encoder": {"file": "encoder.onnx", "inputs": {"crop": [1, 3, 112, 112]}, "output": "embedding"},
        "decoder": {"file": "swapper.onnx", "inputs": {"target": [1, 3, 128, 128], "source": [1, 512]}, "output": "output"},
        "alignment": {"crop_size": 128},
    }
    with pytest.raises(ManifestError, match="embedding_dim"):
        load_manifest(write_manifest(tmp_path, raw))


@pytest.mark.skipif(not (SHARED / "data" / "lfw").is_dir(), reason="needs ../shared/data/lfw (set DPSTREAM_SHARED)")
def test_real_lfw_face_round_trip(model):
    image, landmarks = lfw_face("Aaron_Eckhart_0001")
    identity = model.encode(image, landmarks)
    reconstruction, anonymized = image.copy(), image.copy()
    model.render(reconstruction, landmarks, identity)
    model.render(anonymized, landmarks, model.post_process(np.random.default_rng(4).normal(size=model.dim)))
    face = (slice(90, 160), slice(95, 155))
    own_error = np.abs(reconstruction[face].astype(int) - image[face]).mean()
    other_error = np.abs(anonymized[face].astype(int) - image[face]).mean()
    assert own_error < other_error  # the decoder reproduces the encoded identity
    to_frame = fit_similarity(model._backend.template.mean_shape, landmarks[:MESH_POINTS])
    assert to_frame.scale > 20


def lfw_face(name: str) -> tuple[np.ndarray, np.ndarray]:
    """An LFW image (RGB) and its MediaPipe face-mesh landmarks (478, 2) in pixels."""
    import cv2
    import mediapipe as mp

    image = cv2.cvtColor(cv2.imread(str(SHARED / "data" / "lfw" / name.rsplit("_", 1)[0] / f"{name}.jpg")), cv2.COLOR_BGR2RGB)
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as mesh:
        found = mesh.process(image).multi_face_landmarks[0].landmark
    return image, np.array([(p.x * image.shape[1], p.y * image.shape[0]) for p in found], np.float32)


@pytest.mark.skipif(not (SHARED / "data" / "lfw").is_dir(), reason="needs ../shared/data/lfw (set DPSTREAM_SHARED)")
def test_a_close_up_gets_fine_detail_that_follows_the_frames(model):
    import cv2

    from dpstream.face_model.appearance import frame_detail_level

    small, landmarks = lfw_face("Aaron_Eckhart_0001")
    smooth = cv2.resize(small, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)  # a ~450-px face
    grain = cv2.GaussianBlur(np.random.default_rng(0).normal(0, 6, smooth.shape[:2]).astype(np.float32), (0, 0), 0.7)
    grainy = np.clip(smooth + grain[..., None], 0, 255).astype(np.uint8)  # the same, with a camera's grain
    landmarks = landmarks * 4
    x0, y0 = landmarks[:MESH_POINTS].min(0).astype(int)
    x1, y1 = landmarks[:MESH_POINTS].max(0).astype(int)
    face = (slice(y0, y1), slice(x0, x1))  # its middle half is measured
    identity = model.post_process(np.random.default_rng(4).normal(size=model.dim))
    levels = {}
    for name, image in (("smooth", smooth), ("grainy", grainy)):
        anonymized = image.copy()
        model.render(anonymized, landmarks, identity)
        assert (anonymized[face] != image[face]).any(axis=2).mean() > 0.9
        levels[name] = frame_detail_level(anonymized[face])
    assert levels["grainy"] > 1.3 * levels["smooth"]  # the new face's detail follows the frame's
    assert levels["grainy"] < frame_detail_level(grainy[face])  # and never exceeds it


def test_dp_face_replacer_renders_tracked_faces_and_falls_back_on_the_rest(model):
    from dpstream.privacy import PrivacyConfig
    from dpstream.replace.dp_face import DpFaceReplacer
    from dpstream.types import Faces, VideoFrame

    image, landmarks = synthetic_face(size=512, radius=50.0)
    other = landmarks + np.float32(220.0)  # a second face, untracked
    no_mesh = np.full_like(landmarks, np.nan)
    boxes = np.array([[150, 150, 360, 360], [370, 370, 510, 510], [0, 0, 60, 60]], np.float32)
    faces = Faces(boxes, np.ones(3, np.float32), np.stack([landmarks, other, no_mesh]), np.array([7, -1, 8]))
    replacer = DpFaceReplacer(model, PrivacyConfig(epsilon=4.0), testing_seed=0)
    result = replacer.replace(VideoFrame(image.copy(), 0), faces)
    assert result.fallbacks == 2  # the untracked face and the face without a mesh
    assert (result.frame.image[250:260, 250:260] != image[250:260, 250:260]).any()
    assert replacer.summary()["faces_rendered"] == 1


def eval_split_faces(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first image of each of the first ``count`` LFW eval identities (never seen in training)."""
    rows = [line.split("\t") for line in (SHARED / "data" / "lfw_split.tsv").read_text().splitlines()[1:]]
    names = [identity for identity, _, split in rows if split.strip() == "eval"][:count]
    return [lfw_face(f"{name}_0001") for name in names]


@pytest.mark.skipif(not (SHARED / "data" / "lfw").is_dir(), reason="needs ../shared/data/lfw (set DPSTREAM_SHARED)")
def test_the_context_stage_predicts_part_of_an_unseen_persons_code_from_the_head_around_it(model, fitted):
    errors, spreads = [], []
    for image, landmarks in eval_split_faces(16):
        code = model.encode(image, landmarks)
        predicted = fitted.condition(image, landmarks, np.zeros(model.dim)).identity  # the release's part is 0 here
        assert np.array_equal(model.condition(image, landmarks, code).identity, code)  # no stage (default): unchanged
        errors.append(np.sum((code - predicted) ** 2))
        spreads.append(np.sum(code**2))  # the error of predicting the mean (zero) code
    assert np.mean(errors) < 0.85 * np.mean(spreads)  # held-out R² on the train split's fifth: 0.32
    release = model.post_process(np.random.default_rng(7).normal(size=model.dim))
    first, second = (fitted.condition(image, landmarks, release).identity for image, landmarks in eval_split_faces(2))
    assert np.linalg.norm(first - second) > 0.05  # one release, two heads: two different faces


@pytest.mark.skipif(not (SHARED / "data" / "lfw").is_dir(), reason="needs ../shared/data/lfw (set DPSTREAM_SHARED)")
def test_a_person_keeps_the_face_fitted_to_its_first_frame(fitted):
    import cv2

    from dpstream.privacy import PrivacyConfig
    from dpstream.replace.dp_face import DpFaceReplacer
    from dpstream.types import Faces, VideoFrame

    image, landmarks = lfw_face("Aaron_Eckhart_0001")
    outside = np.ones(image.shape[:2], np.uint8)
    cv2.fillConvexPoly(outside, cv2.convexHull(np.round(landmarks[:MESH_POINTS]).astype(np.int32)), 0)
    relit = image.copy()
    relit[outside > 0] = 255 - relit[outside > 0]  # what is around the face mesh changes: another context
    mesh = landmarks[None, :MESH_POINTS].astype(np.float32)
    box = np.concatenate([mesh[0].min(0), mesh[0].max(0)])[None]
    faces = Faces(box, np.ones(1, np.float32), mesh, np.array([3]))
    interior = (slice(105, 145), slice(105, 145))  # well inside the face: drawn from the decoded texture

    def rendered(replacer: DpFaceReplacer, frame: np.ndarray, time: float) -> np.ndarray:
        return replacer.replace(VideoFrame(frame.copy(), time), faces).frame.image[interior].astype(int)

    tracked = DpFaceReplacer(fitted, PrivacyConfig(epsilon=1.0), testing_seed=0)
    first = rendered(tracked, image, 0.0)
    later = rendered(tracked, relit, 0.04)  # same track, new surroundings
    fresh = rendered(DpFaceReplacer(fitted, PrivacyConfig(epsilon=1.0), testing_seed=0), relit, 0.0)
    assert np.abs(later - first).mean() < 1.0  # the same face: fitted once, at its first frame
    assert np.abs(fresh - first).mean() > 3.0  # fitted to the other surroundings it is another face


def generator_model(folder: Path) -> FaceModel:
    """The default model with a small generator stage in place of its refiner: the drawn texture
    is the decoded one plus the mean colour of the kept context (its first three planes over
    their weight, the fourth), less 128: a face drawn on a brighter head comes out brighter."""
    from onnx import TensorProto, helper, numpy_helper, save

    manifest = load_manifest(None)
    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["context", "colour_start", "colour_end", "channel_axis"], ["colour"]),
            helper.make_node("Slice", ["context", "colour_end", "weight_end", "channel_axis"], ["weight"]),
            helper.make_node("ReduceSum", ["colour", "spatial_axes"], ["colour_sum"], keepdims=1),
            helper.make_node("ReduceSum", ["weight", "spatial_axes"], ["weight_sum"], keepdims=1),
            helper.make_node("Max", ["weight_sum", "one"], ["weight_floor"]),
            helper.make_node("Div", ["colour_sum", "weight_floor"], ["mean_colour"]),
            helper.make_node("Sub", ["mean_colour", "grey"], ["shift"]),
            helper.make_node("Add", ["texture", "shift"], ["generated"]),
        ],
        "context_generator",
        [
            helper.make_tensor_value_info("texture", TensorProto.FLOAT, [1, 3, 128, 128]),
            helper.make_tensor_value_info("context", TensorProto.FLOAT, [1, 4, 128, 128]),
        ],
        [helper.make_tensor_value_info("generated", TensorProto.FLOAT, [1, 3, 128, 128])],
        [
            numpy_helper.from_array(np.array([0], np.int64), "colour_start"),
            numpy_helper.from_array(np.array([3], np.int64), "colour_end"),
            numpy_helper.from_array(np.array([4], np.int64), "weight_end"),
            numpy_helper.from_array(np.array([1], np.int64), "channel_axis"),
            numpy_helper.from_array(np.array([2, 3], np.int64), "spatial_axes"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(128.0, np.float32), "grey"),
        ],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "generator.onnx")
    raw = yaml.safe_load(manifest.path.read_text())
    for name in ("encoder.onnx", "decoder.onnx", "template.npz", "codebook.npy"):
        os.symlink(manifest.path.parent / name, folder / name)
    raw.pop("refiner")
    texture = [1, 3, 128, 128]
    raw["generator"] = {"file": "generator.onnx", "inputs": {"texture": texture, "context": [1, 4, 128, 128]},
                        "outputs": {"generated": texture}, "context_cell_px": 4}  # fmt: skip
    (folder / "manifest.yaml").write_text(yaml.safe_dump(raw))
    return FaceModel.load(folder / "manifest.yaml")


def test_a_generator_draws_the_face_from_the_kept_context_of_the_persons_first_frame(tmp_path):
    generated = generator_model(tmp_path)
    image, landmarks = synthetic_face(radius=50.0)
    dark, bright = (np.clip(image.astype(int) + offset, 0, 255).astype(np.uint8) for offset in (-60, 60))
    release = generated.post_process(np.random.default_rng(8).normal(size=generated.dim))
    on_dark, on_bright = (generated.condition(frame, landmarks, release) for frame in (dark, bright))
    context_weight = on_dark.context[0, 3]
    assert np.array_equal(on_dark.identity, release) and context_weight.max() == 1.0 and context_weight[64, 64] == 0.0
    weighted_mean = lambda look: (look.context[0, :3] * context_weight).sum() / context_weight.sum() / 3  # noqa: E731
    assert weighted_mean(on_bright) - weighted_mean(on_dark) > 80  # the kept surroundings, as the generator sees them
    # the texture drawn follows the head it was conditioned on (the renderer then matches its
    # colour to the frame, which removes this toy generator's uniform shift, not a real one's)
    backend = generated._backend
    (texture_dark, _), (texture_bright, _) = (backend.face_texture(release, np.zeros(6), look.context) for look in (on_dark, on_bright))
    interior = backend.template.decoded_weight[..., 0] > 0.99
    assert (texture_bright - texture_dark)[interior].mean() > 80
    # region head replaces the surroundings: the generator gets no context from them
    headless = generated.condition(bright, landmarks, release, kept_context=False)
    assert not headless.context.any()
    # a bare identity: the generator draws from this frame's context, as if conditioned on it
    bare, conditioned = image.copy(), image.copy()
    generated.render(bare, landmarks, release)
    generated.render(conditioned, landmarks, generated.condition(image, landmarks, release))
    assert np.array_equal(bare, conditioned) and not np.array_equal(bare, image)


def test_generator_manifests_are_checked(tmp_path):
    generator_model(tmp_path)
    raw = yaml.safe_load((tmp_path / "manifest.yaml").read_text())
    wrong_shape = {**raw, "generator": {**raw["generator"], "inputs": {"texture": [1, 3, 128, 128], "context": [1, 3, 128, 128]}}}
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(wrong_shape))
    with pytest.raises(ManifestError, match="'generator' must map inputs"):
        load_manifest(tmp_path / "wrong.yaml")
    os.symlink(DEFAULT_MANIFEST.parent / "refiner.onnx", tmp_path / "refiner.onnx")
    both = {**raw, "refiner": yaml.safe_load(DEFAULT_MANIFEST.read_text())["refiner"]}
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(both))
    with pytest.raises(ManifestError, match="a 'refiner' or a 'generator', not both"):
        load_manifest(tmp_path / "both.yaml")
