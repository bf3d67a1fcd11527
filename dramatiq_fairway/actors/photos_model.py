"""Photo processing's computation: EXIF, a 0-5 quality score, perceptual hashes, presets, export.

Pillow and numpy on files; no actor (``photos.py``) and no state store.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageEnhance, ImageOps, UnidentifiedImageError
from PIL.ExifTags import GPS, IFD, Base
from PIL.TiffImagePlugin import IFDRational
from pydantic import BaseModel, Field

from ..errors import PermanentError
from ..priority import Priority

ANALYSIS_MAX_SIDE = 1024
DEFAULT_SIMILARITY_THRESHOLD = 10
EXPORT_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}

Matrix = npt.NDArray[np.float64]


class ExifReport(BaseModel):
    width: int
    height: int
    format: str | None
    camera_make: str | None = None
    camera_model: str | None = None
    lens: str | None = None
    taken_at: str | None = None  # ISO 8601, camera local time (EXIF stores no zone)
    exposure_time_s: float | None = None
    f_number: float | None = None
    iso: int | None = None
    focal_length_mm: float | None = None
    orientation: int | None = None
    software: str | None = None
    latitude: float | None = None
    longitude: float | None = None


class QualityReport(BaseModel):
    """Raw measurements and the 0-5 score built from them (higher is better)."""

    sharpness: float = Field(description="variance of the Laplacian of the grey image")
    brightness: float = Field(description="mean luminance, 0 (black) to 1 (white)")
    clipped_fraction: float = Field(description="share of pixels crushed to black or blown to white")
    noise_sigma: float = Field(description="estimated noise standard deviation, in grey levels")
    score: float = Field(ge=0, le=5)


class PhotoHashes(BaseModel):
    dhash: str
    phash: str


class ExportReport(BaseModel):
    path: str
    format: str
    width: int
    height: int
    bytes: int


# --- Reading images ----------------------------------------------------------------------------


@contextmanager
def open_photo(path: str | Path) -> Iterator[Image.Image]:
    """The image at ``path``; a missing or unreadable file is a permanent failure (retrying won't fix it)."""
    try:
        image = Image.open(path)
    except FileNotFoundError:
        raise PermanentError(f"no photo at {path}") from None
    except UnidentifiedImageError:
        raise PermanentError(f"{path} is not an image Pillow can read") from None
    with image:
        yield image


def grey(image: Image.Image, max_side: int = ANALYSIS_MAX_SIDE) -> Matrix:
    """Luminance in 0..255, downscaled so that measurements compare across resolutions."""
    copy = ImageOps.exif_transpose(image).convert("L")
    copy.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return np.asarray(copy, dtype=np.float64)


# --- EXIF --------------------------------------------------------------------------------------


def _number(value: object) -> float | None:
    if isinstance(value, IFDRational):
        return None if value.denominator == 0 else float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value.strip("\x00 ").strip() or None if isinstance(value, str) else None


def _degrees(dms: object, ref: object) -> float | None:
    if not isinstance(dms, tuple) or len(dms) != 3:
        return None
    parts = [_number(part) for part in dms]
    if any(part is None for part in parts):
        return None
    degrees, minutes, seconds = cast(list[float], parts)
    value = degrees + minutes / 60 + seconds / 3600
    return -value if _text(ref) in ("S", "W") else value


def _taken_at(value: object) -> str | None:
    text = _text(value)
    if text is None:
        return None
    try:
        return datetime.strptime(text, "%Y:%m:%d %H:%M:%S").isoformat()
    except ValueError:
        return None


def read_exif(image: Image.Image) -> ExifReport:
    exif = image.getexif()
    photo = exif.get_ifd(IFD.Exif)
    gps = exif.get_ifd(IFD.GPSInfo)
    iso = photo.get(Base.ISOSpeedRatings)
    if isinstance(iso, tuple):
        iso = iso[0] if iso else None
    return ExifReport(
        width=image.width,
        height=image.height,
        format=image.format,
        camera_make=_text(exif.get(Base.Make)),
        camera_model=_text(exif.get(Base.Model)),
        lens=_text(photo.get(Base.LensModel)),
        taken_at=_taken_at(photo.get(Base.DateTimeOriginal) or exif.get(Base.DateTime)),
        exposure_time_s=_number(photo.get(Base.ExposureTime)),
        f_number=_number(photo.get(Base.FNumber)),
        iso=int(iso) if isinstance(iso, int) else None,
        focal_length_mm=_number(photo.get(Base.FocalLength)),
        orientation=exif.get(Base.Orientation),
        software=_text(exif.get(Base.Software)),
        latitude=_degrees(gps.get(GPS.GPSLatitude), gps.get(GPS.GPSLatitudeRef)),
        longitude=_degrees(gps.get(GPS.GPSLongitude), gps.get(GPS.GPSLongitudeRef)),
    )


# --- Quality -----------------------------------------------------------------------------------


def laplacian_variance(pixels: Matrix) -> float:
    """Variance of the 4-neighbour Laplacian: edges make it large, blur makes it small."""
    centre = pixels[1:-1, 1:-1]
    laplacian = pixels[:-2, 1:-1] + pixels[2:, 1:-1] + pixels[1:-1, :-2] + pixels[1:-1, 2:] - 4 * centre
    return float(laplacian.var())


def noise_sigma(pixels: Matrix) -> float:
    """Immerkaer's estimate (CVIU 1996): the response to a mask that cancels smooth structure."""
    response = (
        pixels[:-2, :-2]
        + pixels[:-2, 2:]
        + pixels[2:, :-2]
        + pixels[2:, 2:]
        - 2 * (pixels[:-2, 1:-1] + pixels[2:, 1:-1] + pixels[1:-1, :-2] + pixels[1:-1, 2:])
        + 4 * pixels[1:-1, 1:-1]
    )
    height, width = pixels.shape
    return float(math.sqrt(math.pi / 2) * np.abs(response).sum() / (6 * (width - 2) * (height - 2)))


def quality_score(pixels: Matrix) -> QualityReport:
    """Sharpness weighs most (a blurred photo is unusable), then exposure, then noise.

    Sharpness is scored on a log scale: a Laplacian variance of 2000 or more is crisp, under 10 mush.
    Exposure loses points as the mean leaves the middle band and as pixels clip.
    """
    sharpness = laplacian_variance(pixels)
    brightness = float(pixels.mean() / 255)
    clipped = float(np.mean((pixels <= 2) | (pixels >= 253)))
    sigma = noise_sigma(pixels)
    sharp_part = min(1.0, math.log10(1 + sharpness) / 3.3)
    exposure_part = min(1.0, max(0.0, 1 - max(0.0, abs(brightness - 0.5) - 0.15) / 0.35 - clipped))
    noise_part = min(1.0, max(0.0, 1 - (sigma - 2) / 10))
    score = 5 * (0.6 * sharp_part + 0.25 * exposure_part + 0.15 * noise_part)
    return QualityReport(
        sharpness=sharpness,
        brightness=brightness,
        clipped_fraction=clipped,
        noise_sigma=sigma,
        score=round(score, 2),
    )


def priority_for(score: float, user_requested: bool) -> Priority:
    """What the user asked for first; then the photos worth editing before the rest."""
    if user_requested or score >= 4.5:
        return Priority.HIGH
    if score >= 3.5:
        return Priority.NORMAL
    return Priority.LOW


# --- Perceptual hashes -------------------------------------------------------------------------


def _bits_to_hex(bits: npt.NDArray[np.bool_]) -> str:
    value = 0
    for bit in bits.ravel():
        value = (value << 1) | int(bit)
    return f"{value:0{bits.size // 4}x}"


def dhash(image: Image.Image, size: int = 8) -> str:
    """Difference hash: is each pixel brighter than its right neighbour, on a (size+1) x size thumbnail."""
    small = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS), dtype=np.float64)
    return _bits_to_hex(small[:, 1:] > small[:, :-1])


def _dct_matrix(n: int) -> Matrix:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    matrix: Matrix = np.sqrt(2 / n) * np.cos(np.pi * (2 * x + 1) * k / (2 * n))
    matrix[0] /= np.sqrt(2)
    return matrix


def phash(image: Image.Image, size: int = 8, factor: int = 4) -> str:
    """DCT hash: the lowest size x size frequencies of a 32 x 32 thumbnail against their median."""
    side = size * factor
    pixels = np.asarray(image.convert("L").resize((side, side), Image.Resampling.LANCZOS), dtype=np.float64)
    dct = _dct_matrix(side)
    low = (dct @ pixels @ dct.T)[:size, :size]
    # The DC term is the mean brightness, not structure: leave it out of the median.
    median = np.median(low.ravel()[1:])
    return _bits_to_hex(low > median)


def photo_hashes(image: Image.Image) -> PhotoHashes:
    upright = ImageOps.exif_transpose(image)
    return PhotoHashes(dhash=dhash(upright), phash=phash(upright))


def hamming(first: str, second: str) -> int:
    return (int(first, 16) ^ int(second, 16)).bit_count()


def group_by_hash(hashes: Mapping[str, PhotoHashes], threshold: int = DEFAULT_SIMILARITY_THRESHOLD) -> list[list[str]]:
    """Groups of photos whose dHash and pHash both lie within ``threshold`` bits (transitively).

    Every photo appears in exactly one group; groups are sorted, largest first. Pairwise: fine
    for an album, not for a whole library.
    """
    names = sorted(hashes)
    parent = {name: name for name in names}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for index, first in enumerate(names):
        for second in names[index + 1 :]:
            a, b = hashes[first], hashes[second]
            if hamming(a.dhash, b.dhash) <= threshold and hamming(a.phash, b.phash) <= threshold:
                parent[root(second)] = root(first)
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(root(name), []).append(name)
    return sorted(groups.values(), key=lambda group: (-len(group), group))


# --- Editing and export ------------------------------------------------------------------------

PRESETS: dict[str, tuple[tuple[Callable[[Image.Image], ImageEnhance._Enhance], float], ...]] = {
    "vivid": ((ImageEnhance.Color, 1.35), (ImageEnhance.Contrast, 1.15)),
    "mono": ((ImageEnhance.Color, 0.0), (ImageEnhance.Contrast, 1.1)),
    "soft": ((ImageEnhance.Sharpness, 0.4), (ImageEnhance.Contrast, 0.9), (ImageEnhance.Brightness, 1.05)),
    "crisp": ((ImageEnhance.Sharpness, 1.8), (ImageEnhance.Contrast, 1.1)),
}


def enhance(image: Image.Image, preset: str) -> Image.Image:
    try:
        steps = PRESETS[preset]
    except KeyError:
        raise PermanentError(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}") from None
    result = image.convert("RGB")
    for enhancer, factor in steps:
        result = enhancer(result).enhance(factor)
    return result


def edit_photo(source: str | Path, preset: str, destination: str | Path) -> str:
    """Apply ``preset`` and save losslessly (PNG) for the export step, keeping the EXIF."""
    with open_photo(source) as image:
        exif = image.getexif()
        edited = enhance(image, preset)
    Path(destination).parent.mkdir(parents=True, exist_ok=True)
    edited.save(destination, format="PNG", exif=exif)
    return str(destination)


def export_image(
    source: str | Path, destination: str | Path, *, max_side: int = 2048, fmt: str = "JPEG", quality: int = 85
) -> ExportReport:
    """Upright, fit within ``max_side`` (aspect kept, never enlarged), in ``fmt``, EXIF kept."""
    fmt = fmt.upper()
    if fmt not in EXPORT_FORMATS:
        raise PermanentError(f"cannot export to {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    with open_photo(source) as image:
        exif = image.getexif()
        upright = ImageOps.exif_transpose(image)
    upright.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if fmt == "JPEG" and upright.mode != "RGB":
        upright = upright.convert("RGB")
    exif.pop(Base.Orientation, None)  # the pixels are upright now
    target = Path(destination)
    target.parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"exif": exif}
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = quality
    upright.save(target, format=fmt, **options)
    return ExportReport(
        path=str(target), format=fmt, width=upright.width, height=upright.height, bytes=target.stat().st_size
    )


class Assessment(BaseModel):
    exif: ExifReport
    quality: QualityReport
    priority_level: str


def assess(path: str | Path, user_requested: bool = False) -> Assessment:
    with open_photo(path) as image:
        exif = read_exif(image)
        quality = quality_score(grey(image))
    return Assessment(exif=exif, quality=quality, priority_level=priority_for(quality.score, user_requested).name)
