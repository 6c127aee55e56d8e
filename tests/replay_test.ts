import { assert, assertEquals, assertThrows } from "./assert.ts";
import {
  acceptAllReplays,
  createReplayCache,
  createSharedReplayStorage,
  openSharedReplayCache,
  REPLAY_ENTRY_BYTES,
  REPLAY_KEY_BYTES,
  type ReplayCache,
  type ReplayCacheOptions,
} from "../lib/guard/replay.ts";
import { numberedKey, runReplayCacheContract } from "./contracts/replay_cache_contract.ts";
import { seededRandom } from "./helpers.ts";

/** A cache over fresh shared storage, as one worker of several would open it. */
function sharedCache(options: ReplayCacheOptions): ReplayCache {
  return openSharedReplayCache(createSharedReplayStorage(options), options);
}

/** The two caches that remember keys; both run the time and property tests below. */
const CACHES: [string, (options: ReplayCacheOptions) => ReplayCache][] = [
  ["createReplayCache", createReplayCache],
  ["openSharedReplayCache", sharedCache],
];

runReplayCacheContract("createReplayCache", createReplayCache);
runReplayCacheContract("openSharedReplayCache", sharedCache);
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
    assertThrows(() => createSharedReplayStorage(options), RangeError, "Replay cache max");
  }
  createReplayCache({ maxEntries: 1, maxAgeMs: 1 });
  createReplayCache({ maxEntries: 2 ** 27, maxAgeMs: 2 ** 31 - 1 });
});

for (const [label, make] of CACHES) {
  Deno.test(`${label} refuses keys shorter than 16 bytes and times that are not finite`, () => {
    const cache = make({ maxEntries: 10, maxAgeMs: 1_000 });
    assertThrows(
      () => cache.checkAndAdd(new Uint8Array(REPLAY_KEY_BYTES - 1), 0),
      RangeError,
      "Replay key must be at least 16 bytes: got 15",
    );
    for (const t of [NaN, Infinity, -Infinity]) {
      assertThrows(() => cache.checkAndAdd(new Uint8Array(16), t), RangeError, "Replay time");
    }
    assertEquals(cache.size, 0);
    cache.checkAndAdd(new Uint8Array(16), 0); // a refused call left the cache (and a lock) usable
    assertEquals(cache.size, 1);
  });
}

for (const [label, make] of CACHES) {
  Deno.test(`${label} treats a clock that goes backwards as standing still`, () => {
    const cache = make({ maxEntries: 10, maxAgeMs: 1_000 });
    const early = numberedKey(1), late = numberedKey(2);
    cache.checkAndAdd(early, 10_000);
    cache.checkAndAdd(late, 5_000); // recorded at 10_000
    assertEquals(cache.checkAndAdd(late, 11_000), true, "1000 ms after 10_000");
    assertEquals(cache.checkAndAdd(early, 11_000), true);
    assertEquals(cache.checkAndAdd(early, 12_001), false);
  });
}

for (const [label, make] of CACHES) {
  Deno.test(`${label} keeps and expires keys across more than 2^32 ms of time`, () => {
    const cache = make({ maxEntries: 100, maxAgeMs: 1_000 });
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
}

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

function runAgainstModel(
  make: (options: ReplayCacheOptions) => ReplayCache,
  run: PropertyRun,
): void {
  const { seed, step, jump, calls } = run;
  const random = seededRandom(seed);
  const int = (min: number, max: number) => min + Math.floor(random() * (max - min + 1));
  const options = { maxEntries: int(...run.maxEntries), maxAgeMs: int(...run.maxAgeMs) };
  const cache = make(options);
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

for (const [label, make] of CACHES) {
  Deno.test(`${label} agrees with a reference model on random calls to small caches`, () => {
    for (let seed = 1; seed <= 300; seed++) {
      runAgainstModel(make, {
        seed,
        maxEntries: [1, 40],
        maxAgeMs: [1, 300],
        step: 60,
        jump: 0.02,
        calls: 2_000,
      });
    }
  });

  Deno.test(`${label} agrees with a reference model on larger caches that fill and compact`, () => {
    for (let seed = 1_001; seed <= 1_006; seed++) {
      runAgainstModel(make, {
        seed,
        maxEntries: [900, 5_000],
        maxAgeMs: [100_000, 1_000_000],
        step: 5,
        jump: 0.0001,
        calls: 40_000,
      });
    }
  });

  Deno.test(`${label} agrees with a reference model when keys live across 2^32 ms`, () => {
    for (let seed = 2_001; seed <= 2_100; seed++) {
      runAgainstModel(make, {
        seed,
        maxEntries: [1, 40],
        maxAgeMs: [2 ** 31 - 1_000, 2 ** 31 - 1],
        step: 2 ** 29,
        jump: 0.05,
        calls: 1_000,
      });
    }
  });

  Deno.test(`${label} stays correct under a replay flood`, () => {
    // Each replay leaves a dead slot behind that compaction must squeeze out. (Its cost is not
    // asserted here: timing belongs in benchmarks, not tests.)
    const n = 20_000;
    const cache = make({ maxEntries: n, maxAgeMs: 3_600_000 });
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
}

Deno.test("openSharedReplayCache: caches opened on one storage are one cache", () => {
  const options = { maxEntries: 3, maxAgeMs: 1_000 };
  const storage = createSharedReplayStorage(options);
  const a = openSharedReplayCache(storage, options), b = openSharedReplayCache(storage, options);
  const [k1, k2, k3, k4] = [numberedKey(1), numberedKey(2), numberedKey(3), numberedKey(4)];
  assertEquals(a.checkAndAdd(k1, 10_000), false);
  assertEquals(b.checkAndAdd(k1, 10_001), true, "seen through the other cache");
  assertEquals(b.checkAndAdd(k2, 10_002), false);
  assertEquals(a.checkAndAdd(k3, 10_003), false);
  assertEquals([a.size, b.size], [3, 3]);
  assertEquals(b.checkAndAdd(k4, 10_004), false, "evicts k1, the oldest, for both");
  assertEquals(a.checkAndAdd(k1, 10_005), false);
  // One clock: b's time counts for a (k3 was seen at 10_003, so it expires after 11_003).
  b.checkAndAdd(numberedKey(5), 11_004);
  assertEquals(a.checkAndAdd(k3, 0), false, "a's earlier time counts as b's 11_004");
  // A third cache opened later sees everything.
  assert(openSharedReplayCache(storage, options).checkAndAdd(k3, 11_005));
});

Deno.test("openSharedReplayCache refuses storage made for other options, or none", () => {
  const storage = createSharedReplayStorage({ maxEntries: 100, maxAgeMs: 1_000 });
  assertThrows(
    () => openSharedReplayCache(storage, { maxEntries: 100, maxAgeMs: 2_000 }),
    RangeError,
    'Shared replay storage was made for {"maxEntries":100,"maxAgeMs":1000}: got ' +
      '{"maxEntries":100,"maxAgeMs":2000}',
  );
  assertThrows(
    () => openSharedReplayCache(storage, { maxEntries: 101, maxAgeMs: 1_000 }),
    RangeError,
    "Shared replay storage was made for",
  );
  for (const other of [new SharedArrayBuffer(storage.byteLength), new SharedArrayBuffer(8)]) {
    assertThrows(
      () => openSharedReplayCache(other, { maxEntries: 100, maxAgeMs: 1_000 }),
      TypeError,
      "Not shared replay storage",
    );
  }
  assertThrows(
    () => openSharedReplayCache(storage, { maxEntries: 0, maxAgeMs: 1_000 }),
    RangeError,
    "Replay cache maxEntries",
  );
});

Deno.test("createSharedReplayStorage takes about REPLAY_ENTRY_BYTES per entry, allocated at once", () => {
  for (const [maxEntries, atMost] of [[1_000_000, 31], [500_000, 31], [700_000, 39]] as const) {
    const perEntry = createSharedReplayStorage({ maxEntries, maxAgeMs: 1_000 }).byteLength /
      maxEntries;
    assert(perEntry >= 30.5 && perEntry <= atMost, `${maxEntries} entries: ${perEntry} bytes each`);
  }
  assertEquals(REPLAY_ENTRY_BYTES, 31);
});
