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
        "--glance-listen",
        metavar="ADDR",
        help="also serve Glance's Image API v2 over HTTP on host:port; off by default"
        " ($IMAGELOC_GLANCE_LISTEN)",
    )
    serve.add_argument(
        "--metrics-listen",
        metavar="ADDR",
        help="serve Prometheus metrics on http://host:port/metrics; off by default"
        " ($IMAGELOC_METRICS_LISTEN)",
    )
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="the server log: text lines, or one JSON object a line (default text;"
        " $IMAGELOC_LOG_FORMAT)",
    )
    serve.add_argument(
        "--property-quota",
        type=int,
        metavar="N",
        help="most extra properties per image, negative unlimited (default 128;"
        " $IMAGELOC_PROPERTY_QUOTA)",
    )
    serve.add_argument(
        "--tag-quota",
        type=int,
        metavar="N",
        help="most tags per image, negative unlimited (default 128; $IMAGELOC_TAG_QUOTA)",
    )
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
    serve.add_argument(
        "--watch-progress-seconds",
        type=float,
        metavar="S",
        help="an idle WatchImages stream gets the current revision at least this often"
        " (default 10; $IMAGELOC_WATCH_PROGRESS_SECONDS)",
    )
    serve.add_argument(
        "--watch-retention-seconds",
        type=float,
        metavar="S",
        help="how long the change log keeps changes to resume from"
        " (default 86400; $IMAGELOC_WATCH_RETENTION_SECONDS)",
    )
    _add_security(serve)
    db = commands.add_parser(
        "db",
        help="Migrate the database schema.",
        description="Migrate the database schema. SQLite migrates itself when the server "
        "starts; PostgreSQL needs `imageloc db upgrade` before a new server version starts.",
    )
    verbs = db.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_database(verbs.add_parser("upgrade", help="Migrate to this version's newest schema."))
    _add_database(verbs.add_parser("current", help="Print the schema revision in use."))


#: `serve`'s security flags: (flag, metavar, help); each reads IMAGELOC_<FLAG> too.
SECURITY_FLAGS = (
    ("--auth", "none|jwt", "who may call: none (loopback only) or jwt bearer tokens"),
    ("--jwks-file", "PATH", "the token signing keys (JWKS), re-read when the file changes"),
    ("--jwks-url", "URL", "the token signing keys (JWKS), fetched and cached"),
    ("--token-issuer", "ISS", "the tokens' required iss"),
    ("--token-audience", "AUD", "the tokens' required aud"),
    ("--project-claim", "CLAIM", "the claim (or dotted path) of the caller's project"),
    ("--roles-claim", "CLAIM", "the claim (or dotted path) of the caller's roles"),
    ("--implied-roles", "a:b,b:c", "role implications; empty turns them off"),
    ("--tls-cert", "PEM", "serve TLS with this certificate chain"),
    ("--tls-key", "PEM", "the private key of --tls-cert"),
    ("--tls-client-ca", "PEM", "require client certificates signed by this CA (mTLS)"),
    ("--policy-file", "PATH", "oslo.policy YAML or JSON overriding Glance's default rules"),
    ("--audit-log", "PATH", "where the audit log goes (default standard error)"),
)


def _add_security(serve: argparse.ArgumentParser) -> None:
    for flag, metavar, help_text in SECURITY_FLAGS:
        variable = "IMAGELOC_" + flag[2:].upper().replace("-", "_")
        serve.add_argument(flag, metavar=metavar, help=f"{help_text} (${variable})")
    serve.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        default=None,
        help="allow --auth none on a non-loopback address ($IMAGELOC_ALLOW_UNAUTHENTICATED)",
    )
    serve.add_argument(
        "--service-identity",
        action="append",
        metavar="ID",
        help="a client certificate identity (URI or DNS SAN) that is a service; repeatable"
        " ($IMAGELOC_SERVICE_IDENTITY, comma-separated)",
    )


def _add_database(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database", metavar="URL", help="SQLAlchemy URL ($IMAGELOC_DATABASE)")


def run(args: argparse.Namespace) -> int:
    """Run `serve` or `db VERB`; returns the exit status."""
    from imageloc.server.config import ConfigError

    try:
        settings = _settings(args)
    except ValueError as err:
        print(f"error: bad IMAGELOC_* setting: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "serve":
        try:
            settings.check()
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USAGE
    from imageloc.server.domain.ports import StoreUnavailableError
    from imageloc.server.store import SchemaMismatchError

    try:
        if args.command == "serve":
            from imageloc.server.app import serve

            serve(settings)
        else:
            _run_db(args.verb, settings.database_url)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
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
            "glance_listen": args.glance_listen,
            "metrics_listen": args.metrics_listen,
            "log_format": args.log_format,
            "property_quota": args.property_quota,
            "tag_quota": args.tag_quota,
            "drain_seconds": args.drain_seconds,
            "grace_seconds": args.grace_seconds,
            "watch_progress_seconds": args.watch_progress_seconds,
            "watch_retention_seconds": args.watch_retention_seconds,
            "delayed_delete": args.delayed_delete,
            "location_schemes": (
                None if args.location_schemes is None else parse_schemes(args.location_schemes)
            ),
            "allow_unauthenticated": args.allow_unauthenticated,
            "service_identities": (
                None if args.service_identity is None else frozenset(args.service_identity)
            ),
        }
        flags |= {
            flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
            for flag, _, _ in SECURITY_FLAGS
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
