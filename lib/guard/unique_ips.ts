/**
 * A user's unique client addresses (`users.NAME.max_unique_ips` within `unique_ip_window`): a
 * small open-addressing table per user, of `ipTableSlots(limit)` slots, each an IP address (16
 * bytes, IPv4 mapped) and when it was last seen. An address counts while it was seen within the
 * window; the server sees it again while its clients stay connected.
 *
 * Pure: the table lives in arrays the caller gives (views of one buffer, plain or shared memory,
 * guarded by the caller's lock when threads share it), at slot `base`. A slot takes
 * {@linkcode IP_SLOT_CELLS} Float64 cells: the time last seen (0: empty), the address as four
 * Int32 words, and a spare cell.
 *
 * @module
 */

/** Float64 cells per slot (32 bytes). */
export const IP_SLOT_CELLS = 4;

/** What {@linkcode admitIp} decided. */
export type IpAdmission = "known" | "added" | "full";

/**
 * Slots of the table for `limit` addresses: a power of two, at least twice the limit, so that
 * probes stay short and there is always an empty slot.
 *
 * @example Usage
 * ```ts
 * import { ipTableSlots } from "./unique_ips.ts";
 * ipTableSlots(3); // 8
 * ```
 */
export function ipTableSlots(limit: number): number {
  let n = 4;
  while (n < limit * 2) n *= 2;
  return n;
}

/** A table at slot `base` of `slots` slots, over `f64` and `i32` views of one buffer. */
export interface IpTable {
  readonly f64: Float64Array;
  readonly i32: Int32Array;
  readonly base: number;
  readonly slots: number;
}

/**
 * Admit a client from `ip` (16 bytes) at `nowMs` for a user allowed `limit` addresses seen within
 * `windowMs`: "known" (seen within the window: its time is refreshed), "added" (a new address,
 * and there was room), or "full" (a new address, and `limit` others were seen within the window:
 * nothing changes). Addresses whose window has passed are dropped as a new one is added.
 *
 * @example Usage
 * ```ts
 * import { admitIp, IP_SLOT_CELLS, ipTableSlots } from "./unique_ips.ts";
 * const slots = ipTableSlots(1);
 * const buf = new ArrayBuffer(slots * IP_SLOT_CELLS * 8);
 * const table = { f64: new Float64Array(buf), i32: new Int32Array(buf), base: 0, slots };
 * const a = new Uint8Array(16).fill(1), b = new Uint8Array(16).fill(2);
 * admitIp(table, a, 1000, { limit: 1, windowMs: 60_000 }); // "added"
 * admitIp(table, b, 2000, { limit: 1, windowMs: 60_000 }); // "full"
 * admitIp(table, a, 3000, { limit: 1, windowMs: 60_000 }); // "known"
 * admitIp(table, b, 70_000, { limit: 1, windowMs: 60_000 }); // "added": a's window has passed
 * ```
 */
export function admitIp(
  table: IpTable,
  ip: Uint8Array,
  nowMs: number,
  options: { limit: number; windowMs: number },
): IpAdmission {
  const { f64, i32, base, slots } = table;
  const words = _words(ip);
  const found = _find(table, words);
  const cut = nowMs - options.windowMs;
  if (found >= 0) {
    const at = (base + found) * IP_SLOT_CELLS;
    if (f64[at]! > cut) {
      f64[at] = Math.max(f64[at]!, nowMs);
      return "known";
    }
  }
  let live = 0, stale = 0;
  for (let i = 0; i < slots; i++) {
    const seen = f64[(base + i) * IP_SLOT_CELLS]!;
    if (seen === 0) continue;
    if (seen > cut) live++;
    else stale++;
  }
  if (live >= options.limit) return "full";
  if (stale > 0) {
    _keepOnly(table, cut);
  }
  const hole = _find(table, words);
  // After _keepOnly the address is gone (it was stale) or was never there: a free slot.
  const slot = hole >= 0 ? hole : -1 - hole;
  const at = (base + slot) * IP_SLOT_CELLS;
  f64[at] = nowMs;
  const w = at * 2 + 2;
  i32[w] = words[0]!;
  i32[w + 1] = words[1]!;
  i32[w + 2] = words[2]!;
  i32[w + 3] = words[3]!;
  return "added";
}

/**
 * `ip` is still in use at `nowMs` (a client from it is connected): refresh its time if it is in
 * the table. Returns whether it was.
 *
 * @example Usage
 * ```ts
 * import { admitIp, IP_SLOT_CELLS, ipTableSlots, touchIp } from "./unique_ips.ts";
 * const slots = ipTableSlots(1);
 * const buf = new ArrayBuffer(slots * IP_SLOT_CELLS * 8);
 * const table = { f64: new Float64Array(buf), i32: new Int32Array(buf), base: 0, slots };
 * const a = new Uint8Array(16).fill(1);
 * admitIp(table, a, 1000, { limit: 1, windowMs: 60_000 });
 * touchIp(table, a, 50_000); // true
 * ```
 */
export function touchIp(table: IpTable, ip: Uint8Array, nowMs: number): boolean {
  const found = _find(table, _words(ip));
  if (found < 0) return false;
  const at = (table.base + found) * IP_SLOT_CELLS;
  table.f64[at] = Math.max(table.f64[at]!, nowMs);
  return true;
}

/**
 * Addresses seen within `windowMs` before `nowMs`.
 *
 * @example Usage
 * ```ts
 * import { admitIp, countIps, IP_SLOT_CELLS, ipTableSlots } from "./unique_ips.ts";
 * const slots = ipTableSlots(2);
 * const buf = new ArrayBuffer(slots * IP_SLOT_CELLS * 8);
 * const table = { f64: new Float64Array(buf), i32: new Int32Array(buf), base: 0, slots };
 * admitIp(table, new Uint8Array(16).fill(1), 1000, { limit: 2, windowMs: 60_000 });
 * countIps(table, 2000, 60_000); // 1
 * ```
 */
export function countIps(table: IpTable, nowMs: number, windowMs: number): number {
  const cut = nowMs - windowMs;
  let n = 0;
  for (let i = 0; i < table.slots; i++) {
    if (table.f64[(table.base + i) * IP_SLOT_CELLS]! > cut) n++;
  }
  return n;
}

/**
 * Copy the addresses of `from` seen after `cutMs` into the empty table `to` (a user's limit grew
 * past what its table holds).
 *
 * @example Usage
 * ```ts
 * import { admitIp, copyIps, countIps, IP_SLOT_CELLS } from "./unique_ips.ts";
 * const buf = new ArrayBuffer(12 * IP_SLOT_CELLS * 8);
 * const f64 = new Float64Array(buf), i32 = new Int32Array(buf);
 * const small = { f64, i32, base: 0, slots: 4 }, big = { f64, i32, base: 4, slots: 8 };
 * admitIp(small, new Uint8Array(16).fill(1), 1000, { limit: 2, windowMs: 60_000 });
 * copyIps(small, big, 0);
 * countIps(big, 2000, 60_000); // 1
 * ```
 */
export function copyIps(from: IpTable, to: IpTable, cutMs: number): void {
  for (let i = 0; i < from.slots; i++) {
    const at = (from.base + i) * IP_SLOT_CELLS;
    const seen = from.f64[at]!;
    if (seen <= cutMs) continue;
    const w = at * 2 + 2;
    const words = [from.i32[w]!, from.i32[w + 1]!, from.i32[w + 2]!, from.i32[w + 3]!];
    const hole = _find(to, words);
    const slot = hole >= 0 ? hole : -1 - hole;
    const dst = (to.base + slot) * IP_SLOT_CELLS;
    to.f64[dst] = seen;
    to.i32.set(words, dst * 2 + 2);
  }
}

/** The address as four words (little-endian, as the Int32 view stores them). */
function _words(ip: Uint8Array): number[] {
  const out = [0, 0, 0, 0];
  for (let i = 0; i < 4; i++) {
    out[i] = ip[i * 4]! | (ip[i * 4 + 1]! << 8) | (ip[i * 4 + 2]! << 16) | (ip[i * 4 + 3]! << 24);
  }
  return out;
}

/** The slot holding `words`, or `-1 - slot` of the empty slot where it would go. */
function _find(table: IpTable, words: readonly number[]): number {
  const { f64, i32, base, slots } = table;
  let h = 0x811c9dc5;
  for (const w of words) h = Math.imul(h ^ w, 0x01000193);
  h ^= h >>> 15;
  const mask = slots - 1;
  for (let n = 0, i = h & mask; n < slots; n++, i = (i + 1) & mask) {
    const at = (base + i) * IP_SLOT_CELLS;
    if (f64[at] === 0) return -1 - i;
    const w = at * 2 + 2;
    if (
      i32[w] === words[0] && i32[w + 1] === words[1] && i32[w + 2] === words[2] &&
      i32[w + 3] === words[3]
    ) return i;
  }
  // Unreachable while the table is at most half full; make room rather than loop.
  _keepOnly(table, Infinity);
  return -1 - (h & mask);
}

/** Rebuild the table with only the addresses seen after `cutMs`. */
function _keepOnly(table: IpTable, cutMs: number): void {
  const { f64, i32, base, slots } = table;
  const kept: { seen: number; words: number[] }[] = [];
  for (let i = 0; i < slots; i++) {
    const at = (base + i) * IP_SLOT_CELLS;
    const seen = f64[at]!;
    if (seen > cutMs) {
      const w = at * 2 + 2;
      kept.push({ seen, words: [i32[w]!, i32[w + 1]!, i32[w + 2]!, i32[w + 3]!] });
    }
  }
  f64.fill(0, base * IP_SLOT_CELLS, (base + slots) * IP_SLOT_CELLS);
  for (const k of kept) {
    const hole = _find(table, k.words);
    const slot = hole >= 0 ? hole : -1 - hole;
    const at = (base + slot) * IP_SLOT_CELLS;
    f64[at] = k.seen;
    i32.set(k.words, at * 2 + 2);
  }
}
