// ImageClient: a typed wrapper over the generated ImageService on a gRPC (HTTP/2)
// transport with keepalive and the shipped service config; refusals throw ImagelocError.
// The watch logic (ImageWatch, waitForStatus) lives in watch.ts.
import { randomUUID } from "node:crypto";
import { type DescMessage, type MessageInitShape, create } from "@bufbuild/protobuf";
import {
  type CallOptions,
  type Client,
  Code,
  ConnectError,
  type Interceptor,
  type Transport,
  createClient,
} from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import {
  type AddLocationRequestSchema,
  type BeginImportRequestSchema,
  type BeginUploadRequestSchema,
  type CompleteUploadRequestSchema,
  type CreateImageRequestSchema,
  type DeactivateImageRequestSchema,
  type DeleteImageRequestSchema,
  type FailUploadRequestSchema,
  type GetImageRequestSchema,
  type Image,
  ImageSchema,
  ImageService,
  type ImageStatus,
  type ImageVisibility,
  type ListImagesRequestSchema,
  type ReactivateImageRequestSchema,
  type RemoveLocationRequestSchema,
  type ReplaceLocationRequestSchema,
  type StageImageRequestSchema,
  type UpdateImageRequestSchema,
} from "../../../generated/ts/imageloc/v1/image_service_pb.js";
import { BalancedTransport } from "./balancing.js";
import { ImagelocError } from "./errors.js";
import { ServiceConfig, serviceConfigInterceptor } from "./service-config.js";
import { ImageWatch, type WaitOptions, type WatchImagesInit, type WatchOptions, waitForStatus } from "./watch.js";

/** HTTP/2 keepalive, as the Python client: the server accepts pings every >= 10 s. */
export const KEEPALIVE = { pingIntervalMs: 30_000, pingTimeoutMs: 10_000, pingIdleConnection: true } as const;

/** TLS for an https:// target: PEM text or bytes, as node:tls takes them. */
export interface TlsOptions {
  /** The CA certificates that sign the server's certificate (default: the system's). */
  ca?: string | Buffer;
  /** A client certificate chain, for servers that require mTLS. */
  cert?: string | Buffer;
  /** The private key of cert. */
  key?: string | Buffer;
}

export interface ImageClientOptions {
  /** Defaults to the shipped client/imageloc/client/service_config.json. */
  serviceConfig?: ServiceConfig;
  /** Run inside the service-config interceptor, so once per attempt. */
  interceptors?: Interceptor[];
  /** A bearer token, or a function asked for one on every call (to refresh it). */
  token?: string | (() => string | Promise<string>);
  /** TLS options; given, the target is reached over TLS ("host:port" becomes https://). */
  tls?: TlsOptions;
}

type Init<T extends DescMessage> = MessageInitShape<T>;

/**
 * The changes of updateImage: each key given (not undefined) becomes a path of the
 * UpdateImage update_mask, the others stay as they are. `properties` sets those keys (the
 * other properties stay); `removeProperties` removes keys (one absent already is no error).
 */
export interface ImageChanges {
  name?: string;
  /** Changes only while the image is queued (FAILED_PRECONDITION IMAGE_STATUS_CONFLICT). */
  diskFormat?: string;
  /** Changes only while the image is queued (FAILED_PRECONDITION IMAGE_STATUS_CONFLICT). */
  containerFormat?: string;
  /** Not UNSPECIFIED; PUBLIC and COMMUNITY need the publicize_image or communitize_image policy. */
  visibility?: ImageVisibility;
  protected?: boolean;
  minDisk?: number;
  minRam?: number;
  /** The whole new list of tags. */
  tags?: readonly string[];
  osHidden?: boolean;
  /** In bytes; null makes it unknown again. */
  virtualSize?: bigint | number | null;
  properties?: Readonly<Record<string, string>>;
  removeProperties?: readonly string[];
}

/** The options of updateImage: the call's, and UpdateImageRequest's etag and request id. */
export interface UpdateImageOptions extends CallOptions {
  /** Change only if the image's etag is still this one (ABORTED ETAG_MISMATCH otherwise). */
  etag?: string;
  /** Defaults to a new UUID, which the service config's retries resend. */
  requestId?: string;
}

/** The UpdateImage mask path of each field of ImageChanges that is a field of Image. */
const UPDATE_PATHS = {
  name: "name",
  diskFormat: "disk_format",
  containerFormat: "container_format",
  visibility: "visibility",
  protected: "protected",
  minDisk: "min_disk",
  minRam: "min_ram",
  tags: "tags",
  osHidden: "os_hidden",
  virtualSize: "virtual_size",
} as const satisfies Record<Exclude<keyof ImageChanges, "properties" | "removeProperties">, string>;

export class ImageClient {
  /** Closes the connections (one, or one per replica). */
  private readonly abortConnections: () => void;
  private readonly rpc: Client<typeof ImageService>;
  /** Aborted by close(): ends the watches, which would otherwise resume. */
  private readonly closed = new AbortController();

  /**
   * target is "host:port" (plaintext, or TLS when options.tls is given) or a URL such as
   * "http://127.0.0.1:50051" or "https://imageloc.example:50051"; several of them are
   * replicas to balance over, round robin (BalancedTransport, docs/client-balancing.md).
   */
  constructor(target: string | readonly string[], options: ImageClientOptions = {}) {
    const scheme = options.tls ? "https" : "http";
    const baseUrls = (typeof target === "string" ? [target] : [...target]).map((t) =>
      t.includes("://") ? t : `${scheme}://${t}`,
    );
    const tls = options.tls ? { ...options.tls } : undefined;
    const token = options.token;
    const credentials: Interceptor[] = token === undefined ? [] : [bearer(token)];
    const interceptors = [
      serviceConfigInterceptor(options.serviceConfig ?? ServiceConfig.load()),
      ...credentials,
      ...(options.interceptors ?? []),
    ];
    let transport: Transport;
    if (baseUrls.length === 1) {
      const session = new Http2SessionManager(baseUrls[0]!, KEEPALIVE, tls);
      transport = createGrpcTransport({ baseUrl: baseUrls[0]!, sessionManager: session, interceptors });
      this.abortConnections = () => session.abort();
    } else {
      const balanced = new BalancedTransport(baseUrls, {
        session: (baseUrl) => new Http2SessionManager(baseUrl, KEEPALIVE, tls),
        interceptors,
      });
      transport = balanced;
      this.abortConnections = () => balanced.close();
    }
    this.rpc = createClient(ImageService, transport);
  }

  /** Closes the HTTP/2 connections; open watches end with an ImagelocError of code Canceled. */
  close(): void {
    this.closed.abort(new ConnectError("the client was closed", Code.Canceled));
    this.abortConnections();
  }

  createImage(req: Init<typeof CreateImageRequestSchema>, opt?: CallOptions): Promise<Image> {
    return image(this.rpc.createImage(withRequestId(req), opt));
  }

  /**
   * The UpdateImage RPC: sets the fields given in changes (see ImageChanges), each a path
   * of the update mask, and returns the image after the change. An update that changes
   * nothing keeps the etag; changes with no key at all are refused INVALID_REQUEST.
   */
  async updateImage(imageId: string, changes: ImageChanges, opt: UpdateImageOptions = {}): Promise<Image> {
    const { etag, requestId, ...call } = opt;
    return image(this.rpc.updateImage(withRequestId(updateImageRequest(imageId, changes, etag, requestId)), call));
  }

  getImage(req: Init<typeof GetImageRequestSchema>, opt?: CallOptions): Promise<Image> {
    return image(this.rpc.getImage(req, opt));
  }

  /** Every image matching req, newest first, fetching pages as the caller iterates. */
  async *listImages(req: Init<typeof ListImagesRequestSchema> = {}, opt?: CallOptions): AsyncGenerator<Image> {
    let pageToken = req.pageToken ?? "";
    do {
      const page = await this.rpc.listImages({ ...req, pageToken }, opt).catch(rethrow);
      yield* page.images;
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
  }

  deleteImage(req: Init<typeof DeleteImageRequestSchema>, opt?: CallOptions): Promise<Image> {
    return image(this.rpc.deleteImage(withRequestId(req), opt));
  }

  beginUpload(req: Init<typeof BeginUploadRequestSchema>, opt?: CallOptions): Promise<Image> {
    return image(this.rpc.beginUpload(withRequestId(req), opt));
  }

  completeUpload(req: Init<typeof CompleteUploadRequestSchema>, opt?: CallOptions): Promise<Image> {
    return image(this.rpc.completeUpload(withRequestId(req), opt));
  }

  failUpload(req: Init<typeof FailUploadRequestSchema>, opt?: CallOptions): Promise<Image> {
    return image(this.rpc.failUpload(withRequestId(req), opt));
  }

  stageImage(req: Init<typeof StageImageRequestSchema>, opt?: CallOptions): Promise<Image> {
    return image(this.rpc.stageImage(withRequestId(req), opt));
  }

  beginImport(req: Init<typeof BeginImportRequestSchema>, opt?: CallOptions): Promise<Image> {
    return image(this.rpc.beginImport(withRequestId(req), opt));
  }

  deactivateImage(req: Init<typeof DeactivateImageRequestSchema>, opt?: CallOptions): Promise<Image> {
    return image(this.rpc.deactivateImage(withRequestId(req), opt));
  }

  reactivateImage(req: Init<typeof ReactivateImageRequestSchema>, opt?: CallOptions): Promise<Image> {
    return image(this.rpc.reactivateImage(withRequestId(req), opt));
  }

  addLocation(req: Init<typeof AddLocationRequestSchema>, opt?: CallOptions): Promise<Image> {
    return image(this.rpc.addLocation(withRequestId(req), opt));
  }

  removeLocation(req: Init<typeof RemoveLocationRequestSchema>, opt?: CallOptions): Promise<Image> {
    return image(this.rpc.removeLocation(withRequestId(req), opt));
  }

  /** The ReplaceLocation RPC: sets the whole location list. */
  replaceLocations(req: Init<typeof ReplaceLocationRequestSchema>, opt?: CallOptions): Promise<Image> {
    return image(this.rpc.replaceLocation(withRequestId(req), opt));
  }

  /**
   * Every committed change to the images watched, once, in revision order, resuming by
   * itself after UNAVAILABLE or WATCHER_TOO_SLOW (ImageWatch). No deadline applies; the
   * token rides on every stream. `for await (const event of client.watchImages(...))`.
   */
  watchImages(req: WatchImagesInit = {}, opt: WatchOptions = {}): ImageWatch {
    const signal = opt.signal ? AbortSignal.any([opt.signal, this.closed.signal]) : this.closed.signal;
    return new ImageWatch(this.rpc, req, { ...opt, signal });
  }

  /**
   * The image once its status is one of statuses: GetImage, then a watch from its
   * revision (from now when that is 0 or compacted, with GetImage again once the stream
   * is open). Rejects with WaitError (WAIT_TIMEOUT, IMAGE_DELETED, STATUS_UNREACHABLE)
   * or the ImagelocError of a refused call.
   */
  waitForStatus(imageId: string, statuses: ImageStatus | Iterable<ImageStatus>, opt: WaitOptions): Promise<Image> {
    return waitForStatus(this, imageId, statuses, opt);
  }
}

/** Sends `authorization: Bearer <token>` on every attempt, asking a token function each time. */
function bearer(token: string | (() => string | Promise<string>)): Interceptor {
  return (next) => async (req) => {
    const value = typeof token === "string" ? token : await token();
    req.header.set("authorization", `Bearer ${value}`);
    return next(req);
  };
}

/**
 * req with a new requestId unless it has one: the server answers a repeat of it (the
 * service config's retries resend the same message) without applying it twice.
 */
function withRequestId<T extends { requestId?: string }>(req: T): T {
  return req.requestId ? req : { ...req, requestId: randomUUID() };
}

/** The UpdateImageRequest of updateImage: image with the values given, and their mask. */
export function updateImageRequest(
  imageId: string,
  changes: ImageChanges,
  etag?: string,
  requestId?: string,
): Init<typeof UpdateImageRequestSchema> {
  const img = create(ImageSchema, { id: imageId, properties: { ...changes.properties } });
  const fields = img as unknown as Record<string, unknown>;
  const paths: string[] = [];
  for (const [field, path] of Object.entries(UPDATE_PATHS)) {
    const value = changes[field as keyof typeof UPDATE_PATHS];
    if (value === undefined) continue;
    paths.push(path);
    if (field === "virtualSize") img.virtualSize = value === null ? undefined : BigInt(value as bigint | number);
    else fields[field] = Array.isArray(value) ? [...value] : value;
  }
  for (const key of Object.keys(img.properties)) paths.push(propertyPath(key));
  for (const key of changes.removeProperties ?? []) {
    if (Object.hasOwn(img.properties, key)) throw new TypeError(`imageloc: property ${key} is both set and removed`);
    paths.push(propertyPath(key));
  }
  return { image: img, updateMask: { paths }, etag, requestId: requestId ?? "" };
}

/** The mask path of one property; a key other than letters, digits and _ in backquotes (AIP-161). */
function propertyPath(key: string): string {
  return /^[A-Za-z0-9_]+$/.test(key) ? `properties.${key}` : `properties.\`${key}\``;
}

/** The image of a response (every response carries one); errors become ImagelocError. */
async function image(call: Promise<{ image?: Image }>): Promise<Image> {
  const res = await call.catch(rethrow);
  if (res.image === undefined) throw new Error("imageloc: response without an image");
  return res.image;
}

function rethrow(e: unknown): never {
  throw ImagelocError.from(e);
}
