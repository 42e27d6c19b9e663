// Tests the Node client against a real imageloc server (started here on a free port with a
// temp SQLite file), and the service-config interceptor against dead and silent ports.
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { Code, type Interceptor } from "@connectrpc/connect";
import { PreconditionFailureSchema } from "../../../generated/ts/google/rpc/error_details_pb.js";
import {
  ImageClient,
  ImageEventType,
  ImageService,
  ImageStatus,
  ImageVisibility,
  ImagelocError,
  ServiceConfig,
  updateImageRequest,
} from "../src/index.js";
import { freePort, waitForPort } from "./ports.js";

const REPO_ROOT = fileURLToPath(new URL("../../../", import.meta.url));
const SERVER_BIN = path.join(REPO_ROOT, ".venv", "bin", "imageloc");
const URL_A = "https://store.example/a.img";
const URL_B = "rbd://fsid/pool/b/snap";
/** The record fields of a new image, all set. */
const RECORD = {
  minDisk: 10,
  minRam: 512,
  tags: ["ubuntu", "lts"],
  osHidden: true,
  virtualSize: 10n * 2n ** 30n,
  properties: { hw_disk_bus: "scsi", os_distro: "ubuntu", "owner_specified.openstack.md5": "d41d8cd9" },
};

/** Runs fn, which must throw an ImagelocError, and returns it. */
async function refusal(fn: () => Promise<unknown>): Promise<ImagelocError> {
  try {
    await fn();
  } catch (e) {
    assert.ok(e instanceof ImagelocError, `expected an ImagelocError, got ${String(e)}`);
    return e;
  }
  assert.fail("the call was not refused");
}

/** An interceptor that counts the attempts of each method and keeps their requestIds. */
function attemptCounter(): {
  counts: Map<string, number>;
  requestIds: Map<string, string[]>;
  interceptor: Interceptor;
} {
  const counts = new Map<string, number>();
  const requestIds = new Map<string, string[]>();
  const interceptor: Interceptor = (next) => (req) => {
    counts.set(req.method.name, (counts.get(req.method.name) ?? 0) + 1);
    const requestId = (req.message as { requestId?: string }).requestId;
    if (requestId !== undefined) requestIds.set(req.method.name, [...(requestIds.get(req.method.name) ?? []), requestId]);
    return next(req);
  };
  return { counts, requestIds, interceptor };
}

describe("ImageClient against imageloc serve", () => {
  let server: ChildProcess;
  let dir: string;
  let client: ImageClient;

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "imageloc-node-"));
    const port = await freePort();
    let log = "";
    server = spawn(
      SERVER_BIN,
      ["serve", "--listen", `127.0.0.1:${port}`, "--drain-seconds", "0", "--database", `sqlite:///${path.join(dir, "x.db")}`],
      { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] },
    );
    server.stdout?.on("data", (d: Buffer) => (log += d.toString()));
    server.stderr?.on("data", (d: Buffer) => (log += d.toString()));
    await waitForPort(port, server, () => log);
    client = new ImageClient(`127.0.0.1:${port}`);
  });

  after(async () => {
    client?.close();
    if (server && server.exitCode === null) {
      const exited = new Promise((resolve) => server.once("exit", resolve));
      server.kill("SIGTERM");
      await exited;
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("adds two locations in order and removes one from an active image", async () => {
    const created = await client.createImage({ name: "cirros", diskFormat: "qcow2", containerFormat: "bare" });
    assert.equal(created.status, ImageStatus.QUEUED);

    await client.addLocation({ imageId: created.id, location: { url: URL_A } });
    const two = await client.addLocation({ imageId: created.id, location: { url: URL_B } });
    assert.equal(two.status, ImageStatus.ACTIVE);
    assert.deepEqual(
      two.locations.map((l) => l.url),
      [URL_A, URL_B],
    );

    const one = await client.removeLocation({ imageId: created.id, target: { case: "url", value: URL_A } });
    assert.deepEqual(
      one.locations.map((l) => l.url),
      [URL_B],
    );
    assert.equal((await client.getImage({ imageId: created.id })).etag, one.etag);
  });

  test("RemoveLocation on a saving image is refused with IMAGE_STATUS_CONFLICT", async () => {
    const queued = await client.createImage({ name: "upload", diskFormat: "qcow2", containerFormat: "bare" });
    const saving = await client.beginUpload({ imageId: queued.id });
    assert.equal(saving.status, ImageStatus.SAVING);

    const err = await refusal(() => client.removeLocation({ imageId: saving.id, target: { case: "index", value: 0 } }));
    assert.equal(err.code, Code.FailedPrecondition);
    assert.equal(err.reason, "IMAGE_STATUS_CONFLICT");
    assert.equal(err.domain, "imageloc");
    assert.equal(err.metadata["httpStatus"], "409");
    assert.equal(err.httpStatus, 409);
    assert.equal(err.metadata["imageStatus"], "saving");
    assert.equal(err.metadata["imageId"], saving.id);
    assert.equal(err.cause.findDetails(PreconditionFailureSchema).length, 1);
    assert.ok(err.violations.length > 0);
  });

  test("watchImages streams an image's changes and waitForStatus waits for active", async () => {
    const queued = await client.createImage({ name: "watched", diskFormat: "qcow2", containerFormat: "bare" });
    const waiting = client.waitForStatus(queued.id, [ImageStatus.ACTIVE], { timeoutMs: 10_000 });
    const watch = client.watchImages({ imageIds: [queued.id], startRevision: queued.revision });
    await client.addLocation({ imageId: queued.id, location: { url: URL_A } });
    const active = await waiting;
    assert.equal(active.status, ImageStatus.ACTIVE);
    const seen = [];
    for await (const event of watch) {
      seen.push(event);
      if (event.image?.status === ImageStatus.ACTIVE) break;
    }
    assert.deepEqual(
      seen.map((e) => [e.revision, e.type]),
      [[queued.revision + 1n, ImageEventType.UPDATED]],
    );
    assert.deepEqual(seen[0].image, active);
  });

  test("createImage's record fields round-trip through getImage", async () => {
    const created = await client.createImage({ name: "record", diskFormat: "qcow2", containerFormat: "bare", ...RECORD });
    assert.equal(created.minDisk, RECORD.minDisk);
    assert.equal(created.minRam, RECORD.minRam);
    assert.deepEqual(created.tags, RECORD.tags);
    assert.equal(created.osHidden, true);
    assert.equal(created.virtualSize, RECORD.virtualSize);
    assert.deepEqual(created.properties, RECORD.properties);
    assert.deepEqual(await client.getImage({ imageId: created.id }), created);

    const bare = await client.createImage({ name: "bare" });
    assert.equal(bare.virtualSize, undefined, "virtual_size absent while unknown");
    assert.deepEqual([bare.minDisk, bare.minRam, bare.tags, bare.osHidden, bare.properties], [0, 0, [], false, {}]);
  });

  test("updateImage changes only the fields given", async () => {
    const created = await client.createImage({ name: "before", diskFormat: "qcow2", containerFormat: "bare", ...RECORD });
    const updated = await client.updateImage(created.id, {
      name: "after",
      minRam: 1024,
      visibility: ImageVisibility.SHARED,
      properties: { hw_disk_bus: "virtio", hw_qemu_guest_agent: "yes" },
    });
    assert.equal(updated.name, "after");
    assert.equal(updated.minRam, 1024);
    assert.equal(updated.visibility, ImageVisibility.SHARED);
    assert.deepEqual(updated.properties, { ...RECORD.properties, hw_disk_bus: "virtio", hw_qemu_guest_agent: "yes" });
    assert.notEqual(updated.etag, created.etag);
    // Every other field is as it was.
    const unchanged = (i: typeof created) => ({ ...i, name: "", minRam: 0, visibility: 0, properties: {}, etag: "", revision: 0n, updateTime: undefined });
    assert.deepEqual(unchanged(updated), unchanged(created));
    assert.deepEqual(await client.getImage({ imageId: created.id }), updated);

    // Tags are replaced as a whole; a null virtualSize makes it unknown again.
    const again = await client.updateImage(created.id, { tags: ["noble"], virtualSize: null, osHidden: false, minDisk: 0 });
    assert.deepEqual(again.tags, ["noble"]);
    assert.equal(again.virtualSize, undefined);
    assert.equal(again.osHidden, false);
    assert.equal(again.minDisk, 0);
    assert.equal(again.name, "after");
    assert.equal(again.minRam, 1024);
    assert.deepEqual(again.properties, updated.properties);
  });

  test("updateImage's removeProperties removes properties, the others stay", async () => {
    const created = await client.createImage({ name: "props", ...RECORD });
    const updated = await client.updateImage(created.id, {
      removeProperties: ["os_distro", "owner_specified.openstack.md5", "never_set"],
    });
    assert.deepEqual(updated.properties, { hw_disk_bus: "scsi" });
    assert.deepEqual(updated.tags, RECORD.tags);
    assert.deepEqual((await client.getImage({ imageId: created.id })).properties, { hw_disk_bus: "scsi" });
  });

  test("updateImage with a stale etag is refused ABORTED ETAG_MISMATCH and changes nothing", async () => {
    const created = await client.createImage({ name: "etag" });
    const first = await client.updateImage(created.id, { minDisk: 5 }, { etag: created.etag });
    assert.equal(first.minDisk, 5);

    const err = await refusal(() => client.updateImage(created.id, { minDisk: 7 }, { etag: created.etag }));
    assert.equal(err.code, Code.Aborted);
    assert.equal(err.reason, "ETAG_MISMATCH");
    assert.equal(err.domain, "imageloc");
    assert.equal(err.metadata["imageId"], created.id);
    assert.deepEqual(await client.getImage({ imageId: created.id }), first);
  });

  test("updateImage of an unknown image is refused NOT_FOUND IMAGE_NOT_FOUND", async () => {
    const err = await refusal(() => client.updateImage("00000000-0000-4000-8000-00000000dead", { name: "x" }));
    assert.equal(err.code, Code.NotFound);
    assert.equal(err.reason, "IMAGE_NOT_FOUND");
  });

  test("listImages pages through every image", async () => {
    const ids = new Set<string>();
    for await (const image of client.listImages({ pageSize: 1 })) ids.add(image.id);
    assert.ok(ids.size >= 2, `listed ${ids.size} images`);
  });
});

describe("updateImageRequest", () => {
  test("names in the mask exactly the keys given, properties as properties.KEY", () => {
    const req = updateImageRequest("id-1", {
      name: "n",
      protected: false,
      minDisk: 0,
      tags: [],
      virtualSize: 5,
      diskFormat: undefined,
      properties: { a: "1", "x.y": "2" },
      removeProperties: ["b"],
    });
    assert.deepEqual(req.updateMask?.paths, [
      "name",
      "protected",
      "min_disk",
      "tags",
      "virtual_size",
      "properties.a",
      "properties.`x.y`",
      "properties.b",
    ]);
    assert.equal(req.image?.id, "id-1");
    assert.equal(req.image?.virtualSize, 5n);
    assert.deepEqual(req.image?.properties, { a: "1", "x.y": "2" });
    assert.equal(req.etag, undefined);
  });

  test("virtualSize null is in the mask without a value; a key both set and removed is an error", () => {
    const req = updateImageRequest("id-1", { virtualSize: null }, "etag-1");
    assert.deepEqual(req.updateMask?.paths, ["virtual_size"]);
    assert.equal(req.image?.virtualSize, undefined);
    assert.equal(req.etag, "etag-1");
    assert.throws(() => updateImageRequest("id-1", { properties: { a: "1" }, removeProperties: ["a"] }), TypeError);
  });
});

describe("service config interceptor", () => {
  test("retries UNAVAILABLE up to maxAttempts, every attempt of a mutation with one requestId", async () => {
    const config = ServiceConfig.load();
    const maxAttempts = config.policyFor(ImageService.typeName, "GetImage").retry?.maxAttempts;
    assert.ok(maxAttempts !== undefined && maxAttempts > 1, "GetImage has a retry policy");
    assert.equal(config.policyFor(ImageService.typeName, "AddLocation").retry?.maxAttempts, maxAttempts);

    const { counts, requestIds, interceptor } = attemptCounter();
    const client = new ImageClient(`127.0.0.1:${await freePort()}`, { interceptors: [interceptor] });
    try {
      const get = await refusal(() => client.getImage({ imageId: "00000000-0000-4000-8000-000000000001" }));
      assert.equal(get.code, Code.Unavailable);
      assert.equal(counts.get("GetImage"), maxAttempts);

      const add = await refusal(() => client.addLocation({ imageId: "x", location: { url: URL_A } }));
      assert.equal(add.code, Code.Unavailable);
      assert.equal(counts.get("AddLocation"), maxAttempts);
      const sent = requestIds.get("AddLocation") ?? [];
      assert.equal(sent.length, maxAttempts);
      assert.match(sent[0] ?? "", /^[0-9a-f-]{36}$/);
      assert.equal(new Set(sent).size, 1, "one requestId for every attempt");
    } finally {
      client.close();
    }
  });

  test("retries updateImage with one requestId, the caller's when given", async () => {
    const { counts, requestIds, interceptor } = attemptCounter();
    const client = new ImageClient(`127.0.0.1:${await freePort()}`, { interceptors: [interceptor] });
    try {
      const err = await refusal(() => client.updateImage("x", { name: "y" }, { etag: "e" }));
      assert.equal(err.code, Code.Unavailable);
      const attempts = counts.get("UpdateImage") ?? 0;
      assert.ok(attempts > 1, `${attempts} attempts`);
      const sent = requestIds.get("UpdateImage") ?? [];
      assert.match(sent[0] ?? "", /^[0-9a-f-]{36}$/);
      assert.equal(new Set(sent).size, 1, "one requestId for every attempt");

      await refusal(() => client.updateImage("x", { name: "y" }, { requestId: "mine" }));
      assert.equal(requestIds.get("UpdateImage")?.at(-1), "mine");
    } finally {
      client.close();
    }
  });

  test("attempts a method without a retry policy once", async () => {
    const config = new ServiceConfig({ methodConfig: [{ name: [{ service: ImageService.typeName }], timeout: "5s" }] });
    const { counts, interceptor } = attemptCounter();
    const client = new ImageClient(`127.0.0.1:${await freePort()}`, { serviceConfig: config, interceptors: [interceptor] });
    try {
      const add = await refusal(() => client.addLocation({ imageId: "x", location: { url: URL_A } }));
      assert.equal(add.code, Code.Unavailable);
      assert.equal(counts.get("AddLocation"), 1);
    } finally {
      client.close();
    }
  });

  test("applies the method's timeout only when the caller gives none", async () => {
    // A peer that accepts TCP connections and never answers.
    const sockets = new Set<net.Socket>();
    const silent = net.createServer((sock) => sockets.add(sock));
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const { port } = silent.address() as net.AddressInfo;
    const config = new ServiceConfig({ methodConfig: [{ name: [{ service: ImageService.typeName }], timeout: "0.2s" }] });
    const client = new ImageClient(`127.0.0.1:${port}`, { serviceConfig: config });
    try {
      const started = Date.now();
      const err = await refusal(() => client.getImage({ imageId: "x" }));
      assert.equal(err.code, Code.DeadlineExceeded);
      assert.ok(Date.now() - started < 5_000, "took the 0.2 s timeout, not a longer one");

      const own = Date.now();
      const late = await refusal(() => client.getImage({ imageId: "x" }, { timeoutMs: 800 }));
      assert.equal(late.code, Code.DeadlineExceeded);
      assert.ok(Date.now() - own >= 700, "the caller's timeout wins over the config's");
    } finally {
      client.close();
      for (const sock of sockets) sock.destroy();
      silent.close();
    }
  });
});

/** Runs a program of the repo's virtualenv (python, imageloc); returns its stdout. */
function venv(program: string, args: string[]): string {
  const done = spawnSync(path.join(REPO_ROOT, ".venv", "bin", program), args, { cwd: REPO_ROOT, encoding: "utf8" });
  if (done.status !== 0) throw new Error(`${program} ${args.join(" ")} failed:\n${done.stderr}`);
  return done.stdout;
}

/** A CA, a server certificate for 127.0.0.1 and a client certificate, written into dir by trustme. */
function makeCertificates(dir: string): void {
  venv("python", [
    "-c",
    [
      "import sys, trustme",
      "ca = trustme.CA()",
      "d = sys.argv[1]",
      "ca.cert_pem.write_to_path(d + '/ca.pem')",
      "server = ca.issue_cert('127.0.0.1', 'localhost')",
      "server.private_key_and_cert_chain_pem.write_to_path(d + '/server.pem')",
      "server.private_key_pem.write_to_path(d + '/server.key')",
      "client = ca.issue_cert('node-client.example')",
      "client.cert_chain_pems[0].write_to_path(d + '/client.pem')",
      "client.private_key_pem.write_to_path(d + '/client.key')",
    ].join("\n"),
    dir,
  ]);
}

describe("ImageClient against imageloc serve with mTLS and JWT auth", () => {
  let server: ChildProcess;
  let dir: string;
  let port: number;
  let token: string;
  let tls: { ca: Buffer; cert: Buffer; key: Buffer };

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "imageloc-node-tls-"));
    makeCertificates(dir);
    venv("imageloc", ["auth", "dev-keys", "--out", path.join(dir, "keys")]);
    token = venv("imageloc", [
      "auth", "dev-token", "--key", path.join(dir, "keys", "private.pem"),
      "--project", "p1", "--roles", "member,reader", "--sub", "node",
    ]).trim();
    tls = { ca: readFileSync(path.join(dir, "ca.pem")), cert: readFileSync(path.join(dir, "client.pem")), key: readFileSync(path.join(dir, "client.key")) };
    port = await freePort();
    let log = "";
    server = spawn(
      SERVER_BIN,
      [
        "serve", "--listen", `127.0.0.1:${port}`, "--drain-seconds", "0", "--database", `sqlite:///${path.join(dir, "x.db")}`,
        "--tls-cert", path.join(dir, "server.pem"), "--tls-key", path.join(dir, "server.key"), "--tls-client-ca", path.join(dir, "ca.pem"),
        "--auth", "jwt", "--jwks-file", path.join(dir, "keys", "jwks.json"), "--token-issuer", "imageloc-dev", "--token-audience", "imageloc",
        "--audit-log", path.join(dir, "audit.log"),
      ],
      { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] },
    );
    server.stdout?.on("data", (d: Buffer) => (log += d.toString()));
    server.stderr?.on("data", (d: Buffer) => (log += d.toString()));
    await waitForPort(port, server, () => log);
  });

  after(async () => {
    if (server && server.exitCode === null) {
      const exited = new Promise((resolve) => server.once("exit", resolve));
      server.kill("SIGTERM");
      await exited;
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("a token over TLS creates an image owned by the token's project, with its locations shown", async () => {
    let asked = 0;
    const client = new ImageClient(`127.0.0.1:${port}`, { tls, token: () => (asked++, token) });
    try {
      const created = await client.createImage({ name: "cirros", diskFormat: "qcow2", containerFormat: "bare" });
      assert.equal(created.owner, "p1");
      const active = await client.addLocation({ imageId: created.id, location: { url: URL_A } });
      assert.deepEqual(active.locations.map((l) => l.url), [URL_A]);
      assert.equal(active.locationsHidden, false);
      assert.ok(asked >= 2, "the token function is asked on every call");
    } finally {
      client.close();
    }
  });

  test("a call without a token is refused UNAUTHENTICATED with its cause", async () => {
    const client = new ImageClient(`127.0.0.1:${port}`, { tls });
    try {
      const err = await refusal(() => client.getImage({ imageId: "00000000-0000-4000-8000-000000000000" }));
      assert.equal(err.code, Code.Unauthenticated);
      assert.equal(err.reason, "UNAUTHENTICATED");
      assert.equal(err.metadata.cause, "missing");
      assert.equal(err.metadata.httpStatus, "401");
    } finally {
      client.close();
    }
  });
});
