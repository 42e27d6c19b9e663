// ImagelocError: a refusal from the imageloc server, decoded from the
// google.rpc.Status (ErrorInfo and violations) in grpc-status-details-bin.
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  PreconditionFailureSchema,
  QuotaFailureSchema,
} from "../../../generated/ts/google/rpc/error_details_pb.js";

export const ERROR_DOMAIN = "imageloc";

/**
 * A call the server refused (or could not answer). `reason`, `domain` and
 * `metadata` come from the ErrorInfo ("" and {} when there is none, as for
 * transport failures); `violations` are the BadRequest, PreconditionFailure
 * and QuotaFailure entries, one readable line each; `message` is the
 * server's message; `cause` keeps the ConnectError with every detail.
 */
export class ImagelocError extends Error {
  override readonly name = "ImagelocError";
  readonly code: Code;
  readonly reason: string;
  readonly domain: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly violations: readonly string[];
  override readonly cause: ConnectError;

  constructor(cause: ConnectError) {
    const info = cause.findDetails(ErrorInfoSchema)[0];
    super(cause.rawMessage);
    this.cause = cause;
    this.code = cause.code;
    this.reason = info?.reason ?? "";
    this.domain = info?.domain ?? "";
    this.metadata = { ...info?.metadata };
    this.violations = violations(cause);
  }

  /** The status Glance answers for the same refusal (metadata httpStatus); undefined when absent. */
  get httpStatus(): number | undefined {
    const text = this.metadata["httpStatus"] ?? "";
    return /^\d+$/.test(text) ? Number(text) : undefined;
  }

  /** "FailedPrecondition IMAGE_STATUS_CONFLICT (HTTP 409): <message>", as the Python client prints it. */
  override toString(): string {
    const head = [Code[this.code], this.reason].filter(Boolean).join(" ");
    const http = this.httpStatus === undefined ? "" : ` (HTTP ${this.httpStatus})`;
    return `${head}${http}: ${this.message}`;
  }

  /** Any error a call threw, as an ImagelocError. */
  static from(e: unknown): ImagelocError {
    return e instanceof ImagelocError ? e : new ImagelocError(ConnectError.from(e));
  }
}

function violations(err: ConnectError): string[] {
  return [
    ...err.findDetails(BadRequestSchema).flatMap((d) => d.fieldViolations.map((v) => `${v.field}: ${v.description}`)),
    ...err
      .findDetails(PreconditionFailureSchema)
      .flatMap((d) => d.violations.map((v) => `${v.type} ${v.subject}: ${v.description}`)),
    ...err.findDetails(QuotaFailureSchema).flatMap((d) => d.violations.map((v) => `${v.subject}: ${v.description}`)),
  ];
}
