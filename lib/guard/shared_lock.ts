/**
 * A mutual-exclusion lock in one 32-bit word of shared memory, for state that several threads
 * (Deno `Worker`s) read and change synchronously: the shared replay cache and connection counts.
 *
 * The word is 0 when free, 1 when held and 2 when held with threads waiting (Drepper's futex
 * mutex). Taking a free lock is one `Atomics.compareExchange`; a busy lock is spun on briefly, then
 * waited for with `Atomics.wait`, which blocks the calling thread (and its event loop) until the
 * holder lets go. So hold it only for short synchronous work, never across an `await`.
 *
 * An exception inside is harmless when the lock is let go in a `finally`. A thread stopped inside
 * (`Worker.terminate()` at the wrong instant) leaves the lock held, and every other thread waits
 * for it forever: terminate a worker only once it is done with the shared state, or after it has
 * already died of an uncaught error (which unwinds through the `finally`).
 *
 * @module
 */

/** Spins on a busy lock before sleeping; the sections guarded here last about a microsecond. */
const _SPINS = 100;

/**
 * Take the lock in `words[index]`, waiting as long as it takes.
 *
 * @example Usage
 * ```ts
 * import { lockShared, unlockShared } from "./shared_lock.ts";
 * const words = new Int32Array(new SharedArrayBuffer(8));
 * lockShared(words, 0);
 * try {
 *   words[1]!++; // no other thread that takes the lock first sees this half done
 * } finally {
 *   unlockShared(words, 0);
 * }
 * ```
 */
export function lockShared(words: Int32Array, index: number): void {
  if (Atomics.compareExchange(words, index, 0, 1) === 0) return;
  for (let i = 0; i < _SPINS; i++) {
    if (Atomics.load(words, index) === 0 && Atomics.compareExchange(words, index, 0, 1) === 0) {
      return;
    }
  }
  // Mark the lock contended, so that its holder wakes a waiter; whoever takes it this way keeps
  // the mark, as other threads may still be waiting.
  while (Atomics.exchange(words, index, 2) !== 0) Atomics.wait(words, index, 2);
}

/**
 * Let go of the lock in `words[index]`, taken with {@linkcode lockShared} by this thread.
 *
 * @example Usage
 * ```ts
 * import { lockShared, unlockShared } from "./shared_lock.ts";
 * const words = new Int32Array(new SharedArrayBuffer(4));
 * lockShared(words, 0);
 * unlockShared(words, 0);
 * console.log(words[0]); // 0: free
 * ```
 */
export function unlockShared(words: Int32Array, index: number): void {
  if (Atomics.exchange(words, index, 0) === 2) Atomics.notify(words, index, 1);
}
