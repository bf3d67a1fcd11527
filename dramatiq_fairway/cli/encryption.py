"""``fairway encryption rotate [--dry-run]``: thin over ``ops.encryption.rotate_dead_letters``."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from ..ops.encryption import rotate_dead_letters
from ..settings import load_settings
from .output import emit, json_flag


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("encryption", help="payload encryption: rotate keys")
    verbs = parser.add_subparsers(dest="verb", required=True)
    rotate = verbs.add_parser(
        "rotate", parents=[json_flag()], help="re-encrypt dead letters with the active key; report old keys in use"
    )
    rotate.add_argument("--dry-run", action="store_true", help="count what would be re-encrypted, change nothing")
    rotate.set_defaults(func=rotate_keys)


def rotate_keys(args: argparse.Namespace) -> None:
    report = rotate_dead_letters(load_settings(), dry_run=args.dry_run)
    data = report.model_dump(mode="json")
    data["old_keys_in_use"] = report.old_keys_in_use
    emit(args, data, _render)


def _render(console: Console, report: dict[str, Any]) -> None:
    verb = "would re-encrypt" if report["dry_run"] else "re-encrypted"
    console.print(f"{verb} {report['resealed']} dead letter(s) with key {report['active']!r}")
    console.print("dead letters per key before: " + _counts(report["before"]))
    console.print("dead letters per key after:  " + _counts(report["after"]))
    for item in report["unopened"]:
        console.print(f"could not decrypt {item['id']} (key {item['key_id']!r}): {item['reason']}", markup=False)
    old = report["old_keys_in_use"]
    if old:
        console.print(f"still in use besides {report['active']!r}: {_counts(old)}")
    else:
        console.print(f"no dead letter uses a key other than {report['active']!r}")
    console.print("queued and delayed messages are re-encrypted as workers move them (docs/encryption.md)")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{kid}={count}" for kid, count in sorted(counts.items())) or "none"
