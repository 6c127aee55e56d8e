/**
 * lib/guard/redis_state.ts against a real redis-server (tests/kit/redis_server.ts): two
 * RedisState instances stand for two proxies of a fleet sharing one server.
 */
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { redisCommand, type RedisServer, startRedisServer } from "./kit/redis_server.ts";
import {
  connectRedisState,
  type RedisState,
  type RedisStateEvent,
  type RedisStateOptions,
  unsharedState,
} from "../lib/guard/redis_state.ts";

const OP_TIMEOUT_MS = 200;
/** Slack on top of OP_TIMEOUT_MS for timers and a loaded CI machine. */
const SLACK_MS = 300;
const IP = "198.51.100.7";

interface Proxy {
  state: RedisState;
  events: RedisStateEvent[];
}

function proxy(redis: RedisServer, name: string, options: Partial<RedisStateOptions> = {}): Proxy {
  const events: RedisStateEvent[] = [];
  const state = connectRedisState({
    url: redis.url,
    instanceId: name,
    opTimeoutMs: OP_TIMEOUT_MS,
    leaseSec: 30,
    onEvent: (e) => events.push(e),
    ...options,
  });
  return { state, events };
}

/** Poll `cond` every 20 ms until it holds; fail after `timeoutMs`. */
async function waitFor(
  cond: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`Timed out after ${timeoutMs} ms waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Run `op` and return its answer and how long it took. */
async function timed<T>(op: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const t0 = performance.now();
  const value = await op();
  return { value, ms: performance.now() - t0 };
}

function randomKey(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(32));
}

async function hget(redis: RedisServer, key: string, field: string): Promise<unknown> {
  return await redisCommand(redis.port, ["HGET", key, field]);
}

Deno.test("RedisState reports a key seen by one proxy as a replay at another", async () => {
  await using redis = await startRedisServer();
  const a = proxy(redis, "a"), b = proxy(redis, "b");
  await using _a = a.state;
  await using _b = b.state;
  await waitFor(() => a.state.available && b.state.available, "both proxies available");

  const hello = randomKey();
  assertEquals(await a.state.replaySeen(hello, 60), false);
  assertEquals(await b.state.replaySeen(hello, 60), true);
  assertEquals(await a.state.replaySeen(hello, 60), true);
  // Only the first 16 bytes count, like the local cache.
  const sameStart = hello.slice();
  sameStart[31]! ^= 0xff;
  assertEquals(await b.state.replaySeen(sameStart, 60), true);
  assertEquals(await b.state.replaySeen(randomKey(), 60), false);

  const hex = Array.from(hello.subarray(0, 16), (x) => x.toString(16).padStart(2, "0")).join("");
  const ttl = await redisCommand(redis.port, ["TTL", `mtproxy:r:${hex}`]);
  assert(typeof ttl === "number" && ttl > 0 && ttl <= 60, `TTL of the replay key: ${ttl}`);

  // A key expires after its TTL and is new again.
  const shortLived = randomKey();
  assertEquals(await a.state.replaySeen(shortLived, 1), false);
  await waitFor(
    async () => (await b.state.replaySeen(shortLived, 1)) === false,
    "a 1 s replay key to expire",
    5_000,
  );
  assertEquals(a.events, [{ type: "available", instance: a.state.instance }]);
});

Deno.test("RedisState enforces a per-IP limit across proxies and frees a slot on release", async () => {
  await using redis = await startRedisServer();
  const a = proxy(redis, "a"), b = proxy(redis, "b");
  await using _a = a.state;
  await using _b = b.state;
  await waitFor(() => a.state.available && b.state.available, "both proxies available");

  assertEquals(await a.state.acquire("ip", IP, 3), true);
  assertEquals(await a.state.acquire("ip", IP, 3), true);
  assertEquals(await b.state.acquire("ip", IP, 3), true);
  assertEquals(await b.state.acquire("ip", IP, 3), false);
  assertEquals(await a.state.acquire("ip", IP, 3), false);
  // Other addresses, SNIs and the total count separately.
  assertEquals(await b.state.acquire("ip", "198.51.100.8", 3), true);
  assertEquals(await b.state.acquire("sni", IP, 1), true);
  assertEquals(await a.state.acquire("total", "", 5), true);
  assertEquals(await a.state.acquire("sni", IP, 1), false);
  assertEquals([...a.state.held], [[`ip:${IP}`, 2], ["total:", 1]]);
  assertEquals(await hget(redis, `mtproxy:c:${a.state.instance}`, `ip:${IP}`), "2");

  a.state.release("ip", IP);
  assertEquals(await b.state.acquire("ip", IP, 3), true);
  assertEquals(await a.state.acquire("ip", IP, 3), false);
  assertEquals(a.state.held.get(`ip:${IP}`), 1);

  // Releasing to zero removes the field; a release of a slot never taken is ignored.
  a.state.release("ip", IP);
  a.state.release("ip", IP);
  a.state.release("sni", "never.example");
  await waitFor(
    async () => (await hget(redis, `mtproxy:c:${a.state.instance}`, `ip:${IP}`)) === null,
    "a's field to go once released to zero",
  );
  assertEquals(a.state.held.get(`ip:${IP}`), undefined);
  assertEquals(await hget(redis, `mtproxy:c:${b.state.instance}`, `ip:${IP}`), "2");
  assertEquals(await a.state.acquire("ip", IP, 3), true);
});

Deno.test("RedisState stops counting a SIGKILLed proxy once its lease expires", async () => {
  await using redis = await startRedisServer();
  const a = proxy(redis, "a", { leaseSec: 1 });
  await using _a = a.state;
  await waitFor(() => a.state.available, "a available");

  // A real crash: another process takes the 3 slots and is killed without any cleanup.
  const module = new URL("../lib/guard/redis_state.ts", import.meta.url).href;
  const code = `
    import { connectRedisState } from ${JSON.stringify(module)};
    const s = connectRedisState({
      url: ${JSON.stringify(redis.url)}, instanceId: "crashing", opTimeoutMs: 1000, leaseSec: 1,
    });
    while (!s.available) await new Promise((r) => setTimeout(r, 20));
    for (let i = 0; i < 3; i++) {
      if ((await s.acquire("ip", ${JSON.stringify(IP)}, 3)) !== true) throw new Error("not taken");
    }
    console.log("held " + s.instance);
    setInterval(() => {}, 1000);
  `;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    cwd: new URL("..", import.meta.url).pathname,
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  let crashed = "";
  try {
    while (!out.includes("\n")) {
      const { value, done } = await lines.read();
      if (done) throw new Error(`The crashing proxy ended early: ${JSON.stringify(out)}`);
      out += value;
    }
    crashed = out.trim().replace(/^held /, "");
    assertEquals(await a.state.acquire("ip", IP, 3), false);
    // Heartbeats keep it counting for longer than its 1 s lease.
    await new Promise((r) => setTimeout(r, 1_500));
    assertEquals(await a.state.acquire("ip", IP, 3), false);
  } finally {
    child.kill("SIGKILL");
    await child.status;
    await lines.cancel();
  }

  const killedAt = Date.now();
  await waitFor(
    async () => (await a.state.acquire("ip", IP, 3)) === true,
    "the crashed proxy's slots to stop counting",
    5_000,
  );
  const took = Date.now() - killedAt;
  assert(took <= 1_000 + SLACK_MS + 500, `took ${took} ms after the kill, lease is 1 s`);
  // The script dropped the dead instance and its hash; its lease key expired.
  const members = await redisCommand(redis.port, ["SMEMBERS", "mtproxy:instances"]);
  assertEquals(members, [a.state.instance]);
  assertEquals(await redisCommand(redis.port, ["EXISTS", `mtproxy:c:${crashed}`]), 0);
  assertEquals(await redisCommand(redis.port, ["EXISTS", `mtproxy:i:${crashed}`]), 0);
  assertEquals(await a.state.acquire("ip", IP, 3), true);
  assertEquals(await a.state.acquire("ip", IP, 3), true);
  assertEquals(await a.state.acquire("ip", IP, 3), false);
});

Deno.test(
  "RedisState answers null within opTimeoutMs while Redis is down and re-publishes its counts when it is back",
  async () => {
    await using redis = await startRedisServer();
    const a = proxy(redis, "a"), b = proxy(redis, "b");
    await using _a = a.state;
    await using _b = b.state;
    await waitFor(() => a.state.available && b.state.available, "both proxies available");
    assertEquals(await a.state.acquire("ip", IP, 3), true);
    assertEquals(await a.state.acquire("ip", IP, 3), true);
    assertEquals(await b.state.acquire("ip", IP, 3), true);
    const before = randomKey();
    assertEquals(await a.state.replaySeen(before, 60), false);

    await redis.kill();
    await waitFor(() => !a.state.available && !b.state.available, "both proxies unavailable");
    assertEquals(a.events.at(-1)?.type, "unavailable");
    for (
      const op of [() => a.state.replaySeen(randomKey(), 60), () => a.state.acquire("ip", IP, 3)]
    ) {
      const r = await timed(op);
      assertEquals(r.value, null);
      assert(r.ms < OP_TIMEOUT_MS + SLACK_MS, `answered in ${r.ms} ms`);
    }
    // A connection that ends during the outage: the fleet learns it on re-publishing.
    a.state.release("ip", IP);
    assertEquals(a.state.held.get(`ip:${IP}`), 1);

    await redis.restart();
    await waitFor(() => a.state.available && b.state.available, "both proxies available again");
    assertEquals(
      a.events.map((e) => e.type),
      ["available", "unavailable", "available"],
    );
    assertEquals(await hget(redis, `mtproxy:c:${a.state.instance}`, `ip:${IP}`), "1");
    assertEquals(await hget(redis, `mtproxy:c:${b.state.instance}`, `ip:${IP}`), "1");
    assertEquals(await b.state.acquire("ip", IP, 3), true);
    assertEquals(await a.state.acquire("ip", IP, 3), false);
    // The restarted server forgot the replay keys (the documented gap).
    assertEquals(await b.state.replaySeen(before, 60), false);
  },
);

Deno.test(
  "RedisState answers null within opTimeoutMs while Redis hangs and corrects counts taken late",
  async () => {
    await using redis = await startRedisServer();
    const a = proxy(redis, "a", { leaseSec: 3 }), b = proxy(redis, "b", { leaseSec: 3 });
    await using _a = a.state;
    await using _b = b.state;
    await waitFor(() => a.state.available && b.state.available, "both proxies available");
    assertEquals(await a.state.acquire("ip", IP, 3), true);

    redis.pause();
    try {
      for (
        const op of [() => a.state.replaySeen(randomKey(), 60), () => a.state.acquire("ip", IP, 3)]
      ) {
        const r = await timed(op);
        assertEquals(r.value, null);
        assert(r.ms >= OP_TIMEOUT_MS - 5, `gave up after ${r.ms} ms`);
        assert(r.ms < OP_TIMEOUT_MS + SLACK_MS, `answered in ${r.ms} ms`);
      }
      // Heartbeats (every second, waiting up to 1 s) fail.
      await waitFor(() => !a.state.available, "a unavailable while Redis hangs", 5_000);
    } finally {
      redis.resume();
    }
    // The acquire that timed out still runs once Redis resumes: re-publishing takes it back.
    await waitFor(() => a.state.available && b.state.available, "both proxies available again");
    await waitFor(
      async () => (await hget(redis, `mtproxy:c:${a.state.instance}`, `ip:${IP}`)) === "1",
      "a's count re-published as the one slot it holds",
    );
    assertEquals(a.state.held.get(`ip:${IP}`), 1);
    assertEquals(await b.state.acquire("ip", IP, 3), true);
    assertEquals(await b.state.acquire("ip", IP, 3), true);
    assertEquals(await a.state.acquire("ip", IP, 3), false);
  },
);

/** A script that keeps Redis busy (answering nobody) for ARGV[1] milliseconds. */
const BUSY_SCRIPT = `
local start = redis.call('TIME')
local ms = tonumber(ARGV[1])
while true do
  local now = redis.call('TIME')
  if (now[1] - start[1]) * 1000 + (now[2] - start[2]) / 1000 >= ms then break end
end
return 1
`;

Deno.test("RedisState takes back a slot that Redis took after the acquire timed out", async () => {
  await using redis = await startRedisServer();
  const a = proxy(redis, "a");
  await using _a = a.state;
  await waitFor(() => a.state.available, "a available");
  assertEquals(await a.state.acquire("ip", IP, 3), true);

  // Redis is slow (busy for 600 ms), not down: the acquire gives up after 200 ms, but Redis runs
  // its script afterwards, counting a slot that a does not hold.
  const busy = redisCommand(redis.port, ["EVAL", BUSY_SCRIPT, "0", "600"]);
  // Let the busy script reach Redis first (setup, not an assertion).
  await new Promise((r) => setTimeout(r, 50));
  for (
    const op of [() => a.state.acquire("ip", IP, 3), () => a.state.replaySeen(randomKey(), 60)]
  ) {
    const r = await timed(op);
    assertEquals(r.value, null);
    assert(r.ms < OP_TIMEOUT_MS + SLACK_MS, `answered in ${r.ms} ms`);
  }
  assertEquals(await busy, 1);
  await waitFor(
    async () => (await hget(redis, `mtproxy:c:${a.state.instance}`, `ip:${IP}`)) === "1",
    "a's count re-published as the one slot it holds",
    5_000,
  );
  assertEquals(a.state.held.get(`ip:${IP}`), 1);
  // Slow is not unavailable: the heartbeat waits up to 1 s.
  assertEquals(a.events.map((e) => e.type), ["available"]);
});

Deno.test("RedisState re-publishes when another process dropped its lease", async () => {
  await using redis = await startRedisServer();
  const a = proxy(redis, "a", { leaseSec: 3 });
  await using _a = a.state;
  await waitFor(() => a.state.available, "a available");
  assertEquals(await a.state.acquire("ip", IP, 2), true);
  // As if a long pause let the lease expire and the fleet dropped a's counts.
  await redisCommand(redis.port, ["DEL", `mtproxy:i:${a.state.instance}`]);
  await redisCommand(redis.port, ["DEL", `mtproxy:c:${a.state.instance}`]);
  assertEquals(await a.state.acquire("ip", IP, 2), null);
  await waitFor(() => a.state.available, "a available after re-publishing");
  assertEquals(await hget(redis, `mtproxy:c:${a.state.instance}`, `ip:${IP}`), "1");
  assertEquals(await a.state.acquire("ip", IP, 2), true);
  assertEquals(await a.state.acquire("ip", IP, 2), false);
  assertEquals(a.events.map((e) => e.type), ["available", "unavailable", "available"]);
});

Deno.test("RedisState close removes its lease and counts", async () => {
  await using redis = await startRedisServer();
  const a = proxy(redis, "a"), b = proxy(redis, "b");
  await using _b = b.state;
  await waitFor(() => a.state.available && b.state.available, "both proxies available");
  assertEquals(await a.state.acquire("ip", IP, 1), true);
  assertEquals(await b.state.acquire("ip", IP, 1), false);
  await a.state.close();
  await a.state.close();
  assertEquals(a.state.available, false);
  assertEquals(await a.state.acquire("ip", IP, 1), null);
  assertEquals(await a.state.replaySeen(randomKey(), 60), null);
  assertEquals(await redisCommand(redis.port, ["EXISTS", `mtproxy:i:${a.state.instance}`]), 0);
  assertEquals(await redisCommand(redis.port, ["EXISTS", `mtproxy:c:${a.state.instance}`]), 0);
  assertEquals(await redisCommand(redis.port, ["SMEMBERS", "mtproxy:instances"]), [
    b.state.instance,
  ]);
  assertEquals(await b.state.acquire("ip", IP, 1), true);
  // No event after close.
  assertEquals(a.events.map((e) => e.type), ["available"]);
});

Deno.test("RedisState keeps to its key prefix", async () => {
  await using redis = await startRedisServer();
  const a = proxy(redis, "a", { keyPrefix: "fleet1" }),
    b = proxy(redis, "b", { keyPrefix: "fleet2" });
  await using _a = a.state;
  await using _b = b.state;
  await waitFor(() => a.state.available && b.state.available, "both proxies available");
  const hello = randomKey();
  assertEquals(await a.state.replaySeen(hello, 60), false);
  assertEquals(await b.state.replaySeen(hello, 60), false);
  assertEquals(await a.state.acquire("ip", IP, 1), true);
  assertEquals(await b.state.acquire("ip", IP, 1), true);
  const keys = await redisCommand(redis.port, ["KEYS", "*"]);
  assert(Array.isArray(keys));
  assert(
    keys.every((k) => typeof k === "string" && /^fleet[12]:/.test(k)),
    JSON.stringify(keys),
  );
});

Deno.test("connectRedisState never throws on a server that is not there and closes promptly", async () => {
  // A port nothing listens on: take one, then free it.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const events: RedisStateEvent[] = [];
  const state = connectRedisState({
    url: `redis://127.0.0.1:${port}/0`,
    instanceId: "lonely",
    opTimeoutMs: OP_TIMEOUT_MS,
    leaseSec: 30,
    onEvent: (e) => events.push(e),
  });
  assertEquals(state.available, false);
  assertEquals(await state.replaySeen(randomKey(), 60), null);
  assertEquals(await state.acquire("ip", IP, 3), null);
  state.release("ip", IP);
  await waitFor(() => events.length > 0, "the first outcome to be reported");
  assertEquals(events[0]?.type, "unavailable");
  // Let it back off a few times (100, 200, 400 ms...); close ends the wait.
  await new Promise((r) => setTimeout(r, 800));
  assertEquals(events.length, 1);
  const closed = await timed(() => state.close());
  assert(closed.ms < 500, `close took ${closed.ms} ms`);
});

Deno.test("connectRedisState rejects invalid options and RedisState invalid arguments", async () => {
  const base: RedisStateOptions = {
    url: "redis://127.0.0.1:1/0",
    instanceId: "a",
    opTimeoutMs: 100,
    leaseSec: 30,
  };
  assertThrows(() => connectRedisState({ ...base, url: "http://127.0.0.1/" }), RangeError, "URL");
  assertThrows(() => connectRedisState({ ...base, url: "not a url" }), RangeError, "URL");
  assertThrows(() => connectRedisState({ ...base, instanceId: "" }), RangeError, "Instance id");
  assertThrows(() => connectRedisState({ ...base, instanceId: "a:b" }), RangeError, "Instance");
  assertThrows(() => connectRedisState({ ...base, keyPrefix: "" }), RangeError, "prefix");
  assertThrows(() => connectRedisState({ ...base, opTimeoutMs: 0 }), RangeError, "opTimeoutMs");
  assertThrows(() => connectRedisState({ ...base, leaseSec: 0.5 }), RangeError, "leaseSec");
  await using state = connectRedisState(base);
  assertThrows(() => state.replaySeen(new Uint8Array(15), 60), RangeError, "16 bytes");
  assertThrows(() => state.replaySeen(new Uint8Array(16), 0), RangeError, "ttlSec");
  assertThrows(() => state.acquire("ip", IP, 0), RangeError, "limit");
});

Deno.test("unsharedState answers null to everything", async () => {
  assertEquals(unsharedState.available, false);
  assertEquals(await unsharedState.replaySeen(randomKey(), 60), null);
  assertEquals(await unsharedState.acquire("total", "", 1), null);
  unsharedState.release("total", "");
  await unsharedState.close();
});
