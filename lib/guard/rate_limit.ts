/**
 * A user's bandwidth limit (`users.NAME.rate_limit`) as a token bucket that both directions of
 * all that user's connections share. Pure: the bucket is two numbers in a `Float64Array` (plain
 * or over shared memory) that the caller keeps, guarded by its own lock when threads share it.
 *
 * A relay charges the bytes it has just read and gets back how long to wait before it reads
 * again: the bucket may go into debt by one read, and the wait pays that debt back. So the faster
 * side is paused (its bytes stay in its socket, and TCP slows the sender), nothing is buffered
 * beyond the one read in hand, and over time the user moves `rate` bytes per second.
 *
 * @module
 */

/** Where a bucket keeps its tokens (bytes it may move now) and when it was last refilled (ms). */
export const BUCKET_TOKENS = 0;
export const BUCKET_AT = 1;
/** Float64 cells one bucket takes. */
export const BUCKET_CELLS = 2;

/**
 * How many seconds' worth of bytes a bucket holds when full: what a user may move in a burst
 * after a pause. A tenth of a second keeps the achieved rate close to the configured one over
 * any window longer than a second.
 */
export const RATE_BURST_SECONDS = 0.1;

/** The smallest burst: one full relay read of a fake-TLS record, so small rates still flow. */
export const RATE_MIN_BURST_BYTES = 16_384;

/**
 * The bucket size for `rate` bytes per second.
 *
 * @example Usage
 * ```ts
 * import { rateBurst } from "./rate_limit.ts";
 * rateBurst(1_000_000); // 100000
 * rateBurst(1000); // 16384
 * ```
 */
export function rateBurst(rate: number): number {
  return Math.max(RATE_MIN_BURST_BYTES, Math.round(rate * RATE_BURST_SECONDS));
}

/**
 * Charge `bytes` to the bucket at `cells[at..at+2)` at `nowMs` for `rate` bytes per second, and
 * return how many milliseconds the caller should wait before it moves more (0: go on). A bucket
 * never used (both cells 0) starts full.
 *
 * @example Usage
 * ```ts
 * import { BUCKET_CELLS, takeTokens } from "./rate_limit.ts";
 * const bucket = new Float64Array(BUCKET_CELLS);
 * // 1 MB/s: a full bucket holds 100 kB.
 * takeTokens(bucket, 0, 50_000, 1000, 1_000_000); // 0: within the burst
 * takeTokens(bucket, 0, 100_000, 1000, 1_000_000); // 50: 50 kB in debt, 50 ms to pay it
 * ```
 */
export function takeTokens(
  cells: Float64Array,
  at: number,
  bytes: number,
  nowMs: number,
  rate: number,
): number {
  const burst = rateBurst(rate);
  let tokens = cells[at + BUCKET_TOKENS]!;
  const last = cells[at + BUCKET_AT]!;
  if (last === 0) tokens = burst;
  else if (nowMs > last) tokens = Math.min(burst, tokens + (nowMs - last) * rate / 1000);
  tokens -= bytes;
  cells[at + BUCKET_TOKENS] = tokens;
  cells[at + BUCKET_AT] = Math.max(nowMs, last);
  return tokens >= 0 ? 0 : Math.ceil(-tokens * 1000 / rate);
}
