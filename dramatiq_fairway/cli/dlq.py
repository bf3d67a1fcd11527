"""``fairway dlq list|show|stats|export|requeue|purge``: thin verbs over ``DeadLetterStore``."""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

from rich.console import Console
from rich.table import Table

from ..encryption.keyring import Keyring, Undecryptable
from ..ops import durations
from ..ops.bulk_dead_letters import purge_dead_letters, requeue_dead_letters
from ..priority import Priority
from ..settings import Settings, load_settings
from ..store.audit import AuditLog
from ..store.dead_letter_sealing import key_id_of, open_record
from ..store.dead_letters import DIMENSIONS, DeadLetter, DeadLetterFilter, DeadLetterStore, Reason
from .audit import os_user
from .output import CommandError, UsageError, emit, json_flag, whole_column

# Trend buckets are whole seconds (the store's buckets are epoch-second aligned).
_SHORTEST_BUCKET = timedelta(seconds=1)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("dlq", help="dead letters: search, trends, export, requeue, purge")
    verbs = parser.add_subparsers(dest="verb", required=True)
    filters = _filter_flags()
    output = json_flag()

    listing = verbs.add_parser("list", parents=[filters, output], help="newest dead letters first")
    listing.add_argument("--limit", type=_positive_int, default=50)
    listing.set_defaults(func=list_records)

    show = verbs.add_parser("show", parents=[output], help="one dead letter in full")
    show.add_argument("id")
    show.set_defaults(func=show_record)

    stats = verbs.add_parser("stats", parents=[output], help="counts and trend buckets per key")
    stats.add_argument("--by", choices=DIMENSIONS, default="fingerprint")
    stats.add_argument("--since", type=parse_duration, help="only records newer than this (30s, 15m, 2h, 7d)")
    stats.add_argument("--bucket", type=_bucket_width, default=timedelta(hours=1), help="trend bucket width")
    stats.set_defaults(func=show_stats)

    export = verbs.add_parser("export", parents=[filters, output], help="JSON Lines or CSV, streamed")
    export.add_argument("--format", choices=["json", "csv"], required=True)
    export.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    export.set_defaults(func=export_records)

    requeue = verbs.add_parser("requeue", parents=[filters, output], help="send dead letters again")
    requeue.add_argument("ids", nargs="*", metavar="ID")
    requeue.add_argument("--priority", type=_priority, default=Priority.HIGH, help="level of the new messages")
    requeue.add_argument("--rate", type=_positive_float, help="messages per second")
    requeue.add_argument("--dry-run", action="store_true", help="list what would be requeued, send nothing")
    requeue.add_argument("--allow-redacted", action="store_true", help="requeue records with redacted fields")
    requeue.set_defaults(func=requeue_records)

    purge = verbs.add_parser("purge", parents=[filters, output], help="delete dead letters")
    purge.add_argument("ids", nargs="*", metavar="ID")
    purge.add_argument("--older-than", type=parse_duration, help="records older than this (30s, 15m, 2h, 7d)")
    purge.add_argument("--yes", action="store_true", help="really delete")
    purge.set_defaults(func=purge_records)


def list_records(args: argparse.Namespace) -> None:
    records = _store().list(_filters(args), limit=args.limit)
    emit(args, [r.model_dump(mode="json") for r in records], _render_list)


def show_record(args: argparse.Namespace) -> None:
    settings = load_settings()
    record = DeadLetterStore(settings).get(args.id)
    if record is None:
        raise CommandError(f"no dead letter with id {args.id!r}")
    emit(args, _readable(record, settings), _render_record)


def _readable(record: DeadLetter, settings: Settings) -> dict[str, Any]:
    """The record as shown: a sealed one decrypted when a key opens it, with an ``encryption``
    entry saying under which key and which fields stayed sealed (docs/encryption.md)."""
    kid = key_id_of(record)
    if kid is None:
        return record.model_dump(mode="json")
    try:
        opened = open_record(record, Keyring.from_settings(settings))
    except Undecryptable as error:
        data = record.model_dump(mode="json")
        data["encryption"] = {"key_id": kid, "decrypted": False, "undecrypted": ["args", "kwargs"], "error": str(error)}
        return data
    data = opened.model_dump(mode="json")
    data["encryption"] = {"key_id": kid, "decrypted": True, "undecrypted": []}
    return data


def show_stats(args: argparse.Namespace) -> None:
    rows = _store().stats(by=args.by, since=args.since, bucket=args.bucket)
    emit(args, [row.model_dump(mode="json") for row in rows], _render_stats)


def export_records(args: argparse.Namespace) -> None:
    store = _store()
    target = open(args.output, "w", encoding="utf-8", newline="") if args.output else nullcontext(sys.stdout)  # noqa: SIM115
    with target as out:
        written = store.export(out, args.format, _filters(args))
    if args.output:
        emit(
            args,
            {"written": written, "file": str(args.output), "format": args.format},
            lambda console, data: console.print(f"{data['written']} record(s) written to {data['file']}"),
        )


def requeue_records(args: argparse.Namespace) -> None:
    from ..setup import setup

    _require_selection(args)
    store = _store()
    broker = setup(store.settings)
    try:
        result = requeue_dead_letters(
            store,
            broker,
            AuditLog.from_settings(store.settings),
            args.ids,
            _filters(args),
            who=os_user(),
            priority=args.priority,
            rate=args.rate,
            dry_run=args.dry_run,
            allow_redacted=args.allow_redacted,
        )
    finally:
        broker.close()
    emit(args, result.model_dump(mode="json"), _render_requeue)
    if refused := result.refused():
        raise CommandError(f"{len(refused)} dead letter(s) not requeued (the broker refused them); records kept")


def purge_records(args: argparse.Namespace) -> None:
    if args.older_than is None:
        _require_selection(args)
    store = _store()
    filters = _filters(args)
    if not args.yes:
        cutoff = datetime.now(UTC) - args.older_than if args.older_than else None
        selection = filters.model_copy(update={"until": cutoff}) if cutoff else filters
        matching = sum(1 for _ in store.select(args.ids, selection))
        raise CommandError(f"{matching} dead letter(s) match; pass --yes to purge them")
    audit = AuditLog.from_settings(store.settings)
    removed = purge_dead_letters(store, audit, args.ids, filters, who=os_user(), older_than=args.older_than)
    emit(args, {"purged": removed}, lambda console, data: console.print(f"{data['purged']} dead letter(s) purged"))


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``2h`` or ``7d`` as a timedelta (an argparse type)."""
    try:
        return durations.parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _bucket_width(text: str) -> timedelta:
    width = parse_duration(text)
    if width < _SHORTEST_BUCKET:
        raise argparse.ArgumentTypeError(f"{text!r} is shorter than the shortest bucket, 1s")
    return width


def _filter_flags() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--queue")
    parent.add_argument("--actor")
    parent.add_argument("--error-type")
    parent.add_argument("--fingerprint")
    parent.add_argument("--tenant")
    parent.add_argument("--reason", choices=get_args(Reason))
    parent.add_argument("--since", type=parse_duration, help="only records newer than this (30s, 15m, 2h, 7d)")
    return parent


def _filters(args: argparse.Namespace) -> DeadLetterFilter:
    return DeadLetterFilter(
        queue=args.queue,
        actor=args.actor,
        error_type=args.error_type,
        fingerprint=args.fingerprint,
        tenant=args.tenant,
        reason=args.reason,
        since=datetime.now(UTC) - args.since if args.since else None,
    )


def _require_selection(args: argparse.Namespace) -> None:
    # Requeue and purge never act on every record by default (``DeadLetterStore.select``).
    if not args.ids and _filters(args).is_empty():
        raise UsageError("name record ids (ID ...) or give a filter (--queue, --actor, --fingerprint, --since, ...)")


def _store() -> DeadLetterStore:
    return DeadLetterStore(load_settings())


def _priority(text: str) -> Priority:
    try:
        return Priority.parse(int(text) if text.isdigit() else text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _render_list(console: Console, records: list[dict[str, Any]]) -> None:
    if not records:
        console.print("no dead letters")
        return
    table = Table(
        whole_column("id"), "failed at", "queue", "actor", "reason", "error", "tenant", whole_column("fingerprint")
    )
    for r in records:
        table.add_row(
            r["id"], _short_time(r["failed_at"]), r["queue"], r["actor"] or "-", r["reason"], r["error_type"] or "-",
            r["tenant"], r["fingerprint"],
        )  # fmt: skip
    console.print(table)


def _render_record(console: Console, record: dict[str, Any]) -> None:
    table = Table("field", whole_column("value"), show_header=False)
    for name, value in record.items():
        if name != "traceback":
            table.add_row(name, str(value))
    console.print(table)
    sealed = record.get("encryption") or {}
    if sealed.get("undecrypted"):
        fields = ", ".join(sealed["undecrypted"])
        console.print(f"could not decrypt {fields} (key {sealed['key_id']!r}): {sealed['error']}", markup=False)
    if record["traceback"]:
        console.print(record["traceback"], markup=False)


def _render_stats(console: Console, rows: list[dict[str, Any]]) -> None:
    if not rows:
        console.print("no dead letters")
        return
    table = Table(whole_column("key"), "count", "first seen", "last seen", "trend")
    for row in rows:
        first, last = _short_time(row["first_seen"]), _short_time(row["last_seen"])
        table.add_row(row["key"], str(row["count"]), first, last, _sparkline(row["buckets"]))
    console.print(table)


def _render_requeue(console: Console, result: dict[str, Any]) -> None:
    verb = "would requeue" if result["dry_run"] else "requeued"
    for item in result["requeued"]:
        console.print(f"{verb} {item['id']} ({item['actor']} on {item['queue']}) at {item['priority_level']}")
    for item in result["skipped"]:
        console.print(f"skipped {item['id']}: {item['reason']}")
    console.print(f"{len(result['requeued'])} {verb}, {len(result['skipped'])} skipped")


def _short_time(iso: str) -> str:
    return iso[:19].replace("T", " ")


def _sparkline(buckets: list[dict[str, Any]]) -> str:
    ticks = "▁▂▃▄▅▆▇█"
    counts = [bucket["count"] for bucket in buckets][-24:]
    if not counts:
        return ""
    top = max(counts)
    return "".join(ticks[min(len(ticks) - 1, count * (len(ticks) - 1) // top)] for count in counts)
