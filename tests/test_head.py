"""Head mode (``region: head``) on a real clip: the hair and head outline are painted over with
generated hair that does not depend on the person's own hair, stays put from frame to frame, and
leaves the face's surroundings beyond the head alone."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from conftest import requires_shared

from dpstream.config import Config, load_config
from dpstream.errors import ConfigError
from dpstream.face_model import FaceModel
from dpstream.head import FaceFrame
from dpstream.replace.dp_face import DpFaceReplacer

CLIP = "talking_720p_s18.mp4"  # one woman, long auburn hair, plain background


@pytest.fixture(scope="module")
def sampled(shared_video):
    from tools.evaluate_draws import sample_clip

    return sample_clip(shared_video(CLIP), load_config(None), every=4)[:12]


@pytest.fixture(scope="module")
def model():
    return FaceModel.load(None)


def replaced(model, sampled, region: str, recolour=None) -> list[np.ndarray]:
    """The clip's sampled frames through the dp replacer (one seeded draw), optionally with the
    original's head zone recoloured first by ``recolour(image, landmarks)``."""
    replacer = DpFaceReplacer(model, Config().privacy, testing_seed=7, region=region)
    outputs = []
    for item in sampled:
        image = item.frame.image.copy()
        if recolour is not None:
            recolour(image, item.faces.landmarks[0])
        frame = dataclasses.replace(item.frame, image=image)
        replacer.replace(frame, item.faces)
        assert replacer.fallbacks == 0
        outputs.append(frame.image)
    return outputs


def zone(landmarks: np.ndarray, shape, b_range, a_range) -> np.ndarray:
    """Pixels of the frame at face coordinates within the given ranges."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    a, b = FaceFrame.of(landmarks).coordinates(xs, ys)
    return (b > b_range[0]) & (b < b_range[1]) & (np.abs(a) > a_range[0]) & (np.abs(a) < a_range[1])


def crown(landmarks, shape):
    """Above the forehead: hair on this clip."""
    return zone(landmarks, shape, (-1.6, -1.15), (0.0, 0.5))


def beyond_the_head(landmarks, shape):
    return zone(landmarks, shape, (-1.0, 0.0), (3.2, 6.0))


def make_green(image, landmarks):
    """Dye the person's hair green: everything of the head zone above the face."""
    where = zone(landmarks, image.shape, (-2.5, -1.1), (0.0, 2.5))
    image[where] = (image[where].astype(np.int32) * (0.3, 1.6, 0.3)).clip(0, 255).astype(np.uint8)


@requires_shared
def test_head_mode_paints_the_hair_and_keeps_the_background(model, sampled):
    face_only, head = replaced(model, sampled, "face"), replaced(model, sampled, "head")
    for item, kept, painted in zip(sampled, face_only, head):
        original, landmarks = item.frame.image.astype(np.int32), item.faces.landmarks[0]
        top, far = crown(landmarks, original.shape), beyond_the_head(landmarks, original.shape)
        assert np.abs(kept[top] - original[top]).mean() < 10  # face mode keeps the hair (softened near the face)
        assert np.abs(painted[top] - original[top]).mean() > 25  # head mode paints it
        assert np.array_equal(painted[far], kept[far]) and np.array_equal(painted[far], item.frame.image[far])


@requires_shared
def test_generated_hair_does_not_depend_on_the_persons_own_hair(model, sampled):
    """The same draw on the clip with the hair dyed green: the painted crown is the same colour
    (the person's hair only decides where hair is, never how it looks)."""
    natural, dyed = replaced(model, sampled, "head"), replaced(model, sampled, "head", recolour=make_green)
    for item, a, b in zip(sampled, natural, dyed):
        top = crown(item.faces.landmarks[0], a.shape)
        difference = np.abs(a[top].astype(np.float32).mean(0) - b[top].astype(np.float32).mean(0))
        assert difference.max() < 4, difference
    originals = np.array([item.frame.image[crown(item.faces.landmarks[0], a.shape)].mean(0) for item in sampled])
    dyed_originals = originals * (0.3, 1.6, 0.3)
    assert np.abs(originals - dyed_originals).max() > 60  # the dye is strong


@requires_shared
def test_generated_hair_moves_with_the_head_without_flicker(model, sampled):
    """Between sampled frames (4 apart) the painted crown changes no more than the real hair does."""
    head = replaced(model, sampled, "head")
    painted, real = [], []
    for item, output in zip(sampled, head):
        top = crown(item.faces.landmarks[0], output.shape)
        painted.append(cv2.cvtColor(output, cv2.COLOR_RGB2GRAY)[top].mean())
        real.append(cv2.cvtColor(item.frame.image, cv2.COLOR_RGB2GRAY)[top].mean())
    assert np.abs(np.diff(painted)).max() <= max(3.0, 1.5 * np.abs(np.diff(real)).max())


def test_head_mode_is_for_method_dp():
    with pytest.raises(ConfigError, match="region: head is drawn by method dp only"):
        Config(method="blur", region="head")
    with pytest.raises(ConfigError, match="region: must be one of face, head"):
        Config(region="hair")


@requires_shared
def test_region_head_from_the_command_line(tmp_path, capsys):
    """--region reaches the replacer: head mode changes the frame beyond the face, face mode
    does not; with a method other than dp it is a one-line error."""
    import av
    from corpus import source_frames, write_video

    from dpstream.cli import main as cli_main

    frames, boxes = source_frames()
    clip = write_video(tmp_path / "clip.mp4", frames)
    beyond_the_face = np.ones((len(frames), *frames[0].shape[:2]), bool)
    for outside, (x0, y0, x1, y1) in zip(beyond_the_face, (b[0] for b in boxes)):
        grow = 0.2 * (x1 - x0)
        outside[max(int(y0 - grow), 0) : int(y1 + grow), max(int(x0 - grow), 0) : int(x1 + grow)] = False
    outputs = {}
    for region in ("face", "head"):
        out = tmp_path / f"{region}.mp4"
        assert cli_main(["anonymize", str(clip), "-o", str(out), "--region", region, "-q"]) == 0
        with av.open(str(out)) as container:
            outputs[region] = np.array([f.to_ndarray(format="rgb24") for f in container.decode(video=0)], np.int32)
    changed = {region: (np.abs(output - np.array(frames, np.int32)).max(axis=3) > 40)[beyond_the_face].mean() for region, output in outputs.items()}
    assert len(outputs["head"]) == len(frames)
    assert changed["face"] < 0.0005 and changed["head"] > 0.003, changed  # the hair around the face (the frame is mostly background)
    capsys.readouterr()
    assert cli_main(["anonymize", str(clip), "-o", str(tmp_path / "x.mp4"), "--method", "blur", "--region", "head"]) == 2
    assert capsys.readouterr().err.strip() == "dpstream: error: region: head is drawn by method dp only, got method 'blur'"
