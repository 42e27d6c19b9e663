"""Who may call, as a new user meets it: `imageloc serve`, the CLI and grpcurl run as processes.

The README's dev walkthrough as written, the loopback rule, every start-up refusal, and an
mTLS + JWT server with a service identity. SQLite only: this is the surface, not the store.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shlex
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imageloc.client import ImageClient

from certs import ClientCert, Pki, make_pki
from processes import IMAGELOC, START_SECONDS, TEST_ENV, ServerProcess, free_port
from signing import Issuer, SigningKey

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
GRPCURL = IMAGELOC.with_name("grpcurl")
NOVA = "spiffe://example.org/ns/compute/sa/nova"
URL = "rbd://fsid/pool/p2-image/snap"
#: A rule name an operator's policy file may hold by mistake (Glance's is singular).
UNKNOWN_RULE = "delete_image_locations"
EXIT_UNAUTHENTICATED = 64 + grpc.StatusCode.UNAUTHENTICATED.value[0]
SECONDS = 60


# Processes: the console script, bounded, with no IMAGELOC_* variable of the caller's shell.


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without IMAGELOC_* variables, the suite's server settings, then extra."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("IMAGELOC_")}
    return {**clean, **TEST_ENV, **(extra or {})}


def imageloc(
    *args: str, env: Mapping[str, str] | None = None, cwd: pathlib.Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `imageloc ARGS` to its end (at most SECONDS)."""
    return subprocess.run(
        [str(IMAGELOC), *args], capture_output=True, text=True, env=environment(env), cwd=cwd,
        timeout=SECONDS, check=False,
    )  # fmt: skip


def launch_serve(
    argv: list[str], *, target: str, env: Mapping[str, str] | None = None, cwd: pathlib.Path
) -> ServerProcess:
    """Start `imageloc serve ...` as argv has it (listening where target reaches), not waiting."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed when the process ends
    process = subprocess.Popen(
        argv, env=environment(env), cwd=cwd, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    return ServerProcess(process, target, log)


def wait_serving_tls(server: ServerProcess, *, root: bytes, client: ClientCert) -> None:
    """ServerProcess.wait_serving over mTLS (that one speaks plaintext); no token needed."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=client.key_pem, certificate_chain=client.cert_pem
    )
    deadline = time.monotonic() + START_SECONDS
    with grpc.secure_channel(server.target, credentials) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and server.process.poll() is None:
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    server.kill()
    raise AssertionError(f"{server.target} never answered SERVING over mTLS\n{server.stderr()}")


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GRPCURL), *args], capture_output=True, text=True, timeout=SECONDS, check=False
    )


def refusal_of(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused start prints; fails unless it exited 2 with exactly that line."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def image_fields(text: str) -> dict[str, str]:
    """The "field: value" lines the CLI prints for an image."""
    pairs = (line.split(": ", 1) for line in text.splitlines() if not line.startswith(" "))
    return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}


def listed_ids(text: str) -> list[str]:
    """The ids of `imageloc image list`'s lines."""
    return [line.split()[0] for line in text.splitlines()]


# 1. The README's dev walkthrough, as written.


@dataclasses.dataclass(frozen=True)
class DevWalkthrough:
    """The README's `auth dev-keys`, `auth dev-token` and `serve --auth jwt`, run in directory."""

    directory: pathlib.Path
    token: str
    project: str
    server: ServerProcess

    @property
    def private_key(self) -> pathlib.Path:
        return self.directory / "dev-keys" / "private.pem"


def readme_walkthrough() -> list[str]:
    """The command lines of the README's console block under "Try it in two commands"."""
    found = re.search(r"Try it in two commands.*?```console\n(.*?)```", README.read_text(), re.S)
    assert found, "README.md lost its two-command walkthrough"
    lines = found[1].strip().splitlines()
    assert [line.split(" --")[0] for line in lines] == [
        "imageloc auth dev-keys",
        "export IMAGELOC_TOKEN=$(imageloc auth dev-token",
        "imageloc serve",
    ], lines
    return lines


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevWalkthrough]:
    """The walkthrough's server (plus --listen and --database) and the token it printed."""
    directory = tmp_path_factory.mktemp("walkthrough")
    keys_line, token_line, serve_line = readme_walkthrough()
    shell = f'set -eu\n{keys_line}\n{token_line}\nprintf "%s" "$IMAGELOC_TOKEN"\n'
    env = {"PATH": f"{IMAGELOC.parent}{os.pathsep}{os.environ['PATH']}"}
    made = subprocess.run(
        ["bash", "-c", shell], capture_output=True, text=True, env=environment(env),
        cwd=directory, timeout=SECONDS, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("wrote "), made.stdout
    token = made.stdout.splitlines()[-1]
    project = re.search(r"--project (\S+)", token_line)
    assert project, token_line
    target = f"127.0.0.1:{free_port()}"
    argv = [str(IMAGELOC), *shlex.split(serve_line)[1:]]
    argv += ["--listen", target, "--database", f"sqlite:///{directory / 'dev.db'}"]
    server = launch_serve(argv, target=target, cwd=directory)
    try:
        server.wait_serving()
        yield DevWalkthrough(directory, token, project[1], server)
    finally:
        assert server.stop() == 0, server.stderr()


@pytest.mark.parametrize("passed_as", ["--token", "IMAGELOC_TOKEN"])
def test_the_readme_token_creates_an_image_owned_by_its_project_and_lists_it(
    dev: DevWalkthrough, passed_as: str
) -> None:
    flags = ["--token", dev.token] if passed_as == "--token" else []
    env = {"IMAGELOC_SERVER": dev.server.target}
    if passed_as == "IMAGELOC_TOKEN":
        env["IMAGELOC_TOKEN"] = dev.token
    created = imageloc(*flags, "image", "create", "--name", "cirros", env=env)
    assert created.returncode == 0, created.stderr
    image = image_fields(created.stdout)
    assert image["owner"] == dev.project
    listed = imageloc(*flags, "image", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert image["id"] in listed_ids(listed.stdout)


def test_a_call_without_a_token_prints_the_cause_missing_and_exits_1(dev: DevWalkthrough) -> None:
    result = imageloc("--server", dev.server.target, "image", "list")
    assert result.returncode == 1
    assert result.stdout == ""
    first, *rest = result.stderr.splitlines()
    assert first.startswith("error: UNAUTHENTICATED (cause: missing): ")
    assert "  cause: missing" in rest
    assert "  httpStatus: 401" in rest


def test_an_expired_token_prints_the_cause_expired_and_exits_1(dev: DevWalkthrough) -> None:
    # `dev-token --ttl` takes no past and exp has 60 s of leeway: sign one issued 2 h ago.
    key = serialization.load_pem_private_key(dev.private_key.read_bytes(), password=None)
    assert isinstance(key, SigningKey)
    issuer = Issuer(dev.private_key.parent, "imageloc-dev", "imageloc", "RS256", key, [key])
    expired = issuer.token(project=dev.project, now=time.time() - 7200, ttl=3600)
    result = imageloc("--server", dev.server.target, "--token", expired, "image", "list")
    assert result.returncode == 1
    first, *rest = result.stderr.splitlines()
    assert first.startswith("error: UNAUTHENTICATED (cause: expired): ")
    assert "  cause: expired" in rest
    assert expired.split(".")[1] not in result.stderr


# 2. `--auth none` serves only on loopback unless --allow-unauthenticated.


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        (["--auth", "none", "--listen", "0.0.0.0:0"], {}),
        (["--listen", "0.0.0.0:0"], {}),
        ([], {"IMAGELOC_AUTH": "none", "IMAGELOC_LISTEN": "0.0.0.0:0"}),
        ([], {"IMAGELOC_LISTEN": "[::]:0", "IMAGELOC_ALLOW_UNAUTHENTICATED": "off"}),
    ],
    ids=["flags", "default-auth", "variables", "variable-off"],
)
def test_auth_none_refuses_to_start_on_a_non_loopback_address(
    tmp_path: pathlib.Path, flags: list[str], env: dict[str, str]
) -> None:
    result = imageloc("serve", "--database", f"sqlite:///{tmp_path / 'x.db'}", *flags, env=env)
    reason = refusal_of(result)
    assert "loopback" in reason
    assert "--allow-unauthenticated" in reason
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        (["--auth", "none", "--allow-unauthenticated"], {}),
        ([], {"IMAGELOC_AUTH": "none", "IMAGELOC_ALLOW_UNAUTHENTICATED": "yes"}),
    ],
    ids=["flags", "variables"],
)
def test_allow_unauthenticated_lets_auth_none_serve_on_any_address(
    tmp_path: pathlib.Path, flags: list[str], env: dict[str, str]
) -> None:
    # It listens on every interface for the second it takes; the test calls only loopback.
    port = free_port()
    listen = {"IMAGELOC_LISTEN": f"0.0.0.0:{port}"}
    argv = [str(IMAGELOC), "serve", "--database", f"sqlite:///{tmp_path / 'x.db'}", *flags]
    server = launch_serve(argv, target=f"127.0.0.1:{port}", env=listen | env, cwd=tmp_path)
    try:
        server.wait_serving()
    finally:
        assert server.stop() == 0, server.stderr()
    assert f"serving on 0.0.0.0:{port}" in server.stderr()


# 3. Settings that cannot serve safely: exit 2, one line.


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Paths the refusal cases name: a PKI, good and broken JWKS and policy files."""
    directory = tmp_path_factory.mktemp("refusals")
    pki = make_pki(directory)
    issuer = Issuer.create(directory / "idp")
    files = {
        "not_json": "{",
        "hmac_only": json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]}),
        "not_pem": "not a certificate\n",
        "bad_policy": "get_image: [role:admin\n",
    }
    for name, text in files.items():
        (directory / name).write_text(text)
    return {
        **{name: str(directory / name) for name in files},
        "missing": str(directory / "missing.json"),
        "jwks": str(issuer.jwks_file),
        "cert": str(pki.server_cert_file),
        "key": str(pki.server_key_file),
        "ca": str(pki.ca_file),
    }


JWT = ["--auth", "jwt", "--token-issuer", "imageloc-dev", "--token-audience", "imageloc"]
TLS = ["--tls-cert", "{cert}", "--tls-key", "{key}"]

REFUSALS = {
    "jwt-without-issuer": (
        ["--auth", "jwt", "--jwks-file", "{jwks}", "--token-audience", "imageloc"],
        "--token-issuer",
    ),
    "jwt-without-audience": (
        ["--auth", "jwt", "--jwks-file", "{jwks}", "--token-issuer", "imageloc-dev"],
        "--token-audience",
    ),
    "jwt-without-keys": (JWT, "--jwks-file"),
    "jwks-file-missing": ([*JWT, "--jwks-file", "{missing}"], "does not exist"),
    "jwks-file-not-json": ([*JWT, "--jwks-file", "{not_json}"], "is not JSON"),
    "jwks-file-no-usable-key": ([*JWT, "--jwks-file", "{hmac_only}"], "no usable signing key"),
    "tls-cert-without-key": (["--tls-cert", "{cert}"], "--tls-key"),
    "tls-cert-not-loading": (["--tls-cert", "{not_pem}", "--tls-key", "{key}"], "--tls-cert"),
    "tls-cert-missing": (["--tls-cert", "{missing}", "--tls-key", "{key}"], "--tls-cert"),
    "tls-client-ca-without-cert": (["--tls-client-ca", "{ca}"], "--tls-cert"),
    "tls-client-ca-not-loading": ([*TLS, "--tls-client-ca", "{not_pem}"], "--tls-client-ca"),
    "service-identity-without-client-ca": ([*TLS, "--service-identity", NOVA], "--tls-client-ca"),
    "policy-file-not-parsing": (["--policy-file", "{bad_policy}"], "does not parse"),
    "policy-file-missing": (["--policy-file", "{missing}"], "does not exist"),
}


@pytest.mark.parametrize(("flags", "named"), REFUSALS.values(), ids=REFUSALS.keys())
def test_settings_that_cannot_serve_are_refused_at_start_in_one_line(
    tmp_path: pathlib.Path, bad_files: dict[str, str], flags: list[str], named: str
) -> None:
    argv = [flag.format(**bad_files) for flag in flags]
    database = tmp_path / "x.db"
    result = imageloc(
        "serve", "--listen", "127.0.0.1:0", "--database", f"sqlite:///{database}", *argv
    )
    assert named in refusal_of(result)
    assert not database.exists()


def test_a_listen_address_in_use_exits_1_with_the_reason_and_no_traceback(
    tmp_path: pathlib.Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        result = imageloc(
            "serve", "--listen", listen, "--database", f"sqlite:///{tmp_path / 'x.db'}"
        )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"error: cannot listen on {listen}: ")


# 4 and 5. mTLS + JWT, a service identity, an operator's policy file: one server, read mostly.


@dataclasses.dataclass(frozen=True)
class Secured:
    """`imageloc serve --tls-cert --tls-key --tls-client-ca --auth jwt ...` and its callers."""

    target: str
    pki: Pki
    issuer: Issuer
    startup_log: str

    def user(self) -> ClientCert:
        return self.pki.client("workstation")

    def nova(self) -> ClientCert:
        return self.pki.client("nova", uri=NOVA)

    def client(self, *, project: str) -> ImageClient:
        """A Python client of a member and reader of project, over mTLS."""
        cert = self.user()
        return ImageClient(
            self.target,
            token=self.issuer.token(project=project),
            root_certificates=self.pki.ca_pem,
            certificate_chain=cert.cert_pem,
            private_key=cert.key_pem,
        )

    def tls_flags(self, cert: ClientCert) -> list[str]:
        """The CLI's --ca-cert, --cert, --key for a client certificate."""
        return ["--ca-cert", str(self.pki.ca_file), "--cert", str(cert.cert_file),
                "--key", str(cert.key_file)]  # fmt: skip

    def grpcurl_tls(self, cert: ClientCert) -> list[str]:
        return ["-cacert", str(self.pki.ca_file), "-cert", str(cert.cert_file),
                "-key", str(cert.key_file)]  # fmt: skip


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    directory = tmp_path_factory.mktemp("secured")
    pki = make_pki(directory)
    issuer = Issuer.create(directory / "idp", issuer="https://idp.example/realms/cloud")
    policy_file = directory / "policy.yaml"
    policy_file.write_text(f'"{UNKNOWN_RULE}": "role:admin"\n')
    target = f"127.0.0.1:{free_port()}"
    argv = [
        str(IMAGELOC), "serve", "--listen", target,
        "--database", f"sqlite:///{directory / 'secured.db'}",
        "--tls-cert", str(pki.server_cert_file), "--tls-key", str(pki.server_key_file),
        "--tls-client-ca", str(pki.ca_file),
        "--auth", "jwt", "--jwks-file", str(issuer.jwks_file),
        "--token-issuer", issuer.issuer, "--token-audience", issuer.audience,
        "--service-identity", NOVA,
        "--policy-file", str(policy_file),
        "--audit-log", str(directory / "audit.log"),
    ]  # fmt: skip
    server = launch_serve(argv, target=target, cwd=directory)
    try:
        wait_serving_tls(server, root=pki.ca_pem, client=pki.client("workstation"))
        yield Secured(target, pki, issuer, startup_log=server.stderr())
    finally:
        assert server.stop() == 0, server.stderr()


def test_a_policy_file_rule_imageloc_does_not_know_is_named_at_start(secured: Secured) -> None:
    reported = [line for line in secured.startup_log.splitlines() if UNKNOWN_RULE in line]
    assert len(reported) == 1, secured.startup_log
    assert "not a policy imageloc knows" in reported[0]


@pytest.mark.parametrize("passed_as", ["flags", "variables"])
def test_the_cli_calls_over_mtls_with_a_token(secured: Secured, passed_as: str) -> None:
    token = secured.issuer.token(project="p1")
    tls = secured.tls_flags(secured.user())
    flags = ["--server", secured.target, *tls, "--token", token]
    env: dict[str, str] = {}
    if passed_as == "variables":
        names = dict(zip(tls[::2], tls[1::2], strict=True))
        env = {
            "IMAGELOC_SERVER": secured.target, "IMAGELOC_TOKEN": token,
            "IMAGELOC_CA_CERT": names["--ca-cert"], "IMAGELOC_CERT": names["--cert"],
            "IMAGELOC_KEY": names["--key"],
        }  # fmt: skip
        flags = []
    created = imageloc(*flags, "image", "create", "--name", "over-mtls", env=env)
    assert created.returncode == 0, created.stderr
    image = image_fields(created.stdout)
    assert image["owner"] == "p1"
    shown = imageloc(*flags, "image", "show", image["id"], env=env)
    assert image_fields(shown.stdout)["id"] == image["id"], shown.stderr
    listed = imageloc(*flags, "image", "list", env=env)
    assert image["id"] in listed_ids(listed.stdout), listed.stderr


def test_grpcurl_with_certificates_and_a_bearer_header_lists_and_gets_images(
    secured: Secured,
) -> None:
    tls = secured.grpcurl_tls(secured.user())
    header = ["-H", f"authorization: Bearer {secured.issuer.token(project='p1')}"]
    service = "imageloc.v1.ImageService"
    created = grpcurl(
        *tls, *header, "-d", json.dumps({"name": "via-grpcurl"}), secured.target,
        f"{service}/CreateImage",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    image_id = json.loads(created.stdout)["image"]["id"]
    listed = grpcurl(*tls, *header, "-d", "{}", secured.target, f"{service}/ListImages")
    assert listed.returncode == 0, listed.stderr
    assert image_id in [image["id"] for image in json.loads(listed.stdout)["images"]]
    got = grpcurl(
        *tls, *header, "-d", json.dumps({"image_id": image_id}), secured.target,
        f"{service}/GetImage",
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["image"]["owner"] == "p1"


def test_grpcurl_without_the_header_is_unauthenticated(secured: Secured) -> None:
    result = grpcurl(
        *secured.grpcurl_tls(secured.user()), "-d", "{}", secured.target,
        "imageloc.v1.ImageService/ListImages",
    )  # fmt: skip
    assert result.returncode == EXIT_UNAUTHENTICATED, result.stderr
    assert "Code: Unauthenticated" in result.stderr
    assert '"cause":"missing"' in result.stderr


def test_health_and_reflection_answer_grpcurl_without_a_token(secured: Secured) -> None:
    tls = secured.grpcurl_tls(secured.user())
    health = grpcurl(*tls, secured.target, "grpc.health.v1.Health/Check")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}
    listed = grpcurl(*tls, secured.target, "list")
    assert listed.returncode == 0, listed.stderr
    assert "imageloc.v1.ImageService" in listed.stdout.split()


def test_a_service_identity_certificate_lists_every_projects_images_without_a_token(
    secured: Secured,
) -> None:
    with secured.client(project="p1") as p1, secured.client(project="p2") as p2:
        mine = p1.create_image("p1-image").id
        queued = p2.create_image("p2-image", disk_format="raw", container_format="bare")
        theirs = p2.add_location(queued.id, URL).id
        assert theirs not in [image.id for image in p1.list_images()]
    result = imageloc(
        "--server", secured.target, *secured.tls_flags(secured.nova()), "--json", "image", "list"
    )
    assert result.returncode == 0, result.stderr
    listed: dict[str, Any] = {image["id"]: image for image in json.loads(result.stdout)}
    assert {mine, theirs} <= listed.keys()
    assert {listed[mine]["owner"], listed[theirs]["owner"]} == {"p1", "p2"}
    assert [each["url"] for each in listed[theirs]["locations"]] == [URL]
