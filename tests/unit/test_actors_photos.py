"""Photo actors on real JPEGs made here, without a broker: EXIF, quality under blur, perceptual
grouping, presets, export. The pipeline on real brokers is in tests/actors/test_actors_photos.py."""

from __future__ import annotations

from pathlib import Path

import dramatiq
import numpy as np
import pytest
from dramatiq import Middleware
from dramatiq.brokers.stub import StubBroker
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
from PIL.ExifTags import GPS, IFD, Base
from PIL.TiffImagePlugin import IFDRational

from dramatiq_fairway.actors import photos
from dramatiq_fairway.errors import PermanentError
from dramatiq_fairway.priority import Priority


def scene(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A synthetic photo: a soft gradient with sharp-edged shapes; each seed is another scene."""
    rng = np.random.default_rng(seed)
    width, height = size
    x = np.linspace(0, 1, width)[None, :]
    y = np.linspace(0, 1, height)[:, None]
    base = np.stack([90 + 80 * x + 0 * y, 70 + 100 * y + 0 * x, 120 + 60 * x * y], axis=-1)
    image = Image.fromarray(base.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(25):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = [x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 150))]
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape(box, fill=colour, outline=(0, 0, 0), width=2)
    return image


def camera_exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[Base.Make] = "Fairway"
    exif[Base.Model] = "FW-1"
    exif[Base.Orientation] = orientation
    exif[Base.Software] = "tests"
    shot = exif.get_ifd(IFD.Exif)
    shot[Base.DateTimeOriginal] = "2024:06:01 14:30:05"
    shot[Base.ExposureTime] = IFDRational(1, 250)
    shot[Base.FNumber] = IFDRational(28, 10)
    shot[Base.ISOSpeedRatings] = 200
    shot[Base.FocalLength] = IFDRational(35, 1)
    shot[Base.LensModel] = "35mm F2.8"
    gps = exif.get_ifd(IFD.GPSInfo)
    gps[GPS.GPSLatitudeRef] = "N"
    gps[GPS.GPSLatitude] = (IFDRational(48, 1), IFDRational(51, 1), IFDRational(296, 10))
    gps[GPS.GPSLongitudeRef] = "W"
    gps[GPS.GPSLongitude] = (IFDRational(2, 1), IFDRational(17, 1), IFDRational(402, 10))
    return exif


def save_jpeg(image: Image.Image, path: Path, exif: Image.Exif | None = None, quality: int = 92) -> str:
    image.save(path, "JPEG", quality=quality, exif=exif or Image.Exif())
    return str(path)


def test_exif_is_read_back_from_a_jpeg(tmp_path: Path) -> None:
    path = save_jpeg(scene(1), tmp_path / "shot.jpg", camera_exif())
    with photos.open_photo(path) as image:
        report = photos.read_exif(image)
    assert (report.width, report.height, report.format) == (640, 480, "JPEG")
    assert (report.camera_make, report.camera_model, report.lens, report.software) == (
        "Fairway",
        "FW-1",
        "35mm F2.8",
        "tests",
    )
    assert report.taken_at == "2024-06-01T14:30:05"
    assert report.exposure_time_s == pytest.approx(1 / 250)
    assert report.f_number == pytest.approx(2.8)
    assert report.iso == 200
    assert report.focal_length_mm == pytest.approx(35)
    assert report.orientation == 1
    assert report.latitude == pytest.approx(48 + 51 / 60 + 29.6 / 3600)
    assert report.longitude == pytest.approx(-(2 + 17 / 60 + 40.2 / 3600))


def test_a_photo_without_exif_reports_only_its_size(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    scene(2, (120, 80)).save(path)
    assert photos.analyze_exif.fn(str(path)) == photos.ExifReport(width=120, height=80, format="PNG").model_dump()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_quality_score_falls_as_blur_rises(tmp_path: Path, seed: int) -> None:
    sharp = scene(seed)
    scores = []
    for radius in (0, 0.5, 1, 2, 3):
        blurred = sharp.filter(ImageFilter.GaussianBlur(radius)) if radius else sharp
        path = save_jpeg(blurred, tmp_path / f"blur-{radius}.jpg")
        scores.append(photos.evaluate_quality.fn(path)["score"])
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) == len(scores)
    assert scores[0] >= 4.5
    assert scores[-1] < 3.5


def test_badly_exposed_photos_score_lower(tmp_path: Path) -> None:
    good = scene(4)
    dark = ImageEnhance.Brightness(good).enhance(0.2)
    blown = ImageEnhance.Brightness(good).enhance(2.5)
    score = {
        name: photos.quality_score(photos.grey(image))
        for name, image in {"good": good, "dark": dark, "blown": blown}.items()
    }
    assert score["dark"].brightness < 0.2 < score["good"].brightness
    assert score["blown"].clipped_fraction > 0.3
    assert score["good"].score > score["dark"].score
    assert score["good"].score > score["blown"].score


def test_noise_estimate_follows_added_noise() -> None:
    flat = np.full((200, 200), 128.0)
    rng = np.random.default_rng(0)
    assert photos.noise_sigma(flat) == 0.0
    assert photos.noise_sigma(flat + rng.normal(0, 5, flat.shape)) == pytest.approx(5, rel=0.05)


@pytest.mark.parametrize(
    ("score", "user_requested", "expected"),
    [
        (4.5, False, Priority.HIGH),
        (4.49, False, Priority.NORMAL),
        (3.5, False, Priority.NORMAL),
        (3.49, False, Priority.LOW),
        (0.0, False, Priority.LOW),
        (0.0, True, Priority.HIGH),
    ],
)
def test_priority_from_score_and_request(score: float, user_requested: bool, expected: Priority) -> None:
    assert photos.priority_for(score, user_requested) is expected


def test_near_duplicates_group_together_and_different_photos_do_not(tmp_path: Path) -> None:
    original = scene(1)
    paths = {
        "original": save_jpeg(original, tmp_path / "original.jpg"),
        "small": save_jpeg(original.resize((320, 240)), tmp_path / "small.jpg", quality=60),
        "brighter": save_jpeg(ImageEnhance.Brightness(original).enhance(1.1), tmp_path / "brighter.jpg"),
        "other": save_jpeg(scene(2), tmp_path / "other.jpg"),
        "third": save_jpeg(scene(3), tmp_path / "third.jpg"),
    }
    groups = photos.group_similar_photos.fn(list(paths.values()))
    assert groups == [
        sorted([paths["brighter"], paths["original"], paths["small"]]),
        [paths["other"]],
        [paths["third"]],
    ]


def test_hashes_of_a_rotated_upload_match_the_upright_photo(tmp_path: Path) -> None:
    upright = scene(5)
    # Cameras store a portrait shot sideways with Orientation 6 (rotate 90 degrees clockwise to view).
    sideways = save_jpeg(upright.rotate(90, expand=True), tmp_path / "sideways.jpg", camera_exif(orientation=6))
    with photos.open_photo(sideways) as image:
        rotated = photos.photo_hashes(image)
    reference = photos.photo_hashes(upright)
    assert photos.hamming(rotated.dhash, reference.dhash) <= 4
    assert photos.hamming(rotated.phash, reference.phash) <= 4


def test_presets_change_the_pixels_and_keep_the_exif(tmp_path: Path) -> None:
    source = save_jpeg(scene(6), tmp_path / "in.jpg", camera_exif())
    mono = photos.apply_preset.fn(source, "mono", str(tmp_path / "out" / "mono.png"))
    with Image.open(mono) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
        assert image.getexif()[Base.Make] == "Fairway"
    assert np.abs(pixels[..., 0] - pixels[..., 1]).max() <= 1  # no colour left
    vivid = photos.apply_preset.fn(source, "vivid", str(tmp_path / "out" / "vivid.png"))
    with Image.open(vivid) as image, Image.open(source) as original:
        saturation = np.asarray(image.convert("HSV"))[..., 1].mean()
        assert saturation > np.asarray(original.convert("HSV"))[..., 1].mean()
    with pytest.raises(PermanentError, match="unknown preset 'sepia'"):
        photos.apply_preset.fn(source, "sepia", str(tmp_path / "sepia.png"))


@pytest.mark.parametrize(("fmt", "suffix"), [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp")])
def test_export_resizes_rotates_and_converts(tmp_path: Path, fmt: str, suffix: str) -> None:
    source = save_jpeg(scene(7, (800, 600)), tmp_path / "in.jpg", camera_exif(orientation=6))
    report = photos.export_photo.fn(source, str(tmp_path / f"out{suffix}"), 400, fmt)
    assert (report["width"], report["height"]) == (300, 400)  # upright portrait, longest side 400
    with Image.open(report["path"]) as image:
        assert image.format == fmt
        assert image.size == (300, 400)
        assert report["bytes"] == Path(report["path"]).stat().st_size
        assert image.getexif().get(Base.Orientation) is None
        assert image.getexif()[Base.Model] == "FW-1"


def test_unreadable_inputs_fail_permanently(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="no photo"):
        photos.evaluate_quality.fn(str(tmp_path / "missing.jpg"))
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    with pytest.raises(PermanentError, match="not an image"):
        photos.analyze_exif.fn(str(junk))
    with pytest.raises(PermanentError, match="cannot export"):
        photos.export_image(save_jpeg(scene(1), tmp_path / "ok.jpg"), tmp_path / "x.bmp", fmt="BMP")


class _DeclaresFairwayOptions(Middleware):
    @property
    def actor_options(self) -> set[str]:
        return {"priority_level", "tenant"}


@pytest.mark.parametrize("fairway_stack", [True, False])
def test_pipeline_carries_priority_and_tenant_only_to_a_stack_that_knows_them(fairway_stack: bool) -> None:
    broker = StubBroker(middleware=[_DeclaresFairwayOptions()] if fairway_stack else [])

    @dramatiq.actor(broker=broker, queue_name="photos")
    def edit(path: str, preset: str, destination: str) -> None: ...

    @dramatiq.actor(broker=broker, queue_name="photos")
    def export(path: str, destination: str, max_side: int, fmt: str) -> None: ...

    pipe = photos.edit_pipeline(edit, export, "/p/a.jpg", "ann", "/out", preset="mono", priority=Priority.LOW)
    first, second = pipe.messages
    assert first.args == ("/p/a.jpg", "mono", "/out/edited/a.mono.png")
    assert second.args == ("/out/edited/a.mono.png", "/out/export/a.jpg", 2048, "JPEG")
    assert second.options["pipe_ignore"] is True
    expected = {"priority_level": "LOW", "tenant": "ann"} if fairway_stack else {}
    for message in (first, second):
        assert {k: message.options.get(k) for k in expected} == expected
        assert ("tenant" in message.options) is fairway_stack
