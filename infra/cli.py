"""`livetrack`: the project's own commands (broker, topics, schemas, gateway, simulator, demo, legacy bridge)."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Protocol, Sequence

from infra.logs import setup_logging
from infra.settings import Settings

__all__ = ["main"]


class _Server(Protocol):
    """A local server livetrack runs: the broker, PostgreSQL, the Connect worker."""

    def pid(self) -> int | None: ...
    def start(self, timeout_s: float = ...) -> int: ...
    def stop(self, timeout_s: float = ...) -> bool: ...
    def status(self) -> str: ...


def _serve(server: _Server, action: str, where: str) -> int:
    """start, stop or status of a local server; status exits 3 when it is not running."""
    if action == "start":
        print(f"running (pid {server.start()}) at {where}")
    elif action == "stop":
        print("stopped" if server.stop() else "not running")
    else:
        print(server.status())
        return 0 if server.pid() else 3
    return 0


def _broker(args: argparse.Namespace, settings: Settings) -> int:
    from infra.broker import LocalBroker, wait_for_cluster

    if not settings.embedded_kafka:
        if args.action in ("start", "status"):
            wait_for_cluster(settings.bootstrap, timeout_s=10)
            print(f"using existing cluster at {settings.bootstrap}; nothing started")
        return 0
    broker = LocalBroker(settings)
    if args.action == "fetch":
        print(broker.fetch())
        return 0
    return _serve(broker, args.action, settings.bootstrap)


def _postgres(args: argparse.Namespace, settings: Settings) -> int:
    from infra.postgres import LocalPostgres, wait_ready

    if not settings.embedded_postgres:
        if args.action in ("start", "status"):
            wait_ready(settings.postgres_dsn, timeout_s=10)
            print("using the existing PostgreSQL of LIVETRACK_POSTGRES_DSN; nothing started")
        return 0
    return _serve(LocalPostgres(settings), args.action, f"127.0.0.1:{settings.postgres_port}")


def _connect(args: argparse.Namespace, settings: Settings) -> int:
    """The Connect worker; `start` also creates the topics and the legacy tables, and registers the connector."""
    from infra.broker import wait_for_cluster
    from infra.connect import LocalConnect, register, wait_running
    from infra.postgres import conninfo
    from infra.topics import ensure_topics
    from legacy.db import apply_schema

    worker = LocalConnect(settings)
    if args.action == "fetch":
        print(worker.fetch())
        return 0
    if args.action == "start":
        wait_for_cluster(settings.bootstrap, timeout_s=10)
        ensure_topics(settings)
        dsn = conninfo(settings)
        apply_schema(dsn)
        worker.start()
        register(settings, dsn)
        wait_running(settings)
        print(f"running (pid {worker.pid()}) at {settings.connect_url}; connector {settings.connect_connector} RUNNING")
        return 0
    return _serve(worker, args.action, settings.connect_url)


def _legacy(args: argparse.Namespace, settings: Settings) -> int:
    """The legacy database: its tables (`init`), or its simulated scheduled job writing orders (`run`)."""
    import asyncio
    import random

    from infra.postgres import conninfo
    from legacy.db import apply_schema
    from legacy.jobs import LegacyJob, run_writers

    dsn = conninfo(settings)
    apply_schema(dsn)
    if args.action == "init":
        print("legacy tables exist")
        return 0
    job = LegacyJob(args.prefix, orders=args.orders, rng=random.Random())
    try:
        written = asyncio.run(run_writers(dsn, job, events=args.events, writers=args.writers, rate_hz=args.rate))
    except KeyboardInterrupt:
        return 0
    print(f"{sum(w.committed for w in written)} rows committed")
    return 0


def _topics(args: argparse.Namespace, settings: Settings) -> int:
    from infra.topics import ensure_topics

    created = ensure_topics(settings)
    print(f"created: {', '.join(created)}" if created else "all declared topics exist")
    return 0


def _schemas(args: argparse.Namespace, settings: Settings) -> int:
    """Write the current .avsc, keep each changed record's new version in history, regenerate typed.py."""
    from schemas.registry import export

    for path in export():
        print(path)
    return 0


def _settings(args: argparse.Namespace, settings: Settings) -> int:
    """Every setting as a Markdown table: variable, default, meaning (the README's is made by this)."""
    print("| variable | default | meaning |\n|---|---|---|")
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = f"~/.cache/livetrack/{name.removesuffix('_home')}" if name.endswith("_home") else default
        print(f"| `LIVETRACK_{name.upper()}` | `{shown}` | {field.description} |")
    return 0


def _reservations(args: argparse.Namespace, settings: Settings) -> int:
    """The reservation protocol as a Markdown table (the README's is made by this)."""
    from agents.reservations import as_markdown

    print(as_markdown(), end="")
    return 0


def _gateway(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.main import run

    run(settings)
    return 0


def _sim(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from gateway.auth import Tokens
    from sim.dispatch import DispatchSim
    from sim.fleet import run_fleet

    # The simulator is a fleet integration: one ops token publishes for all its drivers; each
    # simulated driver and rider answers offers and requests rides with its own token.
    tokens = Tokens(settings)
    token = tokens.mint("ops", "simulator", ttl_s=30 * 24 * 3600)
    dispatch = DispatchSim(settings, lambda role, sub: tokens.mint(role, sub, 30 * 24 * 3600))
    try:
        asyncio.run(run_fleet(settings, duration_s=args.duration, token=token, dispatch=dispatch))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how the simulator is meant to stop
    return 0


def _shop(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from gateway.auth import Tokens
    from sim.shop import FirstOrder, run_shop

    tokens = Tokens(settings)
    first = FirstOrder(args.first_order, args.first_customer) if args.first_order else None
    try:
        asyncio.run(run_shop(settings, lambda role, sub: tokens.mint(role, sub, 30 * 24 * 3600),
                             duration_s=args.duration, first=first))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how the simulator is meant to stop
    return 0


def _token(args: argparse.Namespace, settings: Settings) -> int:
    """Print a token for development and the demo (signed with the configured or dev key)."""
    from gateway.auth import Tokens

    print(Tokens(settings).mint(args.role, args.sub, args.ttl))
    return 0


def _watch(args: argparse.Namespace, settings: Settings) -> int:
    """Print a channel's updates as JSON lines, through the Python client (resume, dedupe, gap repair)."""
    import asyncio
    import json

    from gateway.auth import Tokens
    from gateway.client import LiveClient

    token = args.token or Tokens(settings).mint("ops", "watch")

    async def watch() -> None:
        client = LiveClient(args.url or settings.gateway_url, token,
                            on_update=lambda u: print(json.dumps(u), flush=True),
                            on_snapshot=lambda c, s: print(json.dumps({"snapshot": s}), flush=True))
        await client.connect()
        try:
            for channel in args.channels:
                await client.subscribe(channel)
            await asyncio.sleep(args.duration if args.duration is not None else float("inf"))
        finally:
            await client.disconnect()
            print(json.dumps({"stats": vars(client.stats)}), flush=True)

    try:
        asyncio.run(watch())
    except KeyboardInterrupt:
        pass
    return 0


def _notifications(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import json

    if args.action == "redrive":
        from infra.notify.redrive import redrive

        print(json.dumps(vars(redrive(settings, args.from_offset))))
        return 0
    from infra.sinks import serve_sinks

    try:
        asyncio.run(serve_sinks(settings, args.duration))
    except KeyboardInterrupt:
        pass
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from infra.demo import run_demo

    return run_demo(settings)


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "broker": _broker, "postgres": _postgres, "connect": _connect, "legacy": _legacy, "topics": _topics, "schemas": _schemas, "settings": _settings,
    "reservations": _reservations, "gateway": _gateway,
    "sim": _sim, "shop": _shop, "demo": _demo, "token": _token, "watch": _watch, "notifications": _notifications,
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livetrack", description=__doc__)
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("broker", help="the embedded Kafka broker")
    b.add_argument("action", choices=["fetch", "start", "stop", "status"])
    pg = sub.add_parser("postgres", help="the local PostgreSQL of the legacy bridge")
    pg.add_argument("action", choices=["start", "stop", "status"])
    c = sub.add_parser("connect", help="the legacy bridge's Kafka Connect worker and Debezium connector")
    c.add_argument("action", choices=["fetch", "start", "stop", "status"])
    lg = sub.add_parser("legacy", help="the legacy database: create its tables, or run its simulated job")
    lg.add_argument("action", choices=["init", "run"])
    lg.add_argument("--events", type=int, default=1000, help="run: commit this many queue rows")
    lg.add_argument("--rate", type=float, default=50.0, help="run: steps per second overall")
    lg.add_argument("--orders", type=int, default=200, help="run: orders in flight at once")
    lg.add_argument("--writers", type=int, default=4, help="run: concurrent connections")
    lg.add_argument("--prefix", default="legacy", help="run: order ids are PREFIX-000001, ...")
    t = sub.add_parser("topics", help="create the declared topics (idempotent)")
    t.add_argument("action", choices=["create"])
    s = sub.add_parser("schemas", help="write schemas/avsc/ (current and history) and schemas/typed.py from the Records")
    s.add_argument("action", choices=["export"])
    sub.add_parser("settings", help="print every LIVETRACK_* setting with its default and meaning")
    sub.add_parser("reservations", help="print the reservation protocol (phase x command) as a Markdown table")
    sub.add_parser("gateway", help="run the HTTP + Socket.IO gateway")
    sim = sub.add_parser("sim", help="run the fleet simulator against the gateway")
    sim.add_argument("--duration", type=float, default=None, help="seconds (default: until Ctrl-C)")
    shop = sub.add_parser("shop", help="run the shop simulator: orders for simulated customers, its couriers deliver them")
    shop.add_argument("--duration", type=float, default=None, help="seconds (default: until Ctrl-C)")
    shop.add_argument("--first-order", default=None, help="id of the order the shop places first")
    shop.add_argument("--first-customer", default="sim-customer-demo", help="that order's customer")
    sub.add_parser("demo", help="broker, topics, worker, gateway and the simulators (fleet, shop) together")
    w = sub.add_parser("watch", help="print the updates of channels on /live (the Python client)")
    w.add_argument("channels", nargs="+", help="driver:{id}, ride:{id}, cell:{h3} or fleet")
    w.add_argument("--token", default=None, help="a token (default: an ops token minted with the local key)")
    w.add_argument("--url", default=None, help="gateway URL (default: LIVETRACK_GATEWAY_HOST/PORT)")
    w.add_argument("--duration", type=float, default=None, help="seconds (default: until Ctrl-C)")
    n = sub.add_parser("notifications", help="re-drive dead-lettered sends, or run the local channel servers")
    n.add_argument("action", choices=["redrive", "sinks"])
    n.add_argument("--from-offset", type=int, default=0, help="redrive: from this notifications-dlq offset")
    n.add_argument("--duration", type=float, default=None, help="sinks: seconds (default: until Ctrl-C)")
    tok = sub.add_parser("token", help="mint a JWT for a device or client (development, demo)")
    tok.add_argument("--role", required=True, choices=["driver", "rider", "ops", "system", "customer"])
    tok.add_argument("--sub", required=True, help="driver id, rider id or operator name")
    tok.add_argument("--ttl", type=float, default=None, help="seconds (default LIVETRACK_TOKEN_TTL_S)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    return COMMANDS[args.command](args, Settings())


if __name__ == "__main__":
    sys.exit(main())
