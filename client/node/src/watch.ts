// WatchImages for the Node client: ImageWatch, an event stream that resumes by itself
// from the last revision seen, and waitForStatus, which gets an image then watches it.
// Imports the generated messages, Connect and errors.ts; client.ts builds on it.
import { setTimeout as sleep } from "node:timers/promises";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { type CallOptions, type Client, Code, ConnectError } from "@connectrpc/connect";
import {
  type GetImageRequestSchema,
  type Image,
  type ImageEvent,
  ImageEventType,
  type ImageService,
  ImageStatus,
} from "../../../generated/ts/imageloc/v1/image_service_pb.js";
import { ImagelocError } from "./errors.js";

/**
 * Glance's status transitions (glance/domain/__init__.py :: Image.valid_state_targets),
 * copied from server/imageloc/server/domain/status.py; a test keeps the two equal.
 */
export const STATUS_TRANSITIONS: Readonly<
  Record<Exclude<ImageStatus, ImageStatus.UNSPECIFIED>, readonly ImageStatus[]>
> = {
  [ImageStatus.QUEUED]: [
    ImageStatus.SAVING,
    ImageStatus.UPLOADING,
    ImageStatus.IMPORTING,
    ImageStatus.ACTIVE,
    ImageStatus.DELETED,
  ],
  [ImageStatus.SAVING]: [ImageStatus.ACTIVE, ImageStatus.KILLED, ImageStatus.DELETED, ImageStatus.QUEUED],
  [ImageStatus.UPLOADING]: [ImageStatus.IMPORTING, ImageStatus.QUEUED, ImageStatus.DELETED],
  [ImageStatus.IMPORTING]: [ImageStatus.ACTIVE, ImageStatus.DELETED, ImageStatus.QUEUED],
  [ImageStatus.ACTIVE]: [ImageStatus.PENDING_DELETE, ImageStatus.DELETED, ImageStatus.DEACTIVATED],
  [ImageStatus.KILLED]: [ImageStatus.DELETED],
  [ImageStatus.PENDING_DELETE]: [ImageStatus.DELETED, ImageStatus.ACTIVE],
  [ImageStatus.DELETED]: [],
  [ImageStatus.DEACTIVATED]: [ImageStatus.ACTIVE, ImageStatus.DELETED],
};

/** The statuses an image in `from` can still reach by one or more transitions. */
export function reachableStatuses(from: ImageStatus): ReadonlySet<ImageStatus> {
  const seen = new Set<ImageStatus>();
  const todo = [from];
  for (let status = todo.pop(); status !== undefined; status = todo.pop()) {
    for (const next of STATUS_TRANSITIONS[status as keyof typeof STATUS_TRANSITIONS] ?? []) {
      if (!seen.has(next)) {
        seen.add(next);
        todo.push(next);
      }
    }
  }
  return seen;
}

/** How long a watch waits before it resumes: 0.1 s, doubling to 2 s, reset by any response. */
export const WATCH_BACKOFF = { initialMs: 100, maxMs: 2000, multiplier: 2 } as const;

/**
 * The longest wait before the resume after `failures` failures in a row (1 after the
 * first); the wait itself is drawn between half of it and all of it.
 */
export function watchBackoffMs(failures: number): number {
  const exponent = Math.max(0, failures - 1);
  return Math.min(WATCH_BACKOFF.initialMs * WATCH_BACKOFF.multiplier ** exponent, WATCH_BACKOFF.maxMs);
}

/** What to watch. */
export interface WatchImagesInit {
  /** The images to watch (they need not exist yet); empty or absent: every image the caller may see. */
  imageIds?: readonly string[];
  /** Deliver every change after this revision; 0 (the default): only changes after the watch starts. */
  startRevision?: bigint | number;
}

/** Call options of a watch. There is no timeout: a watch runs until it is closed, fails or is aborted. */
export interface WatchOptions {
  /** Aborting it ends the watch with an ImagelocError of code Canceled. */
  signal?: AbortSignal;
  /** Extra request headers, sent on every (re)connection. */
  headers?: CallOptions["headers"];
}

type WatchRpc = Pick<Client<typeof ImageService>, "watchImages">;

/**
 * The events of a WatchImages stream, each once, in revision order. After UNAVAILABLE,
 * an end of stream without error, or RESOURCE_EXHAUSTED WATCHER_TOO_SLOW, it opens a new
 * stream from `revision` after a backoff (WATCH_BACKOFF); any other error ends the
 * iteration with an ImagelocError (REVISION_COMPACTED: list again, then watch from the
 * list's revision). Leaving a for-await loop, or calling return(), cancels the stream.
 * The stream is opened on the first next(); an ImageWatch is iterated once.
 */
export class ImageWatch implements AsyncIterableIterator<ImageEvent> {
  /**
   * Resolves when the first response arrives, which the server sends at once: every
   * change committed from then on is delivered (started from revision 0, "from now", one
   * committed before may not be). The stream opens on the first next(), so that comes first;
   * a stream that fails before responding is resumed, and the promise waits on. Rejects
   * with the error that ends the watch before then, or with an ImagelocError of code
   * Canceled when the watch is closed first; left unobserved, that rejection is not an
   * unhandled one.
   */
  readonly opened: Promise<void>;
  readonly #open: Settle;
  readonly #closed = new AbortController();
  readonly #events: AsyncGenerator<ImageEvent, undefined, undefined>;
  #revision: bigint;

  constructor(rpc: WatchRpc, req: WatchImagesInit = {}, options: WatchOptions = {}) {
    this.#revision = BigInt(req.startRevision ?? 0);
    [this.opened, this.#open] = settled();
    this.#events = this.#run(rpc, [...(req.imageIds ?? [])], options);
  }

  /**
   * The revision the watch has caught up to: that of the last event returned, or a
   * later one from a progress response. A new watch started from it misses nothing
   * and repeats nothing. Before the first response, the start revision.
   */
  get revision(): bigint {
    return this.#revision;
  }

  next(): Promise<IteratorResult<ImageEvent, undefined>> {
    return this.#events.next();
  }

  /** Cancels the stream, also while a next() is pending (which then resolves done). */
  return(): Promise<IteratorResult<ImageEvent, undefined>> {
    this.#closed.abort();
    this.#open.reject(closedBeforeOpen()); // a watch never iterated runs no finally of #run
    return this.#events.return(undefined);
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  async *#run(rpc: WatchRpc, imageIds: string[], options: WatchOptions): AsyncGenerator<ImageEvent, undefined, undefined> {
    const caller = options.signal;
    const signal = caller ? AbortSignal.any([caller, this.#closed.signal]) : this.#closed.signal;
    let failures = 0;
    try {
      for (;;) {
        try {
          const responses = rpc.watchImages(
            { imageIds, startRevision: this.#revision },
            { signal, ...(options.headers === undefined ? {} : { headers: options.headers }) },
          );
          for await (const res of responses) {
            failures = 0;
            this.#open.resolve();
            for (const event of res.events) {
              if (event.revision > this.#revision) this.#revision = event.revision;
              yield event;
            }
            if (res.revision > this.#revision) this.#revision = res.revision;
          }
        } catch (e) {
          if (this.#closed.signal.aborted) return undefined;
          if (caller?.aborted) throw canceled(caller);
          const err = ImagelocError.from(e);
          if (!resumable(err)) throw err;
          // WATCHER_TOO_SLOW names the revision the server delivered last: on a sound server
          // the one tracked here. Ours is exact for what the caller got, so it wins; theirs
          // only fills in when nothing has been received.
          if (isWatcherTooSlow(err) && this.#revision === 0n) this.#revision = metadataRevision(err) ?? 0n;
        }
        failures++;
        const ceilingMs = watchBackoffMs(failures);
        try {
          await sleep(ceilingMs / 2 + (Math.random() * ceilingMs) / 2, undefined, { signal });
        } catch {
          if (this.#closed.signal.aborted) return undefined;
          throw canceled(signal);
        }
      }
    } catch (e) {
      this.#open.reject(e);
      throw e;
    } finally {
      this.#closed.abort();
      this.#open.reject(closedBeforeOpen());
    }
  }
}

/** Settles a promise; after the first call, the others do nothing. */
interface Settle {
  resolve(): void;
  reject(reason: unknown): void;
}

/** A promise and what settles it; its rejection counts as handled even if nobody awaits it. */
function settled(): [Promise<void>, Settle] {
  let settle: Settle | undefined;
  const promise = new Promise<void>((resolve, reject) => {
    settle = { resolve: () => resolve(), reject };
  });
  promise.catch(() => undefined);
  return [promise, settle!];
}

function closedBeforeOpen(): ImagelocError {
  return ImagelocError.from(new ConnectError("the watch was closed before its stream opened", Code.Canceled));
}

/** UNAVAILABLE (a replica went away) and WATCHER_TOO_SLOW are resumed; all else ends the watch. */
function resumable(err: ImagelocError): boolean {
  return err.code === Code.Unavailable || isWatcherTooSlow(err);
}

function isWatcherTooSlow(err: ImagelocError): boolean {
  return err.code === Code.ResourceExhausted && err.reason === "WATCHER_TOO_SLOW";
}

/** A start revision older than the change log keeps: list (or get) again, then watch from that. */
function isCompacted(e: unknown): boolean {
  return e instanceof ImagelocError && e.code === Code.OutOfRange && e.reason === "REVISION_COMPACTED";
}

function metadataRevision(err: ImagelocError): bigint | undefined {
  const text = err.metadata["revision"] ?? "";
  return /^\d+$/.test(text) ? BigInt(text) : undefined;
}

function canceled(signal: AbortSignal): ImagelocError {
  return ImagelocError.from(ConnectError.from(signal.reason, Code.Canceled));
}

/** Why waitForStatus gave up. */
export type WaitErrorReason =
  /** timeoutMs passed before the image reached one of the statuses. */
  | "WAIT_TIMEOUT"
  /** The image was deleted (a DELETED event, or status deleted or pending_delete). */
  | "IMAGE_DELETED"
  /** The image is in a status from which Glance's transitions reach none of the statuses (killed, waiting for active). */
  | "STATUS_UNREACHABLE";

/**
 * waitForStatus gave up for `reason`. A client-side verdict, not a server refusal (those
 * stay ImagelocError): `image` is the last state seen, absent when the timeout came
 * before GetImage answered.
 */
export class WaitError extends Error {
  override readonly name = "WaitError";
  readonly reason: WaitErrorReason;
  readonly imageId: string;
  readonly statuses: readonly ImageStatus[];
  readonly image: Image | undefined;

  constructor(
    reason: WaitErrorReason,
    message: string,
    fields: { imageId: string; statuses: readonly ImageStatus[]; image: Image | undefined },
  ) {
    super(message);
    this.reason = reason;
    this.imageId = fields.imageId;
    this.statuses = fields.statuses;
    this.image = fields.image;
  }

  override toString(): string {
    return `${this.reason}: ${this.message}`;
  }
}

export interface WaitOptions {
  /** The whole wait, GetImage included, in milliseconds. */
  timeoutMs: number;
  /** Aborting it ends the wait with an ImagelocError of code Canceled. */
  signal?: AbortSignal;
}

/** What waitForStatus needs of a client (ImageClient has it). */
export interface ImageWatcher {
  getImage(req: MessageInitShape<typeof GetImageRequestSchema>, opt?: { signal?: AbortSignal }): Promise<Image>;
  watchImages(req: WatchImagesInit, opt?: WatchOptions): Pick<ImageWatch, "opened" | "revision" | "next" | "return">;
}

/**
 * Gets the image and, unless its status is one of statuses already, watches it from the
 * image's revision (no change missed, no polling) until an event brings it to one of
 * them; returns the image in that state. An image of revision 0 (unchanged since the
 * change log began), or one whose revision the log no longer keeps (REVISION_COMPACTED),
 * is watched from now instead: once the stream is open, GetImage again, then the events.
 * Rejects with WaitError (WAIT_TIMEOUT, IMAGE_DELETED, STATUS_UNREACHABLE), or with the
 * ImagelocError of a refused call.
 */
export async function waitForStatus(
  client: ImageWatcher,
  imageId: string,
  statuses: ImageStatus | Iterable<ImageStatus>,
  options: WaitOptions,
): Promise<Image> {
  const goal: readonly ImageStatus[] = typeof statuses === "number" ? [statuses] : [...new Set(statuses)];
  if (goal.length === 0) throw new RangeError("waitForStatus: no status to wait for");
  const timer = new AbortController();
  const timeout = setTimeout(() => timer.abort(), options.timeoutMs);
  const signal = options.signal ? AbortSignal.any([options.signal, timer.signal]) : timer.signal;
  let last: Image | undefined;
  const fail = (reason: WaitErrorReason, message: string) =>
    new WaitError(reason, `image ${imageId} ${message}`, { imageId, statuses: goal, image: last });
  try {
    last = await client.getImage({ imageId }, { signal });
    if (verdict(last, ImageEventType.UNSPECIFIED, goal, fail)) return last;
    // From the image's own revision no change after GetImage is missed. But from 0 a watch
    // delivers only what commits after its stream opens, and a compacted revision is
    // refused: then watch from now and, once the stream is open, look again.
    let start = last.revision;
    for (;;) {
      const watch = client.watchImages({ imageIds: [imageId], startRevision: start }, { signal });
      try {
        const first = watch.next(); // opens the stream; its result is consumed below
        if (start === 0n) {
          // Raced so that an error ending the watch before it opens surfaces at once.
          await Promise.race([watch.opened, first.then(() => watch.opened)]);
          last = await client.getImage({ imageId }, { signal });
          if (verdict(last, ImageEventType.UNSPECIFIED, goal, fail)) return last;
        }
        for (let result = await first; !result.done; result = await watch.next()) {
          const event = result.value;
          if (event.image === undefined || event.image.id !== imageId) continue;
          last = event.image;
          if (verdict(last, event.type, goal, fail)) return last;
        }
        throw new Error("imageloc: a watch ended without an error");
      } catch (e) {
        // A refusal of revision 0 itself would come again: only a later one starts over.
        if (!isCompacted(e) || watch.revision === 0n) throw e;
        start = 0n;
      } finally {
        await watch.return();
      }
    }
  } catch (e) {
    if (timer.signal.aborted && !options.signal?.aborted) {
      const seen = last === undefined ? "before GetImage answered" : `(last status ${statusName(last.status)})`;
      throw fail("WAIT_TIMEOUT", `did not become ${goalNames(goal)} within ${options.timeoutMs} ms ${seen}`);
    }
    throw e;
  } finally {
    clearTimeout(timeout);
  }
}

/** True when image is in a goal status; throws when it was deleted or can no longer reach one; false: keep waiting. */
function verdict(
  image: Image,
  type: ImageEventType,
  goal: readonly ImageStatus[],
  fail: (reason: WaitErrorReason, message: string) => WaitError,
): boolean {
  if (goal.includes(image.status)) return true;
  const deleted = image.status === ImageStatus.DELETED || image.status === ImageStatus.PENDING_DELETE;
  if (type === ImageEventType.DELETED || deleted) {
    throw fail("IMAGE_DELETED", `was deleted (status ${statusName(image.status)}) while waiting for ${goalNames(goal)}`);
  }
  const reachable = reachableStatuses(image.status);
  if (!goal.some((status) => reachable.has(status))) {
    throw fail("STATUS_UNREACHABLE", `is ${statusName(image.status)} and can no longer become ${goalNames(goal)}`);
  }
  return false;
}

/** Glance's word for a status: "pending_delete". */
function statusName(status: ImageStatus): string {
  return ImageStatus[status]?.toLowerCase() ?? String(status);
}

function goalNames(goal: readonly ImageStatus[]): string {
  return goal.map(statusName).join(" or ");
}
