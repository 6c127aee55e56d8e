/**
 * CRC-32 (IEEE 802.3, the zlib / `binascii.crc32` one) as the full codec uses it toward middle
 * proxies. Table-driven, eight bytes per step ("slicing by 8"): it runs over every RPC frame.
 *
 * @module
 */

import { nativeCrc32 } from "../crypto.ts";

/** Below this many bytes the JS loop beats a call into zlib. */
const NATIVE_MIN = 64;

/** 8 tables of 256 entries; table k advances a CRC by one byte followed by k zero bytes. */
const TABLES: Int32Array = _buildTables();

function _buildTables(): Int32Array {
  const t = new Int32Array(8 * 256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c;
  }
  for (let n = 0; n < 256; n++) {
    let c = t[n]!;
    for (let k = 1; k < 8; k++) {
      c = t[c & 0xff]! ^ (c >>> 8);
      t[k * 256 + n] = c;
    }
  }
  return t;
}

/**
 * CRC-32 of `data`, continuing from `previous` (the result of an earlier call over the bytes
 * before `data`), so `crc32(b, crc32(a))` equals `crc32(a || b)`.
 *
 * @example Usage
 * ```ts
 * import { crc32 } from "./crc32.ts";
 * const ascii = new TextEncoder().encode("123456789");
 * console.log(crc32(ascii).toString(16)); // "cbf43926"
 * ```
 */
export function crc32(data: Uint8Array, previous = 0): number {
  // zlib's native CRC runs at ~30 GB/s here against ~1 GB/s for the tables below; it decides
  // how fast middle-proxy mode can go. Tiny inputs stay in JS (the call costs more).
  if (nativeCrc32 && data.length >= NATIVE_MIN) return nativeCrc32(data, previous);
  return crc32Js(data, previous);
}

/** The table-driven CRC-32 (also the fallback when zlib's is missing). */
export function crc32Js(data: Uint8Array, previous = 0): number {
  return crc32Range(data, 0, data.length, previous);
}

/** CRC-32 of `data[from, to)` continuing `previous` (as {@linkcode crc32}), without a view. */
export function crc32Range(data: Uint8Array, from: number, to: number, previous = 0): number {
  const t = TABLES;
  let c = ~previous;
  let i = from;
  const end8 = to - ((to - from) & 7);
  while (i < end8) {
    c ^= data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24);
    const hi = data[i + 4]! | (data[i + 5]! << 8) | (data[i + 6]! << 16) | (data[i + 7]! << 24);
    c = t[1792 + (c & 0xff)]! ^ t[1536 + ((c >>> 8) & 0xff)]! ^
      t[1280 + ((c >>> 16) & 0xff)]! ^ t[1024 + (c >>> 24)]! ^
      t[768 + (hi & 0xff)]! ^ t[512 + ((hi >>> 8) & 0xff)]! ^
      t[256 + ((hi >>> 16) & 0xff)]! ^ t[hi >>> 24]!;
    i += 8;
  }
  while (i < to) c = t[(c ^ data[i++]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

/** CRC-32 (from the start) of the 8 bytes `u32 LE a | u32 LE b`: one slicing step. */
export function crc32Words(a: number, b: number): number {
  const t = TABLES;
  const c = ~a;
  return ~(t[1792 + (c & 0xff)]! ^ t[1536 + ((c >>> 8) & 0xff)]! ^
    t[1280 + ((c >>> 16) & 0xff)]! ^ t[1024 + (c >>> 24)]! ^
    t[768 + (b & 0xff)]! ^ t[512 + ((b >>> 8) & 0xff)]! ^
    t[256 + ((b >>> 16) & 0xff)]! ^ t[b >>> 24]!) >>> 0;
}

/**
 * A byte string whose CRC-32 is worked out once, so that continuing any CRC over it costs four
 * table lookups whatever its length (an RPC header sent in front of every packet of a client).
 * The CRC register is linear: after `n` bytes it is `shift_n(start) ^ raw`, where `raw` is the
 * register run over the bytes from zero and `shift_n` runs it over `n` zero bytes (four tables
 * of 256 entries, one per byte of the register, shared by all strings of that length).
 *
 * @example Usage
 * ```ts
 * import { crc32, Crc32Fixed } from "./crc32.ts";
 * const head = new TextEncoder().encode("a header");
 * const fixed = new Crc32Fixed(head);
 * console.log(fixed.extend(crc32(Uint8Array.of(1, 2))) === crc32(Uint8Array.of(1, 2, ...head)));
 * // true
 * ```
 */
export class Crc32Fixed {
  readonly length: number;
  readonly #raw: number;
  readonly #shift: Int32Array;

  /** `bytes` must not change afterwards. */
  constructor(bytes: Uint8Array) {
    this.length = bytes.length;
    // From a zero register: crc32Range starts from ~previous, so previous = ~0 = -1.
    this.#raw = ~crc32Range(bytes, 0, bytes.length, -1) | 0;
    this.#shift = _shiftTables(bytes.length);
  }

  /** `crc32(bytes, previous)`. */
  extend(previous: number): number {
    const s = this.#shift;
    const c = ~previous;
    return ~(s[c & 0xff]! ^ s[256 + ((c >>> 8) & 0xff)]! ^ s[512 + ((c >>> 16) & 0xff)]! ^
      s[768 + (c >>> 24)]! ^ this.#raw) >>> 0;
  }
}

const _shifts = new Map<number, Int32Array>();

/** Tables that run a CRC register over `n` zero bytes, byte k of the register at a time. */
function _shiftTables(n: number): Int32Array {
  let s = _shifts.get(n);
  if (s !== undefined) return s;
  s = new Int32Array(4 * 256);
  const t = TABLES;
  for (let k = 0; k < 4; k++) {
    for (let b = 0; b < 256; b++) {
      let c = b << (8 * k);
      for (let i = 0; i < n; i++) c = t[c & 0xff]! ^ (c >>> 8);
      s[k * 256 + b] = c;
    }
  }
  // A handful of lengths in practice (one per ad-tag length); bound it anyway.
  if (_shifts.size < 64) _shifts.set(n, s);
  return s;
}

/** Registered fixed strings (see {@linkcode crc32Known}), and the last one looked up. */
const _known = new WeakMap<Uint8Array, Crc32Fixed>();
let _lastBytes: Uint8Array | null = null;
let _lastFixed: Crc32Fixed | null = null;

/**
 * Precompute the CRC of `bytes`, which must never change afterwards, for
 * {@linkcode crc32Known}.
 */
export function crc32Register(bytes: Uint8Array): void {
  if (!_known.has(bytes)) _known.set(bytes, new Crc32Fixed(bytes));
}

/**
 * `crc32(data, previous)` for short strings, in four table lookups when `data` was registered
 * with {@linkcode crc32Register} (runs of calls with the same string cost no map lookup).
 */
export function crc32Known(data: Uint8Array, previous = 0): number {
  if (data === _lastBytes) return _lastFixed!.extend(previous);
  const fixed = _known.get(data);
  if (fixed === undefined) return crc32Range(data, 0, data.length, previous);
  _lastBytes = data;
  _lastFixed = fixed;
  return fixed.extend(previous);
}
