// Tests watchImages and waitForStatus against a scripted ImageService: a real gRPC server
// in this process (Connect's node adapter on HTTP/2), so rich error details and
// cancellation cross the wire as they would from imageloc serve.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import type net from "node:net";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { type MessageInitShape, create } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { ErrorInfoSchema } from "../../../generated/ts/google/rpc/error_details_pb.js";
import {
  ERROR_DOMAIN,
  ImageClient,
  type ImageClientOptions,
  type ImageEvent,
  ImageEventSchema,
  ImageEventType,
  ImageSchema,
  ImageService,
  ImageStatus,
  type ImageWatch,
  ImagelocError,
  STATUS_TRANSITIONS,
  ServiceConfig,
  WaitError,
  type WaitErrorReason,
  type WatchImagesRequest,
  type WatchImagesResponseSchema,
  reachableStatuses,
  watchBackoffMs,
} from "../src/index.js";

const IMAGE_ID = "00000000-0000-4000-8000-00000000000a";
/** The longest any single step of a test may take. */
const STEP_MS = 3_000;

type Response = MessageInitShape<typeof WatchImagesResponseSchema>;
type Step = (req: WatchImagesRequest, ctx: HandlerContext) => AsyncGenerator<Response, void, undefined>;

/** One WatchImages call the fake received. */
interface Attempt {
  startRevision: bigint;
  imageIds: string[];
  header: Headers;
  at: number;
  /** Resolves when the client cancels this stream. */
  canceled: Promise<void>;
}

/**
 * A WatchImages handler playing steps[i] on the i-th call; a call beyond the script holds
 * its stream open until the client cancels it.
 */
function scriptedWatch(steps: Step[]): { attempts: Attempt[]; impl: Partial<ServiceImpl<typeof ImageService>> } {
  const attempts: Attempt[] = [];
  const impl: Partial<ServiceImpl<typeof ImageService>> = {
    async *watchImages(req, ctx) {
      const step = steps[attempts.length] ?? untilCanceled;
      attempts.push({
        startRevision: req.startRevision,
        imageIds: [...req.imageIds],
        header: new Headers(ctx.requestHeader),
        at: Date.now(),
        canceled: aborted(ctx.signal),
      });
      yield* step(req, ctx);
    },
  };
  return { attempts, impl };
}

/** A step that sends responses, then fails with err (or ends the stream when err is undefined). */
function sends(responses: Response[], err?: ConnectError): Step {
  return async function* () {
    yield* responses;
    if (err) throw err;
  };
}

/** A step that sends responses, then keeps the stream open until the client cancels it. */
function sendsThenHolds(...responses: Response[]): Step {
  return async function* (req, ctx) {
    yield* responses;
    yield* untilCanceled(req, ctx);
  };
}

async function* untilCanceled(_req: WatchImagesRequest, ctx: HandlerContext): AsyncGenerator<Response, void, undefined> {
  await aborted(ctx.signal);
}

function aborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener("abort", () => resolve(), { once: true });
  });
}

/** A refusal carrying one ErrorInfo, as the imageloc server sends it. */
function refusal(code: Code, reason: string, metadata: Record<string, string> = {}): ConnectError {
  return new ConnectError(`refused: ${reason}`, code, undefined, [
    { desc: ErrorInfoSchema, value: { reason, domain: ERROR_DOMAIN, metadata } },
  ]);
}

const unavailable = (): ConnectError => new ConnectError("replica going away", Code.Unavailable);

function event(
  revision: number,
  status: ImageStatus = ImageStatus.ACTIVE,
  type: ImageEventType = ImageEventType.UPDATED,
): ImageEvent {
  const image = create(ImageSchema, { id: IMAGE_ID, status, revision: BigInt(revision) });
  return create(ImageEventSchema, { revision: BigInt(revision), type, image });
}

/** A response with events, its revision that of the last one. */
function events(...revisions: number[]): Response {
  return { events: revisions.map((r) => event(r)), revision: BigInt(Math.max(...revisions)) };
}

const progress = (revision: number): Response => ({ revision: BigInt(revision) });

/** Serves impl on 127.0.0.1:0 for the length of body, with a client of it. */
async function withServer(
  impl: Partial<ServiceImpl<typeof ImageService>>,
  body: (client: ImageClient) => Promise<void>,
  options: ImageClientOptions = {},
): Promise<void> {
  const server = http2.createServer(
    connectNodeAdapter({ routes: (router) => router.service(ImageService, impl), grpcWeb: false, connect: false }),
  );
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  const client = new ImageClient(`127.0.0.1:${port}`, options);
  try {
    await body(client);
  } finally {
    client.close();
    for (const session of sessions) session.destroy();
    await new Promise((resolve) => server.close(resolve));
  }
}

/** p, or a rejection naming what did not happen within ms. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** The next n events of watch (each within STEP_MS); then closes the watch. */
async function take(watch: ImageWatch, n: number): Promise<ImageEvent[]> {
  const out: ImageEvent[] = [];
  try {
    while (out.length < n) {
      const next = await within(watch.next(), STEP_MS, `event ${out.length + 1} of ${n}`);
      assert.ok(!next.done, `the watch ended after ${out.length} events`);
      out.push(next.value);
    }
  } finally {
    await watch.return();
  }
  return out;
}

/** The error that ends watch (within STEP_MS), which must be an ImagelocError; and the events before it. */
async function watchError(watch: ImageWatch): Promise<{ err: ImagelocError; seen: bigint[] }> {
  const seen: bigint[] = [];
  try {
    await within(
      (async () => {
        for await (const e of watch) seen.push(e.revision);
      })(),
      STEP_MS,
      "the watch's error",
    );
  } catch (e) {
    assert.ok(e instanceof ImagelocError, `expected an ImagelocError, got ${String(e)}`);
    return { err: e, seen };
  } finally {
    await watch.return();
  }
  assert.fail("the watch ended without an error");
}

const isCanceled = (e: unknown): boolean => e instanceof ImagelocError && e.code === Code.Canceled;
const revisions = (list: { revision: bigint }[]): number[] => list.map((e) => Number(e.revision));
const startRevisions = (attempts: Attempt[]): number[] => attempts.map((a) => Number(a.startRevision));

describe("watchImages", () => {
  test("resumes after UNAVAILABLE from the last event, delivering each event once in order", async () => {
    const { attempts, impl } = scriptedWatch([sends([events(3, 4)], unavailable()), sendsThenHolds(events(5))]);
    await withServer(impl, async (client) => {
      const got = await take(client.watchImages({ imageIds: [IMAGE_ID, "b"], startRevision: 2 }), 3);
      assert.deepEqual(revisions(got), [3, 4, 5]);
      assert.deepEqual(startRevisions(attempts), [2, 4]);
      assert.deepEqual(attempts[1]?.imageIds, [IMAGE_ID, "b"], "the resumed stream watches the same images");
    });
  });

  test("resumes from the revision of the latest progress response, also when started from 0", async () => {
    const { attempts, impl } = scriptedWatch([
      sends([progress(10)], unavailable()),
      sends([progress(10), events(11), progress(15)], unavailable()),
      sendsThenHolds(events(16)),
    ]);
    await withServer(impl, async (client) => {
      const watch = client.watchImages();
      const got = await take(watch, 2);
      assert.deepEqual(revisions(got), [11, 16]);
      assert.deepEqual(startRevisions(attempts), [0, 10, 15]);
      assert.equal(watch.revision, 16n);
    });
  });

  test("resumes after a stream that ends without an error", async () => {
    const { attempts, impl } = scriptedWatch([sends([progress(7)]), sendsThenHolds(events(8))]);
    await withServer(impl, async (client) => {
      assert.deepEqual(revisions(await take(client.watchImages({ startRevision: 3 }), 1)), [8]);
      assert.deepEqual(startRevisions(attempts), [3, 7]);
    });
  });

  test("resumes after RESOURCE_EXHAUSTED WATCHER_TOO_SLOW from the revision delivered last", async () => {
    const tooSlow = refusal(Code.ResourceExhausted, "WATCHER_TOO_SLOW", { revision: "4", httpStatus: "429" });
    const { attempts, impl } = scriptedWatch([sends([events(3, 4)], tooSlow), sendsThenHolds(events(5))]);
    await withServer(impl, async (client) => {
      assert.deepEqual(revisions(await take(client.watchImages({ startRevision: 2 }), 3)), [3, 4, 5]);
      assert.deepEqual(startRevisions(attempts), [2, 4]);
    });
  });

  test("takes WATCHER_TOO_SLOW's revision when nothing was received before it", async () => {
    const tooSlow = refusal(Code.ResourceExhausted, "WATCHER_TOO_SLOW", { revision: "12" });
    const { attempts, impl } = scriptedWatch([sends([], tooSlow), sendsThenHolds(events(13))]);
    await withServer(impl, async (client) => {
      assert.deepEqual(revisions(await take(client.watchImages(), 1)), [13]);
      assert.deepEqual(startRevisions(attempts), [0, 12]);
    });
  });

  const refusals: { code: Code; reason: string; metadata: Record<string, string> }[] = [
    { code: Code.OutOfRange, reason: "REVISION_COMPACTED", metadata: { compactRevision: "5", httpStatus: "410" } },
    { code: Code.InvalidArgument, reason: "FUTURE_REVISION", metadata: { httpStatus: "400" } },
    { code: Code.InvalidArgument, reason: "INVALID_REQUEST", metadata: { httpStatus: "400" } },
    { code: Code.Unauthenticated, reason: "UNAUTHENTICATED", metadata: { cause: "missing", httpStatus: "401" } },
    { code: Code.ResourceExhausted, reason: "SOME_OTHER_LIMIT", metadata: {} },
  ];
  for (const row of refusals) {
    test(`ends with ImagelocError on ${Code[row.code]} ${row.reason}, without resuming`, async () => {
      const { attempts, impl } = scriptedWatch([sends([], refusal(row.code, row.reason, row.metadata))]);
      await withServer(impl, async (client) => {
        const { err } = await watchError(client.watchImages({ startRevision: 1 }));
        assert.equal(err.code, row.code);
        assert.equal(err.reason, row.reason);
        assert.equal(err.domain, ERROR_DOMAIN);
        assert.deepEqual(err.metadata, row.metadata);
        await sleep(250);
        assert.equal(attempts.length, 1, "not resumed");
      });
    });
  }

  test("a resume refused with REVISION_COMPACTED ends the watch after the events before it", async () => {
    const compacted = refusal(Code.OutOfRange, "REVISION_COMPACTED", { compactRevision: "9", httpStatus: "410" });
    const { attempts, impl } = scriptedWatch([sends([events(3)], unavailable()), sends([], compacted)]);
    await withServer(impl, async (client) => {
      const { err, seen } = await watchError(client.watchImages({ startRevision: 2 }));
      assert.deepEqual(seen, [3n]);
      assert.equal(err.reason, "REVISION_COMPACTED");
      assert.equal(err.httpStatus, 410);
      assert.equal(err.metadata["compactRevision"], "9");
      assert.deepEqual(startRevisions(attempts), [2, 3]);
    });
  });

  test("backs off 0.1 s doubling between failed attempts, and from 0.1 s again after a response", async () => {
    const { attempts, impl } = scriptedWatch([
      sends([], unavailable()),
      sends([], unavailable()),
      sends([], unavailable()),
      sends([events(2)], unavailable()),
      sendsThenHolds(events(3)),
    ]);
    await withServer(impl, async (client) => {
      assert.deepEqual(revisions(await take(client.watchImages({ startRevision: 1 }), 2)), [2, 3]);
      const gaps = attempts.slice(1).map((a, i) => a.at - (attempts[i]?.at ?? 0));
      // Each wait is jittered within [ceiling / 2, ceiling]; allow a few ms of timer slack.
      assert.ok(gaps[0]! >= 45, `first wait ${gaps[0]} ms`);
      assert.ok(gaps[1]! >= 95, `second wait ${gaps[1]} ms`);
      assert.ok(gaps[2]! >= 195, `third wait ${gaps[2]} ms`);
      assert.ok(gaps[3]! >= 45 && gaps[3]! < 200, `a response resets the backoff: waited ${gaps[3]} ms`);
    });
  });

  test("the backoff ceiling doubles from 0.1 s and stops at 2 s", () => {
    assert.deepEqual(
      [1, 2, 3, 4, 5, 6, 7, 20].map(watchBackoffMs),
      [100, 200, 400, 800, 1600, 2000, 2000, 2000],
    );
  });

  test("leaving the for-await loop cancels the stream on the server", async () => {
    const { attempts, impl } = scriptedWatch([sendsThenHolds(events(2))]);
    await withServer(impl, async (client) => {
      for await (const e of client.watchImages()) {
        assert.equal(e.revision, 2n);
        break;
      }
      await within(attempts[0]!.canceled, STEP_MS, "the server seeing the cancel");
      await sleep(200);
      assert.equal(attempts.length, 1, "not resumed");
    });
  });

  test("return() while a next() is pending cancels the stream and resolves the next() as done", async () => {
    const { attempts, impl } = scriptedWatch([sendsThenHolds(progress(5))]);
    await withServer(impl, async (client) => {
      const watch = client.watchImages();
      const pending = watch.next();
      while (watch.revision !== 5n) await within(sleep(10), STEP_MS, "the progress response");
      await within(watch.return(), STEP_MS, "return()");
      assert.deepEqual(await within(pending, STEP_MS, "the pending next()"), { done: true, value: undefined });
      await within(attempts[0]!.canceled, STEP_MS, "the server seeing the cancel");
    });
  });

  test("an aborted signal ends the watch with Canceled, also during a backoff", async () => {
    const failing = Array.from({ length: 50 }, () => sends([], unavailable()));
    const { attempts, impl } = scriptedWatch([sendsThenHolds(progress(1)), ...failing]);
    await withServer(impl, async (client) => {
      const holding = new AbortController();
      const first = client.watchImages({}, { signal: holding.signal });
      const pending = first.next();
      while (attempts.length < 1) await sleep(10);
      holding.abort();
      await assert.rejects(within(pending, STEP_MS, "the aborted next()"), isCanceled);
      await within(attempts[0]!.canceled, STEP_MS, "the server seeing the cancel");

      const backingOff = new AbortController();
      const second = client.watchImages({}, { signal: backingOff.signal });
      const failingNext = second.next();
      while (attempts.length < 3) await sleep(10);
      backingOff.abort();
      await assert.rejects(within(failingNext, STEP_MS, "the aborted backoff"), isCanceled);
      const count = attempts.length;
      await sleep(300);
      assert.equal(attempts.length, count, "no attempt after the abort");
    });
  });

  test("close() ends open watches with Canceled instead of resuming", async () => {
    const { attempts, impl } = scriptedWatch([sendsThenHolds(progress(1))]);
    await withServer(impl, async (client) => {
      const pending = client.watchImages().next();
      while (attempts.length < 1) await sleep(10);
      client.close();
      await assert.rejects(within(pending, STEP_MS, "the next() after close()"), isCanceled);
      await sleep(250);
      assert.equal(attempts.length, 1, "not resumed");
    });
  });

  test("has no deadline, whatever the service config's timeout", async () => {
    const config = new ServiceConfig({ methodConfig: [{ name: [{ service: ImageService.typeName }], timeout: "0.2s" }] });
    const timeouts: (string | null)[] = [];
    const { attempts, impl } = scriptedWatch([
      async function* (_req, ctx) {
        timeouts.push(ctx.requestHeader.get("grpc-timeout"));
        yield progress(1);
        await sleep(600, undefined, { signal: ctx.signal });
        yield events(2);
        yield* untilCanceled(_req, ctx);
      },
    ]);
    await withServer(
      impl,
      async (client) => {
        assert.deepEqual(revisions(await take(client.watchImages(), 1)), [2]);
        assert.deepEqual(timeouts, [null], "no grpc-timeout header");
        assert.equal(attempts.length, 1, "one stream outlived the 0.2 s timeout");
      },
      { serviceConfig: config },
    );
  });

  test("sends the token on every stream, asking a token function again when it resumes", async () => {
    let asked = 0;
    const { attempts, impl } = scriptedWatch([sends([events(2)], unavailable()), sendsThenHolds(events(3))]);
    await withServer(
      impl,
      async (client) => {
        await take(client.watchImages({ startRevision: 1 }), 2);
        assert.deepEqual(
          attempts.map((a) => a.header.get("authorization")),
          ["Bearer t1", "Bearer t2"],
        );
      },
      { token: () => `t${++asked}` },
    );
  });

  test("opened resolves at the first response, after a resume too", async () => {
    const { attempts, impl } = scriptedWatch([sends([], unavailable()), sendsThenHolds(progress(3))]);
    await withServer(impl, async (client) => {
      const watch = client.watchImages();
      let open = false;
      void watch.opened.then(() => (open = true));
      const pending = watch.next();
      while (attempts.length < 1) await within(sleep(10), STEP_MS, "the first attempt");
      assert.equal(open, false, "not open before a response");
      await within(watch.opened, STEP_MS, "opened");
      assert.equal(attempts.length, 2);
      assert.equal(watch.revision, 3n);
      await within(watch.return(), STEP_MS, "return()");
      assert.deepEqual(await within(pending, STEP_MS, "the pending next()"), { done: true, value: undefined });
    });
  });

  test("opened rejects with the refusal that ends the watch before a response, or Canceled when closed first", async () => {
    const denied = refusal(Code.PermissionDenied, "PERMISSION_DENIED");
    const { impl } = scriptedWatch([sends([], denied)]);
    await withServer(impl, async (client) => {
      const refused = client.watchImages({ startRevision: 1 });
      const { err } = await watchError(refused);
      await assert.rejects(within(refused.opened, STEP_MS, "opened"), (e) => e === err);

      const never = client.watchImages();
      await never.return();
      await assert.rejects(within(never.opened, STEP_MS, "opened"), isCanceled);
    });
  });
});

/** What GetImage answers: the image's status and revision. */
type ImageState = readonly [status: ImageStatus, revision: number];

/**
 * A fake with GetImage answering an image of status and revision, then on its n-th later
 * call later[n - 1] (the last one repeated), and WatchImages playing steps. calls logs in
 * order each GetImage ("GetImage queued@5"), each scripted WatchImages call ("WatchImages
 * from 5") and each response the steps send, just before it goes ("response 7").
 */
function imageAndWatch(
  status: ImageStatus,
  revision: number,
  steps: Step[],
  later: ImageState[] = [],
): { attempts: Attempt[]; calls: string[]; impl: Partial<ServiceImpl<typeof ImageService>> } {
  const calls: string[] = [];
  const logged = steps.map(
    (step): Step =>
      async function* (req, ctx) {
        calls.push(`WatchImages from ${req.startRevision}`);
        for await (const res of step(req, ctx)) {
          calls.push(`response ${res.revision ?? 0n}`);
          yield res;
        }
      },
  );
  const answers: ImageState[] = [[status, revision], ...later];
  let gets = 0;
  const watch = scriptedWatch(logged);
  return {
    attempts: watch.attempts,
    calls,
    impl: {
      ...watch.impl,
      getImage: (req) => {
        const [s, r] = answers[Math.min(gets++, answers.length - 1)]!;
        calls.push(`GetImage ${ImageStatus[s].toLowerCase()}@${r}`);
        return { image: { id: req.imageId, status: s, revision: BigInt(r) } };
      },
    },
  };
}

/** The WaitError waitForStatus rejects with (within STEP_MS). */
async function waitError(p: Promise<unknown>): Promise<WaitError> {
  try {
    await within(p, STEP_MS, "waitForStatus");
  } catch (e) {
    assert.ok(e instanceof WaitError, `expected a WaitError, got ${String(e)}`);
    return e;
  }
  assert.fail("waitForStatus resolved");
}

describe("waitForStatus", () => {
  test("returns the image at once when its status is one of those asked, without watching", async () => {
    const { attempts, impl } = imageAndWatch(ImageStatus.DEACTIVATED, 9, []);
    await withServer(impl, async (client) => {
      const goal = [ImageStatus.ACTIVE, ImageStatus.DEACTIVATED];
      const image = await client.waitForStatus(IMAGE_ID, goal, { timeoutMs: 1000 });
      assert.equal(image.status, ImageStatus.DEACTIVATED);
      assert.equal(attempts.length, 0);
    });
  });

  test("watches the image from its revision until an event brings the status, then cancels the watch", async () => {
    const { attempts, impl } = imageAndWatch(ImageStatus.QUEUED, 5, [
      sendsThenHolds(progress(5), { events: [event(6, ImageStatus.SAVING)], revision: 6n }, progress(8), {
        events: [event(9, ImageStatus.ACTIVE)],
        revision: 9n,
      }),
    ]);
    await withServer(impl, async (client) => {
      const image = await client.waitForStatus(IMAGE_ID, ImageStatus.ACTIVE, { timeoutMs: STEP_MS });
      assert.equal(image.status, ImageStatus.ACTIVE);
      assert.equal(image.revision, 9n);
      assert.deepEqual(attempts[0]?.imageIds, [IMAGE_ID]);
      assert.equal(attempts[0]?.startRevision, 5n);
      await within(attempts[0]!.canceled, STEP_MS, "the server seeing the cancel");
    });
  });

  test("keeps waiting across a resume", async () => {
    const { attempts, impl } = imageAndWatch(ImageStatus.SAVING, 5, [
      sends([{ events: [event(6, ImageStatus.QUEUED)], revision: 6n }], unavailable()),
      sendsThenHolds({ events: [event(7, ImageStatus.ACTIVE)], revision: 7n }),
    ]);
    await withServer(impl, async (client) => {
      const image = await client.waitForStatus(IMAGE_ID, ImageStatus.ACTIVE, { timeoutMs: STEP_MS });
      assert.equal(image.revision, 7n);
      assert.deepEqual(startRevisions(attempts), [5, 6]);
    });
  });

  test("rejects with WAIT_TIMEOUT when the status does not come in time, and cancels the watch", async () => {
    const { attempts, impl } = imageAndWatch(ImageStatus.SAVING, 5, [sendsThenHolds(progress(5))]);
    await withServer(impl, async (client) => {
      const started = Date.now();
      const err = await waitError(client.waitForStatus(IMAGE_ID, ImageStatus.ACTIVE, { timeoutMs: 200 }));
      assert.equal(err.reason, "WAIT_TIMEOUT");
      assert.ok(Date.now() - started >= 190, "waited the whole timeout");
      assert.equal(err.imageId, IMAGE_ID);
      assert.deepEqual(err.statuses, [ImageStatus.ACTIVE]);
      assert.equal(err.image?.status, ImageStatus.SAVING);
      assert.match(err.message, /active within 200 ms \(last status saving\)/);
      await within(attempts[0]!.canceled, STEP_MS, "the server seeing the cancel");
    });
  });

  const { ACTIVE, DEACTIVATED, SAVING, DELETED, PENDING_DELETE, KILLED } = ImageStatus;
  const endings: { name: string; from: ImageStatus; goal: ImageStatus; change: ImageEvent; reason: WaitErrorReason }[] = [
    {
      name: "a DELETED event",
      from: ACTIVE,
      goal: DEACTIVATED,
      change: event(6, DELETED, ImageEventType.DELETED),
      reason: "IMAGE_DELETED",
    },
    {
      name: "an event with status pending_delete",
      from: ACTIVE,
      goal: DEACTIVATED,
      change: event(6, PENDING_DELETE, ImageEventType.UPDATED),
      reason: "IMAGE_DELETED",
    },
    {
      name: "killed while waiting for active",
      from: SAVING,
      goal: ACTIVE,
      change: event(6, KILLED),
      reason: "STATUS_UNREACHABLE",
    },
  ];
  for (const row of endings) {
    test(`rejects with ${row.reason} on ${row.name}`, async () => {
      const { impl } = imageAndWatch(row.from, 5, [sendsThenHolds({ events: [row.change], revision: 6n })]);
      await withServer(impl, async (client) => {
        const err = await waitError(client.waitForStatus(IMAGE_ID, row.goal, { timeoutMs: STEP_MS }));
        assert.equal(err.reason, row.reason);
        assert.equal(err.image?.revision, 6n);
      });
    });
  }

  test("rejects with STATUS_UNREACHABLE at once for a killed image, without watching", async () => {
    const { attempts, impl } = imageAndWatch(ImageStatus.KILLED, 5, []);
    await withServer(impl, async (client) => {
      const err = await waitError(client.waitForStatus(IMAGE_ID, ImageStatus.ACTIVE, { timeoutMs: STEP_MS }));
      assert.equal(err.reason, "STATUS_UNREACHABLE");
      assert.match(err.message, /is killed and can no longer become active/);
      assert.equal(attempts.length, 0);
    });
  });

  test("returns the deleted image when deleted is a status asked for", async () => {
    const { impl } = imageAndWatch(ImageStatus.ACTIVE, 5, [
      sendsThenHolds({ events: [event(6, ImageStatus.DELETED, ImageEventType.DELETED)], revision: 6n }),
    ]);
    await withServer(impl, async (client) => {
      const image = await client.waitForStatus(IMAGE_ID, ImageStatus.DELETED, { timeoutMs: STEP_MS });
      assert.equal(image.status, ImageStatus.DELETED);
    });
  });

  test("an image at revision 0: watches from now and, once the stream is open, gets the image again", async () => {
    const { attempts, calls, impl } = imageAndWatch(
      ImageStatus.QUEUED,
      0,
      [
        async function* (req, ctx) {
          await sleep(100); // a GetImage sent before the stream is open would come first
          yield* sendsThenHolds(progress(7))(req, ctx);
        },
      ],
      [[ImageStatus.ACTIVE, 8]],
    );
    await withServer(impl, async (client) => {
      const image = await client.waitForStatus(IMAGE_ID, ImageStatus.ACTIVE, { timeoutMs: STEP_MS });
      assert.equal(image.status, ImageStatus.ACTIVE);
      assert.equal(image.revision, 8n);
      assert.deepEqual(startRevisions(attempts), [0]);
      assert.deepEqual(calls, ["GetImage queued@0", "WatchImages from 0", "response 7", "GetImage active@8"]);
      await within(attempts[0]!.canceled, STEP_MS, "the server seeing the cancel");
    });
  });

  test("an image at revision 0 still queued on the second GetImage: follows the watch's events", async () => {
    const { attempts, impl } = imageAndWatch(ImageStatus.QUEUED, 0, [
      sendsThenHolds({ events: [event(8, ImageStatus.ACTIVE)], revision: 8n }),
    ]);
    await withServer(impl, async (client) => {
      const image = await client.waitForStatus(IMAGE_ID, ImageStatus.ACTIVE, { timeoutMs: STEP_MS });
      assert.equal(image.revision, 8n);
      assert.deepEqual(startRevisions(attempts), [0]);
    });
  });

  test("an image at revision 0 whose stream never opens: WAIT_TIMEOUT, and the watch is cancelled", async () => {
    const { attempts, calls, impl } = imageAndWatch(ImageStatus.QUEUED, 0, [untilCanceled]);
    await withServer(impl, async (client) => {
      const err = await waitError(client.waitForStatus(IMAGE_ID, ImageStatus.ACTIVE, { timeoutMs: 200 }));
      assert.equal(err.reason, "WAIT_TIMEOUT");
      assert.equal(err.image?.status, ImageStatus.QUEUED);
      assert.deepEqual(calls, ["GetImage queued@0", "WatchImages from 0"], "no GetImage before the stream opens");
      await within(attempts[0]!.canceled, STEP_MS, "the server seeing the cancel");
    });
  });

  test("a revision refused REVISION_COMPACTED: gets the image again and watches from now", async () => {
    const compacted = refusal(Code.OutOfRange, "REVISION_COMPACTED", { compactRevision: "9", httpStatus: "410" });
    const { attempts, calls, impl } = imageAndWatch(ImageStatus.QUEUED, 5, [
      sends([], compacted),
      sendsThenHolds(progress(10), { events: [event(12, ImageStatus.ACTIVE)], revision: 12n }),
    ]);
    await withServer(impl, async (client) => {
      const image = await client.waitForStatus(IMAGE_ID, ImageStatus.ACTIVE, { timeoutMs: STEP_MS });
      assert.equal(image.status, ImageStatus.ACTIVE);
      assert.equal(image.revision, 12n);
      assert.deepEqual(startRevisions(attempts), [5, 0]);
      assert.deepEqual(calls.slice(0, 4), [
        "GetImage queued@5",
        "WatchImages from 5",
        "WatchImages from 0",
        "response 10",
      ]);
      // The second GetImage follows the stream's first response; the event may come before it or after.
      assert.deepEqual(calls.slice(4).sort(), ["GetImage queued@5", "response 12"]);
      await within(attempts[1]!.canceled, STEP_MS, "the server seeing the cancel");
    });
  });

  test("a REVISION_COMPACTED refusal of revision 0 itself is not tried again", async () => {
    const compacted = refusal(Code.OutOfRange, "REVISION_COMPACTED", { compactRevision: "9" });
    const { attempts, impl } = imageAndWatch(ImageStatus.QUEUED, 0, [sends([], compacted)]);
    await withServer(impl, async (client) => {
      await assert.rejects(
        within(client.waitForStatus(IMAGE_ID, ImageStatus.ACTIVE, { timeoutMs: STEP_MS }), STEP_MS, "waitForStatus"),
        (e) => e instanceof ImagelocError && e.reason === "REVISION_COMPACTED",
      );
      assert.equal(attempts.length, 1);
    });
  });

  test("rejects with the ImagelocError of a refused GetImage", async () => {
    const impl: Partial<ServiceImpl<typeof ImageService>> = {
      getImage: () => {
        throw refusal(Code.NotFound, "IMAGE_NOT_FOUND", { httpStatus: "404" });
      },
    };
    await withServer(impl, async (client) => {
      await assert.rejects(
        client.waitForStatus(IMAGE_ID, ImageStatus.ACTIVE, { timeoutMs: STEP_MS }),
        (e) => e instanceof ImagelocError && e.code === Code.NotFound && e.reason === "IMAGE_NOT_FOUND",
      );
    });
  });
});

describe("status transitions", () => {
  test("are the server's table (server/imageloc/server/domain/status.py)", () => {
    const source = readFileSync(new URL("../../../server/imageloc/server/domain/status.py", import.meta.url), "utf8");
    const table = /^TRANSITIONS[^=]*= \{\n([\s\S]*?)^\}/m.exec(source)?.[1];
    assert.ok(table, "TRANSITIONS found in status.py");
    const status = (name: string): ImageStatus => {
      const value = ImageStatus[name as keyof typeof ImageStatus];
      assert.ok(value !== undefined, `status ${name}`);
      return value;
    };
    const server = new Map<ImageStatus, ImageStatus[]>();
    for (const [, from, targets] of table.matchAll(/S\.(\w+): frozenset\((?:\{([^}]*)\})?\)/g)) {
      const names = [...(targets ?? "").matchAll(/S\.(\w+)/g)].map((m) => status(m[1]!)).sort();
      server.set(status(from!), names);
    }
    const client = new Map(Object.entries(STATUS_TRANSITIONS).map(([k, v]) => [Number(k) as ImageStatus, [...v].sort()]));
    assert.equal(server.size, 9);
    assert.deepEqual(client, server);
  });

  const toActive: [ImageStatus, boolean][] = [
    [ImageStatus.QUEUED, true],
    [ImageStatus.SAVING, true],
    [ImageStatus.UPLOADING, true],
    [ImageStatus.IMPORTING, true],
    [ImageStatus.DEACTIVATED, true],
    [ImageStatus.PENDING_DELETE, true],
    [ImageStatus.KILLED, false],
    [ImageStatus.DELETED, false],
  ];
  for (const [from, reachable] of toActive) {
    test(`active is ${reachable ? "" : "not "}reachable from ${ImageStatus[from].toLowerCase()}`, () => {
      assert.equal(reachableStatuses(from).has(ImageStatus.ACTIVE), reachable);
    });
  }
});
