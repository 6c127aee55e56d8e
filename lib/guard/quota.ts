/**
 * What each user has used, and what their limits need to remember: bytes moved in the current
 * quota period (`data_quota`, `quota_reset`), the unique client addresses seen
 * (`max_unique_ips`, see `unique_ips.ts`) and the bandwidth bucket (`rate_limit`, see
 * `rate_limit.ts`). One {@linkcode UserLedger} per proxy, in a `SharedArrayBuffer`: worker
 * threads each open it and change it synchronously under one lock, so the limits hold for the
 * proxy as a whole. The bytes used are persisted by {@linkcode UsageStore} (one writer: the
 * main thread), so that a restart does not give anyone a fresh quota.
 *
 * @module
 */
import { writeFileAtomic } from "../config/atomic_file.ts";
import type { QuotaReset, UserConfig } from "../config/types.ts";
import { lockShared, unlockShared } from "./shared_lock.ts";
import { BUCKET_AT, takeTokens } from "./rate_limit.ts";
import {
  admitIp,
  copyIps,
  countIps,
  IP_SLOT_CELLS,
  type IpTable,
  ipTableSlots,
  touchIp,
} from "./unique_ips.ts";
import { parseIp16 } from "./policy.ts";

/** A user's usage as the admin API shows it. */
export interface UserUsage {
  name: string;
  /** Connections open now (all workers). */
  connections: number;
  /** Client addresses seen within `unique_ip_window`. */
  uniqueIps: number;
  /** Bytes both ways in the current quota period (since the first start without quota_reset). */
  bytesUsed: number;
  /** Bytes left of `data_quota` (0 when used up); null without a quota. */
  quotaLeft: number | null;
  /** Unix ms when the current quota period began; null without quota_reset. */
  periodStart: number | null;
}

/** What {@linkcode UserLedger.charge} returns when the user's quota is used up. */
export const QUOTA_EXCEEDED = -1;

/** The usage file's name, in the state file's directory. */
export const USAGE_FILE_NAME = "mtproxy-usage.json";

/** How often a server sees the addresses of its connected clients again (max_unique_ips). */
export const USER_IP_TOUCH_MS = 10_000;

/** How often changed usage is written to the usage file. */
export const USAGE_FLUSH_MS = 10_000;

/**
 * When the quota period holding `nowMs` began (UTC): midnight for daily, Monday midnight for
 * weekly, the 1st of the month for monthly; null when the quota never resets.
 *
 * @example Usage
 * ```ts
 * import { quotaPeriodStart } from "./quota.ts";
 * const t = Date.UTC(2026, 11, 9, 15, 30); // Wednesday 9 December 2026
 * new Date(quotaPeriodStart("monthly", t)!).toISOString(); // "2026-12-01T00:00:00.000Z"
 * new Date(quotaPeriodStart("weekly", t)!).toISOString(); // "2026-12-07T00:00:00.000Z"
 * new Date(quotaPeriodStart("daily", t)!).toISOString(); // "2026-12-09T00:00:00.000Z"
 * ```
 */
export function quotaPeriodStart(reset: QuotaReset | null, nowMs: number): number | null {
  if (reset === null) return null;
  const d = new Date(nowMs);
  const y = d.getUTCFullYear(), m = d.getUTCMonth(), day = d.getUTCDate();
  if (reset === "monthly") return Date.UTC(y, m, 1);
  if (reset === "daily") return Date.UTC(y, m, day);
  // Weeks start on Monday (ISO 8601).
  return Date.UTC(y, m, day - ((d.getUTCDay() + 6) % 7));
}

/** How big a ledger to make. */
export interface UserLedgerSize {
  /** Users it can hold (more are kept per thread, not shared). */
  users: number;
  /** Address slots for every user's unique-IP table together. */
  ipSlots: number;
}

/**
 * The size of ledger that `users` need, with room for reloads that add users or raise limits.
 *
 * @example Usage
 * ```ts
 * import { ledgerSizeFor } from "./quota.ts";
 * ledgerSizeFor([]).users; // 4096
 * ```
 */
export function ledgerSizeFor(users: readonly UserConfig[]): UserLedgerSize {
  let ipSlots = 0;
  for (const u of users) if (u.maxUniqueIps > 0) ipSlots += ipTableSlots(u.maxUniqueIps);
  // Memory the threads never touch costs nothing resident: be generous with room for reloads
  // (a user added by the admin API later needs a record, and maybe an address table).
  return {
    users: Math.min(_MAX_USERS, Math.max(4096, users.length * 2 + 1024)),
    ipSlots: Math.min(_MAX_IP_SLOTS, ipSlots * 2 + 65_536),
  };
}

/**
 * Memory for a {@linkcode UserLedger}; open it with {@linkcode openUserLedger} in each thread.
 *
 * @example Usage
 * ```ts
 * import { createUserLedger, openUserLedger } from "./quota.ts";
 * const ledger = openUserLedger(createUserLedger({ users: 16, ipSlots: 64 }));
 * ```
 */
export function createUserLedger(size: UserLedgerSize): SharedArrayBuffer {
  const users = Math.max(1, Math.min(_MAX_USERS, Math.floor(size.users)));
  const ipSlots = Math.max(0, Math.min(_MAX_IP_SLOTS, Math.floor(size.ipSlots)));
  const storage = new SharedArrayBuffer(_HEADER_BYTES + users * _RECORD_BYTES + ipSlots * 32);
  const head = new Int32Array(storage, 0, _HEADER_BYTES / 4);
  head[_H_MAGIC] = _MAGIC;
  head[_H_USERS] = users;
  head[_H_IP_SLOTS] = ipSlots;
  return storage;
}

/**
 * Open the ledger in `storage` (from {@linkcode createUserLedger}); every thread that opens the
 * same storage sees and changes the same figures.
 *
 * @example Usage
 * ```ts
 * import { createUserLedger, openUserLedger } from "./quota.ts";
 * const storage = createUserLedger({ users: 16, ipSlots: 64 });
 * const here = openUserLedger(storage), there = openUserLedger(storage);
 * here.restore("alice", 100, null);
 * there.entries(); // [{ name: "alice", bytes: 100, periodStart: null }]
 * ```
 */
export function openUserLedger(storage: SharedArrayBuffer): UserLedger {
  if (!(storage instanceof SharedArrayBuffer) || storage.byteLength < _HEADER_BYTES) {
    throw new TypeError("Not a user ledger: expected a SharedArrayBuffer from createUserLedger");
  }
  const head = new Int32Array(storage, 0, _HEADER_BYTES / 4);
  if (head[_H_MAGIC] !== _MAGIC) {
    throw new TypeError("Not a user ledger: expected a SharedArrayBuffer from createUserLedger");
  }
  return new UserLedger(storage);
}

const _MAX_USERS = 1 << 20;
const _MAX_IP_SLOTS = 1 << 21;
const _HEADER_BYTES = 64;
/** Header words: lock, magic, user records held and used, address slots held and used. */
const _H_LOCK = 0, _H_MAGIC = 1, _H_USERS = 2, _H_COUNT = 3, _H_IP_SLOTS = 4, _H_IP_USED = 5;
/** Marks storage from createUserLedger ("ULG1"). */
const _MAGIC = 0x554c4731;
/**
 * A user record: Float64 cells for bytes used, period start (NaN: none) and the bucket; Int32
 * words for the name's length, its address table (first slot, slots); the name (64 bytes).
 */
const _RECORD_BYTES = 128;
const _R_CELLS = _RECORD_BYTES / 8;
const _C_BYTES = 0, _C_PERIOD = 1, _C_BUCKET = 2;
const _W_NAME_LENGTH = 10, _W_IP_BASE = 11, _W_IP_SLOTS = 12;
const _NAME_AT = 64;
const _NAME_BYTES = 64;

/** Per-user figures shared by the threads of one proxy; see {@linkcode openUserLedger}. */
export class UserLedger {
  readonly #head: Int32Array;
  readonly #f64: Float64Array;
  readonly #i32: Int32Array;
  readonly #bytes: Uint8Array;
  readonly #ipF64: Float64Array;
  readonly #ipI32: Int32Array;
  readonly #ipSlots: number;
  /** This thread's name -> record index (records are never removed, so it never goes stale). */
  readonly #index = new Map<string, number>();
  /** Users that did not fit: kept in a ledger of this thread's own. */
  #spill: UserLedger | null = null;
  readonly #encoder = new TextEncoder();
  /** Times each user's relay was paused by the rate limit, in this thread. */
  readonly pauses: Map<string, number> = new Map();
  /** New addresses let in without being counted because the address tables were full. */
  untracked = 0;
  /**
   * Told once when a user does not fit any more (more users than the ledger was made for, after
   * reloads): that user's figures are then kept by this thread alone.
   */
  onSpill: ((name: string) => void) | null = null;

  constructor(storage: SharedArrayBuffer) {
    this.#head = new Int32Array(storage, 0, _HEADER_BYTES / 4);
    const users = this.#head[_H_USERS]!;
    const recordsEnd = _HEADER_BYTES + users * _RECORD_BYTES;
    this.#f64 = new Float64Array(storage, _HEADER_BYTES, users * _R_CELLS);
    this.#i32 = new Int32Array(storage, _HEADER_BYTES, users * _R_CELLS * 2);
    this.#bytes = new Uint8Array(storage, _HEADER_BYTES, users * _RECORD_BYTES);
    this.#ipSlots = this.#head[_H_IP_SLOTS]!;
    this.#ipF64 = new Float64Array(storage, recordsEnd, this.#ipSlots * IP_SLOT_CELLS);
    this.#ipI32 = new Int32Array(storage, recordsEnd, this.#ipSlots * IP_SLOT_CELLS * 2);
  }

  /**
   * Count `bytes` moved by `user` at `nowMs`: how many ms their relay should wait before it
   * reads again (0 without a rate limit or within it), or {@linkcode QUOTA_EXCEEDED} once the
   * bytes used reach `data_quota`.
   */
  charge(user: UserConfig, bytes: number, nowMs: number): number {
    const r = this.#record(user.name);
    if (r < 0) return this.#spilled(user.name).charge(user, bytes, nowMs);
    const head = this.#head, f64 = this.#f64, at = r * _R_CELLS;
    lockShared(head, _H_LOCK);
    try {
      this.#roll(at, user.quotaReset, nowMs);
      const used = (f64[at + _C_BYTES] = f64[at + _C_BYTES]! + bytes);
      if (user.dataQuotaBytes !== null && used >= user.dataQuotaBytes) return QUOTA_EXCEEDED;
      const rate = user.rateLimitBytesPerSec;
      if (rate === null || (bytes === 0 && f64[at + _C_BUCKET + BUCKET_AT] === 0)) return 0;
      const wait = takeTokens(f64, at + _C_BUCKET, bytes, nowMs, rate);
      if (wait > 0 && bytes > 0) this.pauses.set(user.name, (this.pauses.get(user.name) ?? 0) + 1);
      return wait;
    } finally {
      unlockShared(head, _H_LOCK);
    }
  }

  /** Bytes `user` has used in the quota period holding `nowMs`. */
  used(user: UserConfig, nowMs: number): number {
    const r = this.#record(user.name);
    if (r < 0) return this.#spilled(user.name).used(user, nowMs);
    lockShared(this.#head, _H_LOCK);
    try {
      this.#roll(r * _R_CELLS, user.quotaReset, nowMs);
      return this.#f64[r * _R_CELLS + _C_BYTES]!;
    } finally {
      unlockShared(this.#head, _H_LOCK);
    }
  }

  /**
   * May `user` connect from `ip` at `nowMs` under `max_unique_ips`? True for an address seen
   * within the window or when there is room for one more; false when the limit is reached.
   */
  admitIp(user: UserConfig, ip: string, nowMs: number): boolean {
    if (user.maxUniqueIps <= 0) return true;
    const bytes = parseIp16(ip);
    if (!bytes) return true;
    const r = this.#record(user.name);
    if (r < 0) return this.#spilled(user.name).admitIp(user, ip, nowMs);
    lockShared(this.#head, _H_LOCK);
    try {
      const table = this.#table(r, user, nowMs);
      if (!table) {
        this.untracked++;
        return true;
      }
      return admitIp(table, bytes, nowMs, {
        limit: user.maxUniqueIps,
        windowMs: user.uniqueIpWindowMs,
      }) !== "full";
    } finally {
      unlockShared(this.#head, _H_LOCK);
    }
  }

  /** A client of `user` from `ip` is still connected at `nowMs`: its address stays counted. */
  touchIp(user: UserConfig, ip: string, nowMs: number): void {
    if (user.maxUniqueIps <= 0) return;
    const bytes = parseIp16(ip);
    if (!bytes) return;
    const r = this.#record(user.name);
    if (r < 0) return this.#spilled(user.name).touchIp(user, ip, nowMs);
    lockShared(this.#head, _H_LOCK);
    try {
      const table = this.#existingTable(r);
      if (table) touchIp(table, bytes, nowMs);
    } finally {
      unlockShared(this.#head, _H_LOCK);
    }
  }

  /** Addresses `user` was seen from within their window (0 without max_unique_ips). */
  uniqueIps(user: UserConfig, nowMs: number): number {
    const r = this.#record(user.name);
    if (r < 0) return this.#spilled(user.name).uniqueIps(user, nowMs);
    lockShared(this.#head, _H_LOCK);
    try {
      const table = this.#existingTable(r);
      return table ? countIps(table, nowMs, user.uniqueIpWindowMs) : 0;
    } finally {
      unlockShared(this.#head, _H_LOCK);
    }
  }

  /** When `user`'s current quota period began (as last charged); null without quota_reset. */
  periodStart(user: UserConfig, nowMs: number): number | null {
    if (user.quotaReset === null) return null;
    this.used(user, nowMs);
    return quotaPeriodStart(user.quotaReset, nowMs);
  }

  /** Set what `name` has used (from the usage file, at start). */
  restore(name: string, bytes: number, periodStart: number | null): void {
    const r = this.#record(name);
    if (r < 0) return this.#spilled(name).restore(name, bytes, periodStart);
    lockShared(this.#head, _H_LOCK);
    try {
      this.#f64[r * _R_CELLS + _C_BYTES] = bytes;
      this.#f64[r * _R_CELLS + _C_PERIOD] = periodStart ?? NaN;
    } finally {
      unlockShared(this.#head, _H_LOCK);
    }
  }

  /**
   * Add `bytes` to what `name` has used if the record is still in period `periodStart` (another
   * process sharing the usage file used them).
   */
  absorb(name: string, bytes: number, periodStart: number | null): void {
    const r = this.#record(name);
    if (r < 0) return this.#spilled(name).absorb(name, bytes, periodStart);
    lockShared(this.#head, _H_LOCK);
    try {
      const at = r * _R_CELLS;
      if (_samePeriod(this.#f64[at + _C_PERIOD]!, periodStart)) {
        this.#f64[at + _C_BYTES] = this.#f64[at + _C_BYTES]! + bytes;
      }
    } finally {
      unlockShared(this.#head, _H_LOCK);
    }
  }

  /** Every user's bytes used and period, as last charged (for the usage file). */
  entries(): { name: string; bytes: number; periodStart: number | null }[] {
    const out: { name: string; bytes: number; periodStart: number | null }[] = [];
    const dec = new TextDecoder();
    lockShared(this.#head, _H_LOCK);
    try {
      const n = Atomics.load(this.#head, _H_COUNT);
      for (let r = 0; r < n; r++) {
        const at = r * _R_CELLS;
        const len = this.#i32[r * _R_CELLS * 2 + _W_NAME_LENGTH]!;
        const from = r * _RECORD_BYTES + _NAME_AT;
        // Copied out of shared memory: TextDecoder does not read shared buffers.
        const name = dec.decode(this.#bytes.slice(from, from + len));
        const period = this.#f64[at + _C_PERIOD]!;
        out.push({
          name,
          bytes: this.#f64[at + _C_BYTES]!,
          periodStart: Number.isNaN(period) ? null : period,
        });
      }
    } finally {
      unlockShared(this.#head, _H_LOCK);
    }
    if (this.#spill) out.push(...this.#spill.entries());
    return out;
  }

  /** Start a new quota period if `nowMs` is past the record's (lock held). */
  #roll(at: number, reset: QuotaReset | null, nowMs: number): void {
    if (reset === null) return;
    const start = quotaPeriodStart(reset, nowMs)!;
    if (this.#f64[at + _C_PERIOD] !== start) {
      this.#f64[at + _C_PERIOD] = start;
      this.#f64[at + _C_BYTES] = 0;
    }
  }

  /** The record index of `name`, made if new; -1 when the ledger is full. */
  #record(name: string): number {
    const known = this.#index.get(name);
    if (known !== undefined) return known;
    const key = this.#encoder.encode(name).subarray(0, _NAME_BYTES);
    const head = this.#head, bytes = this.#bytes, i32 = this.#i32;
    lockShared(head, _H_LOCK);
    try {
      const n = head[_H_COUNT]!;
      for (let r = 0; r < n; r++) {
        if (i32[r * _R_CELLS * 2 + _W_NAME_LENGTH] !== key.length) continue;
        const from = r * _RECORD_BYTES + _NAME_AT;
        let j = 0;
        while (j < key.length && bytes[from + j] === key[j]) j++;
        if (j === key.length) {
          this.#index.set(name, r);
          return r;
        }
      }
      if (n >= head[_H_USERS]!) return -1;
      const at = n * _R_CELLS;
      this.#f64.fill(0, at, at + _R_CELLS);
      this.#f64[at + _C_PERIOD] = NaN;
      i32[at * 2 + _W_NAME_LENGTH] = key.length;
      bytes.set(key, n * _RECORD_BYTES + _NAME_AT);
      Atomics.store(head, _H_COUNT, n + 1);
      this.#index.set(name, n);
      return n;
    } finally {
      unlockShared(head, _H_LOCK);
    }
  }

  /** The address table of record `r`, if it has one (lock held). */
  #existingTable(r: number): IpTable | null {
    const w = r * _R_CELLS * 2;
    const slots = this.#i32[w + _W_IP_SLOTS]!;
    if (slots === 0) return null;
    return { f64: this.#ipF64, i32: this.#ipI32, base: this.#i32[w + _W_IP_BASE]!, slots };
  }

  /** The address table of record `r`, made or grown for `user`'s limit; null when full. */
  #table(r: number, user: UserConfig, nowMs: number): IpTable | null {
    const w = r * _R_CELLS * 2;
    const old = this.#existingTable(r);
    const slots = ipTableSlots(user.maxUniqueIps);
    if (old && old.slots >= slots) return old;
    const used = this.#head[_H_IP_USED]!;
    if (used + slots > this.#ipSlots) return old;
    this.#head[_H_IP_USED] = used + slots;
    const table = { f64: this.#ipF64, i32: this.#ipI32, base: used, slots };
    this.#ipF64.fill(0, used * IP_SLOT_CELLS, (used + slots) * IP_SLOT_CELLS);
    if (old) copyIps(old, table, nowMs - user.uniqueIpWindowMs);
    this.#i32[w + _W_IP_BASE] = used;
    this.#i32[w + _W_IP_SLOTS] = slots;
    return table;
  }

  #spilled(name: string): UserLedger {
    if (this.#spill === null) this.onSpill?.(name);
    return this.#spill ??= openUserLedger(createUserLedger({ users: 16_384, ipSlots: 65_536 }));
  }
}

/**
 * Each of `users`' usage from `ledger` at `nowMs`, with their connections from `connections`
 * (the supervisor's shared counts, or a server's own sessions).
 *
 * @example Usage
 * ```ts
 * import { createUserLedger, openUserLedger, usageOf } from "./quota.ts";
 * const ledger = openUserLedger(createUserLedger({ users: 16, ipSlots: 64 }));
 * usageOf([], ledger, Date.now(), () => 0); // []
 * ```
 */
export function usageOf(
  users: readonly UserConfig[],
  ledger: UserLedger,
  nowMs: number,
  connections: (name: string) => number,
): UserUsage[] {
  return users.map((u) => {
    const bytesUsed = ledger.used(u, nowMs);
    return {
      name: u.name,
      connections: connections(u.name),
      uniqueIps: ledger.uniqueIps(u, nowMs),
      bytesUsed,
      quotaLeft: u.dataQuotaBytes === null ? null : Math.max(0, u.dataQuotaBytes - bytesUsed),
      periodStart: ledger.periodStart(u, nowMs),
    };
  });
}

function _samePeriod(cell: number, periodStart: number | null): boolean {
  return periodStart === null ? Number.isNaN(cell) : cell === periodStart;
}

/** One user in the usage file. */
interface _FileEntry {
  bytes: number;
  periodStart: number | null;
}

/** Options of {@linkcode UsageStore}. */
export interface UsageStoreOptions {
  /** Told of problems with the file (never thrown). */
  warn(message: string): void;
  /** @default {Date.now} */
  now?: () => number;
}

/**
 * The usage file: every user's bytes used and quota period, read at start and written (to a
 * temporary file, then renamed over it) every {@linkcode USAGE_FLUSH_MS} when something changed,
 * and once more at shutdown. Two processes may share it (an upgrade runs the old and the new
 * side by side): each write adds what this process used since its last write to what the file
 * says, and takes in what the other added.
 *
 * @example Usage
 * ```ts ignore
 * const store = new UsageStore("/var/lib/mtproxy/mtproxy-usage.json", ledger, { warn: console.warn });
 * await store.load();
 * store.start();
 * // ... at shutdown:
 * await store.stop();
 * ```
 */
export class UsageStore {
  readonly #path: string;
  readonly #ledger: UserLedger;
  readonly #options: UsageStoreOptions;
  /** What this process last read from or wrote to the file, per user. */
  #base = new Map<string, _FileEntry>();
  #timer: ReturnType<typeof setInterval> | null = null;
  #flushing: Promise<void> | null = null;

  constructor(path: string, ledger: UserLedger, options: UsageStoreOptions) {
    this.#path = path;
    this.#ledger = ledger;
    this.#options = options;
  }

  /** Where the file is. */
  get path(): string {
    return this.#path;
  }

  /** Read the file into the ledger; a missing file is an empty one, a broken one is reported. */
  async load(): Promise<void> {
    const file = await this.#read();
    for (const [name, e] of file) this.#ledger.restore(name, e.bytes, e.periodStart);
    this.#base = file;
  }

  /** Flush every {@linkcode USAGE_FLUSH_MS} from now on. */
  start(): void {
    if (this.#timer !== null) return;
    this.#timer = setInterval(() => void this.flush(), USAGE_FLUSH_MS);
    Deno.unrefTimer(this.#timer);
  }

  /** Stop the timer and flush once more. */
  async stop(): Promise<void> {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    await this.flush();
  }

  /** Write the file if anything changed since the last write. Never rejects. */
  flush(): Promise<void> {
    // One write at a time; a flush asked for during one runs after it.
    const run = (this.#flushing ?? Promise.resolve()).then(() => this.#flush());
    const tracked = run.finally(() => {
      if (this.#flushing === tracked) this.#flushing = null;
    });
    this.#flushing = tracked;
    return tracked;
  }

  async #flush(): Promise<void> {
    const mine = this.#ledger.entries();
    const changed = mine.some((e) => {
      const b = this.#base.get(e.name);
      return !b || b.bytes !== e.bytes || b.periodStart !== e.periodStart;
    });
    if (!changed) return;
    const file = await this.#read({ quiet: true });
    const out = new Map(file);
    for (const e of mine) {
      const base = this.#base.get(e.name);
      const baseBytes = base && base.periodStart === e.periodStart ? base.bytes : 0;
      const theirs = file.get(e.name);
      if (theirs && theirs.periodStart === e.periodStart) {
        // Another process wrote since our last look: count its bytes here too.
        const added = theirs.bytes - baseBytes;
        if (added > 0) this.#ledger.absorb(e.name, added, e.periodStart);
        out.set(e.name, {
          bytes: theirs.bytes + (e.bytes - baseBytes),
          periodStart: e.periodStart,
        });
      } else if (
        theirs && theirs.periodStart !== null && e.periodStart !== null &&
        theirs.periodStart > e.periodStart
      ) {
        // The file is in a later period already (our record is not charged since): keep it.
        out.set(e.name, theirs);
      } else {
        out.set(e.name, { bytes: e.bytes, periodStart: e.periodStart });
      }
    }
    try {
      await writeFileAtomic(this.#path, _encode(out, this.#options.now?.() ?? Date.now()));
      this.#base = out;
    } catch (e) {
      this.#options.warn(
        `Cannot write the usage file ${this.#path}: ${
          e instanceof Error ? e.message : String(e)
        }; trying again in ${USAGE_FLUSH_MS / 1000} s`,
      );
    }
  }

  async #read(options: { quiet?: boolean } = {}): Promise<Map<string, _FileEntry>> {
    let text: string;
    try {
      text = await Deno.readTextFile(this.#path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return new Map();
      if (!options.quiet) {
        this.#options.warn(
          `Cannot read the usage file ${this.#path} (${
            e instanceof Error ? e.message : String(e)
          }): every user's data usage starts from zero`,
        );
      }
      return new Map();
    }
    const parsed = parseUsageFile(text);
    if (typeof parsed === "string") {
      if (!options.quiet) {
        this.#options.warn(
          `The usage file ${this.#path} is broken (${parsed}): every user's data usage starts from zero; it is rewritten at the next flush`,
        );
      }
      return new Map();
    }
    return parsed;
  }
}

/**
 * Read the usage file's text: user name -> bytes used and period start, or what is wrong with it.
 *
 * @example Usage
 * ```ts
 * import { parseUsageFile } from "./quota.ts";
 * const got = parseUsageFile('{"version":1,"users":{"alice":{"bytes":5,"period_start":null}}}');
 * typeof got === "string" ? got : got.get("alice")?.bytes; // 5
 * parseUsageFile("{"); // "not JSON"
 * ```
 */
export function parseUsageFile(
  text: string,
): Map<string, { bytes: number; periodStart: number | null }> | string {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return "not JSON";
  }
  if (typeof raw !== "object" || raw === null || (raw as { version?: unknown }).version !== 1) {
    return 'not a version 1 usage file (expected {"version": 1, "users": {...}})';
  }
  const users = (raw as { users?: unknown }).users;
  if (typeof users !== "object" || users === null || Array.isArray(users)) {
    return '"users" must be an object';
  }
  const out = new Map<string, { bytes: number; periodStart: number | null }>();
  for (const [name, v] of Object.entries(users)) {
    const e = v as { bytes?: unknown; period_start?: unknown } | null;
    const bytes = e?.bytes;
    if (typeof bytes !== "number" || !(bytes >= 0) || !Number.isFinite(bytes)) {
      return `users.${name}.bytes must be a number of bytes`;
    }
    const ps = e?.period_start ?? null;
    const periodStart = ps === null ? null : typeof ps === "string" ? Date.parse(ps) : NaN;
    if (periodStart !== null && !Number.isFinite(periodStart)) {
      return `users.${name}.period_start must be an ISO 8601 date-time or null`;
    }
    out.set(name, { bytes, periodStart });
  }
  return out;
}

function _encode(entries: ReadonlyMap<string, _FileEntry>, nowMs: number): string {
  const users: Record<string, { bytes: number; period_start: string | null }> = {};
  for (const [name, e] of [...entries].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)) {
    users[name] = {
      bytes: e.bytes,
      period_start: e.periodStart === null ? null : new Date(e.periodStart).toISOString(),
    };
  }
  return JSON.stringify(
    { version: 1, updated_at: new Date(nowMs).toISOString(), users },
    null,
    2,
  ) + "\n";
}
