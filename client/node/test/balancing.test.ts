// Tests BalancedTransport against two real `imageloc serve` replicas on one SQLite file:
// which replica applied each create is read from that replica's own audit log.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { type Client, Code, ConnectError, type Interceptor, createClient } from "@connectrpc/connect";
import { Http2SessionManager } from "@connectrpc/connect-node";
import { BalancedTransport, EJECT_MS } from "../src/balancing.js";
import { ImageClient, ImageService, KEEPALIVE, ServiceConfig, serviceConfigInterceptor } from "../src/index.js";
import { freePort, waitForPort } from "./ports.js";

const REPO_ROOT = fileURLToPath(new URL("../../../", import.meta.url));
const SERVER_BIN = path.join(REPO_ROOT, ".venv", "bin", "imageloc");
const CALLS = 40;
const TEST_TIMEOUT_MS = 60_000;

/** One `imageloc serve` on the shared database, with an audit log of its own. */
class Replica {
  private log = "";
  private constructor(
    readonly proc: ChildProcess,
    readonly port: number,
    private readonly auditLog: string,
  ) {
    proc.stdout?.on("data", (d: Buffer) => (this.log += d.toString()));
    proc.stderr?.on("data", (d: Buffer) => (this.log += d.toString()));
  }

  static async start(database: string, dir: string, name: string, port?: number): Promise<Replica> {
    port ??= await freePort();
    const auditLog = path.join(dir, `${name}-audit.jsonl`);
    const proc = spawn(
      SERVER_BIN,
      ["serve", "--listen", `127.0.0.1:${port}`, "--drain-seconds", "0", "--database", database, "--audit-log", auditLog],
      { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] },
    );
    const replica = new Replica(proc, port, auditLog);
    await waitForPort(port, proc, () => replica.log);
    return replica;
  }

  get baseUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The image ids of the creates this replica applied, from its audit log. */
  created(): string[] {
    if (!existsSync(this.auditLog)) return [];
    return readFileSync(this.auditLog, "utf8")
      .split("\n")
      .filter((line) => line !== "")
      .map((line) => JSON.parse(line) as { rpc: string; code: string; imageId: string })
      .filter((entry) => entry.rpc === "CreateImage" && entry.code === "OK")
      .map((entry) => entry.imageId);
  }

  /** SIGTERM, and resolves once the process has exited. */
  async stop(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = new Promise((resolve) => this.proc.once("exit", resolve));
    this.proc.kill("SIGTERM");
    await exited;
  }
}

/** Counts attempts: placed after the service-config interceptor, it runs once per attempt. */
function attemptCounter(): { attempts: () => number; interceptor: Interceptor } {
  let count = 0;
  return {
    attempts: () => count,
    interceptor: (next) => (req) => {
      count++;
      return next(req);
    },
  };
}

/** A client on a BalancedTransport over baseUrls with the shipped service config, as ImageClient has. */
function balancedClient(
  baseUrls: string[],
  interceptors: Interceptor[] = [],
): { rpc: Client<typeof ImageService>; transport: BalancedTransport } {
  const transport = new BalancedTransport(baseUrls, {
    session: (baseUrl) => new Http2SessionManager(baseUrl, KEEPALIVE),
    interceptors: [serviceConfigInterceptor(ServiceConfig.load()), ...interceptors],
  });
  return { rpc: createClient(ImageService, transport), transport };
}

async function createImage(rpc: Client<typeof ImageService>, name: string): Promise<string> {
  const res = await rpc.createImage({ name, requestId: randomUUID() });
  assert.ok(res.image !== undefined);
  return res.image.id;
}

describe("BalancedTransport over two imageloc serve replicas", { timeout: 4 * TEST_TIMEOUT_MS }, () => {
  let dir: string;
  let first: Replica;
  let second: Replica;
  let back: Replica | undefined;

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "imageloc-balancing-"));
    const database = `sqlite:///${path.join(dir, "shared.db")}`;
    first = await Replica.start(database, dir, "first"); // creates the schema before the second opens it
    second = await Replica.start(database, dir, "second");
  });

  after(async () => {
    await Promise.all([first?.stop(), second?.stop(), back?.stop()]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("spreads calls round robin over every replica", { timeout: TEST_TIMEOUT_MS }, async () => {
    const { rpc, transport } = balancedClient([first.baseUrl, second.baseUrl]);
    try {
      const before = [first.created().length, second.created().length];
      for (let i = 0; i < CALLS; i++) await createImage(rpc, "balanced");
      const spread = [first.created().length - before[0]!, second.created().length - before[1]!];
      assert.deepEqual(spread, [CALLS / 2, CALLS / 2]);
    } finally {
      transport.close();
    }
  });

  test("ImageClient given several targets balances over them", { timeout: TEST_TIMEOUT_MS }, async () => {
    const client = new ImageClient([first.baseUrl, second.baseUrl]);
    try {
      const before = [first.created().length, second.created().length];
      for (let i = 0; i < CALLS; i++) await client.createImage({ name: "balanced-client" });
      const spread = [first.created().length - before[0]!, second.created().length - before[1]!];
      assert.deepEqual(spread, [CALLS / 2, CALLS / 2]);
    } finally {
      client.close();
    }
  });

  test("WatchImages streams go through the balancer too", { timeout: TEST_TIMEOUT_MS }, async () => {
    const { rpc, transport } = balancedClient([first.baseUrl, second.baseUrl]);
    try {
      for (let i = 0; i < 2; i++) {
        const abort = new AbortController();
        const stream = rpc.watchImages({}, { signal: abort.signal })[Symbol.asyncIterator]();
        const opening = await stream.next(); // the first response comes at once
        assert.equal(opening.done, false);
        abort.abort();
        await stream.return?.();
      }
    } finally {
      transport.close();
    }
  });

  test("calls keep succeeding while one replica stops, then all go to the other", { timeout: TEST_TIMEOUT_MS }, async () => {
    const { attempts, interceptor } = attemptCounter();
    const { rpc, transport } = balancedClient([first.baseUrl, second.baseUrl], [interceptor]);
    const created: string[] = [];
    const failures: unknown[] = [];
    try {
      for (let i = 0; i < 4; i++) created.push(await createImage(rpc, "before-stop"));
      const attemptsBefore = attempts();
      const callsBefore = created.length;
      const stopping = first.stop();
      let stopped = false;
      void stopping.then(() => (stopped = true));
      const deadline = Date.now() + TEST_TIMEOUT_MS / 2;
      while (!stopped && Date.now() < deadline) {
        try {
          created.push(await createImage(rpc, "during-stop"));
        } catch (e) {
          failures.push(e);
        }
      }
      await stopping;
      const retried = attempts() - attemptsBefore - (created.length - callsBefore);

      const onSecond = second.created().length;
      for (let i = 0; i < CALLS; i++) created.push(await createImage(rpc, "after-stop"));

      assert.deepEqual(failures, []);
      assert.ok(retried > 0, "no attempt was refused: the retry path went untested");
      assert.equal(second.created().length - onSecond, CALLS);
      const applied = [...first.created(), ...second.created()];
      for (const id of created) assert.equal(applied.filter((a) => a === id).length, 1, `${id} applied once`);
    } finally {
      transport.close();
    }
  });

  test("passes over a replica that cannot be reached", { timeout: TEST_TIMEOUT_MS }, async () => {
    // first is stopped by now: its port refuses connections.
    const { attempts, interceptor } = attemptCounter();
    const { rpc, transport } = balancedClient([first.baseUrl, second.baseUrl], [interceptor]);
    try {
      const start = Date.now();
      for (let i = 0; i < CALLS; i++) await createImage(rpc, "one-down");
      const deadReplicaTries = attempts() - CALLS;
      assert.ok(deadReplicaTries >= 1, "the dead replica was never tried");
      assert.ok(deadReplicaTries <= Math.ceil((Date.now() - start) / EJECT_MS) + 1, `${deadReplicaTries} tries`);
    } finally {
      transport.close();
    }
  });

  test("a replica that comes back is used again", { timeout: TEST_TIMEOUT_MS }, async () => {
    const { rpc, transport } = balancedClient([first.baseUrl, second.baseUrl]);
    try {
      await createImage(rpc, "first-down"); // first is down: passed over from now on
      back = await Replica.start(`sqlite:///${path.join(dir, "shared.db")}`, dir, "back", first.port);
      const deadline = Date.now() + 10 * EJECT_MS;
      while (back.created().length === 0) {
        assert.ok(Date.now() < deadline, "the replica that came back got no call");
        await createImage(rpc, "first-back");
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    } finally {
      transport.close();
    }
  });

  test("every replica down: the call fails UNAVAILABLE after the retries", { timeout: TEST_TIMEOUT_MS }, async () => {
    const dead = [await freePort(), await freePort()].map((port) => `http://127.0.0.1:${port}`);
    const { rpc, transport } = balancedClient(dead);
    try {
      await assert.rejects(
        rpc.getImage({ imageId: "00000000-0000-4000-8000-000000000001" }),
        (e) => ConnectError.from(e).code === Code.Unavailable,
      );
    } finally {
      transport.close();
    }
  });
});
