// Client-side balancing over several replicas, for callers without a proxy: a Connect
// Transport that sends each attempt to the next replica in turn (round robin), passing
// over for a while a replica that answered UNAVAILABLE. Imports Connect only.
import {
  Code,
  ConnectError,
  type Interceptor,
  type StreamRequest,
  type Transport,
  type UnaryRequest,
} from "@connectrpc/connect";
import { type Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";

/** How long a replica that answered UNAVAILABLE is passed over while another may answer. */
export const EJECT_MS = 1000;

export interface BalancedTransportOptions {
  /** Opens the HTTP/2 session to one replica (keepalive, TLS); called once per base URL. */
  session: (baseUrl: string) => Http2SessionManager;
  /**
   * Run once per call or attempt, outside the balancing: a retry interceptor here (the
   * service config's) sends each retry to the next replica.
   */
  interceptors?: Interceptor[];
  /** Defaults to EJECT_MS. */
  ejectMs?: number;
}

interface Replica {
  readonly session: Http2SessionManager;
  readonly transport: Transport;
  /** Date.now() until which the replica is passed over. */
  ejectedUntil: number;
}

/**
 * One transport over the replicas at baseUrls ("http://host:port", "https://name:port").
 * Every attempt picks the next replica not passed over (all of them again when every one
 * is); a replica that answers UNAVAILABLE, or cannot be reached, is passed over for ejectMs.
 * Safe for mutations only because ImageClient gives each a requestId that its retries share.
 */
export class BalancedTransport implements Transport {
  private readonly replicas: Replica[];
  private readonly front: Transport;
  private readonly ejectMs: number;
  private turn = 0;

  constructor(baseUrls: readonly string[], options: BalancedTransportOptions) {
    if (baseUrls.length === 0) throw new Error("imageloc: no replica to balance over");
    this.ejectMs = options.ejectMs ?? EJECT_MS;
    this.replicas = baseUrls.map((baseUrl) => {
      const session = options.session(baseUrl);
      return { session, transport: createGrpcTransport({ baseUrl, sessionManager: session }), ejectedUntil: 0 };
    });
    // The front transport runs the interceptors; its last one hands each attempt to a
    // replica's transport instead of sending it itself.
    this.front = createGrpcTransport({
      baseUrl: baseUrls[0]!,
      sessionManager: this.replicas[0]!.session,
      interceptors: [...(options.interceptors ?? []), () => (req) => this.dispatch(req)],
    });
  }

  unary: Transport["unary"] = (...args) => this.front.unary(...args);

  stream: Transport["stream"] = (...args) => this.front.stream(...args);

  /** Closes the connection to every replica. */
  close(): void {
    for (const replica of this.replicas) replica.session.abort();
  }

  private pick(): Replica {
    const now = Date.now();
    const count = this.replicas.length;
    for (let i = 0; i < count; i++) {
      const replica = this.replicas[(this.turn + i) % count]!;
      if (replica.ejectedUntil <= now) {
        this.turn = (this.turn + i + 1) % count;
        return replica;
      }
    }
    const replica = this.replicas[this.turn]!;
    this.turn = (this.turn + 1) % count;
    return replica;
  }

  private async dispatch(req: UnaryRequest | StreamRequest) {
    const replica = this.pick();
    try {
      // The header already carries grpc-timeout and the signal the deadline: no timeout here.
      return req.stream
        ? await replica.transport.stream(req.method, req.signal, undefined, req.header, req.message, req.contextValues)
        : await replica.transport.unary(req.method, req.signal, undefined, req.header, req.message, req.contextValues);
    } catch (e) {
      if (ConnectError.from(e).code === Code.Unavailable) replica.ejectedUntil = Date.now() + this.ejectMs;
      throw e;
    }
  }
}
