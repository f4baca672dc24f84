"""livetrack's commands in Faust's CLI: `faust -A agents.worker <command> [--json]`.

    replay NAME [--topic T]... [--from-ts MS] [--to-ts MS] [--offset T:P:O]... [--set SETTING=VALUE]...
    diff [LEFT] RIGHT [--table T]... [--topic push|cell-features]... [--match GLOB] [--ignore NAME:GLOB]...
    shadows | drop NAME | promote NAME
    lag [--group G]... | tables [TABLE KEY] [--shadow NAME] | tail TOPIC [-n N] [--follow S] [--shadow NAME]
    dlq list | dlq show DLQ [--limit N] | dlq redrive DLQ [--dry-run]

Every command prints a readable table, or one JSON document with `--json`; an OpsError is printed
on stderr and exits 2; `diff` exits 1 when the sides differ.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any, Awaitable, Callable, Iterable

import click
import faust
from faust.cli import AppCommand, argument, option

from agents.ops import dlq, drop, shadow as shadows, views
from agents.ops.diff import Side, as_text, diff
from agents.ops.errors import OpsError
from agents.ops.replay import INPUTS, Options, replay
from infra.settings import Settings

__all__ = ["register_commands"]

JSON = option("--json", "as_json", is_flag=True, default=False, help="One JSON document instead of text.")


def _emit(as_json: bool, data: Any, text: Callable[[], Iterable[str]]) -> None:
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    else:
        for line in text():
            print(line)


def _guarded(run: Callable[[], int]) -> None:
    """Run a command body: its exit code, or 2 with the message on stderr for an OpsError."""
    try:
        code = run()
    except OpsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if code:
        raise SystemExit(code)


def _progress(update: dict[str, Any]) -> None:
    if update["phase"] == "copy":
        print(f"copy {update['topic']}: {update['read']}/{update['of']} read, {update['copied']} copied",
              file=sys.stderr, flush=True)
    else:
        print(f"drain: shadow lag {update['lag']}", file=sys.stderr, flush=True)


def _offsets(items: tuple[str, ...]) -> dict[str, dict[int, int]]:
    out: dict[str, dict[int, int]] = {}
    for item in items:
        try:
            topic, partition, offset = item.rsplit(":", 2)
            out.setdefault(topic, {})[int(partition)] = int(offset)
        except ValueError:
            raise OpsError(f"--offset {item!r}: expected TOPIC:PARTITION:OFFSET") from None
    return out


def _side(settings: Settings, name: str) -> Side:
    app_id, prefix = shadows.live_settings_for(settings, name)
    return Side(name, app_id, prefix)


def _app_of(settings: Settings, shadow: str | None) -> tuple[str, str]:
    return shadows.live_settings_for(settings, shadow or "live")


Handler = Callable[..., Awaitable[None]]


def _command(app: faust.App, name: str, *options: Any) -> Callable[[Handler], Handler]:
    """`app.command(*options)` for a handler named `name` on the command line."""
    def register(fun: Handler) -> Handler:
        fun.__name__ = fun.__qualname__ = name
        app.command(*options)(fun)
        return fun
    return register


def register_commands(app: faust.App, settings: Settings) -> None:
    """Add the operator commands to the worker's app (`settings`: the live worker's)."""

    @_command(app, "replay",
        argument("name"),
        option("--topic", "topics", multiple=True, help=f"An input topic (default all: {', '.join(INPUTS)})."),
        option("--from-ts", type=int, default=None, help="From the first record at or after this epoch ms."),
        option("--to-ts", type=int, default=None, help="Up to the first record at or after this epoch ms."),
        option("--offset", "offsets", multiple=True, help="TOPIC:PARTITION:OFFSET to start a partition at."),
        option("--set", "overrides", multiple=True, help="SETTING=VALUE for the shadow (a policy to try)."),
        option("--timeout", type=float, default=600.0, help="Give up after this many seconds."),
        JSON,
    )
    async def replay_(self: AppCommand, name: str, topics: tuple[str, ...], from_ts: int | None,
                      to_ts: int | None, offsets: tuple[str, ...], overrides: tuple[str, ...], timeout: float,
                      as_json: bool) -> None:
        """Replay a range of the input topics into shadow NAME (the same agents, an isolated state)."""
        def run() -> int:
            options = Options(topics=topics or INPUTS, from_ms=from_ts, to_ms=to_ts, starts=_offsets(offsets),
                              timeout_s=timeout)
            made = replay(settings, name, options, shadows.parse_overrides(list(overrides)), _progress)
            _emit(as_json, asdict(made), lambda: [
                f"shadow {made.name}: app id {made.app_id}, topics {made.prefix}*, {made.copied} records replayed",
                *(f"  {t}: " + " ".join(f"{p}:[{a},{b})" for p, (a, b) in sorted(r.items()))
                  for t, r in sorted(made.ranges.items()))])
            return 0
        _guarded(run)

    @_command(app, "diff",
        argument("left"), argument("right", required=False),
        option("--table", "tables", multiple=True, help="A table (default: every table)."),
        option("--topic", "topics", multiple=True, type=click.Choice(["push", "cell-features"]),
               help="An output topic to diff too."),
        option("--match", default="*", help="Glob on output message keys, e.g. 'driver:*'."),
        option("--ignore", "ignored", multiple=True, help="NAME:GLOB, a field path to leave out."),
        option("--sample", type=int, default=5, help="Differences shown per table."),
        option("--tolerance-ms", type=int, default=5000, help="Clock-stamped fields within this are equal."),
        option("--report", default=None, help="Also write the JSON report to this file."),
        JSON,
    )
    async def diff_(self: AppCommand, left: str, right: str | None, tables: tuple[str, ...],
                    topics: tuple[str, ...], match: str, ignored: tuple[str, ...], sample: int, tolerance_ms: int,
                    report: str | None,
                    as_json: bool) -> None:
        """Diff shadow RIGHT against live (or LEFT against RIGHT): exit 0 when equal, 1 when not."""
        def run() -> int:
            a, b = ("live", left) if right is None else (left, right)
            from agents.ops.catalog import TABLES
            result = diff(settings.bootstrap, _side(settings, a), _side(settings, b), tables=tables or tuple(TABLES),
                          topics=topics, match=match, sample=sample, extra_ignored=ignored,
                          tolerance_ms=tolerance_ms)
            if report:
                with open(report, "w") as f:
                    json.dump(result, f, indent=2, default=str)
            _emit(as_json, result, lambda: as_text(result).splitlines())
            return 0 if result["equal"] else 1
        _guarded(run)

    @_command(app, "shadows", JSON)
    async def shadows_(self: AppCommand, as_json: bool) -> None:
        """List the shadows of this app."""
        def run() -> int:
            made = [asdict(s) for s in shadows.shadows(settings)]
            _emit(as_json, made, lambda: views.rows_text(made, ["name", "status", "app_id", "prefix", "copied",
                                                                "overrides"]))
            return 0
        _guarded(run)

    @_command(app, "drop", argument("name"), JSON)
    async def drop_(self: AppCommand, name: str, as_json: bool) -> None:
        """Drop shadow NAME: its topics, changelogs, groups, RocksDB state and manifest."""
        def run() -> int:
            done = drop.drop(settings, name)
            _emit(as_json, done, lambda: [f"dropped {name}: {len(done['topics'])} topics, state {done['state_dir']}"])
            return 0
        _guarded(run)

    @_command(app, "promote", argument("name"), JSON)
    async def promote_(self: AppCommand, name: str, as_json: bool) -> None:
        """Promote shadow NAME (live workers stopped): its groups go on from the live topics; prints how to start."""
        def run() -> int:
            done = drop.promote(settings, name)
            _emit(as_json, done, lambda: [f"promoted {name}; start the workers with:", f"  {done['start']}"])
            return 0
        _guarded(run)

    @_command(app, "lag", option("--group", "groups", multiple=True, help="Another consumer group too."),
                 option("--shadow", default=None, help="A shadow's groups instead of live's."), JSON)
    async def lag(self: AppCommand, groups: tuple[str, ...], shadow: str | None, as_json: bool) -> None:
        """Consumer lag per group and partition: the feed's group, Faust's, and any --group."""
        def run() -> int:
            rows = views.lag(settings, *_app_of(settings, shadow), groups)
            _emit(as_json, rows, lambda: views.rows_text(rows, ["group", "topic", "partition", "committed", "end",
                                                                "lag"]))
            return 0
        _guarded(run)

    @_command(app, "tables", argument("table", required=False), argument("key", required=False),
                 option("--shadow", default=None, help="A shadow's table instead of live's."), JSON)
    async def tables(self: AppCommand, table: str | None, key: str | None, shadow: str | None, as_json: bool) -> None:
        """livetrack's tables; with TABLE KEY, the key's latest value decoded with its .avsc."""
        def run() -> int:
            app_id, _ = _app_of(settings, shadow)
            if table is None or key is None:
                rows = views.table_list(settings, app_id)
                _emit(as_json, rows, lambda: views.rows_text(rows, ["table", "value", "changelog", "partitions",
                                                                    "records"]))
                return 0
            found = views.lookup(settings, app_id, table, key)
            _emit(as_json, found, lambda: [json.dumps(found, indent=2, default=str)])
            return 0 if found["found"] else 1
        _guarded(run)

    @_command(app, "tail", argument("topic"), option("-n", "last", type=int, default=10, help="Last records per partition."),
                 option("--follow", type=float, default=0.0, help="Then follow for this many seconds."),
                 option("--shadow", default=None, help="A shadow's topic instead of live's."), JSON)
    async def tail(self: AppCommand, topic: str, last: int, follow: float, shadow: str | None, as_json: bool) -> None:
        """The last records of TOPIC decoded with its .avsc (JSON lines with --json)."""
        def run() -> int:
            _, prefix = _app_of(settings, shadow)

            def out(row: dict[str, Any]) -> None:
                if as_json:
                    print(json.dumps(row, default=str), flush=True)
                else:
                    print(f"{row['partition']}:{row['offset']} {row['ts']} {row['key']} "
                          f"{json.dumps(row['value'], default=str)}", flush=True)
            from agents.ops.catalog import spec_of
            spec_of(topic)
            views.tail(settings, topic, last=last, follow_s=follow, prefix=prefix, out=out)
            return 0
        _guarded(run)

    @_command(app, "dlq", argument("action", type=click.Choice(["list", "show", "redrive"])),
                 argument("name", required=False),
                 option("--limit", type=int, default=20, help="show: the last this many letters."),
                 option("--pending", is_flag=True, default=False, help="show: only letters a redrive would take."),
                 option("--dry-run", is_flag=True, default=False, help="redrive: say what would happen, do nothing."),
                 JSON)
    async def dlq_(self: AppCommand, action: str, name: str | None, limit: int, pending: bool, dry_run: bool,
                   as_json: bool) -> None:
        """Dead letters: list every dead-letter topic, show one's letters, redrive one's pending letters."""
        def run() -> int:
            if action == "list":
                rows = dlq.dlq_list(settings)
                _emit(as_json, rows, lambda: views.rows_text(rows, ["dlq", "letters", "pending", "reasons"]))
                return 0
            if name is None:
                raise OpsError(f"dlq {action} needs a dead-letter topic: {', '.join(dlq.DLQS)}")
            if action == "show":
                letters = dlq.show(settings, name, limit=limit, pending_only=pending)
                _emit(as_json, letters, lambda: views.rows_text(letters, ["offset", "source", "reason", "key"]))
                return 0
            done = dlq.redrive(settings, name, dry_run=dry_run)
            _emit(as_json, done, lambda: [
                f"{name}: {len(done['redriven'])} redriven, {len(done['refused'])} refused"
                f"{' (dry run)' if dry_run else ''}",
                *(f"  redriven {r['source']} -> {r['to']}" for r in done["redriven"]),
                *(f"  refused {r['source']}: {r['reason']}" for r in done["refused"])])
            return 0
        _guarded(run)
