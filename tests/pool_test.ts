/**
 * One DC's pool (lib/telegram/pool.ts) against the fake middle proxy, without sessions: where new
 * clients go, growth past clients_per_connection, idle extras closed, retries while down.
 */
import { assert, assertEquals } from "./assert.ts";
import { startFakeMiddleProxy } from "./kit/fake_middle_proxy.ts";
import { randomBytes } from "../lib/crypto.ts";
import type { MiddleClient } from "../lib/telegram/middle.ts";
import { middleConnectOptions, until } from "./helpers.ts";
import { DcPool, type MiddleHandle, type PoolEvents } from "../lib/telegram/pool.ts";

const PROXY_SECRET = randomBytes(128);

const QUIET: PoolEvents = { connected() {}, connectFailed() {}, disconnected() {} };

const CLIENT: MiddleClient = { onPacket() {}, onQuickAck() {}, onClose() {} };
const INFO = { tag: "padded", clientIp: "127.0.0.1", clientPort: 1, adTag: null } as const;

Deno.test("a pool grows past clients_per_connection, balances, and closes idle extras", async () => {
  const mp = await startFakeMiddleProxy({ proxySecret: PROXY_SECRET, mode: "echo" });
  const pool = new DcPool(
    2,
    [{ host: "127.0.0.1", port: mp.port }],
    () =>
      middleConnectOptions(PROXY_SECRET, { pool: { minConnections: 1, clientsPerConnection: 3 } }),
    QUIET,
    undefined,
    400, // idle extras go after 400 ms instead of 2 minutes
  );
  const handles: MiddleHandle[] = [];
  try {
    await until(() => pool.connections.length === 1, "the first connection");
    // One by one. Whenever every connection carries more than 3, a new one opens (and the
    // next clients go to it, the least loaded).
    const loads = () => pool.connections.map((c) => c.load);
    for (let i = 0; i < 10; i++) {
      handles.push(await pool.acquire(CLIENT, INFO));
      await until(() => Math.min(...loads()) <= 3, `growth after ${i + 1}: ${loads()}`);
    }
    assertEquals(loads(), [4, 4, 2]);
    assertEquals(pool.stats().clients, 10);
    // Everyone leaves: the extras close after the idle time, down to min_connections.
    const grown = pool.connections.length;
    for (const handle of handles) handle.release();
    await until(() => pool.connections.length === 1, "idle extras closed", 10_000);
    assert(grown > 1);
    assertEquals(pool.stats().clients, 0);
    await mp.waitUntil(() => mp.connections === 1);
  } finally {
    await pool.close();
    await mp.close();
  }
});

Deno.test("a pool whose middle proxy is down retries with backoff and serves once it is back", async () => {
  const mp = await startFakeMiddleProxy({ proxySecret: PROXY_SECRET, mode: "echo" });
  mp.setRefuse(true);
  const failures: number[] = [];
  const pool = new DcPool(
    2,
    [{ host: "127.0.0.1", port: mp.port }],
    () => middleConnectOptions(PROXY_SECRET, { pool: { minConnections: 1 } }),
    { ...QUIET, connectFailed: (_dc, _addr, _error, retryInMs) => failures.push(retryInMs) },
  );
  try {
    await until(() => failures.length >= 3, "three failed connects");
    // Each retry waits longer than the one before.
    assert(failures[1]! > failures[0]! && failures[2]! > failures[1]!, `delays ${failures}`);
    mp.setRefuse(false);
    const h = await pool.acquire(CLIENT, INFO);
    assertEquals(pool.connections.length >= 1, true);
    h.release();
  } finally {
    await pool.close();
    await mp.close();
  }
});
