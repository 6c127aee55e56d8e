/**
 * Split mode under load: many clients of two fronts multiplexed over one back's pool, a client
 * that never reads, and Telegram rotating the back's middle-proxy connections.
 */
import { assert, assertEquals } from "./assert.ts";
import {
  startFakeTelegramMiddle,
  startTestProxy,
  TEST_SECRET,
  testConfig,
  until,
} from "./helpers.ts";
import { startFakeDc } from "./kit/fake_dc.ts";
import type { FakeMiddleEvent } from "./kit/fake_middle_proxy.ts";
import { reqPqMulti } from "./kit/tl.ts";
import { connectTestClient, openNonReadingClient, type TestClient } from "./kit/test_client.ts";
import { AD_TAG, backConfig, frontConfig, LINK } from "./kit/split.ts";
import { randomBytes } from "../lib/crypto.ts";
import type { Config } from "../lib/config/types.ts";
import { startServer } from "../lib/server.ts";

const OTHER_SECRET = Uint8Array.from({ length: 16 }, (_, i) => 0x70 + i);

function connect(port: number, i: number, dcId = 2): Promise<TestClient> {
  const kind = (["plain", "dd", "tls"] as const)[i % 3]!;
  return connectTestClient({ port, secret: TEST_SECRET, kind, dcId, maxPadding: 3 });
}

async function echo(client: TestClient, size = 64): Promise<void> {
  const payload = randomBytes(size);
  await client.send(payload, { padding: 0 });
  assertEquals(await client.receive(10_000), payload);
}

/** Open `n` clients, `batch` at a time. */
async function openMany(port: number, n: number, batch = 100): Promise<TestClient[]> {
  const clients: TestClient[] = [];
  try {
    for (let i = 0; i < n; i += batch) {
      const m = Math.min(batch, n - i);
      clients.push(...await Promise.all(Array.from({ length: m }, (_, j) => connect(port, i + j))));
    }
  } catch (e) {
    await Promise.all(clients.map((c) => c.close()));
    throw e;
  }
  return clients;
}

Deno.test("two fronts' 600 clients share the back's middle-proxy pool within the per-300-clients rule", async () => {
  await using telegram = await startFakeTelegramMiddle(AD_TAG, "mtproto");
  const b = backConfig(telegram.proxyUrls);
  const back = await startServer({
    ...b,
    fronts: [...b.fronts, { name: "away", secret: OTHER_SECRET }],
  });
  await using _back = { [Symbol.asyncDispose]: () => back.shutdown() };
  const port = back.linkAddresses[0]!.port;
  await using home = await startTestProxy(frontConfig(port));
  await using away = await startTestProxy(frontConfig(port, OTHER_SECRET));
  await until(() => home.server.linksUp() === 2 && away.server.linksUp() === 2, "links up");
  const clients: TestClient[] = [];
  try {
    clients.push(...await openMany(home.port, 300), ...await openMany(away.port, 300));
    await Promise.all(clients.map((c) => echo(c, 256)));
    await Promise.all(clients.map((c) => echo(c, 1024)));
    const { mp } = telegram;
    const used = mp.liveConnections().filter((c) => c.clients > 0);
    // Today's rule for a pool: about one Telegram connection per 300 clients.
    assert(used.length >= 2 && used.length <= Math.ceil(600 / 300) + 1, `${used.length} used`);
    assertEquals(used.reduce((n, c) => n + c.clients, 0), 600);
    assertEquals(mp.activeConnIds().length, 600);
    const fronts = back.frontLinks()!;
    assertEquals(fronts.streams.get("home"), 300);
    assertEquals(fronts.streams.get("away"), 300);
    // Four links carry them: two per front.
    assertEquals(back.linksUp(), 4);
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
  await telegram.mp.waitUntil(() => telegram.mp.activeConnIds().length === 0);
  await until(() => back.frontLinks()!.streams.get("home") === 0, "the back released them");
});

Deno.test("a client that never reads holds one window on each side; the other streams of its link keep going", async () => {
  // DC 2 floods whoever asks it; DC 4 echoes.
  const flood = await startFakeDc({ mode: "flood", floodBytes: 256 << 20 });
  await using _flood = { [Symbol.asyncDispose]: () => flood.close() };
  const dc = await startFakeDc({ mode: "echo" });
  await using _dc = { [Symbol.asyncDispose]: () => dc.close() };
  const back = await startServer({
    ...backConfig({ secret: "http://127.0.0.1:9/s", config: "http://127.0.0.1:9/c" }),
    telegram: {
      ...testConfig({ dcPorts: { 2: flood.port, 4: dc.port } }).telegram,
      mode: "direct",
    },
  });
  await using _back = { [Symbol.asyncDispose]: () => back.shutdown() };
  // One link, so both clients share it.
  const f = frontConfig(back.linkAddresses[0]!.port);
  await using front = await startTestProxy({ ...f, backs: [{ ...f.backs[0]!, links: 1 }] });
  await until(() => front.server.linksUp() === 1, "the link is up");

  const stuck = await openNonReadingClient(front.port, TEST_SECRET, 2, randomBytes(64));
  try {
    // The flood stops once every buffer on the way is full.
    let last = -1;
    let still = 0;
    await until(
      () => {
        const now = flood.floodedBytes;
        still = now > 0 && now === last ? still + 1 : 0;
        last = now;
        return still >= 10;
      },
      "the flood stopped",
      20_000,
    );
    const stalled = flood.floodedBytes;
    assert(stalled < 256 << 20, `the DC wrote ${stalled} bytes`);
    const window = LINK.windowBytes;
    const frontHeld = front.server.backLinks()[0]!.maxStreamHeldBytes;
    const backHeld = back.frontLinks()!.maxStreamHeldBytes;
    // One window, plus at most one read's worth of answers that arrived together.
    assert(frontHeld <= window + 64 * 1024, `the front holds ${frontHeld} bytes`);
    assert(backHeld <= window + 64 * 1024, `the back holds ${backHeld} bytes`);
    assert(frontHeld > 0 && backHeld > 0, "both sides hold part of the flood");

    // The neighbour on the same link moves far more than the stuck stream's windows.
    const other = await connect(front.port, 1, 4);
    try {
      let moved = 0;
      const packetBytes = 64 * 1024;
      while (moved < 16 * window) {
        const payload = randomBytes(packetBytes);
        await other.send(payload, { padding: 0 });
        assertEquals((await other.receive(10_000)).subarray(0, packetBytes), payload);
        moved += packetBytes;
      }
      assertEquals(flood.floodedBytes, stalled, "the stuck stream did not move meanwhile");
      assertEquals(front.server.linksUp(), 1);
    } finally {
      await other.close();
    }
  } finally {
    stuck.close();
  }
  await until(() => back.frontLinks()!.streams.get("home") === 0, "the back released the streams");
});

Deno.test("in middle mode a never-reading client is dropped at the back's pool limit as slow_client; its link neighbour keeps going", async () => {
  await using telegram = await startFakeTelegramMiddle(AD_TAG, "mtproto");
  const { mp } = telegram;
  const limit = 512 * 1024;
  const b = backConfig(telegram.proxyUrls);
  const back = await startServer({ ...b, pool: { ...b.pool, maxClientUnackedBytes: limit } });
  await using _back = { [Symbol.asyncDispose]: () => back.shutdown() };
  const f = frontConfig(back.linkAddresses[0]!.port);
  await using front = await startTestProxy({ ...f, backs: [{ ...f.backs[0]!, links: 1 }] });
  await until(() => front.server.linksUp() === 1, "the link is up");
  const stuck = await openNonReadingClient(
    front.port,
    TEST_SECRET,
    2,
    reqPqMulti(randomBytes(16)),
  );
  const other = await connect(front.port, 1);
  try {
    const first = await mp.waitFor((e) => e.type === "proxy_req");
    const stuckId = (first as Extract<FakeMiddleEvent, { type: "proxy_req" }>).connId;
    const blob = randomBytes(64 * 1024);
    let sent = 0;
    while (mp.activeConnIds().includes(stuckId) && sent < 64 * 1024 * 1024) {
      await mp.sendToClient(stuckId, blob);
      sent += blob.length;
      if (sent % (1024 * 1024) === 0) await echo(other); // the neighbour keeps flowing
    }
    await mp.waitFor((e) => e.type === "close_conn" && e.connId === stuckId);
    // The pool's limit, the front's window and the sockets' buffers, not the whole push.
    assert(sent < 32 * 1024 * 1024, `dropped only after ${sent} bytes`);
    await front.waitForEvent((e) => e.type === "closed" && e.reason === "slow_client");
    await echo(other, 64 * 1024);
  } finally {
    await other.close();
    stuck.close();
  }
});

Deno.test("Telegram rotating the back's middle-proxy connections under load is invisible to the front's idle clients", async () => {
  await using telegram = await startFakeTelegramMiddle(AD_TAG, "mtproto");
  const { mp } = telegram;
  const config: Config = backConfig(telegram.proxyUrls);
  const back = await startServer(config);
  await using _back = { [Symbol.asyncDispose]: () => back.shutdown() };
  await using front = await startTestProxy(frontConfig(back.linkAddresses[0]!.port));
  await until(() => front.server.linksUp() === 2, "both links up");
  await mp.waitUntil(() => mp.connections >= 2);
  const idle = await openMany(front.port, 30);
  const busy = await openMany(front.port, 4);
  let loading = true;
  const load = Promise.all(busy.map(async (c) => {
    // Busy clients keep echoing while Telegram rotates; one may be cut mid-send.
    try {
      while (loading) await echo(c, 16 * 1024);
    } catch {
      // Closed mid-send by the rotation: allowed, as in standalone middle mode.
    }
  }));
  try {
    await Promise.all(idle.map((c) => echo(c)));
    const before = back.middleStats().migrated;
    await mp.closeConnection(0);
    await mp.closeConnection(0);
    await mp.waitUntil(() => mp.connections >= 2);
    // Every idle client is still served, over replacement connections.
    await Promise.all(idle.map((c) => echo(c)));
    await Promise.all(idle.map((c) => echo(c, 4096)));
    const migrated = back.middleStats().migrated - before;
    assert(migrated >= idle.length / 3, `${migrated} clients migrated`);
    // Only clients that were mid-send may have been closed, never the idle ones.
    const closed = front.events.filter((e) => e.type === "closed").length;
    assert(closed <= busy.length, `${closed} closed`);
    assertEquals(front.server.linksUp(), 2);
  } finally {
    loading = false;
    await Promise.all([...idle, ...busy].map((c) => c.close()));
    await load;
  }
});
