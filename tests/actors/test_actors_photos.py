"""Photo actors on real JPEGs made here: EXIF, quality under blur, perceptual grouping, presets, export."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq import Broker, Worker
from PIL import Image

from dramatiq_fairway.actors import photos
from dramatiq_fairway.priority import Priority

from ..support.helpers import wait_for
from ..unit.test_actors_photos import camera_exif, save_jpeg, scene


def test_process_photo_pipeline_runs_end_to_end(
    broker: Broker, queue_name: str, tmp_path: Path, start_worker: Callable[..., Worker]
) -> None:
    outcomes: dict[str, Any] = {}

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def edit(path: str, preset: str, destination: str) -> str:
        return photos.edit_photo(path, preset, destination)

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def export(path: str, destination: str, max_side: int, fmt: str) -> None:
        outcomes["export"] = photos.export_image(path, destination, max_side=max_side, fmt=fmt)

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def process(path: str, owner: str, output_dir: str) -> None:
        assessment = photos.assess(path)
        outcomes["assessment"] = assessment
        priority = Priority[assessment.priority_level]
        photos.edit_pipeline(
            edit, export, path, owner, output_dir, preset="crisp", priority=priority, max_side=320
        ).run()

    source = save_jpeg(scene(8), tmp_path / "holiday.jpg", camera_exif())
    process.send(source, "ann", str(tmp_path / "out"))
    start_worker()
    wait_for(lambda: "export" in outcomes, timeout=20)

    assert outcomes["assessment"].exif.camera_model == "FW-1"
    assert outcomes["assessment"].priority_level == "HIGH"  # a crisp photo earns HIGH
    export_report = outcomes["export"]
    assert export_report.path == str(tmp_path / "out" / "export" / "holiday.jpg")
    with Image.open(export_report.path) as image:
        assert image.size == (320, 240)
    assert (tmp_path / "out" / "edited" / "holiday.crisp.png").is_file()
