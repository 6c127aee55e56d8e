/**
 * The state that keeps several worker threads one proxy, in shared memory: the replay cache
 * (a handshake seen by one worker is a replay to all), the connection counts behind
 * `max_connections`, `policy.max_connections_per_ip` and `policy.max_connections_per_sni`, and
 * the users' ledger (bytes used against `data_quota`, addresses seen for `max_unique_ips`, the
 * `rate_limit` buckets: lib/guard/quota.ts), which the supervisor alone persists.
 * The supervisor creates the buffers; each worker opens them (synchronously usable on the
 * handshake path: no awaits, no messages).
 *
 * Every count is attributed to the worker that holds it, so that when a worker dies the
 * supervisor gives its counts back instead of leaking them.
 *
 * @module
 */
import type { Config } from "../config/types.ts";
import {
  createSharedReplayStorage,
  openSharedReplayCache,
  type ReplayCache,
} from "../guard/replay.ts";
import { createSharedCounts, openSharedCounts, type SharedCounts } from "../guard/shared_counts.ts";
import type { ConnectionCounts } from "../guard/policy.ts";
import {
  createUserLedger,
  ledgerSizeFor,
  openUserLedger,
  type UserLedger,
} from "../guard/quota.ts";
import type { SharedBuffers } from "./protocol.ts";

/** What the supervisor keeps: buffers to hand out, and the counts to clean up after a death. */
export interface SharedState {
  /** The buffers worker `id` (1-based) opens. */
  forWorker(id: number): SharedBuffers;
  /** Give back every count worker `id` held (it died); returns how many. */
  releaseWorker(id: number): number;
  /** The users' ledger, as the supervisor reads and persists it. */
  readonly ledger: UserLedger;
  /** Connections user `name` holds now, over all workers. */
  userConnections(name: string): number;
}

/** Connection counts as a worker's server uses them. */
export interface WorkerCounts {
  /** Per client address key, for the policy. */
  readonly ips: ConnectionCounts;
  /** Per SNI, for the policy. */
  readonly snis: ConnectionCounts;
  /** Per listener name, for `max_connections`. */
  readonly listeners: ConnectionCounts;
  /** Per user name, for `users.*.max_connections`. */
  readonly users: ConnectionCounts;
}

/** Create the shared state for `workers` workers serving `config`. */
export function createWorkerShared(config: Config, workers: number): SharedState {
  const replay = config.replay.maxEntries > 0
    ? createSharedReplayStorage({
      maxEntries: config.replay.maxEntries,
      maxAgeMs: config.replay.maxAgeMs,
    })
    : null;
  const counts = createSharedCounts(countsCapacity(config), workers);
  const cleaner = openSharedCounts(counts);
  const users = createUserLedger(ledgerSizeFor(config.users));
  return {
    forWorker: (id) => ({ replay, counts, worker: id, users }),
    releaseWorker: (id) => cleaner.releaseWorker(id),
    ledger: openUserLedger(users),
    userConnections: (name) => cleaner.count(`u:${name}`),
  };
}

/** What a worker opens of {@linkcode SharedBuffers}. */
export function openWorkerShared(
  buffers: SharedBuffers,
  config: Config,
): { replay: ReplayCache | null; counts: WorkerCounts; ledger: UserLedger } {
  const replay = buffers.replay
    ? openSharedReplayCache(buffers.replay, {
      maxEntries: config.replay.maxEntries,
      maxAgeMs: config.replay.maxAgeMs,
    })
    : null;
  const table = openSharedCounts(buffers.counts, buffers.worker);
  return {
    replay,
    ledger: openUserLedger(buffers.users),
    counts: {
      ips: _prefixed(table, "i:"),
      snis: _prefixed(table, "s:"),
      listeners: _prefixed(table, "c:"),
      users: _prefixed(table, "u:"),
    },
  };
}

/**
 * Keys the table may have to hold at once: one per listener and per user, and with a per-IP or per-SNI
 * limit one per connection that `max_connections` lets in (each connection holds at most one of
 * each kind).
 */
function countsCapacity(config: Config): number {
  const listeners = Math.max(1, config.listeners.length);
  const connections = config.maxConnections * listeners;
  const p = config.policy;
  const perKey = (p.maxConnectionsPerIp > 0 ? connections : 0) +
    (p.maxConnectionsPerSni > 0 ? connections : 0);
  // Room for reloads: users and listeners added later (the admin API, SIGHUP) need keys too, and
  // the table is sized once, at start.
  const named = 2 * (listeners + config.users.length) + 1024;
  return Math.min(2 ** 24, named + perKey);
}

/** One kind of key in the shared table: a prefix keeps kinds apart. */
function _prefixed(table: SharedCounts, prefix: string): ConnectionCounts {
  return {
    tryAcquire: (key, limit) => table.tryAcquire(prefix + key, limit),
    release: (key) => table.release(prefix + key),
    get size() {
      return table.size;
    },
  };
}
