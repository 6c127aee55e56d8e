import { assert, assertEquals, assertThrows } from "./assert.ts";
import {
  acceptAllReplays,
  createReplayCache,
  REPLAY_KEY_BYTES,
  type ReplayCacheOptions,
} from "../lib/guard/replay.ts";
import { numberedKey, runReplayCacheContract } from "./contracts/replay_cache_contract.ts";
import { seededRandom } from "./helpers.ts";

runReplayCacheContract("createReplayCache", createReplayCache);
runReplayCacheContract("acceptAllReplays", () => acceptAllReplays, {
  remembersNothing: "it is replay protection switched off, so it remembers nothing by design",
});

Deno.test("createReplayCache refuses out-of-range options with a RangeError", () => {
  const bad: ReplayCacheOptions[] = [
    { maxEntries: 0, maxAgeMs: 1_000 },
    { maxEntries: 1.5, maxAgeMs: 1_000 },
    { maxEntries: NaN, maxAgeMs: 1_000 },
    { maxEntries: 2 ** 27 + 1, maxAgeMs: 1_000 },
    { maxEntries: 10, maxAgeMs: 0 },
    { maxEntries: 10, maxAgeMs: -1 },
    { maxEntries: 10, maxAgeMs: NaN },
    { maxEntries: 10, maxAgeMs: Infinity },
    { maxEntries: 10, maxAgeMs: 2 ** 31 },
  ];
  for (const options of bad) {
    assertThrows(() => createReplayCache(options), RangeError, "Replay cache max");
  }
  createReplayCache({ maxEntries: 1, maxAgeMs: 1 });
  createReplayCache({ maxEntries: 2 ** 27, maxAgeMs: 2 ** 31 - 1 });
});

Deno.test("createReplayCache refuses keys shorter than 16 bytes and times that are not finite", () => {
  const cache = createReplayCache({ maxEntries: 10, maxAgeMs: 1_000 });
  assertThrows(
    () => cache.checkAndAdd(new Uint8Array(REPLAY_KEY_BYTES - 1), 0),
    RangeError,
    "Replay key must be at least 16 bytes: got 15",
  );
  for (const t of [NaN, Infinity, -Infinity]) {
    assertThrows(() => cache.checkAndAdd(new Uint8Array(16), t), RangeError, "Replay time");
  }
  assertEquals(cache.size, 0);
});

Deno.test("createReplayCache treats a clock that goes backwards as standing still", () => {
  const cache = createReplayCache({ maxEntries: 10, maxAgeMs: 1_000 });
  const early = numberedKey(1), late = numberedKey(2);
  cache.checkAndAdd(early, 10_000);
  cache.checkAndAdd(late, 5_000); // recorded at 10_000
  assertEquals(cache.checkAndAdd(late, 11_000), true, "1000 ms after 10_000");
  assertEquals(cache.checkAndAdd(early, 11_000), true);
  assertEquals(cache.checkAndAdd(early, 12_001), false);
});

Deno.test("createReplayCache keeps and expires keys across more than 2^32 ms of time", () => {
  const cache = createReplayCache({ maxEntries: 100, maxAgeMs: 1_000 });
  cache.checkAndAdd(numberedKey(0), 0);
  let t = 0;
  for (let round = 1; round <= 12; round++) {
    t += 1_500_000_000 + round; // eight rounds pass 2^32 ms since the first call
    const key = numberedKey(round);
    assertEquals(cache.checkAndAdd(key, t - 400), false, `round ${round}: new`);
    assertEquals(cache.checkAndAdd(numberedKey(round - 1), t - 300), false, "previous expired");
    assertEquals(cache.checkAndAdd(key, t + 600), true, `round ${round}: 1000 ms later`);
    assertEquals(cache.size, 2);
  }
  const edge = 2 ** 32 + 10;
  cache.checkAndAdd(numberedKey(100), t + edge - 900);
  assertEquals(cache.checkAndAdd(numberedKey(100), t + edge + 100), true);
});

Deno.test("acceptAllReplays cannot be changed", () => {
  assert(Object.isFrozen(acceptAllReplays));
  assertEquals(acceptAllReplays.size, 0);
});

// --- Property test against a reference model -----------------------------------------------

/** The specified behaviour, written plainly: a Map in last-seen order. */
class ReferenceCache {
  readonly #map = new Map<string, number>();
  #clock = -Infinity;

  constructor(readonly options: ReplayCacheOptions) {}

  get size(): number {
    return this.#map.size;
  }

  checkAndAdd(key: Uint8Array, nowMs: number): boolean {
    this.#clock = Math.max(this.#clock, Math.floor(nowMs));
    // The map is in last-seen order and the clock never goes back, so the old end comes first.
    for (const [k, seenAt] of this.#map) {
      if (this.#clock - seenAt <= this.options.maxAgeMs) break;
      this.#map.delete(k);
    }
    const id = Array.from(key.subarray(0, 16), (b) => b.toString(16).padStart(2, "0")).join("");
    const seen = this.#map.delete(id);
    if (this.#map.size === this.options.maxEntries) {
      this.#map.delete(this.#map.keys().next().value!);
    }
    this.#map.set(id, this.#clock);
    return seen;
  }
}

interface PropertyRun {
  seed: number;
  /** Range of maxEntries. */
  maxEntries: [number, number];
  /** Range of maxAgeMs. */
  maxAgeMs: [number, number];
  /** Largest ordinary step of the clock, in ms. */
  step: number;
  /** Chance per call of a jump of up to twice maxAgeMs, or (one time in ten) past 2^32 ms. */
  jump: number;
  calls: number;
}

function runAgainstModel(run: PropertyRun): void {
  const { seed, step, jump, calls } = run;
  const random = seededRandom(seed);
  const int = (min: number, max: number) => min + Math.floor(random() * (max - min + 1));
  const options = { maxEntries: int(...run.maxEntries), maxAgeMs: int(...run.maxAgeMs) };
  const cache = createReplayCache(options);
  const model = new ReferenceCache(options);
  // A pool of 16-byte prefixes, some one bit away from another, so repeats and near misses occur.
  const prefixes: Uint8Array[] = [];
  const poolSize = int(1, options.maxEntries * 3);
  for (let i = 0; i < poolSize; i++) {
    const prefix = Uint8Array.from({ length: 16 }, () => int(0, 255));
    const base = prefixes[int(0, prefixes.length)];
    if (base && random() < 0.2) {
      prefix.set(base);
      prefix[int(0, 15)]! ^= 1 << int(0, 7);
    }
    prefixes.push(prefix);
  }
  let t = int(-1e6, 1e12);
  for (let call = 0; call < calls; call++) {
    const r = random();
    if (r < jump) t += random() < 0.9 ? int(0, options.maxAgeMs * 2) : 2 ** 32 + int(-500, 500);
    else if (r < 0.6) t += int(0, step);
    else if (r < 0.7) t += random() * 10; // fractional milliseconds
    else if (r < 0.8) t -= int(0, 50); // the clock goes backwards
    const key = new Uint8Array([16, 32, 48][int(0, 2)]!);
    for (let i = 16; i < key.length; i++) key[i] = int(0, 255);
    key.set(prefixes[int(0, prefixes.length - 1)]!);
    const expected = model.checkAndAdd(key, t);
    const actual = cache.checkAndAdd(key, t);
    if (actual !== expected || cache.size !== model.size) {
      throw new Error(
        `Seed ${seed}, ${JSON.stringify(options)}, call ${call} at ${t}: ` +
          `got ${actual} with size ${cache.size}, model says ${expected} with size ${model.size}`,
      );
    }
  }
}

Deno.test("createReplayCache agrees with a reference model on random calls to small caches", () => {
  for (let seed = 1; seed <= 300; seed++) {
    runAgainstModel({
      seed,
      maxEntries: [1, 40],
      maxAgeMs: [1, 300],
      step: 60,
      jump: 0.02,
      calls: 2_000,
    });
  }
});

Deno.test("createReplayCache agrees with a reference model while its arrays grow and compact", () => {
  for (let seed = 1_001; seed <= 1_006; seed++) {
    runAgainstModel({
      seed,
      maxEntries: [900, 5_000],
      maxAgeMs: [100_000, 1_000_000],
      step: 5,
      jump: 0.0001,
      calls: 40_000,
    });
  }
});

Deno.test("createReplayCache agrees with a reference model when keys live across 2^32 ms", () => {
  for (let seed = 2_001; seed <= 2_100; seed++) {
    runAgainstModel({
      seed,
      maxEntries: [1, 40],
      maxAgeMs: [2 ** 31 - 1_000, 2 ** 31 - 1],
      step: 2 ** 29,
      jump: 0.05,
      calls: 1_000,
    });
  }
});

Deno.test("createReplayCache stays correct under a replay flood", () => {
  // Each replay leaves a dead slot behind that compaction must squeeze out. (Its cost is not
  // asserted here: timing belongs in benchmarks, not tests.)
  const n = 20_000;
  const cache = createReplayCache({ maxEntries: n, maxAgeMs: 3_600_000 });
  for (let i = 0; i < 2 * n; i++) cache.checkAndAdd(numberedKey(i), 0);
  const flood = numberedKey(-1);
  assertEquals(cache.checkAndAdd(flood, 1), false);
  for (let i = 0; i < n; i++) assertEquals(cache.checkAndAdd(flood, 2), true);
  assertEquals(cache.size, n);
  // The newest keys before the flood are still remembered.
  for (let i = 2 * n - 100; i < 2 * n; i++) {
    assertEquals(cache.checkAndAdd(numberedKey(i), 3), true);
  }
});
