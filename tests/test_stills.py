"""Photos are stills: each is searched on its own and every face big enough gets a dp face, on
real LFW eval photos and group photos, judged by YuNet and dlib (models the pipeline never uses)."""

import csv
import json
import threading

import numpy as np
import pytest
from conftest import requires_shared
from independent import SHARED, YuNet
from PIL import ExifTags, Image
from test_cli import assert_clean_error, run_cli

import dpstream
from dpstream.replace.dp_face import mesh_heights
from tools.evaluate_stills import faces_kept
from tools.judges import DlibRecognizer

pytestmark = requires_shared

LFW = SHARED / "data" / "lfw"
GROUPS = SHARED / "data" / "images"
MIN_FACE_PX = 100  # dp_min_face_px, the face model's validated size


def eval_people() -> list[str]:
    with open(SHARED / "data" / "lfw_split.tsv", newline="") as handle:
        return sorted(row["identity"] for row in csv.DictReader(handle, delimiter="\t") if row["split"] == "eval")


def rgb(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def run_collecting(inputs, output, **options):
    """The run's summary and, per photo, (faces, fallbacks) as the replacer left them; no photo
    starts a thread of its own (the stages' few threads start once per run)."""
    results, threads = [], []

    def collect(result, _):
        results.append((result.faces, result.fallbacks))
        threads.append(frozenset(thread.ident for thread in threading.enumerate()))

    summary = dpstream.anonymize(inputs, output, on_frame=collect, **options)
    assert len(frozenset().union(*threads)) <= 6
    return summary, results


def expected_fallbacks(faces) -> int:
    """Faces that may get the fallback in a still: no mesh, or below the validated size."""
    return int((~faces.has_mesh() | (mesh_heights(faces.landmarks) < MIN_FACE_PX)).sum())


def test_lfw_photos_keep_a_face_with_a_dp_face_for_every_face_big_enough(tmp_path):
    photos = [sorted((LFW / person).glob("*.jpg"))[0] for person in eval_people()[:40]]
    summary, results = run_collecting(photos, tmp_path / "out")
    assert summary.stills and summary.frames == 40
    assert [fallbacks for _, fallbacks in results] == [expected_fallbacks(faces) for faces, _ in results]
    figures = summary.method_figures
    assert figures["fallbacks_waiting"] == figures["fallbacks_entering"] == figures["fallbacks_refused"] == 0
    assert figures["faces_rendered"] >= 36
    yunet = YuNet()
    kept = [faces_kept(yunet, rgb(p), rgb(tmp_path / "out" / p.name)) for p in photos]
    # YuNet still finds a face in the output of every photo where it found one, except where all
    # faces are under the validated size (LFW: 3 % of photos; blurred, so no face left); the draw
    # is random, and on one of these photos (Ariel_Sharon_0001) about a third of the draws give a
    # face YuNet misses: one miss is allowed (the rate over 307 photos: benchmarks/results/stills.md)
    sized = [bool((mesh_heights(faces.landmarks) >= MIN_FACE_PX).any()) for faces, _ in results]
    with_face = [k for k, big in zip(kept, sized) if k and big]
    assert len(with_face) >= 37 and sum(any(k) for k in with_face) >= len(with_face) - 1
    assert sum(any(k) for k in kept if k) >= 0.95 * sum(bool(k) for k in kept)
    # dlib at the original face: no more same-person matches than the other-person floor allows
    dlib = DlibRecognizer()
    matches = 0
    for photo, (faces, _) in zip(photos, results):
        if not len(faces):
            continue
        central = faces.boxes[np.argmin(np.abs((faces.boxes[:, :2] + faces.boxes[:, 2:]) / 2 - 125).sum(1))]
        before, after = dlib.descriptor(rgb(photo), central), dlib.descriptor(rgb(tmp_path / "out" / photo.name), central)
        matches += dlib.same_person(before, after)
    assert matches <= 2  # floor ~1.3 % (benchmarks/results/stills.md); 2 of 40 is 5 %
    ledger = json.loads((tmp_path / "out.ledger.json").read_text())
    assert (ledger["input"], ledger["linked"], ledger["photos"]) == ("stills", False, 40)
    draws = ledger["totals"]["draws"]
    assert draws == ledger["totals"]["people"] == figures["faces_rendered"]
    photos_with_draws = len({p["first_time"] for p in ledger["people"]})
    assert ledger["worst_case"]["draws"] == photos_with_draws <= 40


def test_group_photos_get_a_dp_face_for_every_face_of_the_validated_size(tmp_path):
    photos = [GROUPS / "dlib_faces" / "bald_guys.jpg", GROUPS / "solvay1927.jpg"]
    summary, results = run_collecting(photos, tmp_path / "out")
    (bald, bald_fallbacks), (solvay, solvay_fallbacks) = results
    assert len(bald) >= 20 and bald_fallbacks == expected_fallbacks(bald)
    assert solvay_fallbacks == expected_fallbacks(solvay)
    big = int((bald.has_mesh() & (mesh_heights(bald.landmarks) >= MIN_FACE_PX)).sum())
    assert big >= 20 and summary.method_figures["faces_rendered"] == big + len(solvay) - solvay_fallbacks
    kept = faces_kept(YuNet(), rgb(photos[0]), rgb(tmp_path / "out" / photos[0].name))
    assert sum(kept) >= 0.9 * len(kept) >= 18
    ledger = json.loads((tmp_path / "out.ledger.json").read_text())
    assert ledger["worst_case"]["draws"] <= 2  # one real person appears at most once per photo


def test_linking_people_across_photos_draws_once_per_person(tmp_path):
    photos = [path for person in eval_people()[:3] for path in sorted((LFW / person).glob("*.jpg"))[:3]]
    apart = dpstream.anonymize(photos, tmp_path / "apart")
    linked = dpstream.anonymize(photos, tmp_path / "linked", link_people=True)
    ledgers = [json.loads((tmp_path / f"{name}.ledger.json").read_text()) for name in ("apart", "linked")]
    assert ledgers[0]["linked"] is False and ledgers[1]["linked"] is True
    assert apart.method_figures["people"] == ledgers[0]["totals"]["draws"] == apart.method_figures["faces_rendered"] >= 9
    assert 3 <= linked.method_figures["people"] < apart.method_figures["people"]
    assert ledgers[1]["totals"]["reassociations"] > 0
    assert ledgers[1]["worst_case"]["draws"] <= min(linked.method_figures["people"], 9)
    assert ledgers[1]["worst_case"]["epsilon"] < ledgers[0]["worst_case"]["epsilon"]


def upright_lfw_crop() -> Image.Image:
    """An LFW eval photo cut to 250x200 (landscape), so a rotation changes its size."""
    with Image.open(sorted((LFW / eval_people()[0]).glob("*.jpg"))[0]) as image:
        return image.convert("RGB").crop((0, 25, 250, 225))


def test_photo_formats_orientation_alpha_and_metadata(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    upright = upright_lfw_crop()
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # the stored pixels must be turned 90° clockwise to show
    exif[ExifTags.Base.Make] = "SecretCam"
    exif.get_ifd(ExifTags.IFD.GPSInfo).update({ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (52.0, 22.0, 7.0)})
    upright.transpose(Image.Transpose.ROTATE_90).save(inputs / "turned.jpg", exif=exif, quality=95)
    rgba = upright.copy()
    alpha = Image.linear_gradient("L").resize(upright.size)
    rgba.putalpha(alpha)
    rgba.save(inputs / "alpha.png")
    upright.convert("L").save(inputs / "grey.jpg", quality=95)
    upright.save(inputs / "photo.webp", quality=95)
    summary = dpstream.anonymize(inputs, tmp_path / "out")
    assert summary.frames == 4 and summary.method_figures["faces_rendered"] == 4
    out = tmp_path / "out"
    with Image.open(out / "turned.jpg") as turned:
        assert (turned.format, turned.size) == ("JPEG", upright.size)
        assert not turned.getexif() and "exif" not in turned.info
    assert b"SecretCam" not in (out / "turned.jpg").read_bytes()
    corner = (slice(0, 40), slice(0, 40))  # background, untouched but for JPEG re-encoding
    assert np.abs(rgb(out / "turned.jpg")[corner].astype(int) - np.asarray(upright)[corner]).mean() < 6
    with Image.open(out / "alpha.png") as result:
        assert result.mode == "RGBA" and np.array_equal(np.asarray(result)[..., 3], np.asarray(alpha))
    with Image.open(out / "grey.jpg") as result:
        assert (result.format, result.mode) == ("JPEG", "L")
    with Image.open(out / "photo.webp") as result:
        assert result.format == "WEBP"
    yunet = YuNet()
    for name in ("turned.jpg", "alpha.png", "grey.jpg", "photo.webp"):
        original = np.asarray(upright.convert("L").convert("RGB") if name == "grey.jpg" else upright)
        result = rgb(out / name)
        assert any(faces_kept(yunet, original, result)), name
        assert np.abs(result.astype(int) - original).max(axis=2).mean() > 3  # the face was redrawn


def test_one_image_on_the_command_line(tmp_path):
    upright = upright_lfw_crop()
    upright.save(tmp_path / "photo.jpg", quality=95)
    result = run_cli("anonymize", tmp_path / "photo.jpg", "-o", tmp_path / "out.jpg", "-q")
    assert result.returncode == 0, result.stderr
    assert "1 photo, 1 faces, 1 person, 0 fallbacks" in result.stderr
    with Image.open(tmp_path / "out.jpg") as out:
        assert (out.format, out.size) == ("JPEG", upright.size)
    assert (tmp_path / "out.jpg.ledger.json").exists()
    bad = run_cli("anonymize", tmp_path / "photo.jpg", "-o", tmp_path / "out.mp4")
    assert_clean_error(bad, 2, "out.mp4: the input is an image, so the output must be an image file")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "photo.jpg").read_bytes()[:2000])
    cut = run_cli("anonymize", tmp_path / "cut.jpg", "-o", tmp_path / "cut_out.jpg")
    assert_clean_error(cut, 2, "cut.jpg: not a readable image")
    assert not list(tmp_path.glob("cut_out*"))


@pytest.mark.parametrize(
    "names, fragment",
    [(("a/x.jpg", "b/x.jpg"), "b/x.jpg: same file name as"), (("a/x.jpg", "a/clip.mp4"), "clip.mp4: not an image file name")],
)
def test_bad_photo_lists(tmp_path, names, fragment):
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        upright_lfw_crop().save(tmp_path / name) if name.endswith(".jpg") else (tmp_path / name).write_bytes(b"x")
    result = run_cli("anonymize", *(tmp_path / n for n in names), "-o", tmp_path / "out")
    assert_clean_error(result, 2, fragment)
