/**
 * Shared state of a fleet of proxies on Redis 7 (or Valkey): a replay cache every proxy sees, and
 * connection counts (per client address, per SNI, in total) summed over the fleet. The proxy's
 * own replay cache and `ConnectionPolicy` counts stay the authority of last resort:
 * every call here answers within `opTimeoutMs`, and answers `null` when Redis cannot be asked
 * (down, slow, reconnecting), and the caller then decides locally.
 *
 * Keys, under a prefix (default "mtproxy"):
 * - `<prefix>:r:<hex>`: a handshake key seen (the first 16 bytes in hex), `SET NX EX ttl`.
 * - `<prefix>:i:<instance>`: this process's lease, `EX leaseSec`, refreshed every `leaseSec / 3`.
 * - `<prefix>:c:<instance>`: a hash of what this process holds, field `<kind>:<key>` (such as
 *   `ip:203.0.113.5`, `sni:example.com`, `total:`) to a count; same expiry as the lease.
 * - `<prefix>:instances`: a set of the instances that may hold counts.
 *
 * An instance is the configured `instanceId` plus a random suffix per process, so a proxy that
 * crashed and came back never inherits the counts of its earlier run: those stop counting when
 * the old lease expires, at most `leaseSec` after the crash, and both old keys then expire.
 *
 * The acquire script (one EVALSHA, atomic) sums the field over every instance in the set whose
 * lease exists, drops dead instances from the set (deleting their hash), and adds one to this
 * instance's field if the sum is below the limit. It refuses to count (answers `null` to the
 * caller) when this instance's own lease is gone, that is, when the fleet may already have
 * dropped its counts: then the instance re-publishes. Re-publishing (a MULTI: delete this
 * instance's hash, write every count held locally, set the lease, join the set) happens after
 * every (re)connection, after a lost lease, and after any count change whose outcome is unknown
 * (a timeout, a dropped connection), so the fleet's view of this instance converges to what it
 * really holds. While it runs, and until it succeeded, {@linkcode RedisState.acquire} answers
 * `null`; releases are still sent, in order, on the same connection.
 *
 * What a Redis outage allows: while an instance cannot reach Redis it checks handshakes only
 * against its own replay cache, so a hello captured at one proxy and replayed to another proxy
 * of the fleet during the gap is accepted there (if that proxy has not seen it itself). A hello
 * first seen during the gap is not written to Redis later, so it stays new to the other proxies
 * for its TTL; and a Redis restart (without persistence) forgets every replay key. Per-IP and
 * per-SNI limits fall back to what each proxy counts itself, so a client can hold up to the
 * limit at every proxy it reaches while Redis is down.
 *
 * The scripts read keys they do not declare (other instances' leases and hashes), which works on
 * a standalone server (a primary), not on Redis Cluster.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { createClient } from "redis";

/** What a shared connection count counts by. */
export type CountKind = "ip" | "sni" | "total";

/** A change of {@linkcode SharedState.available}, for a log line and a metric. */
export type RedisStateEvent =
  | { type: "available"; instance: string }
  | { type: "unavailable"; instance: string; reason: string };

/**
 * The fleet-wide state a proxy asks before its local decisions. Every answer may be `null`:
 * the shared state cannot say now, decide locally.
 */
export interface SharedState {
  /**
   * Whether the shared state is answering now: connected, and (for counts) this instance's
   * counts published. Changes are reported through `onEvent`.
   */
  readonly available: boolean;
  /**
   * Record the handshake key `key` (its first 16 bytes) for `ttlSec` seconds; true when some
   * proxy of the fleet recorded it before (a replay), false when it is new, null when unknown.
   */
  replaySeen(key: Uint8Array, ttlSec: number): Promise<boolean | null>;
  /**
   * Take one connection slot under `kind` and `key` if fewer than `limit` (from 1) are held
   * across the fleet: true when taken (give it back with {@linkcode SharedState.release}), false
   * when the fleet holds `limit` already, null when unknown (nothing was taken).
   */
  acquire(kind: CountKind, key: string, limit: number): Promise<boolean | null>;
  /** Give back a slot that {@linkcode SharedState.acquire} answered true for. Never waits. */
  release(kind: CountKind, key: string): void;
  /** Stop: remove this instance's lease and counts, close the connection, stop every timer. */
  close(): Promise<void>;
}

/**
 * The shared state of a proxy without one: never available, every answer null, so the proxy
 * decides everything locally.
 *
 * @example Usage
 * ```ts
 * import { unsharedState } from "./redis_state.ts";
 * await unsharedState.replaySeen(new Uint8Array(32), 60); // null
 * await unsharedState.acquire("ip", "203.0.113.5", 3); // null
 * ```
 */
export const unsharedState: SharedState = Object.freeze({
  available: false,
  replaySeen: () => Promise.resolve(null),
  acquire: () => Promise.resolve(null),
  release() {},
  close: () => Promise.resolve(),
});

/** Options of {@linkcode connectRedisState}. */
export interface RedisStateOptions {
  /** `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS). */
  url: string;
  /**
   * This proxy's name in the fleet: 1 to 64 characters from `A-Z a-z 0-9 . _ -` (a host
   * name fits). A random suffix is added per process.
   */
  instanceId: string;
  /** Start of every key. @default "mtproxy" */
  keyPrefix?: string;
  /**
   * Longest wait for an answer to {@linkcode SharedState.replaySeen} or
   * {@linkcode SharedState.acquire}, in milliseconds (an integer from 1); later answers count as
   * null. Heartbeats, re-publishing and cleanup wait up to `max(opTimeoutMs, 1000)`.
   */
  opTimeoutMs: number;
  /**
   * Seconds a lease lasts without a heartbeat (an integer from 1): how long the counts of a
   * crashed proxy keep counting. Heartbeats are sent every `leaseSec / 3`.
   */
  leaseSec: number;
  /** Called on every change of availability (and once for the first outcome). Must not throw. */
  onEvent?: (event: RedisStateEvent) => void;
}

/** A {@linkcode SharedState} on a Redis server, from {@linkcode connectRedisState}. */
export interface RedisState extends SharedState {
  /** This process's instance name in Redis: `instanceId` plus a random suffix. */
  readonly instance: string;
  /** How many slots this instance holds now, per `<kind>:<key>` (for tests and metrics). */
  readonly held: ReadonlyMap<string, number>;
  /** {@linkcode SharedState.close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Longest wait between two connection attempts, in milliseconds. Attempts start 100 ms apart and
 * double; 2 s keeps a restarted Redis in use within about 2 s while costing a down server only
 * one refused connection every 2 s per proxy.
 *
 * @example Usage
 * ```ts
 * import { REDIS_RECONNECT_MAX_MS } from "./redis_state.ts";
 * console.log(REDIS_RECONNECT_MAX_MS); // 2000
 * ```
 */
export const REDIS_RECONNECT_MAX_MS = 2_000;

/**
 * Connect to the Redis server at `options.url` in the background, and keep reconnecting with
 * backoff for as long as the state is open. Never throws on an unreachable server: until it
 * answers, every call answers null. Throws a `RangeError` on invalid options.
 *
 * @example Usage
 * ```ts
 * import { connectRedisState } from "./redis_state.ts";
 * // Nothing listens on port 1 here, so every answer is null (decide locally).
 * const state = connectRedisState({
 *   url: "redis://127.0.0.1:1/0",
 *   instanceId: "proxy-a",
 *   opTimeoutMs: 100,
 *   leaseSec: 30,
 * });
 * const clientRandom = crypto.getRandomValues(new Uint8Array(32));
 * await state.replaySeen(clientRandom, 600); // null; with Redis up: false, then true
 * await state.acquire("ip", "203.0.113.5", 3); // null; with Redis up: true while < 3 held
 * await state.close();
 * ```
 */
export function connectRedisState(options: RedisStateOptions): RedisState {
  return new _RedisState(options);
}

/** One connection's client: a fresh one per connection, which never reconnects by itself. */
function _makeClient(url: string, connectTimeoutMs: number, timeoutMs: number) {
  return createClient({
    url,
    disableOfflineQueue: true,
    commandOptions: { timeout: timeoutMs, rejectInFlight: true },
    socket: { reconnectStrategy: false, connectTimeout: connectTimeoutMs },
  });
}

type _Client = ReturnType<typeof _makeClient>;
type _Fast = ReturnType<_Client["withCommandOptions"]>;

interface _Script {
  readonly source: string;
  readonly sha: string;
}

function _script(source: string): _Script {
  return { source, sha: createHash("sha1").update(source).digest("hex") };
}

/**
 * KEYS: the instance set, this instance's hash, this instance's lease.
 * ARGV: this instance, the field, the limit, leaseSec, the key prefix.
 * Returns 1 (taken), 0 (at the limit) or -1 (this instance's lease is gone: nothing done).
 */
const _ACQUIRE = _script(`
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
local me, field, limit, prefix = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[5]
local sum = 0
for _, inst in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if inst == me or redis.call('EXISTS', prefix .. ':i:' .. inst) == 1 then
    sum = sum + (tonumber(redis.call('HGET', prefix .. ':c:' .. inst, field)) or 0)
  else
    redis.call('SREM', KEYS[1], inst)
    redis.call('DEL', prefix .. ':c:' .. inst)
  end
end
if sum >= limit then return 0 end
redis.call('HINCRBY', KEYS[2], field, 1)
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
`);

/**
 * KEYS: this instance's hash. ARGV: the field. Takes one off the field, deleting it at 0.
 * Returns what is left, or -1 when the field was not there (the hash expired or was dropped).
 */
const _RELEASE = _script(`
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end
local left = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if left <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return left
`);

/** Fields per HSET when re-publishing, so that one command stays small. */
const _REPUBLISH_CHUNK = 512;
const _INSTANCE_ID = /^[A-Za-z0-9._-]{1,64}$/;
const _KINDS: ReadonlySet<string> = new Set(["ip", "sni", "total"]);

type _Outcome<T> = { ok: true; value: T } | { ok: false; error: unknown };

class _RedisState implements RedisState {
  readonly instance: string;
  readonly #url: string;
  readonly #opTimeoutMs: number;
  /** Bound of the background work: heartbeats, re-publishing, cleanup, the graceful close. */
  readonly #slowMs: number;
  readonly #leaseSec: number;
  readonly #onEvent: ((event: RedisStateEvent) => void) | undefined;
  readonly #prefix: string;
  readonly #leaseKey: string;
  readonly #countsKey: string;
  readonly #instancesKey: string;
  /** Slots this instance holds, per field; the truth that re-publishing writes. */
  readonly #held = new Map<string, number>();
  /** Acquires sent and not yet settled (each promise settles after updating `#held`). */
  readonly #inflight = new Set<Promise<void>>();
  readonly #heartbeat: ReturnType<typeof setInterval>;
  readonly #loop: Promise<void>;

  /** The connected client, or null between connections. */
  #client: _Client | null = null;
  /** The same client with `opTimeoutMs` as its command timeout, for the hot path. */
  #fast: _Fast | null = null;
  /** This instance's counts are published under a live lease on the current connection. */
  #published = false;
  /** What `onEvent` was last told (null: nothing yet). */
  #announced: boolean | null = null;
  /** Some count change may have reached Redis differently from `#held`: re-publish. */
  #dirty = false;
  #republishing: Promise<void> | null = null;
  #beating = false;
  #closed = false;
  #closing: Promise<void> | null = null;
  /** Wakes the connection loop from its backoff wait (on close). */
  #wake: (() => void) | null = null;
  /** Ends the wait on the current connection (on close). */
  #dropped: (() => void) | null = null;

  constructor(options: RedisStateOptions) {
    const { url, instanceId, opTimeoutMs, leaseSec } = options;
    const prefix = options.keyPrefix ?? "mtproxy";
    let parsed: URL | null = null;
    try {
      parsed = new URL(url);
    } catch {
      // Reported below.
    }
    if (!parsed || (parsed.protocol !== "redis:" && parsed.protocol !== "rediss:")) {
      throw new RangeError(
        `Redis URL must be redis://host:port/db or rediss://...: got ${JSON.stringify(url)}`,
      );
    }
    if (!_INSTANCE_ID.test(instanceId)) {
      throw new RangeError(
        `Instance id must be 1 to 64 of A-Z a-z 0-9 . _ -: got ${JSON.stringify(instanceId)}`,
      );
    }
    if (prefix.length === 0) throw new RangeError("Redis key prefix must not be empty");
    if (!Number.isInteger(opTimeoutMs) || opTimeoutMs < 1) {
      throw new RangeError(`Redis opTimeoutMs must be an integer from 1: got ${opTimeoutMs}`);
    }
    if (!Number.isInteger(leaseSec) || leaseSec < 1) {
      throw new RangeError(`Redis leaseSec must be an integer from 1: got ${leaseSec}`);
    }
    const suffix = Array.from(
      crypto.getRandomValues(new Uint8Array(4)),
      (b) => b.toString(16).padStart(2, "0"),
    ).join("");
    this.instance = `${instanceId}-${suffix}`;
    this.#url = url;
    this.#opTimeoutMs = opTimeoutMs;
    this.#slowMs = Math.max(opTimeoutMs, 1_000);
    this.#leaseSec = leaseSec;
    this.#onEvent = options.onEvent;
    this.#prefix = prefix;
    this.#leaseKey = `${prefix}:i:${this.instance}`;
    this.#countsKey = `${prefix}:c:${this.instance}`;
    this.#instancesKey = `${prefix}:instances`;
    this.#heartbeat = setInterval(() => this.#beat(), Math.max(1, (leaseSec * 1_000) / 3));
    this.#loop = this.#connectLoop();
  }

  get available(): boolean {
    return this.#published && !this.#closed;
  }

  get held(): ReadonlyMap<string, number> {
    return this.#held;
  }

  replaySeen(key: Uint8Array, ttlSec: number): Promise<boolean | null> {
    if (key.length < 16) {
      throw new RangeError(`Replay key must be at least 16 bytes: got ${key.length}`);
    }
    if (!Number.isInteger(ttlSec) || ttlSec < 1) {
      throw new RangeError(`Replay ttlSec must be an integer from 1: got ${ttlSec}`);
    }
    const client = this.#fast;
    if (this.#closed || !client?.isReady) return Promise.resolve(null);
    const hex = Array.from(key.subarray(0, 16), (b) => b.toString(16).padStart(2, "0")).join("");
    const op = client.set(`${this.#prefix}:r:${hex}`, "1", {
      condition: "NX",
      expiration: { type: "EX", value: ttlSec },
    });
    // SET NX answers OK when it set the key (new) and null when the key was there (a replay).
    return _within(op, this.#opTimeoutMs).then((r) => (r.ok ? r.value === null : null));
  }

  acquire(kind: CountKind, key: string, limit: number): Promise<boolean | null> {
    if (!_KINDS.has(kind)) throw new RangeError(`Count kind must be ip, sni or total: got ${kind}`);
    if (!Number.isInteger(limit) || limit < 1) {
      throw new RangeError(`Connection limit must be an integer from 1: got ${limit}`);
    }
    const client = this.#fast;
    if (!client || !this.#canCount()) return Promise.resolve(null);
    const field = `${kind}:${key}`;
    const op = this.#eval(client, _ACQUIRE, [this.#instancesKey, this.#countsKey, this.#leaseKey], [
      this.instance,
      field,
      String(limit),
      String(this.#leaseSec),
      this.#prefix,
    ]);
    return new Promise((resolve) => {
      // Once the caller has its answer (null on timeout), a late 1 is a slot Redis counts and
      // `#held` does not: re-publish. Any failure may have run the script too.
      let answered = false;
      const timer = setTimeout(() => {
        answered = true;
        resolve(null);
      }, this.#opTimeoutMs);
      const settled = op.then((reply) => {
        clearTimeout(timer);
        if (answered) {
          if (reply === 1) this.#markDirty();
          return;
        }
        answered = true;
        if (reply === 1) {
          this.#held.set(field, (this.#held.get(field) ?? 0) + 1);
          resolve(true);
        } else if (reply === 0) {
          resolve(false);
        } else {
          this.#setPublished(false, "Lease lost: this instance's counts may have been dropped");
          this.#kick();
          resolve(null);
        }
      }, () => {
        clearTimeout(timer);
        this.#markDirty();
        if (!answered) {
          answered = true;
          resolve(null);
        }
      });
      this.#inflight.add(settled);
      settled.finally(() => this.#inflight.delete(settled));
    });
  }

  release(kind: CountKind, key: string): void {
    const field = `${kind}:${key}`;
    const n = this.#held.get(field);
    if (n === undefined) return;
    if (n <= 1) this.#held.delete(field);
    else this.#held.set(field, n - 1);
    const client = this.#fast;
    if (this.#closed) return;
    if (!client?.isReady) {
      // Re-publishing after the reconnection writes the new count.
      this.#dirty = true;
      return;
    }
    // Plain EVAL, not EVALSHA with a fallback: a retry after NOSCRIPT could land after a
    // re-publish that already counts this release, and take it off twice.
    client.eval(_RELEASE.source, { keys: [this.#countsKey], arguments: [field] }).then(
      (left) => {
        if (left === -1) this.#markDirty();
      },
      () => this.#markDirty(),
    );
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#heartbeat);
    await _within(Promise.all([...this.#inflight]), this.#slowMs);
    if (this.#republishing) await this.#republishing;
    const client = this.#client;
    if (client?.isReady) {
      await _within(
        client.multi()
          .del(this.#leaseKey)
          .del(this.#countsKey)
          .sRem(this.#instancesKey, this.instance)
          .exec(),
        this.#slowMs,
      );
    }
    this.#held.clear();
    this.#wake?.();
    this.#dropped?.();
    await this.#loop;
  }

  /** Counting is possible: connected, published, not re-publishing, not closed. */
  #canCount(): boolean {
    return this.#published && this.#republishing === null && !this.#closed &&
      this.#client?.isReady === true;
  }

  /**
   * Connect, serve until the connection drops, wait, and again, until closed. The client never
   * reconnects by itself (`reconnectStrategy: false`): a fresh client per connection keeps the
   * backoff timer here, where closing can end it.
   */
  async #connectLoop(): Promise<void> {
    let failures = 0;
    while (!this.#closed) {
      const client = _makeClient(this.#url, this.#slowMs, this.#slowMs);
      let reason = "Disconnected";
      const dropped = new Promise<void>((resolve) => {
        this.#dropped = resolve;
        client.on("error", (e: unknown) => {
          reason = e instanceof Error ? e.message : String(e);
        });
        client.once("terminated", () => resolve());
        client.once("end", () => resolve());
      });
      let connected = false;
      try {
        await client.connect();
        connected = true;
      } catch {
        // `reason` has the error.
      }
      if (connected && !this.#closed) {
        failures = 0;
        this.#client = client;
        this.#fast = client.withCommandOptions({
          timeout: this.#opTimeoutMs,
          rejectInFlight: true,
        });
        this.#kick();
        await dropped;
        this.#client = null;
        this.#fast = null;
        this.#setPublished(false, reason);
      } else if (!this.#closed) {
        this.#setPublished(false, reason);
      }
      this.#dropped = null;
      if (this.#closed) {
        await _within(_closeClient(client), this.#slowMs);
      }
      client.destroy();
      if (this.#closed) break;
      const wait = Math.min(100 * 2 ** failures++, REDIS_RECONNECT_MAX_MS);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, wait * (0.75 + Math.random() / 4));
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = null;
    }
  }

  /** Run a script by its SHA, loading it with EVAL when the server does not have it. */
  async #eval(client: _Fast, script: _Script, keys: string[], args: string[]): Promise<unknown> {
    try {
      return await client.evalSha(script.sha, { keys, arguments: args });
    } catch (e) {
      if (!(e instanceof Error) || !e.message.startsWith("NOSCRIPT")) throw e;
      return await client.eval(script.source, { keys, arguments: args });
    }
  }

  #markDirty(): void {
    this.#dirty = true;
    this.#kick();
  }

  /** Start re-publishing unless it is running (then it runs again after, as `#dirty` says). */
  #kick(): void {
    if (this.#closed || !this.#client?.isReady) return;
    if (this.#republishing) {
      this.#dirty = true;
      return;
    }
    const run = this.#republish().then((ok) => {
      this.#republishing = null;
      if (ok && this.#dirty) this.#kick();
    });
    this.#republishing = run;
  }

  /** Write what this instance holds, as it holds it, and (re)take the lease. */
  async #republish(): Promise<boolean> {
    // Acquires sent before must land first, or the snapshot would miss slots they take.
    // Each settles within two command timeouts (EVALSHA, then EVAL after NOSCRIPT).
    const drained = await _within(
      Promise.all([...this.#inflight]),
      this.#slowMs + 2 * this.#opTimeoutMs,
    );
    const client = this.#client;
    if (this.#closed || !client?.isReady) return false;
    if (!drained.ok) {
      this.#setPublished(false, "Acquires did not settle before re-publishing");
      return false;
    }
    this.#dirty = false;
    const multi = client.multi().del(this.#countsKey);
    const entries = [...this.#held];
    for (let i = 0; i < entries.length; i += _REPUBLISH_CHUNK) {
      const chunk = entries.slice(i, i + _REPUBLISH_CHUNK).map(([f, n]) => [f, String(n)]);
      multi.hSet(this.#countsKey, Object.fromEntries(chunk));
    }
    multi.expire(this.#countsKey, this.#leaseSec)
      .set(this.#leaseKey, "1", { expiration: { type: "EX", value: this.#leaseSec } })
      .sAdd(this.#instancesKey, this.instance);
    const done = await _within(multi.exec(), this.#slowMs);
    if (this.#closed) return false;
    if (!done.ok) {
      this.#dirty = true;
      this.#setPublished(false, `Re-publishing failed: ${_message(done.error)}`);
      return false;
    }
    this.#setPublished(true, "");
    return true;
  }

  /** Refresh the lease and the hash; re-publish when they are gone or unknown. */
  async #beat(): Promise<void> {
    const client = this.#client;
    if (this.#closed || this.#beating || this.#republishing || !client?.isReady) return;
    if (!this.#published || this.#dirty) {
      this.#kick();
      return;
    }
    this.#beating = true;
    const r = await _within(
      client.multi()
        .expire(this.#leaseKey, this.#leaseSec)
        .expire(this.#countsKey, this.#leaseSec)
        .exec(),
      this.#slowMs,
    );
    this.#beating = false;
    if (this.#closed || client !== this.#client) return;
    if (!r.ok) {
      this.#setPublished(false, `Heartbeat failed: ${_message(r.error)}`);
    } else if (Number(r.value[0]) !== 1) {
      this.#setPublished(false, "Lease lost: this instance's counts may have been dropped");
      this.#kick();
    }
  }

  #setPublished(published: boolean, reason: string): void {
    this.#published = published;
    if (this.#closed || this.#announced === published) return;
    this.#announced = published;
    this.#onEvent?.(
      published
        ? { type: "available", instance: this.instance }
        : { type: "unavailable", instance: this.instance, reason },
    );
  }
}

/** Close `client` gracefully (pending replies first); a client that is not open resolves. */
function _closeClient(client: _Client): Promise<void> {
  try {
    return client.close().catch(() => {});
  } catch {
    return Promise.resolve();
  }
}

/** Settle with `op`'s outcome, or with a timeout failure after `ms`; never rejects. */
function _within<T>(op: Promise<T>, ms: number): Promise<_Outcome<T>> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      resolve({ ok: false, error: new Error(`Timed out after ${ms} ms`) });
    }, ms);
    op.then((value) => {
      clearTimeout(timer);
      resolve({ ok: true, value });
    }, (error: unknown) => {
      clearTimeout(timer);
      resolve({ ok: false, error });
    });
  });
}

function _message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
