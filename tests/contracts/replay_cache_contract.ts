/**
 * The behaviour every {@linkcode ReplayCache} must show, as one suite to run against each
 * implementation (style.md §11). Tests that need a cache which remembers keys are skipped, with
 * the stated reason, for an implementation that remembers nothing by design.
 *
 * @module
 */
import { assert, assertEquals } from "../assert.ts";
import type { ReplayCache, ReplayCacheOptions } from "../../lib/guard/replay.ts";

/** How an implementation departs from a cache that remembers keys. */
export interface ReplayCacheContractOptions {
  /**
   * Why the cache remembers nothing, if it does not: the tests that need memory are then
   * skipped, and this reason appears in their names.
   */
  remembersNothing?: string;
}

/** Register the replay cache contract tests for the caches that `make` creates. */
export function runReplayCacheContract(
  name: string,
  make: (options: ReplayCacheOptions) => ReplayCache,
  options: ReplayCacheContractOptions = {},
): void {
  const { remembersNothing } = options;
  /** A test that any cache must pass. */
  const always = (what: string, fn: () => void) => Deno.test(`${name} ${what}`, fn);
  /** A test that needs a cache that remembers keys. */
  const remembering = (what: string, fn: () => void) =>
    Deno.test({
      name: remembersNothing === undefined
        ? `${name} ${what}`
        : `${name} ${what} (skipped: ${remembersNothing})`,
      ignore: remembersNothing !== undefined,
      fn,
    });

  always("does not report a key the first time it is seen", () => {
    const cache = make({ maxEntries: 1_000, maxAgeMs: 60_000 });
    for (let i = 0; i < 1_000; i++) {
      assertEquals(cache.checkAndAdd(randomKey(32), i), false, `key ${i}`);
    }
  });

  always("does not report keys that differ in any one of the first 16 bytes", () => {
    const cache = make({ maxEntries: 100, maxAgeMs: 60_000 });
    const key = randomKey(32);
    cache.checkAndAdd(key, 0);
    for (let at = 0; at < 16; at++) {
      const other = key.slice();
      other[at]! ^= 0x01;
      assertEquals(cache.checkAndAdd(other, 1), false, `byte ${at} changed`);
    }
  });

  always("takes 16-, 32- and 48-byte keys", () => {
    const cache = make({ maxEntries: 100, maxAgeMs: 60_000 });
    for (const length of [16, 32, 48]) {
      assertEquals(cache.checkAndAdd(randomKey(length), 0), false, `${length} bytes`);
    }
  });

  always("starts empty and never holds more than maxEntries keys", () => {
    const cache = make({ maxEntries: 10_000, maxAgeMs: 3_600_000 });
    assertEquals(cache.size, 0);
    for (let i = 0; i < 100_000; i++) {
      cache.checkAndAdd(numberedKey(i), i);
      if (cache.size > 10_000) throw new Error(`Size ${cache.size} after key ${i}`);
    }
  });

  always("does not keep a reference to the caller's key buffer", () => {
    const cache = make({ maxEntries: 100, maxAgeMs: 60_000 });
    const buffer = randomKey(32);
    const original = buffer.slice();
    cache.checkAndAdd(buffer, 0);
    buffer[0]! ^= 0xff;
    assertEquals(cache.checkAndAdd(buffer, 1), false, "the changed bytes are a new key");
    if (remembersNothing === undefined) {
      assertEquals(cache.checkAndAdd(original, 2), true, "the original key is still held");
    }
  });

  remembering("reports a key the second time it is seen", () => {
    const cache = make({ maxEntries: 100, maxAgeMs: 60_000 });
    const key = randomKey(32);
    assertEquals(cache.checkAndAdd(key, 0), false);
    assertEquals(cache.checkAndAdd(key, 1), true);
    assertEquals(cache.checkAndAdd(key.slice(), 2), true, "a copy of the key");
    assertEquals(cache.size, 1);
  });

  remembering("compares only the first 16 bytes of a key", () => {
    const cache = make({ maxEntries: 100, maxAgeMs: 60_000 });
    const tls = randomKey(32);
    assertEquals(cache.checkAndAdd(tls, 0), false);
    const sameStart = randomKey(48);
    sameStart.set(tls.subarray(0, 16));
    assertEquals(cache.checkAndAdd(sameStart, 1), true, "48 bytes, same first 16");
    assertEquals(cache.checkAndAdd(tls.subarray(0, 16), 2), true, "the first 16 bytes alone");
    assertEquals(cache.size, 1);
  });

  remembering("keeps a key for maxAgeMs and forgets it after", () => {
    const cache = make({ maxEntries: 100, maxAgeMs: 1_000 });
    const a = randomKey(32), b = randomKey(32);
    cache.checkAndAdd(a, 5_000);
    cache.checkAndAdd(b, 5_000);
    assertEquals(cache.checkAndAdd(a, 6_000), true, "exactly maxAgeMs old");
    assertEquals(cache.checkAndAdd(b, 6_001), false, "one millisecond older");
    assertEquals(cache.size, 2, "a seen again at 6000, b recorded anew at 6001");
    cache.checkAndAdd(randomKey(32), 60_000);
    assertEquals(cache.size, 1, "everything older than maxAgeMs is gone");
  });

  remembering("counts a key's age from the last time it was seen", () => {
    const cache = make({ maxEntries: 100, maxAgeMs: 1_000 });
    const key = randomKey(32);
    cache.checkAndAdd(key, 0);
    assertEquals(cache.checkAndAdd(key, 900), true);
    assertEquals(cache.checkAndAdd(key, 1_900), true, "1000 ms after the replay at 900");
    assertEquals(cache.checkAndAdd(key, 2_901), false, "1001 ms after the last sighting");
  });

  remembering("forgets the key seen longest ago when full and keeps the newest", () => {
    const cache = make({ maxEntries: 3, maxAgeMs: 60_000 });
    const [k1, k2, k3, k4] = [randomKey(32), randomKey(32), randomKey(32), randomKey(32)];
    cache.checkAndAdd(k1, 1);
    cache.checkAndAdd(k2, 2);
    cache.checkAndAdd(k3, 3);
    assertEquals(cache.checkAndAdd(k4, 4), false);
    assertEquals(cache.size, 3);
    // Each check records the key again, so check the held keys before the evicted one.
    assertEquals(cache.checkAndAdd(k4, 5), true);
    assertEquals(cache.checkAndAdd(k3, 6), true);
    assertEquals(cache.checkAndAdd(k2, 7), true);
    assertEquals(cache.checkAndAdd(k1, 8), false, "k1 was the oldest");
    assertEquals(cache.size, 3);
  });

  remembering("keeps a key seen again when full rather than one seen once before it", () => {
    const cache = make({ maxEntries: 3, maxAgeMs: 60_000 });
    const [k1, k2, k3, k4] = [randomKey(32), randomKey(32), randomKey(32), randomKey(32)];
    cache.checkAndAdd(k1, 1);
    cache.checkAndAdd(k2, 2);
    cache.checkAndAdd(k3, 3);
    assertEquals(cache.checkAndAdd(k1, 4), true);
    assertEquals(cache.checkAndAdd(k4, 5), false, "evicts k2, now the oldest");
    assertEquals(cache.checkAndAdd(k1, 6), true);
    assertEquals(cache.checkAndAdd(k3, 7), true);
    assertEquals(cache.checkAndAdd(k4, 8), true);
    assertEquals(cache.checkAndAdd(k2, 9), false);
  });

  remembering("still detects the newest maxEntries keys after 100,000 distinct ones", () => {
    const cache = make({ maxEntries: 10_000, maxAgeMs: 3_600_000 });
    for (let i = 0; i < 100_000; i++) cache.checkAndAdd(numberedKey(i), i);
    assertEquals(cache.size, 10_000);
    // Checking a held key records it again but evicts nothing, so the order does not matter.
    for (let i = 90_000; i < 100_000; i++) {
      if (!cache.checkAndAdd(numberedKey(i), 100_000)) throw new Error(`Key ${i} was forgotten`);
    }
    assertEquals(cache.checkAndAdd(numberedKey(89_999), 100_001), false, "the next oldest");
    assertEquals(cache.size, 10_000);
  });

  remembering("does not let one key replayed many times push other keys out", () => {
    const cache = make({ maxEntries: 1_000, maxAgeMs: 3_600_000 });
    for (let i = 0; i < 999; i++) cache.checkAndAdd(numberedKey(i), 0);
    const flood = randomKey(32);
    for (let i = 0; i < 50_000; i++) cache.checkAndAdd(flood, i);
    assertEquals(cache.size, 1_000);
    for (let i = 0; i < 999; i++) assert(cache.checkAndAdd(numberedKey(i), 50_000), `key ${i}`);
  });
}

/** `length` random bytes. */
export function randomKey(length: number): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(length));
}

/** A 32-byte key unique to `n`, with `n` spread over the first 16 bytes. */
export function numberedKey(n: number): Uint8Array {
  const key = new Uint8Array(32);
  const view = new DataView(key.buffer);
  view.setUint32(0, n);
  view.setUint32(4, Math.imul(n, 0x9e3779b1));
  view.setUint32(8, n ^ 0x5bd1e995);
  view.setUint32(12, Math.imul(n ^ 0x27d4eb2f, 0x85ebca6b));
  return key;
}
