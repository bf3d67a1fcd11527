"""Photos: score each upload, then edit and export it at the priority its score earns.

Run a worker, then the producer::

    dramatiq examples.photo_pipeline
    python examples/photo_pipeline.py

The producer makes a few real JPEGs (sharp and blurred) in a temporary directory and sends one
``process_photo`` per photo with its owner as tenant; the worker scores it (sharpness, exposure,
noise), then runs ``apply_preset`` piped into ``export_photo`` at HIGH, NORMAL or LOW. Every path
must be visible to the workers (one machine here).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from PIL import Image

# Sets up the broker from the FAIRWAY_* settings and declares every domain actor.
from dramatiq_fairway.actors import photos
from dramatiq_fairway.demo.run import make_photos

OWNERS = ("alice", "bob")
PHOTOS = 6


def main(timeout: float = 60.0) -> None:
    with tempfile.TemporaryDirectory(prefix="fairway-photos-") as workdir:
        run(Path(workdir), timeout)


def run(workdir: Path, timeout: float) -> None:
    uploads = make_photos(workdir / "uploads", PHOTOS)
    for index, path in enumerate(uploads):
        owner = OWNERS[index % len(OWNERS)]
        photos.process_photo.send(str(path), owner, str(workdir / owner), "vivid", index == 0)
    expected = [workdir / OWNERS[i % len(OWNERS)] / "export" / f"{path.stem}.jpg" for i, path in enumerate(uploads)]
    deadline = time.monotonic() + timeout
    while not all(path.exists() for path in expected):
        if time.monotonic() > deadline:
            done = sum(path.exists() for path in expected)
            raise SystemExit(f"only {done} of {PHOTOS} photos exported within {timeout:.0f}s; is a worker running?")
        time.sleep(0.2)
    time.sleep(0.2)  # an export is renamed into place whole; let the last one finish closing
    for path in expected:
        with Image.open(path) as image:
            print(f"exported {path.relative_to(workdir)}: {image.width}x{image.height} {image.format}")
    print(f"{PHOTOS} photos exported under {workdir} (removed on exit)")


if __name__ == "__main__":
    main()
