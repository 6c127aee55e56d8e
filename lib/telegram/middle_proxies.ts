/**
 * Middle-proxy mode as a whole: one {@linkcode DcPool} per DC id, created on first use from
 * Telegram's current middle-proxy list, and kept in step with it as the list is refreshed.
 *
 * @module
 */
import type { Config, HostPort } from "../config/types.ts";
import type { MiddleConnectOptions } from "./middle.ts";
import { DcPool, type MiddleOpener, type PoolEvents, type PoolStats } from "./pool.ts";
import type { ProxyConfig } from "./proxy_config.ts";
import type { TelegramConfigChange, TelegramConfigSnapshot } from "./proxy_config.ts";

/**
 * Whether a listener's clients go through middle proxies: `telegram.mode: middle`, or `auto`
 * with an ad tag on the listener.
 */
export function usesMiddleProxies(config: Config, listener: { tag: Uint8Array | null }): boolean {
  const mode = config.telegram.mode;
  return mode === "middle" || (mode === "auto" && listener.tag !== null);
}

/** Where the current Telegram configuration comes from (a TelegramConfigStore). */
export interface TelegramConfigSource {
  readonly current: TelegramConfigSnapshot;
  onChange(listener: (change: TelegramConfigChange) => void): () => void;
}

/** Options for {@linkcode MiddleProxies}. */
export interface MiddleProxiesOptions {
  readonly config: Config;
  readonly source: TelegramConfigSource;
  /** Our public IPv4; null: each connection's local address. */
  readonly externalIp: string | null;
  readonly events: PoolEvents;
  readonly open?: MiddleOpener;
}

/** A client's DC resolved to a pool. */
export interface MiddleRoute {
  readonly pool: DcPool;
  /** The DC id used (the config's default when the client's id is not listed). */
  readonly dcId: number;
}

/** The pools of all DCs. */
export class MiddleProxies {
  readonly #options: MiddleProxiesOptions;
  readonly #pools = new Map<number, DcPool>();
  readonly #unsubscribe: () => void;
  #closed = false;

  constructor(options: MiddleProxiesOptions) {
    this.#options = options;
    this.#unsubscribe = options.source.onChange(() => this.#follow());
  }

  /** Open the pools of every DC in the list now (the Erlang proxy does too), not on first use. */
  warm(): void {
    for (const id of this.#table().dcs.keys()) this.route(id);
  }

  /** The pool for a client asking for `dcId`: its own, else the configured default; else null. */
  route(dcId: number): MiddleRoute | null {
    const table = this.#table();
    const id = table.dcs.has(dcId)
      ? dcId
      : table.defaultDc !== null && table.dcs.has(table.defaultDc)
      ? table.defaultDc
      : this.#options.config.telegram.defaultDc;
    const addresses = table.dcs.get(id);
    if (!addresses || addresses.length === 0 || this.#closed) return null;
    let pool = this.#pools.get(id);
    if (!pool) {
      pool = new DcPool(
        id,
        addresses,
        () => this.#connectOptions(),
        this.#options.events,
        ...(this.#options.open ? [this.#options.open] : []),
      );
      this.#pools.set(id, pool);
    }
    return { pool, dcId: id };
  }

  /** Counters per DC id. */
  stats(): Map<number, PoolStats> {
    return new Map([...this.#pools].map(([id, p]) => [id, p.stats()]));
  }

  /** Total live middle-proxy connections. */
  get connectionCount(): number {
    let n = 0;
    for (const p of this.#pools.values()) n += p.connections.length;
    return n;
  }

  /** Close every pool; resolves once all their connections have ended. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#unsubscribe();
    const pools = [...this.#pools.values()];
    this.#pools.clear();
    await Promise.all(pools.map((p) => p.close()));
  }

  #table(): ProxyConfig {
    const snap = this.#options.source.current;
    return this.#options.config.telegram.preferIpv6 && snap.configV6
      ? snap.configV6
      : snap.configV4;
  }

  #connectOptions(): MiddleConnectOptions {
    const { config } = this.#options;
    return {
      proxySecret: this.#options.source.current.proxySecret,
      externalIp: this.#options.externalIp,
      connectTimeoutMs: config.timeouts.dcConnectMs,
      handshakeTimeoutMs: config.timeouts.dcConnectMs,
      pool: config.pool,
    };
  }

  /** A refreshed list: pools of DCs that moved follow; pools of vanished DCs keep what they have. */
  #follow(): void {
    const table = this.#table();
    for (const [id, pool] of this.#pools) {
      const addresses: readonly HostPort[] | undefined = table.dcs.get(id);
      if (addresses && addresses.length > 0) pool.setAddresses(addresses);
    }
    this.warm();
  }
}
