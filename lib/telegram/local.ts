/**
 * The local Telegram side: middle-proxy pools for clients with an ad tag (or all, per
 * `telegram.mode`), direct DC connections for the rest. A standalone proxy's sessions use it, and
 * so does a split-mode back for the streams its fronts open.
 *
 * @module
 */
import type { Config } from "../config/types.ts";
import { routeDc } from "./dc.ts";
import { openDirectStream } from "./direct_stream.ts";
import { type MiddleProxies, usesMiddleProxies } from "./middle_proxies.ts";
import {
  type OpenedStream,
  type TelegramClient,
  TelegramOpenError,
  type TelegramSide,
  type TelegramTarget,
} from "./side.ts";
import { formatHostPort } from "../net.ts";
import { reportUnexpected } from "../ops/last_resort.ts";

/** Options for {@linkcode LocalTelegram}. */
export interface LocalTelegramOptions {
  /**
   * Packet-shaped direct streams stop reading their DC while the client holds this many
   * undelivered answer bytes (a back uses its link window).
   */
  readonly directWindowBytes: number;
}

/** Today's pools and direct DC connections behind the {@linkcode TelegramSide} seam. */
export class LocalTelegram implements TelegramSide {
  readonly #config: Config;
  readonly #middle: MiddleProxies | null;
  readonly #options: LocalTelegramOptions;

  constructor(config: Config, middle: MiddleProxies | null, options: LocalTelegramOptions) {
    this.#config = config;
    this.#middle = middle;
    this.#options = options;
  }

  /** Direct-mode clients of a standalone proxy take the byte relay (see side.ts). */
  carries(listener: { readonly tag: Uint8Array | null }): "bytes" | "packets" {
    return this.#middle && usesMiddleProxies(this.#config, listener) ? "packets" : "bytes";
  }

  /** Whether a client with this ad tag goes through middle proxies (telegram.mode and the tag). */
  usesMiddle(adTag: Uint8Array | null): boolean {
    return this.#middle !== null && usesMiddleProxies(this.#config, { tag: adTag });
  }

  async open(
    client: TelegramClient,
    target: TelegramTarget,
    signal?: AbortSignal,
  ): Promise<OpenedStream> {
    const middle = this.#middle;
    if (middle && usesMiddleProxies(this.#config, { tag: target.adTag })) {
      const route = middle.route(target.dcId);
      if (!route) {
        throw new TelegramOpenError(
          "unreachable",
          `no middle proxy is known for DC ${target.dcId}`,
        );
      }
      const acquiring = route.pool.acquire(client, {
        tag: target.tag,
        clientIp: target.clientIp,
        clientPort: target.clientPort,
        adTag: target.adTag,
      });
      let handle;
      try {
        handle = await _abortable(acquiring, signal);
      } catch (e) {
        // A handle that arrives after the abort is given back at once.
        acquiring.then((h) => h.release(), () => {}).catch((e: unknown) =>
          reportUnexpected("Middle-proxy pool: giving back a late handle failed", e)
        );
        if (signal?.aborted) throw new TelegramOpenError("timeout", "aborted");
        throw new TelegramOpenError("unreachable", e instanceof Error ? e.message : String(e));
      }
      return { stream: handle, dcId: route.dcId, where: `middle proxy pool of DC ${route.dcId}` };
    }
    const route = routeDc(target.dcId, this.#config.telegram);
    const stream = await openDirectStream(route, client, target, {
      timeoutMs: this.#config.timeouts.dcConnectMs,
      windowBytes: this.#options.directWindowBytes,
      ...(signal ? { signal } : {}),
    });
    return {
      stream,
      dcId: route.dcId,
      where: formatHostPort(route.address.host, route.address.port),
    };
  }
}

/** `promise`, or a rejection as soon as `signal` aborts. */
function _abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(new Error("aborted"));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new Error("aborted"));
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}
