/**
 * The per-user token bucket: its arithmetic with an injected clock, a simulated relay that reads
 * as fast as the waits allow (the achieved rate is the configured one), and one bucket shared
 * by the threads that open one ledger.
 */
import { assert, assertEquals } from "./assert.ts";
import {
  BUCKET_CELLS,
  RATE_MIN_BURST_BYTES,
  rateBurst,
  takeTokens,
} from "../lib/guard/rate_limit.ts";
import { createUserLedger, openUserLedger } from "../lib/guard/quota.ts";
import { testUser } from "./helpers.ts";

Deno.test("takeTokens starts full, waits exactly for the debt, and refills up to the burst", () => {
  const b = new Float64Array(BUCKET_CELLS);
  const t0 = 1_700_000_000_000;
  // 1 MB/s: a burst of 100 kB.
  assertEquals(rateBurst(1_000_000), 100_000);
  assertEquals(takeTokens(b, 0, 100_000, t0, 1_000_000), 0);
  // 10 kB over: 10 ms.
  assertEquals(takeTokens(b, 0, 10_000, t0, 1_000_000), 10);
  // 10 ms later the debt is paid; 20 ms later 10 kB are back.
  assertEquals(takeTokens(b, 0, 0, t0 + 10, 1_000_000), 0);
  assertEquals(takeTokens(b, 0, 10_000, t0 + 20, 1_000_000), 0);
  // A long pause never fills it past the burst.
  assertEquals(takeTokens(b, 0, 100_000, t0 + 60_000, 1_000_000), 0);
  assertEquals(takeTokens(b, 0, 1, t0 + 60_000, 1_000_000), 1);
  // A clock that steps back changes nothing.
  assert(takeTokens(b, 0, 1000, t0, 1_000_000) > 0);
});

Deno.test("rateBurst never goes below one fake-TLS record", () => {
  assertEquals(rateBurst(1), RATE_MIN_BURST_BYTES);
  assertEquals(rateBurst(100_000), RATE_MIN_BURST_BYTES);
});

Deno.test("a relay that reads 64 KiB chunks as the waits allow moves the configured rate, overshooting by at most a burst and one read per pump", () => {
  for (const rate of [10_000, 125_000, 1_000_000, 50_000_000]) {
    const b = new Float64Array(BUCKET_CELLS);
    let now = 1_700_000_000_000;
    const start = now;
    let moved = 0;
    // Two pumps (both directions) share the bucket; each waits what its own charge asked.
    const wakeAt = [now, now];
    while (now - start < 60_000) {
      const i = wakeAt[0]! <= wakeAt[1]! ? 0 : 1;
      now = Math.max(now, wakeAt[i]!);
      moved += 65_536;
      wakeAt[i] = now + takeTokens(b, 0, 65_536, now, rate);
    }
    const seconds = (now - start) / 1000;
    const bound = rate * seconds + rateBurst(rate) + 2 * 65_536;
    assert(moved <= bound, `rate ${rate}: moved ${moved} > ${bound}`);
    assert(moved >= rate * seconds * 0.99, `rate ${rate}: moved ${moved} in ${seconds} s`);
  }
});

Deno.test("threads opening one ledger share one bucket per user", () => {
  const storage = createUserLedger({ users: 8, ipSlots: 0 });
  const w1 = openUserLedger(storage), w2 = openUserLedger(storage);
  const alice = testUser("alice", { rateLimitBytesPerSec: 1_000_000 }),
    bob = testUser("bob", { rateLimitBytesPerSec: 1_000_000 });
  const t = 1_700_000_000_000;
  assertEquals(w1.charge(alice, 100_000, t), 0);
  // Worker 2 finds alice's bucket empty, bob's full.
  assertEquals(w2.charge(alice, 10_000, t), 10);
  assertEquals(w2.charge(bob, 10_000, t), 0);
  assertEquals(w2.pauses.get("alice"), 1);
  assertEquals(w1.pauses.get("alice"), undefined);
  // A user without a limit never waits.
  const carol = testUser("carol", { rateLimitBytesPerSec: null });
  assertEquals(w1.charge(carol, 10_000_000, t), 0);
  // A reload may lower the rate: the bucket follows the user's limit as it is now.
  assertEquals(w1.charge({ ...bob, rateLimitBytesPerSec: 100_000 }, 100_000, t), 100);
});
