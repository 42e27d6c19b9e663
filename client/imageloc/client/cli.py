"""The `imageloc` command: `image` and `location` verbs call a server; `serve` and `db` run one.

Exit status: 0 done, 1 refused by the server (or unreachable, or cannot listen; for `image
wait`: the status not reached), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from itertools import islice
from typing import Any

import grpc

from imageloc.client import auth_commands, cluster_commands, output, server_commands
from imageloc.client.client import DEFAULT_TARGET, ImageClient
from imageloc.client.convert import STATUS_WORDS, VISIBILITY_WORDS, to_locations
from imageloc.client.errors import ImagelocError
from imageloc.client.server_commands import EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from imageloc.v1 import image_service_pb2 as pb

#: What a verb gives to print; None when it printed as it went (image watch).
Result = pb.Image | list[pb.Image] | None
Action = Callable[[ImageClient, argparse.Namespace], Result]
Lifecycle = Callable[[ImageClient, str, str | None], pb.Image]

_LIFECYCLE: dict[str, tuple[str, Lifecycle]] = {
    "begin-upload": ("Move a queued image to saving.", lambda c, i, e: c.begin_upload(i, etag=e)),
    "fail-upload": ("Move a saving image to killed.", lambda c, i, e: c.fail_upload(i, etag=e)),
    "stage": ("Move a queued image to uploading.", lambda c, i, e: c.stage_image(i, etag=e)),
    "begin-import": (
        "Move a queued or uploading image to importing.",
        lambda c, i, e: c.begin_import(i, etag=e),
    ),
    "deactivate": (
        "Move an active image to deactivated.",
        lambda c, i, e: c.deactivate_image(i, etag=e),
    ),
    "reactivate": (
        "Move a deactivated image to active.",
        lambda c, i, e: c.reactivate_image(i, etag=e),
    ),
}


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (sys.argv[1:] when None); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "action", None) is _update and not _changes_something(args):
            parser.error("image update: give at least one field to change")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if args.command in server_commands.COMMANDS:
        return server_commands.run(args)
    if args.command in auth_commands.COMMANDS:
        return auth_commands.run(args)
    if args.command in cluster_commands.COMMANDS:
        return cluster_commands.run(args)
    return _call_server(args)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: global options, `serve`, `image ...` and `location ...`."""
    parser = argparse.ArgumentParser(
        prog="imageloc", description="Keep virtual-machine images and their locations."
    )
    _add_client_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server_commands.add_commands(commands)
    cluster_commands.add_commands(commands)
    auth_commands.add_commands(commands)
    common = _common_options()
    image = commands.add_parser("image", help="Create, show, list, delete images; move status.")
    _add_image_verbs(image.add_subparsers(dest="verb", required=True, metavar="VERB"), common)
    location = commands.add_parser("location", help="List, add, remove, replace locations.")
    _add_location_verbs(location.add_subparsers(dest="verb", required=True, metavar="VERB"), common)
    return parser


# Parser construction.


#: How long `image wait` waits when --timeout does not say.
WAIT_TIMEOUT = 60.0

_CALL_TIMEOUT_HELP = "deadline of each call in seconds (default: the service config's, 5-10 s)"


def _common_options(*, timeout_help: str = _CALL_TIMEOUT_HELP) -> argparse.ArgumentParser:
    """The parent parser that repeats the client options on a verb."""
    common = argparse.ArgumentParser(add_help=False)
    _add_client_options(common, defaults=False, timeout_help=timeout_help)
    return common


def _add_client_options(
    parser: argparse.ArgumentParser, *, defaults: bool, timeout_help: str = _CALL_TIMEOUT_HELP
) -> None:
    """--server, --json, --timeout and the credentials: with defaults on the top parser,
    suppressed on verbs.

    Verbs repeat them so they may follow the verb; a suppressed default keeps the
    top parser's value when the verb does not set them.
    """
    unset = argparse.SUPPRESS
    parser.add_argument(
        "--server",
        metavar="ADDR",
        default=os.environ.get("IMAGELOC_SERVER", DEFAULT_TARGET) if defaults else unset,
        help=(
            "the server's host:port, or a gRPC target over replicas: ipv4:h1:p1,h2:p2 or"
            f" dns:///name:port (default: $IMAGELOC_SERVER or {DEFAULT_TARGET})"
        ),
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if defaults else unset,
        help="print JSON instead of text",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=None if defaults else unset,
        help=timeout_help if not defaults else f"{timeout_help}; image wait: of the whole wait",
    )
    for flag, variable, metavar, help_text in _CREDENTIAL_OPTIONS:
        parser.add_argument(
            flag,
            metavar=metavar,
            default=(os.environ.get(variable) or None) if defaults else unset,
            help=f"{help_text} (default: ${variable})",
        )


#: The credential options of client commands: (flag, variable, metavar, help).
_CREDENTIAL_OPTIONS = (
    ("--token", "IMAGELOC_TOKEN", "JWT", "bearer token for every call; prefer the variable"),
    ("--ca-cert", "IMAGELOC_CA_CERT", "PEM", "use TLS, trusting this CA (PEM file)"),
    ("--cert", "IMAGELOC_CERT", "PEM", "use TLS with this client certificate (PEM file)"),
    ("--key", "IMAGELOC_KEY", "PEM", "the private key of --cert (PEM file)"),
)


def _add_image_verbs(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    create = _verb(verbs, common, "create", "Register a new image, queued.", action=_create)
    create.add_argument("--name", required=True)
    create.add_argument("--disk-format", default="", metavar="FORMAT", help="qcow2, raw, ...")
    create.add_argument("--container-format", default="", metavar="FORMAT", help="bare, ovf, ...")
    create.add_argument("--visibility", choices=VISIBILITY_WORDS)
    create.add_argument("--protected", action="store_true")
    create.add_argument("--id", dest="image_id", metavar="UUID", help="default: a new UUID")
    _add_record_options(create, update=False)

    _add_update_verb(verbs, common)

    show = _verb(verbs, common, "show", "Show one image.", action=_show)
    show.add_argument("image_id", metavar="ID")

    listing = _verb(
        verbs, common, "list", "List images, newest first.", action=_list, view="images"
    )
    listing.add_argument("--status", choices=STATUS_WORDS)
    listing.add_argument("--name", help="only images of exactly this name")
    listing.add_argument("--owner", metavar="PROJECT", help="only images of this project")
    listing.add_argument(
        "--tag", dest="tags", action="append", default=[], metavar="TAG", help="(repeatable)"
    )
    listing.add_argument(
        "--property",
        dest="properties",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="only images with this property (repeatable)",
    )
    listing.add_argument(
        "--hidden",
        dest="os_hidden",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="only hidden images (--no-hidden: the default, hidden ones left out)",
    )
    listing.add_argument(
        "--order-by", default="", metavar="KEYS", help='e.g. "name, size desc" (default newest)'
    )
    listing.add_argument("--page-size", type=int, default=0, metavar="N")
    listing.add_argument("--limit", type=_non_negative, metavar="N", help="stop after N images")

    delete = _verb(verbs, common, "delete", "Delete an image.", action=_delete)
    delete.add_argument("image_id", metavar="ID")
    _add_etag(delete)

    complete = _verb(
        verbs, common, "complete-upload", "Make a saving image active.", action=_complete
    )
    complete.add_argument("image_id", metavar="ID")
    complete.add_argument("--url", required=True, help="where the data is; the first location")
    _add_metadata(complete)
    complete.add_argument("--size", type=int, default=0, metavar="BYTES")
    complete.add_argument("--checksum", default="", metavar="MD5")
    complete.add_argument("--os-hash-algo", default="", metavar="ALGO")
    complete.add_argument("--os-hash-value", default="", metavar="HEX")
    _add_etag(complete)

    for name, (help_text, call) in _LIFECYCLE.items():
        verb = _verb(verbs, common, name, help_text, action=_lifecycle_action(call))
        verb.add_argument("image_id", metavar="ID")
        _add_etag(verb)

    watch = _verb(
        verbs,
        _common_options(timeout_help="not used: a watch has no deadline (see --count)"),
        "watch",
        "Print every change to images as it commits.",
        description=(
            "Print every change to the images given (every image you may see when none is),"
            " as it commits: one line per event (revision, type, id, status, name), or with"
            " --json one JSON object per line. Runs until interrupted (Ctrl-C exits 0) or"
            " until --count events; when the server goes away it resumes by itself from the"
            " last revision received, missing nothing and repeating nothing."
        ),
        action=_watch,
    )
    watch.add_argument(
        "image_ids", nargs="*", metavar="ID", help="images to watch (may not exist yet)"
    )
    watch.add_argument(
        "--from-revision",
        type=_non_negative,
        default=0,
        metavar="N",
        help="print the changes after revision N (default 0: those after the watch starts)",
    )
    watch.add_argument(
        "--count", type=_non_negative, metavar="N", help="exit 0 after N events (default: never)"
    )

    wait = _verb(
        verbs,
        _common_options(
            timeout_help=f"give up after SECONDS, the whole wait (default: {WAIT_TIMEOUT:g})"
        ),
        "wait",
        "Wait until an image is in a status; print it.",
        description=(
            "Wait until the image is in one of the statuses, then print it and exit 0."
            " Exit 1, with the reason on stderr, when the timeout passes first, when the"
            " image is deleted, when its status can no longer reach any of them (killed,"
            " waiting for active), or when the server refuses. Watches; does not poll."
        ),
        action=_wait,
        call_timeout=False,
    )
    wait.add_argument("image_id", metavar="ID")
    statuses = ", ".join(STATUS_WORDS)
    wait.add_argument(
        "--status",
        dest="statuses",
        action="append",
        required=True,
        type=_status_words,
        metavar="STATUS",
        help=f"a status to wait for; repeat or comma-separate for any of several: {statuses}",
    )


def _add_location_verbs(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    listing = _verb(
        verbs, common, "list", "Show an image's locations.", action=_show, view="locations"
    )
    listing.add_argument("image_id", metavar="ID")

    add = _verb(verbs, common, "add", "Insert a location.", action=_add_location)
    add.add_argument("image_id", metavar="ID")
    add.add_argument("url", metavar="URL")
    _add_metadata(add)
    add.add_argument("--index", type=int, metavar="N", help="position; default: append")
    _add_validation_data(add)
    _add_etag(add)

    remove = _verb(verbs, common, "remove", "Remove one location.", action=_remove_location)
    remove.add_argument("image_id", metavar="ID")
    target = remove.add_mutually_exclusive_group(required=True)
    target.add_argument("--index", type=int, metavar="N")
    target.add_argument("--url", metavar="URL", help="the first location with this URL")
    _add_etag(remove)

    replace = _verb(
        verbs, common, "replace", "Set the whole location list.", action=_replace_locations
    )
    replace.add_argument("image_id", metavar="ID")
    given = replace.add_mutually_exclusive_group(required=True)
    given.add_argument(
        "--location", dest="urls", action="append", metavar="URL", help="repeat, in order"
    )
    given.add_argument(
        "--locations-json",
        dest="locations",
        type=_json_locations,
        metavar="JSON",
        help='a JSON array of URLs or {"url": ..., "metadata": {...}} objects',
    )
    _add_validation_data(replace)
    _add_etag(replace)


def _verb(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    name: str,
    help_text: str,
    *,
    action: Action,
    view: str = "image",
    description: str | None = None,
    call_timeout: bool = True,
) -> argparse.ArgumentParser:
    """A verb's parser that runs `action` and shows its result as `view`.

    `call_timeout` False: --timeout is not each call's deadline (the verb reads it itself).
    """
    verb = verbs.add_parser(
        name, help=help_text, description=description or help_text, parents=[common]
    )
    verb.set_defaults(action=action, view=view, call_timeout=call_timeout)
    return verb


def _add_update_verb(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """`image update ID`: UpdateImage with a mask of the options given."""
    update = _verb(
        verbs,
        common,
        "update",
        "Change an image's record fields (only those given).",
        action=_update,
    )
    update.add_argument("image_id", metavar="ID")
    update.add_argument("--name")
    update.add_argument("--disk-format", metavar="FORMAT", help="while queued only")
    update.add_argument("--container-format", metavar="FORMAT", help="while queued only")
    update.add_argument("--visibility", choices=VISIBILITY_WORDS)
    update.add_argument("--protected", action=argparse.BooleanOptionalAction, default=None)
    _add_record_options(update, update=True)
    _add_etag(update)


def _add_record_options(parser: argparse.ArgumentParser, *, update: bool) -> None:
    """The record fields of `image create` and `image update` (docs/api.md)."""
    parser.add_argument("--min-disk", type=int, default=None, metavar="GB")
    parser.add_argument("--min-ram", type=int, default=None, metavar="MB")
    parser.add_argument(
        "--tag",
        dest="tags",
        action="append",
        default=None,
        metavar="TAG",
        help="(repeatable)" + ("; replaces the image's tags" if update else ""),
    )
    if update:
        parser.add_argument("--hidden", action=argparse.BooleanOptionalAction, default=None)
    else:
        parser.add_argument("--hidden", action="store_true", help="leave out of default lists")
    parser.add_argument("--virtual-size", type=int, default=None, metavar="BYTES")
    parser.add_argument(
        "--property",
        dest="properties",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="an extra property (repeatable)",
    )
    if update:
        parser.add_argument(
            "--remove-property",
            dest="remove_properties",
            action="append",
            default=[],
            metavar="KEY",
            help="(repeatable)",
        )


def _key_value(text: str) -> tuple[str, str]:
    """KEY=VALUE, for argparse (a missing '=' is a usage error)."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"want KEY=VALUE, not {text!r}")
    return key, value


#: `image update`'s options that change something.
_UPDATE_OPTIONS = (
    "name", "disk_format", "container_format", "visibility", "protected", "min_disk", "min_ram",
    "tags", "hidden", "virtual_size",
)  # fmt: skip


def _add_etag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--etag", help="act only if the image's etag is still this one")


def _add_metadata(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metadata", type=_json_object, metavar="JSON", help="the location's metadata object"
    )


def _add_validation_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checksum", metavar="MD5", help="validation data for a queued image")
    parser.add_argument("--os-hash-algo", metavar="ALGO")
    parser.add_argument("--os-hash-value", metavar="HEX")


def _non_negative(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _status_words(text: str) -> list[str]:
    """An argparse type: status words, comma-separated."""
    words = [word.strip().lower() for word in text.split(",") if word.strip()]
    unknown = [word for word in words if word not in STATUS_WORDS]
    if unknown or not words:
        raise argparse.ArgumentTypeError(
            f"unknown status {text!r} (choose from {', '.join(STATUS_WORDS)})"
        )
    return words


def _json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}")
    return value


def _json_locations(text: str) -> list[pb.Location]:
    """An argparse type: a JSON array of URLs or {"url", "metadata"} objects."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err})") from None
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError("must be a JSON array of locations")
    try:
        return to_locations(value)
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# Commands.


def _call_server(args: argparse.Namespace) -> int:
    """Run a client verb and print its result, or the refusal on stderr."""
    try:
        client = _open_client(args)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with client:
            result = args.action(client, args)
    except ImagelocError as error:
        shown = (
            output.error_json(error) if args.json else output.error_text(error, server=args.server)
        )
        print(shown, file=sys.stderr)
        return EXIT_REFUSED
    if result is not None:
        print(_render(result, view=args.view, as_json=args.json))
    return EXIT_OK


def _open_client(args: argparse.Namespace) -> ImageClient:
    """The client the connection options describe; OSError or ValueError when they do not fit.

    Any of --ca-cert, --cert and --key makes the channel TLS (no --ca-cert: the system's roots).
    """
    root, chain, key = (
        _read_file(path, flag=flag)
        for path, flag in ((args.ca_cert, "--ca-cert"), (args.cert, "--cert"), (args.key, "--key"))
    )
    if (chain is None) != (key is None):
        raise ValueError("--cert and --key go together")
    return ImageClient(
        args.server,
        timeout=args.timeout if args.call_timeout else None,
        token=args.token,
        root_certificates=root,
        certificate_chain=chain,
        private_key=key,
    )


def _read_file(path: str | None, *, flag: str) -> bytes | None:
    """The bytes of the file a flag names; None without one."""
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise OSError(f"cannot read {flag} {path}: {error.strerror}") from None


def _render(result: pb.Image | list[pb.Image], *, view: str, as_json: bool) -> str:
    if isinstance(result, list):
        if as_json:
            return output.images_json(result)
        return "\n".join(output.image_line(image) for image in result)
    if view == "locations":
        return output.locations_json(result) if as_json else output.locations_text(result)
    return output.image_json(result) if as_json else output.image_text(result)


def _create(client: ImageClient, args: argparse.Namespace) -> pb.Image:
    return client.create_image(
        args.name,
        disk_format=args.disk_format,
        container_format=args.container_format,
        visibility=args.visibility,
        protected=args.protected,
        image_id=args.image_id,
        min_disk=args.min_disk or 0,
        min_ram=args.min_ram or 0,
        tags=args.tags or (),
        os_hidden=args.hidden,
        virtual_size=args.virtual_size,
        properties=dict(args.properties),
    )


def _update(client: ImageClient, args: argparse.Namespace) -> pb.Image:
    return client.update_image(
        args.image_id,
        name=args.name,
        disk_format=args.disk_format,
        container_format=args.container_format,
        visibility=args.visibility,
        protected=args.protected,
        min_disk=args.min_disk,
        min_ram=args.min_ram,
        tags=args.tags,
        os_hidden=args.hidden,
        virtual_size=args.virtual_size,
        properties=dict(args.properties),
        remove_properties=args.remove_properties,
        etag=args.etag,
    )


def _changes_something(args: argparse.Namespace) -> bool:
    given = any(getattr(args, option) is not None for option in _UPDATE_OPTIONS)
    return given or bool(args.properties) or bool(args.remove_properties)


def _show(client: ImageClient, args: argparse.Namespace) -> pb.Image:
    return client.get_image(args.image_id)


def _list(client: ImageClient, args: argparse.Namespace) -> list[pb.Image]:
    images = client.list_images(
        status=args.status,
        page_size=args.page_size,
        name=args.name,
        owner=args.owner,
        tags=args.tags,
        properties=dict(args.properties),
        os_hidden=args.os_hidden,
        order_by=args.order_by,
    )
    return list(islice(images, args.limit))


def _delete(client: ImageClient, args: argparse.Namespace) -> pb.Image:
    return client.delete_image(args.image_id, etag=args.etag)


def _complete(client: ImageClient, args: argparse.Namespace) -> pb.Image:
    return client.complete_upload(
        args.image_id,
        url=args.url,
        metadata=args.metadata,
        size=args.size,
        checksum=args.checksum,
        os_hash_algo=args.os_hash_algo,
        os_hash_value=args.os_hash_value,
        etag=args.etag,
    )


def _lifecycle_action(call: Lifecycle) -> Action:
    def action(client: ImageClient, args: argparse.Namespace) -> pb.Image:
        return call(client, args.image_id, args.etag)

    return action


def _add_location(client: ImageClient, args: argparse.Namespace) -> pb.Image:
    return client.add_location(
        args.image_id,
        args.url,
        metadata=args.metadata,
        index=args.index,
        validation_data=_validation_data(args),
        etag=args.etag,
    )


def _remove_location(client: ImageClient, args: argparse.Namespace) -> pb.Image:
    return client.remove_location(args.image_id, index=args.index, url=args.url, etag=args.etag)


def _replace_locations(client: ImageClient, args: argparse.Namespace) -> pb.Image:
    locations: Sequence[pb.Location | str] = args.urls if args.locations is None else args.locations
    return client.replace_locations(
        args.image_id, locations, validation_data=_validation_data(args), etag=args.etag
    )


def _watch(client: ImageClient, args: argparse.Namespace) -> None:
    """Print events as they come, until --count of them or Ctrl-C."""
    shown = output.event_json if args.json else output.event_line
    try:
        with client.watch_images(args.image_ids, start_revision=args.from_revision) as watch:
            for event in islice(watch, args.count):
                print(shown(event), flush=True)
    except KeyboardInterrupt:
        pass  # how a watch is meant to end


def _wait(client: ImageClient, args: argparse.Namespace) -> pb.Image:
    statuses = [word for words in args.statuses for word in words]
    timeout = WAIT_TIMEOUT if args.timeout is None else args.timeout
    try:
        return client.wait_for_status(args.image_id, statuses, timeout)
    except KeyboardInterrupt:
        raise ImagelocError(
            grpc.StatusCode.CANCELLED,
            f"interrupted before image {args.image_id} became {' or '.join(statuses)}",
        ) from None


def _validation_data(args: argparse.Namespace) -> dict[str, str] | None:
    """The --checksum/--os-hash-algo/--os-hash-value given, None when none is."""
    given = {
        "checksum": args.checksum,
        "os_hash_algo": args.os_hash_algo,
        "os_hash_value": args.os_hash_value,
    }
    data = {key: value for key, value in given.items() if value is not None}
    return data or None


if __name__ == "__main__":
    raise SystemExit(main())
