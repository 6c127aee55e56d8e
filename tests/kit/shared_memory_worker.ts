/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />
/**
 * A Worker that runs one task against shared memory (the lock, the shared replay cache, shared
 * counts, a policy over shared counts) and posts back what it saw. Started by `runInWorkers` in
 * `shared_memory.ts`; the tasks' threads start together at a barrier in shared memory.
 *
 * @module
 */
import { lockShared, unlockShared } from "../../lib/guard/shared_lock.ts";
import { openSharedReplayCache, type ReplayCacheOptions } from "../../lib/guard/replay.ts";
import { openSharedCounts } from "../../lib/guard/shared_counts.ts";
import { ConnectionPolicy, type PolicySlot } from "../../lib/guard/policy.ts";
import { DEFAULT_POLICY } from "../../lib/config/defaults.ts";
import { numberedKey } from "../contracts/replay_cache_contract.ts";
import { seededRandom } from "./seeded.ts";

/** What a worker is asked to do. Every task names `workers`, how many threads take part. */
export type SharedTask =
  | LockTask
  | ReplayTask
  | CountsTask
  | PolicyTask;

/** Change a word under the lock, non-atomically, `rounds` times. */
export interface LockTask {
  kind: "lock";
  id: number;
  workers: number;
  /** Words: 0 the lock, 1 a counter, 2 the id of the thread inside (0: none), 3 the barrier. */
  words: SharedArrayBuffer;
  rounds: number;
}

/** Check keys 0 to `keys - 1` (see `numberedKey`) once each, forwards or backwards. */
export interface ReplayTask {
  kind: "replay";
  workers: number;
  barrier: SharedArrayBuffer;
  storage: SharedArrayBuffer;
  options: ReplayCacheOptions;
  keys: number;
  backwards: boolean;
}

/** Acquire and release random keys (and the total) `steps` times, holding up to `hold`. */
export interface CountsTask {
  kind: "counts";
  workers: number;
  /** This thread's worker number for the counts (1 to `workers`). */
  worker: number;
  barrier: SharedArrayBuffer;
  storage: SharedArrayBuffer;
  /** Words 0 to `keys - 1`: connections held per key; word `keys`: in total (the test's own). */
  check: SharedArrayBuffer;
  keys: number;
  limit: number;
  totalLimit: number;
  steps: number;
  hold: number;
  seed: number;
  /** Return what it holds at the end without releasing it, as a worker that dies would. */
  keep: boolean;
}

/** Admit `attempts` connections from one address and with one SNI, holding them all. */
export interface PolicyTask {
  kind: "policy";
  workers: number;
  worker: number;
  /** Two barriers: word 0 before admitting, word 1 before releasing. */
  barrier: SharedArrayBuffer;
  ipStorage: SharedArrayBuffer;
  sniStorage: SharedArrayBuffer;
  maxPerIp: number;
  maxPerSni: number;
  attempts: number;
}

/** What the worker posts back. */
export type SharedResult =
  | { kind: "lock"; overlaps: number; ms: number }
  | { kind: "replay"; firstSeen: Uint8Array; ms: number }
  | {
    kind: "counts";
    acquired: number;
    refused: number;
    violations: number;
    /** Connections still held at the end (with `keep`). */
    kept: number;
    ms: number;
  }
  | { kind: "policy"; ips: number; snis: number; ipRefusals: string[]; sniRefusals: string[] };

/** A key name of the kinds the policy counts: IPv4, IPv6 /64, short and long SNIs. */
export function countsKey(k: number): string {
  switch (k % 4) {
    case 0:
      return `198.51.100.${k}`;
    case 1:
      return `20010db8${k.toString(16).padStart(8, "0")}/64`;
    case 2:
      return `user${k}.example`;
    default: // longer than the 64 bytes stored, alike in those
      return `${"long-".repeat(14)}${k}.example`;
  }
}

/** Wait until all `workers` threads reach barrier word `index`. */
function _barrier(words: Int32Array, index: number, workers: number): void {
  const arrived = Atomics.add(words, index, 1) + 1;
  if (arrived === workers) {
    Atomics.notify(words, index);
    return;
  }
  for (let seen = arrived; seen < workers; seen = Atomics.load(words, index)) {
    Atomics.wait(words, index, seen);
  }
}

function _lock(task: LockTask): SharedResult {
  const words = new Int32Array(task.words);
  _barrier(words, 3, task.workers);
  const start = performance.now();
  let overlaps = 0;
  for (let i = 0; i < task.rounds; i++) {
    lockShared(words, 0);
    if (words[2] !== 0) overlaps++;
    words[2] = task.id;
    const n = words[1]!;
    words[1] = n + 1;
    if (words[2] !== task.id) overlaps++;
    words[2] = 0;
    unlockShared(words, 0);
  }
  return { kind: "lock", overlaps, ms: performance.now() - start };
}

function _replay(task: ReplayTask): SharedResult {
  const cache = openSharedReplayCache(task.storage, task.options);
  const keys = Array.from({ length: task.keys }, (_, i) => numberedKey(i));
  const firstSeen = new Uint8Array(task.keys);
  _barrier(new Int32Array(task.barrier), 0, task.workers);
  const start = performance.now();
  for (let j = 0; j < task.keys; j++) {
    const i = task.backwards ? task.keys - 1 - j : j;
    if (!cache.checkAndAdd(keys[i]!, 1_000)) firstSeen[i] = 1;
  }
  return { kind: "replay", firstSeen, ms: performance.now() - start };
}

function _counts(task: CountsTask): SharedResult {
  const counts = openSharedCounts(task.storage, task.worker);
  const check = new Int32Array(task.check);
  const { keys, limit, totalLimit } = task;
  const names = Array.from({ length: keys }, (_, k) => countsKey(k));
  const random = seededRandom(task.seed);
  const held: number[] = [];
  let acquired = 0, refused = 0, violations = 0;
  const release = (at: number) => {
    const k = held[at]!;
    held[at] = held[held.length - 1]!;
    held.pop();
    // The test's own counts go down before the real ones, so they never exceed them.
    Atomics.sub(check, k, 1);
    Atomics.sub(check, keys, 1);
    counts.release(names[k]!);
    counts.releaseTotal();
  };
  _barrier(new Int32Array(task.barrier), 0, task.workers);
  const start = performance.now();
  for (let step = 0; step < task.steps; step++) {
    if (held.length === task.hold || (held.length > 0 && random() < 0.4)) {
      release(Math.floor(random() * held.length));
      continue;
    }
    const k = Math.floor(random() * keys);
    if (!counts.tryAcquireTotal(totalLimit)) {
      refused++;
      continue;
    }
    if (!counts.tryAcquire(names[k]!, limit)) {
      counts.releaseTotal();
      refused++;
      continue;
    }
    acquired++;
    held.push(k);
    // ... and up after, so a count past a limit here means the real one was past it too.
    const onKey = Atomics.add(check, k, 1) + 1, inTotal = Atomics.add(check, keys, 1) + 1;
    if (limit > 0 && onKey > limit) violations++;
    if (totalLimit > 0 && inTotal > totalLimit) violations++;
  }
  const ms = performance.now() - start;
  const kept = task.keep ? held.length : 0;
  while (!task.keep && held.length > 0) release(held.length - 1);
  return { kind: "counts", acquired, refused, violations, kept, ms };
}

function _policy(task: PolicyTask): SharedResult {
  const policy = new ConnectionPolicy(
    { ...DEFAULT_POLICY, maxConnectionsPerIp: task.maxPerIp, maxConnectionsPerSni: task.maxPerSni },
    {
      ipCounts: openSharedCounts(task.ipStorage, task.worker),
      sniCounts: openSharedCounts(task.sniStorage, task.worker),
    },
  );
  const barrier = new Int32Array(task.barrier);
  const slots: PolicySlot[] = [];
  const ipRefusals: string[] = [], sniRefusals: string[] = [];
  let ips = 0, snis = 0;
  _barrier(barrier, 0, task.workers);
  for (let i = 0; i < task.attempts; i++) {
    // One client over IPv4 and over a dual-stack socket: one address key.
    const ip = policy.admitIp(i % 2 === 0 ? "192.0.2.1" : "::ffff:192.0.2.1");
    if (typeof ip === "string") ipRefusals.push(ip);
    else slots.push(ip), ips++;
    const sni = policy.admitSni("alice.example");
    if (typeof sni === "string") sniRefusals.push(sni);
    else slots.push(sni), snis++;
  }
  // Every thread holds what it got until all are done admitting.
  _barrier(barrier, 1, task.workers);
  for (const slot of slots) slot.release();
  return { kind: "policy", ips, snis, ipRefusals, sniRefusals };
}

self.onmessage = (event: MessageEvent<SharedTask>) => {
  const task = event.data;
  const result = task.kind === "lock"
    ? _lock(task)
    : task.kind === "replay"
    ? _replay(task)
    : task.kind === "counts"
    ? _counts(task)
    : _policy(task);
  self.postMessage(result);
};
