/**
 * The shared replay cache in real Worker threads: one cache across threads. (Its behaviour in one
 * thread, the contract suite and the reference model, is tested in replay_test.ts.)
 */
import { assertEquals } from "./assert.ts";
import {
  createSharedReplayStorage,
  openSharedReplayCache,
  type ReplayCacheOptions,
} from "../lib/guard/replay.ts";
import { numberedKey } from "./contracts/replay_cache_contract.ts";
import { runInWorkers, sharedBarrier, type SharedResult } from "./kit/shared_memory.ts";

/** Four workers check the same keys, two forwards and two backwards; who saw each key first? */
async function checkFromFourWorkers(options: ReplayCacheOptions, keys: number) {
  const storage = createSharedReplayStorage(options);
  const barrier = sharedBarrier();
  const results = await runInWorkers(
    [false, false, true, true].map((backwards) => ({
      kind: "replay" as const,
      workers: 4,
      barrier,
      storage,
      options,
      keys,
      backwards,
    })),
  );
  const firstSeen = results.map((r: SharedResult) => {
    if (r.kind !== "replay") throw new Error(`Unexpected result: ${r.kind}`);
    return r.firstSeen;
  });
  return { storage, firstSeen };
}

Deno.test("openSharedReplayCache tells exactly one of four workers that a key is new", async () => {
  const options = { maxEntries: 100_000, maxAgeMs: 60_000 };
  const keys = 100_000;
  const { storage, firstSeen } = await checkFromFourWorkers(options, keys);
  const firsts = new Uint8Array(keys);
  for (const seen of firstSeen) for (let i = 0; i < keys; i++) firsts[i]! += seen[i]!;
  const wrong = firsts.findIndex((n) => n !== 1);
  assertEquals(wrong, -1, `key ${wrong} was new to ${firsts[wrong]} workers`);
  // And this thread, opening the same storage, sees every key as a replay.
  const cache = openSharedReplayCache(storage, options);
  assertEquals(cache.size, keys);
  for (let i = 0; i < keys; i += 997) assertEquals(cache.checkAndAdd(numberedKey(i), 1_000), true);
  assertEquals(cache.size, keys);
});

Deno.test("openSharedReplayCache keeps its bounds while four workers evict from it", async () => {
  // Four times as many keys as entries: the workers evict each other's keys as they go.
  const options = { maxEntries: 20_000, maxAgeMs: 60_000 };
  const keys = 80_000;
  const { storage } = await checkFromFourWorkers(options, keys);
  const cache = openSharedReplayCache(storage, options);
  assertEquals(cache.size, 20_000);
  // The cache is intact: 20,000 new keys push out all the workers' keys, and are all held.
  const fresh = (i: number) => numberedKey(keys + i);
  for (let i = 0; i < 20_000; i++) assertEquals(cache.checkAndAdd(fresh(i), 1_000), false);
  for (let i = 0; i < 20_000; i++) assertEquals(cache.checkAndAdd(fresh(i), 1_000), true);
  assertEquals(cache.size, 20_000);
  for (let i = 0; i < keys; i += 7) assertEquals(cache.checkAndAdd(numberedKey(i), 1_000), false);
});
