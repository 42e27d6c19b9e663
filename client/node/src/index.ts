// The imageloc Node client: ImageClient, ImagelocError, the watch (ImageWatch,
// waitForStatus, WaitError), the service config, and the generated messages and
// enums (Image, ImageEvent, ImageStatus, ...).
export { BalancedTransport, EJECT_MS, type BalancedTransportOptions } from "./balancing.js";
export {
  ImageClient,
  KEEPALIVE,
  updateImageRequest,
  type ImageChanges,
  type ImageClientOptions,
  type TlsOptions,
  type UpdateImageOptions,
} from "./client.js";
export { ERROR_DOMAIN, ImagelocError } from "./errors.js";
export {
  ImageWatch,
  STATUS_TRANSITIONS,
  WATCH_BACKOFF,
  WaitError,
  reachableStatuses,
  waitForStatus,
  watchBackoffMs,
  type ImageWatcher,
  type WaitErrorReason,
  type WaitOptions,
  type WatchImagesInit,
  type WatchOptions,
} from "./watch.js";
export { SERVICE_CONFIG_PATH, ServiceConfig, serviceConfigInterceptor, type MethodPolicy } from "./service-config.js";
export * from "../../../generated/ts/imageloc/v1/image_service_pb.js";
