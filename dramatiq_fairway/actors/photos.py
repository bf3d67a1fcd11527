"""Photo processing on queue ``photos``: EXIF, a 0-5 quality score, perceptual grouping, presets, export.

``process_photo`` scores a photo, then sends the editing pipeline (``apply_preset`` piped into
``export_photo``) at a priority drawn from that score, with the photo's owner as tenant, so a
user's burst of uploads cannot starve everyone else's. Photos travel as file paths; only JSON
reports travel in messages.

The computation (EXIF, scores, hashes, presets, export) is in ``photos_model.py``, re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dramatiq

from ..errors import PermanentError
from ..priority import Priority

# The computation, re-exported: code and tests import it from here.
from .photos_model import (
    ANALYSIS_MAX_SIDE,
    DEFAULT_SIMILARITY_THRESHOLD,
    EXPORT_FORMATS,
    PRESETS,
    Assessment,
    ExifReport,
    ExportReport,
    Matrix,
    PhotoHashes,
    QualityReport,
    assess,
    dhash,
    edit_photo,
    enhance,
    export_image,
    grey,
    group_by_hash,
    hamming,
    laplacian_variance,
    noise_sigma,
    open_photo,
    phash,
    photo_hashes,
    priority_for,
    quality_score,
    read_exif,
)

__all__ = [
    "ANALYSIS_MAX_SIDE",
    "DEFAULT_SIMILARITY_THRESHOLD",
    "EXPORT_FORMATS",
    "PRESETS",
    "QUEUE",
    "Assessment",
    "ExifReport",
    "ExportReport",
    "Matrix",
    "PhotoHashes",
    "QualityReport",
    "analyze_exif",
    "apply_preset",
    "assess",
    "dhash",
    "edit_photo",
    "edit_pipeline",
    "enhance",
    "evaluate_quality",
    "export_image",
    "export_photo",
    "grey",
    "group_by_hash",
    "group_similar_photos",
    "hamming",
    "laplacian_variance",
    "noise_sigma",
    "open_photo",
    "phash",
    "photo_hashes",
    "priority_for",
    "process_photo",
    "quality_score",
    "read_exif",
]

QUEUE = "photos"


def edit_pipeline(
    edit: dramatiq.Actor[..., Any],
    export: dramatiq.Actor[..., Any],
    path: str,
    owner: str,
    output_dir: str,
    *,
    preset: str,
    priority: Priority,
    fmt: str = "JPEG",
    max_side: int = 2048,
) -> dramatiq.pipeline:
    """``edit`` piped into ``export`` for one photo, at its priority and with its owner as tenant.

    Fairway's options go only to a stack that declares them (``broker.actor_options``).
    """
    if preset not in PRESETS:
        raise PermanentError(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
    if fmt.upper() not in EXPORT_FORMATS:
        raise PermanentError(f"cannot export to {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    wanted = {"priority_level": priority.name, "tenant": owner}
    options: dict[str, Any] = {name: value for name, value in wanted.items() if name in edit.broker.actor_options}
    stem = Path(path).stem
    edited = str(Path(output_dir) / "edited" / f"{stem}.{preset}.png")
    exported = str(Path(output_dir) / "export" / f"{stem}{EXPORT_FORMATS[fmt.upper()]}")
    return dramatiq.pipeline(
        [
            edit.message_with_options(args=(path, preset, edited), **options),
            export.message_with_options(args=(edited, exported, max_side, fmt), pipe_ignore=True, **options),
        ],
        broker=edit.broker,
    )


# --- Actors ------------------------------------------------------------------------------------


@dramatiq.actor(queue_name=QUEUE, actor_name="photos.analyze_exif")
def analyze_exif(path: str) -> dict[str, Any]:
    with open_photo(path) as image:
        return read_exif(image).model_dump()


@dramatiq.actor(queue_name=QUEUE, actor_name="photos.evaluate_quality")
def evaluate_quality(path: str) -> dict[str, Any]:
    with open_photo(path) as image:
        return quality_score(grey(image)).model_dump()


@dramatiq.actor(queue_name=QUEUE, actor_name="photos.group_similar_photos")
def group_similar_photos(paths: Sequence[str], threshold: int = DEFAULT_SIMILARITY_THRESHOLD) -> list[list[str]]:
    hashes = {}
    for path in paths:
        with open_photo(path) as image:
            hashes[path] = photo_hashes(image)
    return group_by_hash(hashes, threshold)


@dramatiq.actor(queue_name=QUEUE, actor_name="photos.apply_preset")
def apply_preset(path: str, preset: str, destination: str) -> str:
    return edit_photo(path, preset, destination)


@dramatiq.actor(queue_name=QUEUE, actor_name="photos.export_photo")
def export_photo(path: str, destination: str, max_side: int = 2048, fmt: str = "JPEG") -> dict[str, Any]:
    return export_image(path, destination, max_side=max_side, fmt=fmt).model_dump()


def _if_declared(**options: Any) -> dict[str, Any]:
    """Actor options the global broker's stack declares (Dramatiq refuses unknown ones)."""
    known = dramatiq.get_broker().actor_options
    return {name: value for name, value in options.items() if name in known}


@dramatiq.actor(queue_name=QUEUE, actor_name="photos.process_photo", **_if_declared(tenant_from="owner"))
def process_photo(
    path: str, owner: str, output_dir: str, preset: str = "vivid", user_requested: bool = False
) -> dict[str, Any]:
    """Score the photo, then send its edit-and-export pipeline at the priority the score earns."""
    assessment = assess(path, user_requested)
    priority = Priority[assessment.priority_level]
    edit_pipeline(apply_preset, export_photo, path, owner, output_dir, preset=preset, priority=priority).run()
    return assessment.model_dump()
