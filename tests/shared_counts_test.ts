/**
 * Shared connection counts: the table on its own, against a reference model, under a
 * ConnectionPolicy, and in real Worker threads.
 */
import { assert, assertEquals, assertThrows } from "./assert.ts";
import {
  createSharedCounts,
  openSharedCounts,
  SHARED_COUNTS_KEY_BYTES,
  type SharedCounts,
} from "../lib/guard/shared_counts.ts";
import { ConnectionPolicy, createMemoryCounts, type PolicySlot } from "../lib/guard/policy.ts";
import { DEFAULT_POLICY } from "../lib/config/defaults.ts";
import { seededRandom } from "./kit/seeded.ts";
import {
  countsKey,
  runInWorkers,
  sharedBarrier,
  type SharedResult,
  type SharedTask,
} from "./kit/shared_memory.ts";

function fresh(capacity: number): SharedCounts {
  return openSharedCounts(createSharedCounts(capacity));
}

Deno.test("SharedCounts counts per key up to the limit and frees on release", () => {
  const counts = fresh(100);
  assertEquals([counts.size, counts.capacity, counts.total, counts.overflows], [0, 100, 0, 0]);
  assert(counts.tryAcquire("192.0.2.1", 2));
  assert(counts.tryAcquire("192.0.2.1", 2));
  assert(!counts.tryAcquire("192.0.2.1", 2), "at the limit");
  assert(counts.tryAcquire("192.0.2.1", 3), "a higher limit lets one more in");
  assert(counts.tryAcquire("192.0.2.2", 1), "another key has its own count");
  assertEquals([counts.count("192.0.2.1"), counts.count("192.0.2.2"), counts.size], [3, 1, 2]);
  assertEquals(counts.count("192.0.2.3"), 0);
  counts.release("192.0.2.1");
  assertEquals(counts.count("192.0.2.1"), 2);
  counts.release("192.0.2.2");
  assertEquals([counts.count("192.0.2.2"), counts.size], [0, 1]);
  counts.release("192.0.2.2"); // not held: ignored
  counts.release("never.example");
  assertEquals(counts.size, 1);
  for (let i = 0; i < 1_000; i++) assert(counts.tryAcquire("unlimited", 0), "limit 0: no limit");
  assertEquals(counts.count("unlimited"), 1_000);
  assertEquals(counts.overflows, 0);
});

Deno.test("SharedCounts tells apart keys alike in their first 64 bytes and non-ASCII keys", () => {
  const counts = fresh(100);
  const long = "a".repeat(SHARED_COUNTS_KEY_BYTES);
  const keys = [long, `${long}1`, `${long}2`, `${long}22`, "bücher.example", "bucher.example"];
  for (const key of keys) assert(counts.tryAcquire(key, 1), key);
  for (const key of keys) assert(!counts.tryAcquire(key, 1), key);
  for (const key of keys) assertEquals(counts.count(key), 1, key);
  assertEquals(counts.size, keys.length);
  for (const key of keys) counts.release(key);
  assertEquals(counts.size, 0);
});

Deno.test("SharedCounts counts the total apart from the keys", () => {
  const counts = fresh(4);
  assert(counts.tryAcquireTotal(2));
  assert(counts.tryAcquireTotal(2));
  assert(!counts.tryAcquireTotal(2));
  assert(counts.tryAcquireTotal(0), "no limit");
  assertEquals([counts.total, counts.size], [3, 0]);
  for (let i = 0; i < 5; i++) counts.releaseTotal(); // two more than held: ignored
  assertEquals(counts.total, 0);
  assert(counts.tryAcquireTotal(1));
});

Deno.test("SharedCounts refuses a new key when capacity keys are held, and counts the refusals", () => {
  const counts = fresh(3);
  for (const key of ["a", "b", "c"]) assert(counts.tryAcquire(key, 10));
  assert(!counts.tryAcquire("d", 10), "full");
  assert(!counts.tryAcquire("e", 0), "full, even without a limit");
  assertEquals([counts.overflows, counts.size, counts.count("d")], [2, 3, 0]);
  assert(counts.tryAcquire("a", 10), "held keys still count");
  assertEquals(counts.count("a"), 2);
  counts.release("b");
  assert(counts.tryAcquire("d", 10), "b's place is free again");
  assert(!counts.tryAcquire("b", 10), "full again");
  assertEquals(counts.overflows, 3);
});

Deno.test("SharedCounts reuses the places of keys that dropped to 0, without end", () => {
  const counts = fresh(4);
  for (let i = 0; i < 100_000; i++) {
    const a = countsKey(i), b = countsKey(i + 1_000_000);
    assert(counts.tryAcquire(a, 1) && counts.tryAcquire(b, 1), `key ${i}`);
    counts.release(a);
    counts.release(b);
  }
  assertEquals([counts.size, counts.overflows], [0, 0]);
});

Deno.test("SharedCounts agrees with a model on random acquires, releases and dead workers", () => {
  for (let seed = 1; seed <= 200; seed++) {
    const random = seededRandom(seed);
    const int = (n: number) => Math.floor(random() * n);
    const capacity = 1 + int(12), workers = 1 + int(3);
    const storage = createSharedCounts(capacity, workers);
    const handles = Array.from({ length: workers }, (_, w) => openSharedCounts(storage, w + 1));
    /** Per key, what each worker holds. */
    const model = new Map<string, number[]>();
    const sum = (held: number[] | undefined) => held?.reduce((a, b) => a + b, 0) ?? 0;
    const names = Array.from({ length: 1 + int(40) }, (_, k) => countsKey(k * 7 + seed));
    for (let step = 0; step < 2_000; step++) {
      const at = `seed ${seed}, step ${step}`;
      const key = names[int(names.length)]!, w = int(workers);
      const held = model.get(key) ?? new Array<number>(workers).fill(0);
      const n = sum(held);
      const r = random();
      if (r < 0.5) {
        const limit = int(4);
        const expected = (limit === 0 || n < limit) && (n > 0 || model.size < capacity);
        assertEquals(handles[w]!.tryAcquire(key, limit), expected, at);
        if (expected) held[w]!++, model.set(key, held);
      } else if (r < 0.99) {
        handles[w]!.release(key); // ignored unless worker w holds some
        if (held[w]! > 0) held[w]!--;
        if (sum(held) === 0) model.delete(key);
      } else {
        let expected = 0;
        for (const [k, of] of model) {
          expected += of[w]!;
          of[w] = 0;
          if (sum(of) === 0) model.delete(k);
        }
        assertEquals(handles[int(workers)]!.releaseWorker(w + 1), expected, `${at}: freed`);
      }
      assertEquals(handles[0]!.size, model.size, `${at}: size`);
      if (step % 50 === 0) {
        for (const name of names) assertEquals(handles[0]!.count(name), sum(model.get(name)), name);
      }
    }
  }
});

Deno.test("createSharedCounts and openSharedCounts refuse bad capacities, limits and storage", () => {
  for (const capacity of [0, -1, 1.5, NaN, 2 ** 24 + 1]) {
    assertThrows(() => createSharedCounts(capacity), RangeError, "Shared counts capacity");
  }
  const counts = fresh(1);
  for (const limit of [-1, NaN]) {
    assertThrows(() => counts.tryAcquire("a", limit), RangeError, "Connection limit");
    assertThrows(() => counts.tryAcquireTotal(limit), RangeError, "Connection limit");
  }
  assert(counts.tryAcquire("a", 1), "a refused call left the lock free");
  const storage = createSharedCounts(10);
  for (const other of [new SharedArrayBuffer(storage.byteLength), new SharedArrayBuffer(8)]) {
    assertThrows(() => openSharedCounts(other), TypeError, "Not shared counts");
  }
});

Deno.test("createSharedCounts takes 80 bytes and 4 per worker per slot, 2 to 4 slots per key", () => {
  assertEquals(createSharedCounts(10_000).byteLength, 72 + 32_768 * 84);
  assertEquals(createSharedCounts(16_384, 2).byteLength, 72 + 32_768 * 88);
  assertEquals(createSharedCounts(1, 8).byteLength, 96 + 4 * 112);
});

Deno.test("SharedCounts keeps counts per worker: one releases only its own", () => {
  const storage = createSharedCounts(10, 2);
  const one = openSharedCounts(storage, 1), two = openSharedCounts(storage, 2);
  assertEquals([one.worker, two.worker], [1, 2]);
  assert(one.tryAcquire("k", 3) && one.tryAcquire("k", 3) && two.tryAcquire("k", 3));
  assert(!two.tryAcquire("k", 3), "the limit counts both");
  two.release("k");
  two.release("k"); // worker 2 held one: ignored
  assertEquals(one.count("k"), 2);
  assert(one.tryAcquireTotal(0) && two.tryAcquireTotal(0));
  two.releaseTotal();
  two.releaseTotal(); // ignored
  assertEquals(one.total, 1);
});

Deno.test("SharedCounts.releaseWorker gives back all a dead worker held, and nothing else", () => {
  const storage = createSharedCounts(200, 3);
  const [a, b, c] = [1, 2, 3].map((w) => openSharedCounts(storage, w)) as [
    SharedCounts,
    SharedCounts,
    SharedCounts,
  ];
  // Many keys in a small table, so that deleting some moves others along their probe runs.
  for (let k = 0; k < 150; k++) {
    assert(b.tryAcquire(countsKey(k), 0));
    if (k % 3 === 0) assert(b.tryAcquire(countsKey(k), 0), "twice");
    if (k % 2 === 0) assert(a.tryAcquire(countsKey(k), 0));
  }
  for (let i = 0; i < 7; i++) assert(b.tryAcquireTotal(0));
  assert(a.tryAcquireTotal(0));
  assertEquals(c.releaseWorker(2), 150 + 50 + 7, "worker 2's keys (twice for 50) and total");
  for (let k = 0; k < 150; k++) assertEquals(a.count(countsKey(k)), k % 2 === 0 ? 1 : 0, `${k}`);
  assertEquals([a.size, a.total], [75, 1]);
  assertEquals(c.releaseWorker(2), 0, "nothing left");
  b.release(countsKey(0)); // a restarted worker 2 cannot release what the old one held
  assertEquals(a.count(countsKey(0)), 1);
  assertEquals(c.releaseWorker(1), 75 + 1);
  assertEquals([a.size, a.total], [0, 0]);
  assertThrows(() => c.releaseWorker(4), RangeError, "Shared counts worker must be from 1 to 3");
  assertThrows(() => openSharedCounts(storage, 0), RangeError, "Shared counts worker");
  assertThrows(() => createSharedCounts(10, 0), RangeError, "Shared counts workers");
  assertThrows(() => createSharedCounts(10, 257), RangeError, "Shared counts workers");
});

Deno.test("ConnectionPolicy counts through shared counts, so two policies apply one limit", () => {
  const ipStorage = createSharedCounts(100), sniStorage = createSharedCounts(100);
  const make = () =>
    new ConnectionPolicy(
      { ...DEFAULT_POLICY, maxConnectionsPerIp: 2, maxConnectionsPerSni: 1 },
      { ipCounts: openSharedCounts(ipStorage), sniCounts: openSharedCounts(sniStorage) },
    );
  const a = make(), b = make();
  const slot = (s: PolicySlot | string) => {
    if (typeof s === "string") throw new Error(`refused: ${s}`);
    return s;
  };
  const first = slot(a.admitIp("192.0.2.1"));
  slot(b.admitIp("::ffff:192.0.2.1"));
  assertEquals(a.admitIp("192.0.2.1"), "ip_limit");
  assertEquals(b.admitIp("192.0.2.1"), "ip_limit");
  const alice = slot(b.admitSni("alice.example"));
  assertEquals(a.admitSni("alice.example"), "sni_limit");
  assertEquals(a.held, { ips: 1, snis: 1 });
  first.release();
  first.release(); // twice is harmless
  assertEquals(openSharedCounts(ipStorage).count("192.0.2.1"), 1);
  slot(a.admitIp("192.0.2.1"));
  alice.release();
  slot(a.admitSni("alice.example"));
  // An SNI spelled like an address key is counted apart from that address.
  const spelled = new ConnectionPolicy(
    { ...DEFAULT_POLICY, maxConnectionsPerIp: 2, maxConnectionsPerSni: 1 },
    { ipCounts: openSharedCounts(ipStorage), sniCounts: openSharedCounts(sniStorage) },
  );
  slot(spelled.admitSni("192.0.2.1"));
});

Deno.test("createMemoryCounts counts per key in this thread, as the policy did before", () => {
  const counts = createMemoryCounts();
  assert(counts.tryAcquire("k", 2) && counts.tryAcquire("k", 2));
  assert(!counts.tryAcquire("k", 2));
  assert(counts.tryAcquire("k", 0));
  assertEquals(counts.size, 1);
  for (let i = 0; i < 3; i++) counts.release("k");
  assertEquals(counts.size, 0);
  counts.release("k"); // not held: ignored
  assertEquals(counts.size, 0);
});

// ---------------------------------------------------------------------------------------------
// In real Worker threads

/** Four workers acquire and release at random; what did they see, and what is left? */
async function hammer(
  options: {
    keys: number;
    limit: number;
    totalLimit: number;
    hold: number;
    capacity: number;
    keep?: boolean;
  },
): Promise<{ counts: SharedCounts; results: Extract<SharedResult, { kind: "counts" }>[] }> {
  const storage = createSharedCounts(options.capacity, 4);
  const check = new SharedArrayBuffer(4 * (options.keys + 1));
  const barrier = sharedBarrier();
  const tasks: SharedTask[] = Array.from({ length: 4 }, (_, i) => ({
    kind: "counts",
    workers: 4,
    worker: i + 1,
    barrier,
    storage,
    check,
    keys: options.keys,
    limit: options.limit,
    totalLimit: options.totalLimit,
    steps: 100_000,
    hold: options.hold,
    seed: 1 + i,
    keep: options.keep ?? false,
  }));
  const results = (await runInWorkers(tasks)).map((r) => {
    if (r.kind !== "counts") throw new Error(`Unexpected result: ${r.kind}`);
    return r;
  });
  if (!options.keep) assertEquals(Array.from(new Int32Array(check)).every((n) => n === 0), true);
  return { counts: openSharedCounts(storage), results };
}

/**
 * The limit was reached: workers were refused (each one acquires more often than it releases,
 * until it holds `hold`, more than the limit allows all four together), and some got in. (One
 * worker may get nothing while the others hold everything, so this is not asked of each.)
 */
function assertBusy(results: { acquired: number; refused: number }[]): void {
  const sum = (f: (r: { acquired: number; refused: number }) => number) =>
    results.reduce((n, r) => n + f(r), 0);
  assert(sum((r) => r.acquired) > 0 && sum((r) => r.refused) > 0, JSON.stringify(results));
}

Deno.test("SharedCounts never lets four workers past a per-key limit, and ends at 0", async () => {
  // 16 keys of at most 3 connections hold 48 at most; each worker alone tries to hold 60.
  const { counts, results } = await hammer({
    keys: 16,
    limit: 3,
    totalLimit: 0,
    hold: 60,
    capacity: 16,
  });
  assertEquals(results.map((r) => r.violations), [0, 0, 0, 0]);
  assertBusy(results);
  for (let k = 0; k < 16; k++) assertEquals(counts.count(countsKey(k)), 0, countsKey(k));
  assertEquals([counts.size, counts.total, counts.overflows], [0, 0, 0]);
});

Deno.test("SharedCounts never lets four workers past the total limit, and ends at 0", async () => {
  // Without a per-key limit, the total of 20 binds; each worker alone tries to hold 30.
  const { counts, results } = await hammer({
    keys: 64,
    limit: 0,
    totalLimit: 20,
    hold: 30,
    capacity: 20,
  });
  assertEquals(results.map((r) => r.violations), [0, 0, 0, 0]);
  assertBusy(results);
  // With the table no smaller than the total, it never filled.
  assertEquals([counts.size, counts.total, counts.overflows], [0, 0, 0]);
});

Deno.test("SharedCounts.releaseWorker frees what workers held when they ended without releasing", async () => {
  const { counts, results } = await hammer({
    keys: 16,
    limit: 3,
    totalLimit: 0,
    hold: 60,
    capacity: 16,
    keep: true,
  });
  assertEquals(results.map((r) => r.violations), [0, 0, 0, 0]);
  const kept = results.reduce((n, r) => n + r.kept, 0);
  assert(kept > 0);
  assertEquals(counts.total, kept);
  let freed = 0;
  for (let w = 1; w <= 4; w++) {
    const mine = results[w - 1]!.kept;
    const n = counts.releaseWorker(w);
    assertEquals(n, 2 * mine, `worker ${w}: its keys and its total`);
    freed += n;
  }
  assertEquals(freed, 2 * kept);
  for (let k = 0; k < 16; k++) assertEquals(counts.count(countsKey(k)), 0, countsKey(k));
  assertEquals([counts.size, counts.total, counts.overflows], [0, 0, 0]);
});

Deno.test("ConnectionPolicy over shared counts admits exactly the limit from four workers", async () => {
  const ipStorage = createSharedCounts(10, 4), sniStorage = createSharedCounts(10, 4);
  const barrier = sharedBarrier();
  const results = await runInWorkers(
    Array.from({ length: 4 }, (_, i) => ({
      kind: "policy" as const,
      workers: 4,
      worker: i + 1,
      barrier,
      ipStorage,
      sniStorage,
      maxPerIp: 7,
      maxPerSni: 5,
      attempts: 1_000,
    })),
  );
  let ips = 0, snis = 0;
  for (const r of results) {
    if (r.kind !== "policy") throw new Error(`Unexpected result: ${r.kind}`);
    ips += r.ips;
    snis += r.snis;
    assert(r.ipRefusals.every((x) => x === "ip_limit"), r.ipRefusals.join());
    assert(r.sniRefusals.every((x) => x === "sni_limit"), r.sniRefusals.join());
  }
  assertEquals([ips, snis], [7, 5]);
  assertEquals([openSharedCounts(ipStorage).size, openSharedCounts(sniStorage).size], [0, 0]);
});
