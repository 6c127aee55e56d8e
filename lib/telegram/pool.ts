/**
 * The pool of multiplexed middle-proxy connections for one DC: hands each new client the least
 * loaded live connection, grows past `pool.clients_per_connection`, replaces connections that
 * Telegram closes (it rotates them every 30-70 s) and moves their idle clients over, and backs
 * off while the DC's middle proxies are down.
 *
 * @module
 */
import type { HostPort } from "../config/types.ts";
import type { Packet } from "../protocol/framing.ts";
import {
  type MiddleClient,
  type MiddleClientInfo,
  type MiddleCloseReason,
  MiddleConnection,
  type MiddleConnectOptions,
  type MiddleSlot,
} from "./middle.ts";
import { reportUnexpected } from "../ops/last_resort.ts";

/** Opens a middle-proxy connection (injectable for tests). */
export type MiddleOpener = (
  address: HostPort,
  options: MiddleConnectOptions,
) => Promise<MiddleConnection>;

/** What the pool reports, for logs and counters. */
export interface PoolEvents {
  connected(dcId: number, conn: MiddleConnection): void;
  connectFailed(dcId: number, address: HostPort, error: string, retryInMs: number): void;
  disconnected(
    dcId: number,
    conn: MiddleConnection,
    error: string | null,
    moved: number,
    closed: number,
  ): void;
}

/** Counters of one pool. */
export interface PoolStats {
  connections: number;
  clients: number;
  /** Clients with packets on their way to Telegram (not yet on the socket). */
  sending: number;
  migrated: number;
  closedMidSend: number;
}

/** Retry delays after failed connects: 300 ms doubling to 30 s. */
const RETRY_MIN_MS = 300;
const RETRY_MAX_MS = 30_000;
/** A connection without clients for this long is closed when the pool has more than needed. */
const IDLE_EXTRA_MS = 120_000;
/** How long a client waits for a live connection (first use, or after a rotation). */
const ATTACH_WAIT_MS = 10_000;

/**
 * A client's place in the pool: forwards Telegram's packets to the session and follows the
 * client from connection to connection when Telegram rotates them.
 */
export class MiddleHandle implements MiddleClient {
  readonly info: MiddleClientInfo;
  readonly #session: MiddleClient;
  readonly #pool: DcPool;
  #slot: MiddleSlot | null = null;
  /** While homeless (between connections): sends wait here. */
  #rebound: PromiseWithResolvers<void> | null = null;
  #released = false;

  constructor(pool: DcPool, session: MiddleClient, info: MiddleClientInfo) {
    this.#pool = pool;
    this.#session = session;
    this.info = info;
  }

  /** Send client packets to Telegram, in order; resolves once they are on the socket. */
  send(packets: readonly Packet[]): Promise<void> {
    // Bound (the usual case): straight to the slot, no promise of our own in between.
    if (this.#rebound === null && this.#slot !== null && !this.#released) {
      return this.#slot.send(packets);
    }
    return this.#sendAfterRebind(packets);
  }

  async #sendAfterRebind(packets: readonly Packet[]): Promise<void> {
    if (this.#rebound) await this.#rebound.promise;
    const slot = this.#slot;
    if (!slot || this.#released) throw new Error("Not connected to Telegram");
    await slot.send(packets);
  }

  /** The session wrote `packets` delivered packets (`bytes` in all) to its client. */
  ack(bytes: number, packets: number): void {
    this.#slot?.ack(bytes, packets);
  }

  /** The client left: tell Telegram and free the slot. */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#rebound?.reject(new Error("Client left"));
    this.#rebound?.promise.catch(() => {});
    this.#rebound = null;
    const slot = this.#slot;
    this.#slot = null;
    if (slot) slot.connection.detach(slot, true);
    this.#pool.forget(this);
  }

  get released(): boolean {
    return this.#released;
  }

  /** Pool: attach to a connection. */
  bind(slot: MiddleSlot): void {
    this.#slot = slot;
    const waiting = this.#rebound;
    this.#rebound = null;
    waiting?.resolve();
  }

  /** Pool: the connection went away; wait for the next one. */
  unbind(): void {
    this.#slot = null;
    this.#rebound ??= Promise.withResolvers<void>();
    this.#rebound.promise.catch(() => {});
  }

  onPacket(data: Uint8Array): void {
    this.#session.onPacket(data);
  }

  onQuickAck(confirm: Uint8Array): void {
    this.#session.onQuickAck(confirm);
  }

  onClose(reason: MiddleCloseReason): void {
    if (this.#released) return;
    this.#released = true;
    this.#slot = null;
    this.#rebound?.reject(new Error(reason));
    this.#rebound = null;
    this.#pool.forget(this);
    this.#session.onClose(reason);
  }
}

/** The middle-proxy connections of one DC. */
export class DcPool {
  readonly dcId: number;
  /** Read at every connect: the proxy secret can change with a config refresh. */
  readonly #connectOptions: () => MiddleConnectOptions;
  readonly #open: MiddleOpener;
  readonly #events: PoolEvents;
  #addresses: readonly HostPort[];
  #conns: MiddleConnection[] = [];
  #opening = 0;
  #failures = 0;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #homelessTimer: ReturnType<typeof setTimeout> | undefined;
  #idleTimer: ReturnType<typeof setInterval> | undefined;
  #idleSince = new Map<MiddleConnection, number>();
  /** Clients waiting for a live connection. */
  #homeless = new Set<MiddleHandle>();
  #handles = new Set<MiddleHandle>();
  #connWaiters = new Set<() => void>();
  #closed = false;
  #stats = { migrated: 0, closedMidSend: 0 };
  readonly #idleExtraMs: number;

  /** `idleExtraMs`: how long an extra connection may sit without clients (tests shorten it). */
  constructor(
    dcId: number,
    addresses: readonly HostPort[],
    options: () => MiddleConnectOptions,
    events: PoolEvents,
    open: MiddleOpener = MiddleConnection.open,
    idleExtraMs = IDLE_EXTRA_MS,
  ) {
    this.dcId = dcId;
    this.#addresses = addresses;
    this.#connectOptions = options;
    this.#events = events;
    this.#open = open;
    this.#idleExtraMs = idleExtraMs;
    this.#idleTimer = setInterval(() => this.#shrink(), idleExtraMs / 4);
    this.#ensure();
  }

  /** Live connections. */
  get connections(): readonly MiddleConnection[] {
    return this.#conns;
  }

  stats(): PoolStats {
    return {
      connections: this.#conns.length,
      clients: this.#handles.size,
      sending: this.#conns.reduce((n, c) => n + c.sending, 0),
      ...this.#stats,
    };
  }

  /**
   * A handle for a new client on the least loaded live connection; waits (bounded) for one
   * when none is up. Rejects when the DC's middle proxies stay unreachable.
   */
  async acquire(session: MiddleClient, info: MiddleClientInfo): Promise<MiddleHandle> {
    if (this.#closed) throw new Error("Pool is closed");
    const handle = new MiddleHandle(this, session, info);
    if (!this.#attach(handle)) {
      this.#ensure();
      await this.#waitForConnection();
      if (!this.#attach(handle)) {
        throw new Error(`No middle proxy of DC ${this.dcId} is reachable`);
      }
    }
    this.#handles.add(handle);
    this.#grow();
    return handle;
  }

  /** Handle: a client is gone. */
  forget(handle: MiddleHandle): void {
    this.#handles.delete(handle);
    this.#homeless.delete(handle);
  }

  /** New middle-proxy addresses (config refresh): move off connections to dropped ones. */
  setAddresses(addresses: readonly HostPort[]): void {
    this.#addresses = addresses;
    const key = (a: HostPort) => `${a.host}:${a.port}`;
    const keep = new Set(addresses.map(key));
    const stale = this.#conns.filter((c) => !keep.has(key(c.address)));
    this.#ensure(stale.length);
    // Their clients migrate exactly as when Telegram rotates a connection.
    for (const c of stale) c.close();
  }

  /** Close every connection; resolves once their read loops have ended. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#homelessTimer);
    clearInterval(this.#idleTimer);
    for (const h of [...this.#homeless]) h.onClose("connection_lost");
    for (const w of this.#connWaiters) w();
    const conns = this.#conns;
    this.#conns = [];
    for (const c of conns) c.close();
    await Promise.all(conns.map((c) => c.finished));
  }

  #attach(handle: MiddleHandle): boolean {
    let best: MiddleConnection | null = null;
    for (const c of this.#conns) if (!c.closed && (!best || c.load < best.load)) best = c;
    if (!best) return false;
    handle.bind(best.attach(handle, handle.info));
    this.#idleSince.delete(best);
    return true;
  }

  #waitForConnection(): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#connWaiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ATTACH_WAIT_MS);
      this.#connWaiters.add(done);
    });
  }

  /** Keep at least min_connections (plus `extra`) open or opening. */
  #ensure(extra = 0): void {
    const want = this.#connectOptions().pool.minConnections + extra;
    while (!this.#closed && this.#conns.length + this.#opening < want) this.#connect();
  }

  /** Open one more when even the least loaded connection is over the per-connection target. */
  #grow(): void {
    if (this.#opening > 0) return;
    const least = Math.min(...this.#conns.map((c) => c.load));
    if (least > this.#connectOptions().pool.clientsPerConnection) this.#connect();
  }

  #shrink(): void {
    const now = Date.now();
    for (const c of this.#conns) {
      if (c.load > 0) this.#idleSince.delete(c);
      else if (!this.#idleSince.has(c)) this.#idleSince.set(c, now);
    }
    if (this.#conns.length <= this.#connectOptions().pool.minConnections) return;
    for (const [c, since] of this.#idleSince) {
      if (
        now - since >= this.#idleExtraMs &&
        this.#conns.length > this.#connectOptions().pool.minConnections
      ) {
        this.#idleSince.delete(c);
        c.close();
      }
    }
  }

  #connect(): void {
    if (this.#addresses.length === 0) return;
    const address = this.#addresses[Math.floor(Math.random() * this.#addresses.length)]!;
    this.#opening++;
    // Handlers that throw must not leave a rejection nobody handles: the final catch reports.
    this.#open(address, this.#connectOptions()).then((conn) => {
      this.#opening--;
      if (this.#closed) {
        conn.close();
        return;
      }
      this.#failures = 0;
      conn.onDead = (c, error) => this.#onDead(c, error);
      this.#conns.push(conn);
      this.#report(() => this.#events.connected(this.dcId, conn));
      // Clients moved off a closed connection, then anyone waiting for a first one.
      for (const h of [...this.#homeless]) {
        this.#homeless.delete(h);
        if (!h.released) h.bind(conn.attach(h, h.info));
      }
      clearTimeout(this.#homelessTimer);
      this.#homelessTimer = undefined;
      for (const w of [...this.#connWaiters]) w();
    }, (e: unknown) => {
      this.#opening--;
      if (this.#closed) return;
      this.#failures++;
      const delay = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** Math.min(10, this.#failures - 1));
      this.#report(() =>
        this.#events.connectFailed(
          this.dcId,
          address,
          e instanceof Error ? e.message : String(e),
          delay,
        )
      );
      clearTimeout(this.#retryTimer);
      this.#retryTimer = setTimeout(() => this.#ensure(), delay);
      // Nobody can be served now: let waiting clients give up instead of hanging.
      if (this.#conns.length === 0 && this.#opening === 0) {
        for (const w of [...this.#connWaiters]) w();
        for (const h of [...this.#homeless]) h.onClose("connection_lost");
      }
    }).catch((e: unknown) => {
      reportUnexpected(`DC ${this.dcId} pool: handling a middle-proxy connect failed`, e);
    });
  }

  /** Tell the pool's events; a throwing listener is reported, the pool goes on. */
  #report(tell: () => void): void {
    try {
      tell();
    } catch (e) {
      reportUnexpected(`DC ${this.dcId} pool: an event listener failed`, e);
    }
  }

  #onDead(conn: MiddleConnection, error: string | null): void {
    this.#conns = this.#conns.filter((c) => c !== conn);
    this.#idleSince.delete(conn);
    const { idle, busy } = conn.takeClients();
    if (this.#closed) {
      for (const slot of [...idle, ...busy]) {
        (slot.client as MiddleHandle).onClose("connection_lost");
      }
      return;
    }
    for (const slot of idle) {
      const handle = slot.client as MiddleHandle;
      if (handle.released) continue;
      handle.unbind();
      if (!this.#attach(handle)) this.#homeless.add(handle);
    }
    // A client caught mid-send lost that packet: close it so the app reconnects and resends.
    for (const slot of busy) (slot.client as MiddleHandle).onClose("connection_lost");
    this.#stats.migrated += idle.length;
    this.#stats.closedMidSend += busy.length;
    this.#report(() => this.#events.disconnected(this.dcId, conn, error, idle.length, busy.length));
    if (!this.#closed) this.#ensure();
    // Homeless clients give up if no connection comes in time.
    if (this.#homeless.size > 0 && this.#homelessTimer === undefined) {
      this.#homelessTimer = setTimeout(() => {
        this.#homelessTimer = undefined;
        for (const h of [...this.#homeless]) {
          this.#homeless.delete(h);
          h.onClose("connection_lost");
        }
      }, ATTACH_WAIT_MS);
    }
  }
}
