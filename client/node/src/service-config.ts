// The gRPC service config shared with the Python client (per-method timeouts and
// retry policies), and the Connect interceptor that applies it, since Connect
// itself has no service-config support.
import { readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { Code as RpcCode } from "../../../generated/ts/google/rpc/code_pb.js";

/** The config the Python client ships; the Node client reads the same file. */
export const SERVICE_CONFIG_PATH = new URL("../../imageloc/client/service_config.json", import.meta.url);

/** gRPC caps maxAttempts at 5 whatever the config says. */
const MAX_ATTEMPTS_CAP = 5;

export interface RetryPolicy {
  maxAttempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  backoffMultiplier: number;
  retryableCodes: ReadonlySet<Code>;
}

/** What the config says for one method: both parts optional. */
export interface MethodPolicy {
  timeoutMs?: number;
  retry?: RetryPolicy;
}

interface MethodConfigJson {
  name?: { service?: string; method?: string }[];
  timeout?: string;
  retryPolicy?: {
    maxAttempts: number;
    initialBackoff: string;
    maxBackoff: string;
    backoffMultiplier: number;
    retryableStatusCodes: (string | number)[];
  };
}

/** A parsed service config: looks a method up the way gRPC does. */
export class ServiceConfig {
  private readonly policies = new Map<string, MethodPolicy>();

  constructor(json: { methodConfig?: MethodConfigJson[] }) {
    for (const mc of json.methodConfig ?? []) {
      const policy: MethodPolicy = {};
      if (mc.timeout !== undefined) policy.timeoutMs = durationMs(mc.timeout);
      if (mc.retryPolicy !== undefined) {
        const rp = mc.retryPolicy;
        policy.retry = {
          maxAttempts: Math.min(rp.maxAttempts, MAX_ATTEMPTS_CAP),
          initialBackoffMs: durationMs(rp.initialBackoff),
          maxBackoffMs: durationMs(rp.maxBackoff),
          backoffMultiplier: rp.backoffMultiplier,
          retryableCodes: new Set(rp.retryableStatusCodes.map(statusCode)),
        };
      }
      for (const name of mc.name ?? []) {
        this.policies.set(`${name.service ?? ""}/${name.method ?? ""}`, policy);
      }
    }
  }

  /** Reads a service config JSON file (by default the shipped one). */
  static load(path: string | URL = SERVICE_CONFIG_PATH): ServiceConfig {
    return new ServiceConfig(JSON.parse(readFileSync(path, "utf8")));
  }

  /** The most specific entry: service and method, then the service, then the default. */
  policyFor(service: string, method: string): MethodPolicy {
    return (
      this.policies.get(`${service}/${method}`) ?? this.policies.get(`${service}/`) ?? this.policies.get("/") ?? {}
    );
  }
}

/**
 * Applies the config to unary calls: the method's timeout when the caller set
 * none (one deadline for all attempts), and, only for methods with a retry
 * policy, retries on the retryable codes with randomised exponential backoff.
 * Interceptors listed after it run once per attempt.
 */
export function serviceConfigInterceptor(config: ServiceConfig): Interceptor {
  return (next) => async (req) => {
    if (req.stream) return next(req);
    const policy = config.policyFor(req.service.typeName, req.method.name);
    const callerTimeoutMs = parseGrpcTimeout(req.header.get("grpc-timeout"));
    const timeoutMs = callerTimeoutMs ?? policy.timeoutMs;
    const deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
    const own = callerTimeoutMs === undefined && timeoutMs !== undefined ? new AbortController() : undefined;
    const timer = own && setTimeout(() => own.abort(new ConnectError("deadline exceeded", Code.DeadlineExceeded)), timeoutMs);
    const signal = own ? AbortSignal.any([req.signal, own.signal]) : req.signal;
    const retry = policy.retry;
    let backoffMs = retry?.initialBackoffMs ?? 0;
    try {
      for (let attempt = 1; ; attempt++) {
        const header = new Headers(req.header);
        if (deadline !== undefined) header.set("grpc-timeout", formatGrpcTimeout(deadline - Date.now()));
        try {
          return await next({ ...req, header, signal });
        } catch (e) {
          const err = ConnectError.from(e);
          if (!retry || attempt >= retry.maxAttempts || signal.aborted || !retry.retryableCodes.has(err.code)) throw err;
        }
        await sleep(Math.random() * backoffMs, undefined, { signal }).catch(() => {
          throw ConnectError.from(signal.reason);
        });
        backoffMs = Math.min(backoffMs * retry.backoffMultiplier, retry.maxBackoffMs);
      }
    } finally {
      clearTimeout(timer);
    }
  };
}

/** "0.1s" -> 100: the JSON form of google.protobuf.Duration. */
function durationMs(text: string): number {
  const m = /^(\d+(?:\.\d+)?)s$/.exec(text);
  if (!m) throw new Error(`service config: bad duration ${JSON.stringify(text)}`);
  return Math.round(Number(m[1]) * 1000);
}

/** "UNAVAILABLE" or 14 -> Code.Unavailable (gRPC and Connect share the numbers). */
function statusCode(name: string | number): Code {
  const code = typeof name === "number" ? name : RpcCode[name as keyof typeof RpcCode];
  if (code === undefined || Code[code] === undefined) throw new Error(`service config: bad status code ${name}`);
  return code as Code;
}

const GRPC_TIMEOUT_UNIT_MS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 1e-6 };

/** The grpc-timeout header in milliseconds; undefined when absent. */
function parseGrpcTimeout(value: string | null): number | undefined {
  const m = value === null ? null : /^(\d{1,8})([HMSmun])$/.exec(value);
  return m ? Number(m[1]) * GRPC_TIMEOUT_UNIT_MS[m[2]!]! : undefined;
}

/** Milliseconds as a grpc-timeout value (at most 8 digits). */
function formatGrpcTimeout(ms: number): string {
  const whole = Math.max(1, Math.ceil(ms));
  return whole <= 99_999_999 ? `${whole}m` : `${Math.ceil(whole / 1000)}S`;
}
