/**
 * Replay protection (protocol.md §6): remember the random opening bytes of recent handshakes (the
 * fake-TLS client random, or obfuscated2 init bytes 8..55) and report a repeat, so that a censor
 * replaying a captured handshake does not get a proxy's answer.
 *
 * The cache is pure: it reads no clock and sets no timer. The caller passes the time on each call
 * and old entries are dropped lazily then. Its memory can be a `SharedArrayBuffer`, so that
 * several `Worker` threads use one cache ({@linkcode createSharedReplayStorage},
 * {@linkcode openSharedReplayCache}).
 *
 * @module
 */
import { lockShared, unlockShared } from "./shared_lock.ts";

/** A memory of recently seen handshake keys. */
export interface ReplayCache {
  /**
   * Record `key` (bytes) seen at `nowMs`; return true if it was already present (a replay).
   * Records it either way.
   */
  checkAndAdd(key: Uint8Array, nowMs: number): boolean;
  /** How many keys are held, as of the last call. */
  readonly size: number;
}

/** Bounds of {@linkcode createReplayCache}. */
export interface ReplayCacheOptions {
  /**
   * Most keys held at once; when full, the key seen longest ago is forgotten. An integer from 1
   * to 134,217,728 (the configuration allows up to 100,000,000).
   */
  maxEntries: number;
  /**
   * Keys last seen more than this many milliseconds ago are forgotten. From 1 to 2,147,483,647
   * (about 24.8 days).
   */
  maxAgeMs: number;
}

/**
 * How many leading bytes of a key the cache keeps and compares. Keys are random (a fake-TLS
 * client random is 32 bytes, an obfuscated2 init key and IV 48), so 16 bytes are plenty.
 *
 * @example Usage
 * ```ts
 * import { REPLAY_KEY_BYTES } from "./replay.ts";
 * console.log(REPLAY_KEY_BYTES); // 16
 * ```
 */
export const REPLAY_KEY_BYTES = 16;

/**
 * Approximate memory per entry of a full {@linkcode createReplayCache} cache, in bytes: 31 at
 * `maxEntries: 1_000_000`, so a million entries take about 31 MB.
 *
 * Measured with a scratch script run under `deno run --v8-flags=--expose-gc` (Deno 2.9.6, V8 15.0,
 * x86-64 Linux): after a warm-up on a throwaway cache, `gc()` and a baseline; then 1,000,000
 * distinct pseudo-random keys written into one reused buffer (so key generation leaves no
 * garbage), then 200,000 more calls, half repeats and half new keys, to reach the steady state
 * (ring fully grown, oldest entries evicted, dead slots squeezed out); then `gc()` again. Growth
 * of V8 heap used plus external (typed array) memory: 30.9 bytes per entry; growth of RSS: 31.0
 * to 31.3 bytes per entry. That is the typed arrays and nothing else: per ring slot 16 bytes of
 * key and 4 of timestamp, with one slot in nine spare (22.5 bytes per entry), and a hash table of
 * 4-byte slots at a load factor of at most 0.5 (8.4 bytes per entry here). Other values of
 * `maxEntries` cost 30.5 to 38.5 bytes per entry, depending on how far the table's power-of-two
 * size lies above twice `maxEntries`; a cache that is not yet full holds less, as its arrays
 * double from 1,024 slots as keys arrive. For comparison, a `Map` keyed by 16-character latin1
 * strings with small-integer timestamps measured 61 bytes per entry when filled and 91 in the
 * steady state, and took 34 µs per call there.
 *
 * A shared cache ({@linkcode createSharedReplayStorage}) has the same arrays at full size from the
 * start plus a 64-byte header: 30.9 bytes per entry at `maxEntries: 1_000_000`.
 *
 * @example Usage
 * ```ts
 * import { REPLAY_ENTRY_BYTES } from "./replay.ts";
 * const megabytes = (1_000_000 * REPLAY_ENTRY_BYTES) / 1e6; // 31
 * console.log(megabytes);
 * ```
 */
export const REPLAY_ENTRY_BYTES = 31;

/**
 * The replay cache to use when replay protection is off: it remembers nothing, so no key is ever a
 * replay.
 *
 * @example Usage
 * ```ts
 * import { acceptAllReplays } from "./replay.ts";
 * const key = new Uint8Array(32);
 * acceptAllReplays.checkAndAdd(key, 0); // false
 * acceptAllReplays.checkAndAdd(key, 0); // false again
 * ```
 */
export const acceptAllReplays: ReplayCache = Object.freeze({
  checkAndAdd(_key: Uint8Array, _nowMs: number): boolean {
    return false;
  },
  size: 0,
});

/**
 * Create an in-process replay cache bounded by count and by age.
 *
 * Keys are the first {@linkcode REPLAY_KEY_BYTES} bytes of what the caller passes; a shorter key
 * is a `RangeError`. Time has millisecond resolution and never runs backwards: a `nowMs` smaller
 * than an earlier one counts as the earlier one. A key seen again counts as seen at the new time.
 * Memory grows with use, up to about {@linkcode REPLAY_ENTRY_BYTES} per entry of `maxEntries`.
 *
 * @example Usage
 * ```ts
 * import { createReplayCache } from "./replay.ts";
 * const cache = createReplayCache({ maxEntries: 1_000_000, maxAgeMs: 6 * 3_600_000 });
 * const clientRandom = crypto.getRandomValues(new Uint8Array(32));
 * cache.checkAndAdd(clientRandom, 1_000); // false: first time
 * cache.checkAndAdd(clientRandom, 2_000); // true: a replay
 * ```
 */
export function createReplayCache(options: ReplayCacheOptions): ReplayCache {
  _checkOptions(options);
  return new _RingReplayCache(options.maxEntries, options.maxAgeMs, null);
}

/**
 * Create the memory of a replay cache that several threads share. Send it to each `Worker` with
 * `postMessage` and open it there (and wherever else it is used) with
 * {@linkcode openSharedReplayCache}.
 *
 * Takes the options of {@linkcode createReplayCache}, with the same `RangeError`s. The storage has
 * its full size at once, `maxEntries` times about {@linkcode REPLAY_ENTRY_BYTES} bytes: 15.5 MB
 * for the default 500,000 entries. (The operating system maps its zeroed pages as they are first
 * written, so resident memory still grows with use.)
 *
 * @example Usage
 * ```ts
 * import { createSharedReplayStorage, openSharedReplayCache } from "./replay.ts";
 * const options = { maxEntries: 1_000, maxAgeMs: 60_000 };
 * const storage = createSharedReplayStorage(options);
 * // In a worker: openSharedReplayCache(event.data.storage, options)
 * const cache = openSharedReplayCache(storage, options);
 * cache.checkAndAdd(crypto.getRandomValues(new Uint8Array(32)), 0); // false
 * ```
 */
export function createSharedReplayStorage(options: ReplayCacheOptions): SharedArrayBuffer {
  _checkOptions(options);
  const { maxEntries, maxAgeMs } = options;
  const storage = new SharedArrayBuffer(_sharedLayout(maxEntries).bytes);
  const state = new Uint32Array(storage, 0, _HEADER_WORDS);
  state[_H_MAGIC] = _MAGIC;
  state[_H_MAX_ENTRIES] = maxEntries;
  state[_H_SEED] = crypto.getRandomValues(new Uint32Array(1))[0]!;
  new Float64Array(storage, _H_FLOATS_AT, 2)[_F_MAX_AGE] = maxAgeMs;
  return storage;
}

/**
 * Open a replay cache over `storage` from {@linkcode createSharedReplayStorage}. All caches opened
 * on one storage, in any threads, are one cache: a key recorded through one of them is a replay
 * to all, and exactly one of several threads checking a new key at once is told it is new.
 *
 * `options` must be the ones the storage was made with (a `RangeError` otherwise). The cache
 * behaves as {@linkcode createReplayCache}'s, with the same bounds and eviction; its clock is the
 * latest time any of them was given. Each `checkAndAdd` holds a lock on the storage (see
 * `shared_lock.ts`) for about a microsecond; now and then it squeezes the ring or drops many
 * expired keys and holds the lock longer (as long as the in-process cache takes for the same
 * work), while other threads calling in wait.
 *
 * @example Usage
 * ```ts
 * import { createSharedReplayStorage, openSharedReplayCache } from "./replay.ts";
 * const options = { maxEntries: 1_000, maxAgeMs: 60_000 };
 * const storage = createSharedReplayStorage(options);
 * const inWorkerA = openSharedReplayCache(storage, options);
 * const inWorkerB = openSharedReplayCache(storage, options);
 * const clientRandom = crypto.getRandomValues(new Uint8Array(32));
 * inWorkerA.checkAndAdd(clientRandom, 1_000); // false: first time
 * inWorkerB.checkAndAdd(clientRandom, 1_000); // true: a replay
 * inWorkerA.size; // 1
 * ```
 */
export function openSharedReplayCache(
  storage: SharedArrayBuffer,
  options: ReplayCacheOptions,
): ReplayCache {
  _checkOptions(options);
  const { maxEntries, maxAgeMs } = options;
  const notStorage = () =>
    new TypeError(
      "Not shared replay storage: expected a SharedArrayBuffer from createSharedReplayStorage",
    );
  if (!(storage instanceof SharedArrayBuffer) || storage.byteLength < _HEADER_BYTES) {
    throw notStorage();
  }
  const state = new Uint32Array(storage, 0, _HEADER_WORDS);
  if (state[_H_MAGIC] !== _MAGIC) throw notStorage();
  const madeFor = {
    maxEntries: state[_H_MAX_ENTRIES]!,
    maxAgeMs: new Float64Array(storage, _H_FLOATS_AT, 2)[_F_MAX_AGE]!,
  };
  if (madeFor.maxEntries !== maxEntries || madeFor.maxAgeMs !== maxAgeMs) {
    throw new RangeError(
      `Shared replay storage was made for ${JSON.stringify(madeFor)}: got ${
        JSON.stringify({ maxEntries, maxAgeMs })
      }`,
    );
  }
  if (storage.byteLength !== _sharedLayout(maxEntries).bytes) throw notStorage();
  return new _RingReplayCache(maxEntries, maxAgeMs, storage);
}

function _checkOptions(options: ReplayCacheOptions): void {
  const { maxEntries, maxAgeMs } = options;
  if (!Number.isInteger(maxEntries) || maxEntries < 1 || maxEntries > _MAX_ENTRIES) {
    throw new RangeError(
      `Replay cache maxEntries must be an integer from 1 to ${_MAX_ENTRIES}: got ${maxEntries}`,
    );
  }
  if (!(maxAgeMs >= 1 && maxAgeMs <= _MAX_AGE_MS)) {
    throw new RangeError(
      `Replay cache maxAgeMs must be from 1 to ${_MAX_AGE_MS}: got ${maxAgeMs}`,
    );
  }
}

const _MAX_ENTRIES = 2 ** 27;
const _MAX_AGE_MS = 0x7fff_ffff;
/** Ring slots allocated up front; the ring doubles from here as keys arrive. */
const _INITIAL_SLOTS = 1024;
/** Timestamp of a slot whose key was seen again later (and so moved to a newer slot). */
const _DEAD = 0xffff_ffff;
/** Largest timestamp a slot can hold (relative to the base). */
const _MAX_TIME = 0xffff_fffe;

// Shared storage: a 64-byte header, then the ring's keys and times and the hash table, each at
// full size. The header holds a lock, what the storage was made for, and the ring's state.
const _HEADER_BYTES = 64;
const _HEADER_WORDS = _HEADER_BYTES / 4;
/** Header words (32-bit). */
const _H_LOCK = 0, _H_MAGIC = 1, _H_MAX_ENTRIES = 2, _H_SEED = 3;
const _H_TAIL = 4, _H_USED = 5, _H_LIVE = 6, _H_STARTED = 7, _H_LAST = 8;
/** Byte offset of the header's two float64 cells: the base time and maxAgeMs. */
const _H_FLOATS_AT = 48;
const _F_BASE = 0, _F_MAX_AGE = 1;
/** Marks storage made by createSharedReplayStorage ("RPL1"). */
const _MAGIC = 0x52504c31;

/** Ring slots at full growth: `maxEntries` plus one-eighth spare for dead slots. */
function _fullSlots(maxEntries: number): number {
  return maxEntries + Math.ceil(maxEntries / 8);
}

/** Power-of-two hash table size keeping the load at most 0.5 for `entries` live keys. */
function _tableSize(entries: number): number {
  let size = 4;
  while (size < entries * 2) size *= 2;
  return size;
}

/** Where the arrays of shared storage for `maxEntries` lie, and its size in bytes. */
function _sharedLayout(maxEntries: number): { slots: number; table: number; bytes: number } {
  const slots = _fullSlots(maxEntries);
  const table = _tableSize(maxEntries);
  return { slots, table, bytes: _HEADER_BYTES + slots * 20 + table * 4 };
}

/**
 * Entries live in a ring, oldest at `#tail`, in the order they were last seen, so expiry and
 * eviction pop from the tail. Per slot: four 32-bit words of key in `#keys` and a timestamp
 * (milliseconds since `#base`) in `#times`. A key seen again is appended anew and its old slot is
 * marked dead; dead slots are skipped at the tail and squeezed out when the ring fills up, which
 * is why the ring has spare slots. An open-addressing hash table (linear probing, backward-shift
 * deletion) maps each held key to its slot, storing `slot + 1` so that 0 means empty.
 *
 * Over shared storage the arrays are views of it at full size (so the ring never grows, only
 * squeezes), and the ring's state (tail, counts, clock) lives in the storage's header: each call
 * takes the header's lock, loads that state into the fields, runs exactly as in-process, and
 * stores it back before letting go.
 */
class _RingReplayCache implements ReplayCache {
  readonly #maxEntries: number;
  readonly #maxAgeMs: number;
  /** Ring size at full growth: `maxEntries` plus one-eighth spare for dead slots. */
  readonly #fullSlots: number;
  /** A random hash seed, so that chosen keys cannot aim at one hash chain. */
  readonly #seed: number;
  /** Shared storage's header as 32-bit words: the lock word and the state; null in-process. */
  readonly #lock: Int32Array | null = null;
  readonly #state: Uint32Array | null = null;
  /** Shared storage's float64 header cells (the base time). */
  readonly #floats: Float64Array | null = null;
  #slots: number;
  #keys: Int32Array;
  #times: Uint32Array;
  #table: Uint32Array;
  #mask: number;
  /** Index of the oldest slot. */
  #tail = 0;
  /** Slots in use, dead ones included, from `#tail` on. */
  #used = 0;
  /** Live entries. */
  #live = 0;
  /** `nowMs` (floored) that timestamp 0 stands for; set by the first call. */
  #base = 0;
  #started = false;
  /** The latest time seen, relative to `#base`. */
  #last = 0;

  constructor(maxEntries: number, maxAgeMs: number, storage: SharedArrayBuffer | null) {
    this.#maxEntries = maxEntries;
    this.#maxAgeMs = maxAgeMs;
    this.#fullSlots = _fullSlots(maxEntries);
    if (storage === null) {
      this.#seed = crypto.getRandomValues(new Uint32Array(1))[0]!;
      this.#slots = Math.min(this.#fullSlots, _INITIAL_SLOTS);
      this.#keys = new Int32Array(this.#slots * 4);
      this.#times = new Uint32Array(this.#slots);
      this.#table = new Uint32Array(this.#tableSizeFor(this.#slots));
    } else {
      const { slots, table } = _sharedLayout(maxEntries);
      this.#lock = new Int32Array(storage, 0, _HEADER_WORDS);
      this.#state = new Uint32Array(storage, 0, _HEADER_WORDS);
      this.#floats = new Float64Array(storage, _H_FLOATS_AT, 2);
      this.#seed = this.#state[_H_SEED]!;
      this.#slots = slots;
      this.#keys = new Int32Array(storage, _HEADER_BYTES, slots * 4);
      this.#times = new Uint32Array(storage, _HEADER_BYTES + slots * 16, slots);
      this.#table = new Uint32Array(storage, _HEADER_BYTES + slots * 20, table);
    }
    this.#mask = this.#table.length - 1;
  }

  get size(): number {
    return this.#state === null ? this.#live : Atomics.load(this.#state, _H_LIVE);
  }

  checkAndAdd(key: Uint8Array, nowMs: number): boolean {
    const lock = this.#lock;
    if (lock === null) return this.#record(key, nowMs);
    lockShared(lock, _H_LOCK);
    try {
      this.#load();
      const seen = this.#record(key, nowMs);
      this.#store();
      return seen;
    } finally {
      unlockShared(lock, _H_LOCK);
    }
  }

  /** The work of `checkAndAdd`, on the fields (loaded from shared storage when there is one). */
  #record(key: Uint8Array, nowMs: number): boolean {
    if (key.length < REPLAY_KEY_BYTES) {
      throw new RangeError(
        `Replay key must be at least ${REPLAY_KEY_BYTES} bytes: got ${key.length}`,
      );
    }
    if (!Number.isFinite(nowMs)) throw new RangeError(`Replay time must be finite: got ${nowMs}`);
    const k0 = _word(key, 0), k1 = _word(key, 4), k2 = _word(key, 8), k3 = _word(key, 12);
    const now = this.#advanceClock(nowMs);
    const hash = _hash(k0, k1, k2, k3, this.#seed);

    let seen = false;
    const keys = this.#keys;
    for (let i = hash & this.#mask;; i = (i + 1) & this.#mask) {
      const entry = this.#table[i]!;
      if (entry === 0) break;
      const at = (entry - 1) * 4;
      if (keys[at] === k0 && keys[at + 1] === k1 && keys[at + 2] === k2 && keys[at + 3] === k3) {
        seen = true;
        this.#tableDeleteAt(i);
        this.#times[entry - 1] = _DEAD;
        this.#live--;
        break;
      }
    }

    // After #expire the tail slot is live (or the ring is empty), and it stays live unless this
    // key was there, in which case the cache is no longer full.
    if (this.#live === this.#maxEntries) this.#popTail();
    if (this.#used === this.#slots) this.#rebuild();
    let slot = this.#tail + this.#used;
    if (slot >= this.#slots) slot -= this.#slots;
    const at = slot * 4;
    this.#keys[at] = k0;
    this.#keys[at + 1] = k1;
    this.#keys[at + 2] = k2;
    this.#keys[at + 3] = k3;
    this.#times[slot] = now;
    this.#used++;
    this.#live++;
    this.#tableInsert(slot, hash);
    return seen;
  }

  /** Read the ring's state from shared storage (under its lock). */
  #load(): void {
    const state = this.#state!;
    this.#tail = state[_H_TAIL]!;
    this.#used = state[_H_USED]!;
    this.#live = state[_H_LIVE]!;
    this.#started = state[_H_STARTED] === 1;
    this.#last = state[_H_LAST]!;
    this.#base = this.#floats![_F_BASE]!;
  }

  /** Write the ring's state back to shared storage (before letting go of its lock). */
  #store(): void {
    const state = this.#state!;
    state[_H_TAIL] = this.#tail;
    state[_H_USED] = this.#used;
    Atomics.store(state, _H_LIVE, this.#live);
    state[_H_STARTED] = this.#started ? 1 : 0;
    state[_H_LAST] = this.#last;
    this.#floats![_F_BASE] = this.#base;
  }

  /** Turn `nowMs` into a timestamp relative to `#base`, dropping expired entries on the way. */
  #advanceClock(nowMs: number): number {
    const ms = Math.floor(nowMs);
    if (!this.#started) {
      this.#started = true;
      this.#base = ms;
    }
    const now = Math.max(ms - this.#base, this.#last);
    this.#last = now;
    this.#expire(now);
    if (now <= _MAX_TIME) return now;
    // Every live entry is now at most maxAgeMs old, so shifting the base to now - maxAgeMs keeps
    // all timestamps non-negative and leaves at least 2^31 ms before the next shift.
    const shift = now - this.#maxAgeMs;
    const times = this.#times;
    for (let n = 0, s = this.#tail; n < this.#used; n++, s = this.#next(s)) {
      if (times[s] !== _DEAD) times[s] = times[s]! - shift;
    }
    this.#base += shift;
    this.#last = now - shift;
    return this.#last;
  }

  /** Pop dead slots and entries older than maxAgeMs from the tail. */
  #expire(now: number): void {
    while (this.#used > 0) {
      const t = this.#times[this.#tail]!;
      if (t !== _DEAD && now - t <= this.#maxAgeMs) return;
      this.#popTail();
    }
  }

  #popTail(): void {
    const slot = this.#tail;
    if (this.#times[slot] !== _DEAD) {
      this.#tableDelete(slot);
      this.#live--;
    }
    this.#tail = this.#next(slot);
    this.#used--;
  }

  /**
   * Called when every ring slot is in use: squeeze out dead slots, and grow the ring (up to
   * `#fullSlots`) when at least half of it is live. Either way the hash table is built anew.
   */
  #rebuild(): void {
    const grow = this.#slots < this.#fullSlots && this.#live * 2 >= this.#slots;
    const slots = grow ? Math.min(this.#slots * 2, this.#fullSlots) : this.#slots;
    const keys = grow ? new Int32Array(slots * 4) : this.#keys;
    const times = grow ? new Uint32Array(slots) : this.#times;
    // Copy live slots in order; in place, the write index never passes the read index.
    let write = grow ? 0 : this.#tail;
    for (let n = 0, read = this.#tail; n < this.#used; n++, read = this.#next(read)) {
      if (this.#times[read] === _DEAD) continue;
      if (grow || read !== write) {
        for (let w = 0; w < 4; w++) keys[write * 4 + w] = this.#keys[read * 4 + w]!;
        times[write] = this.#times[read]!;
      }
      write = write + 1 === slots ? 0 : write + 1;
    }
    if (grow) {
      this.#tail = 0;
      this.#slots = slots;
      this.#keys = keys;
      this.#times = times;
      this.#table = new Uint32Array(this.#tableSizeFor(slots));
      this.#mask = this.#table.length - 1;
    } else {
      this.#table.fill(0);
    }
    this.#used = this.#live;
    for (let n = 0, s = this.#tail; n < this.#used; n++, s = this.#next(s)) {
      this.#tableInsert(s, this.#slotHash(s));
    }
  }

  /** Power-of-two table size keeping the load at most 0.5 for as many entries as can be live. */
  #tableSizeFor(slots: number): number {
    return _tableSize(Math.min(slots, this.#maxEntries));
  }

  #slotHash(slot: number): number {
    const keys = this.#keys, at = slot * 4;
    return _hash(keys[at]!, keys[at + 1]!, keys[at + 2]!, keys[at + 3]!, this.#seed);
  }

  #tableInsert(slot: number, hash: number): void {
    let i = hash & this.#mask;
    while (this.#table[i] !== 0) i = (i + 1) & this.#mask;
    this.#table[i] = slot + 1;
  }

  /**
   * Only ever called for the oldest entry, which in fact always sits at its home index (entries
   * between an entry's home and its index are older than it, and backward shifts keep it so); the
   * probe loop is there for safety.
   */
  #tableDelete(slot: number): void {
    let i = this.#slotHash(slot) & this.#mask;
    while (this.#table[i] !== slot + 1) i = (i + 1) & this.#mask;
    this.#tableDeleteAt(i);
  }

  /** Empty table index `hole`, moving later entries of its probe run back so lookups still work. */
  #tableDeleteAt(hole: number): void {
    const table = this.#table, mask = this.#mask;
    for (let i = (hole + 1) & mask;; i = (i + 1) & mask) {
      const entry = table[i]!;
      if (entry === 0) break;
      // The entry may fill the hole unless its home lies cyclically in (hole, i].
      const home = this.#slotHash(entry - 1) & mask;
      if (((i - home) & mask) >= ((i - hole) & mask)) {
        table[hole] = entry;
        hole = i;
      }
    }
    table[hole] = 0;
  }

  #next(slot: number): number {
    return slot + 1 === this.#slots ? 0 : slot + 1;
  }
}

/** Little-endian 32-bit word of `bytes` at `at`. */
function _word(bytes: Uint8Array, at: number): number {
  return bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24);
}

/** Mix a 16-byte key and a seed into 32 bits (murmur3-style multiply and shift rounds). */
function _hash(a: number, b: number, c: number, d: number, seed: number): number {
  let h = Math.imul(seed ^ a, 0xcc9e2d51);
  h = Math.imul(h ^ (h >>> 15) ^ b, 0x1b873593);
  h = Math.imul(h ^ (h >>> 13) ^ c, 0xcc9e2d51);
  h = Math.imul(h ^ (h >>> 16) ^ d, 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}
