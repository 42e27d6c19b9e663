"""`imageloc serve` and `imageloc db ...`: the commands that run the server or migrate its store.

The server modules are imported only when one of these runs, so the client verbs stay light.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imageloc.server.config import Settings

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2

#: The top-level commands this module handles.
COMMANDS = frozenset({"serve", "db"})


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `serve` and `db` to the command line."""
    serve = commands.add_parser(
        "serve", help="Run the server.", description="Run the server; flags override IMAGELOC_*."
    )
    serve.add_argument("--listen", metavar="ADDR", help="host:port ($IMAGELOC_LISTEN)")
    _add_database(serve)
    serve.add_argument(
        "--location-quota",
        type=int,
        metavar="N",
        help="most locations per image, negative unlimited ($IMAGELOC_LOCATION_QUOTA)",
    )
    serve.add_argument(
        "--delayed-delete",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="delete active images to pending_delete ($IMAGELOC_DELAYED_DELETE)",
    )
    serve.add_argument(
        "--location-schemes",
        metavar="a,b,c",
        help="accepted URL schemes ($IMAGELOC_LOCATION_SCHEMES)",
    )
    serve.add_argument(
        "--drain-seconds",
        type=float,
        metavar="S",
        help="after SIGTERM, serve this long with health NOT_SERVING ($IMAGELOC_DRAIN_SECONDS)",
    )
    serve.add_argument(
        "--grace-seconds",
        type=float,
        metavar="S",
        help="the longest a stop takes, drain included ($IMAGELOC_GRACE_SECONDS)",
    )
    db = commands.add_parser(
        "db",
        help="Migrate the database schema.",
        description="Migrate the database schema. SQLite migrates itself when the server "
        "starts; PostgreSQL needs `imageloc db upgrade` before a new server version starts.",
    )
    verbs = db.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_database(verbs.add_parser("upgrade", help="Migrate to this version's newest schema."))
    _add_database(verbs.add_parser("current", help="Print the schema revision in use."))


def _add_database(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database", metavar="URL", help="SQLAlchemy URL ($IMAGELOC_DATABASE)")


def run(args: argparse.Namespace) -> int:
    """Run `serve` or `db VERB`; returns the exit status."""
    try:
        settings = _settings(args)
    except ValueError as err:
        print(f"error: bad IMAGELOC_* setting: {err}", file=sys.stderr)
        return EXIT_USAGE
    from imageloc.server.domain.ports import StoreUnavailableError
    from imageloc.server.store import SchemaMismatchError

    try:
        if args.command == "serve":
            from imageloc.server.app import serve

            serve(settings)
        else:
            _run_db(args.verb, settings.database_url)
    except SchemaMismatchError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_REFUSED
    except StoreUnavailableError as err:
        print(f"error: cannot use the database: {err}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


def _settings(args: argparse.Namespace) -> Settings:
    """IMAGELOC_* settings, overridden by the flags given."""
    from imageloc.server.config import Settings, parse_schemes

    flags: dict[str, Any] = {"database_url": args.database}
    if args.command == "serve":
        flags |= {
            "listen": args.listen,
            "location_quota": args.location_quota,
            "drain_seconds": args.drain_seconds,
            "grace_seconds": args.grace_seconds,
            "delayed_delete": args.delayed_delete,
            "location_schemes": (
                None if args.location_schemes is None else parse_schemes(args.location_schemes)
            ),
        }
    return dataclasses.replace(
        Settings.from_env(), **{name: value for name, value in flags.items() if value is not None}
    )


def _run_db(verb: str, database_url: str) -> None:
    from imageloc.server.store import SqlStore

    store = SqlStore(database_url)
    try:
        if verb == "upgrade":
            store.upgrade()
        print(store.schema_revision() or "none")
    finally:
        store.dispose()
