/**
 * Connection counts that several threads (Deno `Worker`s) keep together, synchronously: how many
 * connections each key (an address key or an SNI) holds, for `max_connections_per_ip` and
 * `max_connections_per_sni`, and a total for `max_connections`. They live in a
 * `SharedArrayBuffer` that each worker receives with `postMessage`.
 *
 * The keys sit in a fixed-capacity open-addressing table (linear probing) guarded by a lock (see
 * `shared_lock.ts`), held for one lookup and update. A key whose count drops to 0 leaves the table
 * (backward-shift deletion, so no tombstones pile up) and its place is free again. The total is
 * one word changed with `Atomics.compareExchange`, without the lock.
 *
 * Each count is also kept per worker (a small number given at creation), so that when a worker
 * dies the supervisor can give back everything it held ({@linkcode SharedCounts.releaseWorker})
 * instead of leaking it.
 *
 * @module
 */
import type { ConnectionCounts } from "./policy.ts";
import { lockShared, unlockShared } from "./shared_lock.ts";

/** Counts per key and in total, kept in shared memory; see {@linkcode openSharedCounts}. */
export interface SharedCounts extends ConnectionCounts {
  /**
   * Count one more connection under `key` unless `limit` are counted there already (0: no
   * limit), and say whether it was counted. Also false, without counting, when `key` is not held
   * and {@linkcode SharedCounts.capacity} keys are: see {@linkcode SharedCounts.overflows}.
   */
  tryAcquire(key: string, limit: number): boolean;
  /**
   * Count one fewer under `key`, once for each `tryAcquire` that returned true. What this worker
   * does not hold under `key` it cannot release: such a call is ignored.
   */
  release(key: string): void;
  /** Connections counted under `key` now, by all threads. */
  count(key: string): number;
  /** Keys with at least one connection counted, by all threads. */
  readonly size: number;
  /** Most keys held at once, as given to {@linkcode createSharedCounts}. */
  readonly capacity: number;
  /** How many times `tryAcquire` refused a new key because the table was full (all threads). */
  readonly overflows: number;
  /** Count one more connection in the total unless `limit` are counted (0: no limit). */
  tryAcquireTotal(limit: number): boolean;
  /** Count one fewer in the total, once for each `tryAcquireTotal` that returned true. */
  releaseTotal(): void;
  /** The total now, by all threads. */
  readonly total: number;
  /** The worker these counts are acquired and released for (1 to `workers`). */
  readonly worker: number;
  /**
   * Give back everything worker `worker` holds, per key and in the total, and return how many
   * counts that was (the per-key ones plus the total's). For a worker that has died: call it
   * while that worker runs and it loses its counts under its feet.
   */
  releaseWorker(worker: number): number;
}

/**
 * How many bytes of a key (as UTF-8) the table stores and compares. Address keys take at most 19
 * and most SNIs fewer than 64; a longer key is told apart by these bytes, its length and a 32-bit
 * hash of all of it, so two long keys alike in all three would count together.
 *
 * @example Usage
 * ```ts
 * import { SHARED_COUNTS_KEY_BYTES } from "./shared_counts.ts";
 * console.log(SHARED_COUNTS_KEY_BYTES); // 64
 * ```
 */
export const SHARED_COUNTS_KEY_BYTES = 64;

/**
 * Create the memory of {@linkcode SharedCounts} for up to `capacity` keys held at once (an
 * integer from 1 to 16,777,216), kept for `workers` workers (1 to 256; default 1). Send it to each
 * worker and open it there with {@linkcode openSharedCounts}.
 *
 * When `capacity` keys hold connections, `tryAcquire` refuses any other key (returns false, as
 * for a limit, and counts the refusal in {@linkcode SharedCounts.overflows}); held keys still
 * count up to their limits, and a key that drops to 0 frees its place. So give it a capacity of
 * at least `max_connections` (per kind of key kept in it) and acquire the total first: each
 * counted connection then holds at most one key of a kind, and the table never fills.
 *
 * Memory: a table slot takes 80 bytes plus 4 per worker, and the table has a power of two of at
 * least twice `capacity` slots, so 2 to 4 slots per key of capacity (2.9 MB for 10,000 keys and 2
 * workers).
 *
 * @example Usage
 * ```ts
 * import { createSharedCounts, openSharedCounts } from "./shared_counts.ts";
 * const storage = createSharedCounts(10_000, 2);
 * // In worker 1: openSharedCounts(event.data.counts, 1)
 * const counts = openSharedCounts(storage, 1);
 * counts.tryAcquire("198.51.100.1", 2); // true
 * ```
 */
export function createSharedCounts(capacity: number, workers = 1): SharedArrayBuffer {
  if (!Number.isInteger(capacity) || capacity < 1 || capacity > _MAX_CAPACITY) {
    throw new RangeError(
      `Shared counts capacity must be an integer from 1 to ${_MAX_CAPACITY}: got ${capacity}`,
    );
  }
  if (!Number.isInteger(workers) || workers < 1 || workers > _MAX_WORKERS) {
    throw new RangeError(
      `Shared counts workers must be an integer from 1 to ${_MAX_WORKERS}: got ${workers}`,
    );
  }
  let table = 4;
  while (table < capacity * 2) table *= 2;
  const storage = new SharedArrayBuffer(_layout(table, workers).bytes);
  const head = new Int32Array(storage, 0, _HEADER_WORDS);
  head[_H_MAGIC] = _MAGIC;
  head[_H_CAPACITY] = capacity;
  head[_H_TABLE] = table;
  head[_H_SEED] = crypto.getRandomValues(new Int32Array(1))[0]!;
  head[_H_WORKERS] = workers;
  return storage;
}

/**
 * Open the {@linkcode SharedCounts} in `storage` from {@linkcode createSharedCounts}, for worker
 * `worker` (1 to the storage's `workers`; default 1). All opened on one storage, in any threads,
 * count together: a limit is never exceeded however the threads' calls interleave. Give each
 * worker its own number, so that its counts can be given back if it dies.
 *
 * @example Usage
 * ```ts
 * import { createSharedCounts, openSharedCounts } from "./shared_counts.ts";
 * const storage = createSharedCounts(100, 2);
 * const inWorker1 = openSharedCounts(storage, 1), inWorker2 = openSharedCounts(storage, 2);
 * inWorker1.tryAcquire("alice.example", 1); // true
 * inWorker2.tryAcquire("alice.example", 1); // false: worker 1 holds the one allowed
 * inWorker1.release("alice.example");
 * inWorker2.tryAcquire("alice.example", 1); // true
 * inWorker2.tryAcquireTotal(10_000); // true
 * inWorker1.total; // 1
 * // Worker 2 died: the supervisor gives back what it held.
 * openSharedCounts(storage).releaseWorker(2); // 2: alice.example and the total
 * inWorker1.tryAcquire("alice.example", 1); // true
 * ```
 */
export function openSharedCounts(storage: SharedArrayBuffer, worker = 1): SharedCounts {
  const fail = () =>
    new TypeError("Not shared counts: expected a SharedArrayBuffer from createSharedCounts");
  if (!(storage instanceof SharedArrayBuffer) || storage.byteLength < _HEADER_BYTES) throw fail();
  const head = new Int32Array(storage, 0, _HEADER_WORDS);
  const table = head[_H_TABLE]!, workers = head[_H_WORKERS]!;
  if (
    head[_H_MAGIC] !== _MAGIC || table < 4 || workers < 1 || workers > _MAX_WORKERS ||
    storage.byteLength !== _layout(table, workers).bytes
  ) {
    throw fail();
  }
  _checkWorker(worker, workers);
  return new _SharedCounts(storage, worker);
}

const _MAX_CAPACITY = 2 ** 24;
const _MAX_WORKERS = 256;
const _HEADER_BYTES = 64;
const _HEADER_WORDS = _HEADER_BYTES / 4;
/** Header words: the lock, what the storage was made with, and the counters. */
const _H_LOCK = 0, _H_MAGIC = 1, _H_CAPACITY = 2, _H_TABLE = 3, _H_SEED = 4, _H_WORKERS = 5;
const _H_HELD = 6, _H_TOTAL = 7, _H_OVERFLOWS = 8;
/** Marks storage made by createSharedCounts ("CNT2"). */
const _MAGIC = 0x434e5432;
/**
 * A table slot: count, hash, key length in bytes, a spare word, the key's first bytes, then the
 * count of each worker. A slot whose count is 0 is empty.
 */
const _E_COUNT = 0, _E_HASH = 1, _E_LENGTH = 2;
const _E_KEY_AT = 16;
const _E_WORKERS = 4 + SHARED_COUNTS_KEY_BYTES / 4;

/**
 * After the header, the total of each worker (one word each); then, 8-byte aligned, the table.
 */
function _layout(table: number, workers: number): {
  totalsAt: number;
  tableAt: number;
  entryWords: number;
  bytes: number;
} {
  const totalsAt = _HEADER_BYTES;
  const tableAt = totalsAt + Math.ceil(workers / 2) * 8;
  const entryWords = _E_WORKERS + workers;
  return { totalsAt, tableAt, entryWords, bytes: tableAt + table * entryWords * 4 };
}

class _SharedCounts implements SharedCounts {
  readonly #head: Int32Array;
  /** The total of each worker; this worker's is `#totals[#me]`. */
  readonly #totals: Int32Array;
  /** Table slots as words, `#entryWords` each. */
  readonly #words: Int32Array;
  readonly #bytes: Uint8Array;
  readonly #entryWords: number;
  readonly #mask: number;
  readonly #seed: number;
  /** This worker's count word within a slot (`_E_WORKERS + worker - 1`). */
  readonly #me: number;
  readonly capacity: number;
  readonly worker: number;
  /** The key being looked up, as UTF-8 (this thread's own). */
  #key = new Uint8Array(256);
  readonly #encoder = new TextEncoder();

  constructor(storage: SharedArrayBuffer, worker: number) {
    this.#head = new Int32Array(storage, 0, _HEADER_WORDS);
    const table = this.#head[_H_TABLE]!, workers = this.#head[_H_WORKERS]!;
    const { totalsAt, tableAt, entryWords } = _layout(table, workers);
    this.#totals = new Int32Array(storage, totalsAt, workers);
    this.#words = new Int32Array(storage, tableAt, table * entryWords);
    this.#bytes = new Uint8Array(storage, tableAt, table * entryWords * 4);
    this.#entryWords = entryWords;
    this.#mask = table - 1;
    this.#seed = this.#head[_H_SEED]!;
    this.#me = _E_WORKERS + worker - 1;
    this.capacity = this.#head[_H_CAPACITY]!;
    this.worker = worker;
  }

  get size(): number {
    return Atomics.load(this.#head, _H_HELD);
  }

  get overflows(): number {
    return Atomics.load(this.#head, _H_OVERFLOWS);
  }

  get total(): number {
    return Atomics.load(this.#head, _H_TOTAL);
  }

  tryAcquire(key: string, limit: number): boolean {
    _checkLimit(limit);
    const length = this.#encode(key);
    const hash = this.#hash(length);
    const head = this.#head, words = this.#words;
    lockShared(head, _H_LOCK);
    try {
      const found = this.#find(length, hash);
      if (found >= 0) {
        const at = found * this.#entryWords;
        const n = words[at + _E_COUNT]!;
        if (limit > 0 && n >= limit) return false;
        words[at + _E_COUNT] = n + 1;
        words[at + this.#me]!++;
        return true;
      }
      if (head[_H_HELD]! >= this.capacity) {
        Atomics.add(head, _H_OVERFLOWS, 1);
        return false;
      }
      const at = (-1 - found) * this.#entryWords;
      words.fill(0, at, at + this.#entryWords);
      words[at + _E_COUNT] = 1;
      words[at + _E_HASH] = hash;
      words[at + _E_LENGTH] = length;
      words[at + this.#me] = 1;
      const stored = Math.min(length, SHARED_COUNTS_KEY_BYTES);
      this.#bytes.set(this.#key.subarray(0, stored), at * 4 + _E_KEY_AT);
      Atomics.add(head, _H_HELD, 1);
      return true;
    } finally {
      unlockShared(head, _H_LOCK);
    }
  }

  release(key: string): void {
    const length = this.#encode(key);
    const hash = this.#hash(length);
    const head = this.#head, words = this.#words;
    lockShared(head, _H_LOCK);
    try {
      const found = this.#find(length, hash);
      if (found < 0) return;
      const at = found * this.#entryWords;
      const mine = words[at + this.#me]!;
      if (mine === 0) return;
      words[at + this.#me] = mine - 1;
      const left = words[at + _E_COUNT]! - 1;
      if (left > 0) words[at + _E_COUNT] = left;
      else this.#deleteAt(found);
    } finally {
      unlockShared(head, _H_LOCK);
    }
  }

  count(key: string): number {
    const length = this.#encode(key);
    const hash = this.#hash(length);
    lockShared(this.#head, _H_LOCK);
    try {
      const found = this.#find(length, hash);
      return found < 0 ? 0 : this.#words[found * this.#entryWords + _E_COUNT]!;
    } finally {
      unlockShared(this.#head, _H_LOCK);
    }
  }

  tryAcquireTotal(limit: number): boolean {
    _checkLimit(limit);
    const head = this.#head;
    for (;;) {
      const n = Atomics.load(head, _H_TOTAL);
      if (limit > 0 && n >= limit) return false;
      if (Atomics.compareExchange(head, _H_TOTAL, n, n + 1) === n) break;
    }
    Atomics.add(this.#totals, this.worker - 1, 1);
    return true;
  }

  releaseTotal(): void {
    // Only this thread lowers its own total (or the supervisor, once this worker is gone).
    const mine = this.worker - 1;
    if (Atomics.load(this.#totals, mine) <= 0) return;
    Atomics.sub(this.#totals, mine, 1);
    Atomics.sub(this.#head, _H_TOTAL, 1);
  }

  releaseWorker(worker: number): number {
    const workers = this.#totals.length;
    _checkWorker(worker, workers);
    const head = this.#head, words = this.#words, size = this.#entryWords;
    const theirs = _E_WORKERS + worker - 1;
    let freed = Atomics.exchange(this.#totals, worker - 1, 0);
    Atomics.sub(head, _H_TOTAL, freed);
    lockShared(head, _H_LOCK);
    try {
      for (let i = 0; i <= this.#mask;) {
        const at = i * size;
        const held = words[at + theirs]!;
        if (words[at + _E_COUNT] === 0 || held === 0) {
          i++;
          continue;
        }
        freed += held;
        words[at + theirs] = 0;
        const left = words[at + _E_COUNT]! - held;
        if (left > 0) {
          words[at + _E_COUNT] = left;
          i++;
        } else {
          // Deleting moves later slots of the run back, into this one: look at it again.
          // (Slots that wrap around from the table's start have been seen and come back
          // with nothing of this worker's.)
          this.#deleteAt(i);
        }
      }
    } finally {
      unlockShared(head, _H_LOCK);
    }
    return freed;
  }

  /** Write `key` as UTF-8 into `#key`; return its length in bytes. */
  #encode(key: string): number {
    if (key.length * 3 > this.#key.length) this.#key = new Uint8Array(key.length * 3);
    const out = this.#key;
    for (let i = 0; i < key.length; i++) {
      const c = key.charCodeAt(i);
      if (c > 0x7f) return this.#encoder.encodeInto(key, out).written;
      out[i] = c;
    }
    return key.length;
  }

  /** Seeded FNV-1a over the first `length` bytes of `#key`, then murmur3's finalizer. */
  #hash(length: number): number {
    const key = this.#key;
    let h = 0x811c9dc5 ^ this.#seed;
    for (let i = 0; i < length; i++) h = Math.imul(h ^ key[i]!, 0x01000193);
    h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
    h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
    return h ^ (h >>> 16);
  }

  /**
   * The slot holding the key in `#key`, or `-1 - slot` of the empty slot where it would go. The
   * table is at most half full, so there is always one.
   */
  #find(length: number, hash: number): number {
    const words = this.#words, bytes = this.#bytes, key = this.#key, mask = this.#mask;
    const size = this.#entryWords, stored = Math.min(length, SHARED_COUNTS_KEY_BYTES);
    for (let i = hash & mask;; i = (i + 1) & mask) {
      const at = i * size;
      if (words[at + _E_COUNT] === 0) return -1 - i;
      if (words[at + _E_HASH] !== hash || words[at + _E_LENGTH] !== length) continue;
      const from = at * 4 + _E_KEY_AT;
      let j = 0;
      while (j < stored && bytes[from + j] === key[j]) j++;
      if (j === stored) return i;
    }
  }

  /** Empty slot `hole`, moving later slots of its probe run back so that lookups still work. */
  #deleteAt(hole: number): void {
    const words = this.#words, mask = this.#mask, size = this.#entryWords;
    for (let i = (hole + 1) & mask;; i = (i + 1) & mask) {
      const at = i * size;
      if (words[at + _E_COUNT] === 0) break;
      // The slot may fill the hole unless its home lies cyclically in (hole, i].
      const home = words[at + _E_HASH]! & mask;
      if (((i - home) & mask) >= ((i - hole) & mask)) {
        words.copyWithin(hole * size, at, at + size);
        hole = i;
      }
    }
    words[hole * size + _E_COUNT] = 0;
    Atomics.sub(this.#head, _H_HELD, 1);
  }
}

function _checkLimit(limit: number): void {
  if (!(limit >= 0)) throw new RangeError(`Connection limit must be 0 or more: got ${limit}`);
}

function _checkWorker(worker: number, workers: number): void {
  if (!Number.isInteger(worker) || worker < 1 || worker > workers) {
    throw new RangeError(`Shared counts worker must be from 1 to ${workers}: got ${worker}`);
  }
}
