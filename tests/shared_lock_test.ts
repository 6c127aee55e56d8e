/** The shared-memory lock, in one thread and in real Worker threads. */
import { assertEquals } from "./assert.ts";
import { lockShared, unlockShared } from "../lib/guard/shared_lock.ts";
import { runInWorkers, type SharedResult } from "./kit/shared_memory.ts";

Deno.test("lockShared takes a free lock and unlockShared frees it", () => {
  const words = new Int32Array(new SharedArrayBuffer(8));
  lockShared(words, 1);
  assertEquals(Array.from(words), [0, 1]);
  unlockShared(words, 1);
  assertEquals(Array.from(words), [0, 0]);
  lockShared(words, 1); // and again
  unlockShared(words, 1);
});

Deno.test("lockShared lets one worker at a time in when four change one word without atomics", async () => {
  const workers = 4, rounds = 200_000;
  const words = new SharedArrayBuffer(16);
  const results = await runInWorkers(
    Array.from({ length: workers }, (_, i) => ({
      kind: "lock" as const,
      id: i + 1,
      workers,
      words,
      rounds,
    })),
  );
  const view = new Int32Array(words);
  assertEquals(view[1], workers * rounds, "no increment was lost");
  assertEquals(view[0], 0, "the lock is free");
  assertEquals(
    results.map((r: SharedResult) => r.kind === "lock" && r.overlaps),
    [0, 0, 0, 0],
    "no worker found another inside",
  );
});
