/**
 * Middle-proxy mode end to end: test clients -> proxy -> fake middle proxies (RPC over the full
 * codec and AES-CBC), with Telegram's config served by a fake core API on 127.0.0.1.
 */
import { assert, assertEquals } from "./assert.ts";
import { startTestProxy, TEST_SECRET, testConfig, type TestProxy, until } from "./helpers.ts";
import {
  type FakeMiddleEvent,
  type FakeMiddleProxy,
  startFakeMiddleProxy,
} from "./kit/fake_middle_proxy.ts";
import { type FakeCoreApi, startFakeCoreApi } from "./kit/fake_core_api.ts";
import {
  connectTestClient,
  openNonReadingClient,
  type SecretKind,
  type TestClient,
} from "./kit/test_client.ts";
import type { TransportTag } from "../lib/protocol/obfuscated2.ts";
import { randomBytes } from "../lib/crypto.ts";
import { reqPqMulti } from "./kit/tl.ts";
import type { PoolConfig } from "../lib/config/types.ts";

const AD_TAG = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);
/** A getProxySecret blob; its first 4 bytes are the key selector. */
const PROXY_SECRET = randomBytes(128);

interface World {
  mp: FakeMiddleProxy;
  core: FakeCoreApi;
  proxy: TestProxy;
}

function proxyConfig(mpPort: number): string {
  return [
    "# force_probability 10 10",
    "default 2;",
    `proxy_for 2 127.0.0.1:${mpPort};`,
    `proxy_for -2 127.0.0.1:${mpPort};`,
    `proxy_for 4 127.0.0.1:${mpPort};`,
    "",
  ].join("\n");
}

async function withMiddle(
  fn: (w: World) => Promise<void>,
  options: { mode?: "mtproto" | "echo"; pool?: Partial<PoolConfig>; coreSecret?: Uint8Array } = {},
): Promise<void> {
  const mp = await startFakeMiddleProxy({
    proxySecret: PROXY_SECRET,
    expectedAdTag: AD_TAG,
    mode: options.mode ?? "mtproto",
  });
  const core = startFakeCoreApi({
    proxySecret: options.coreSecret ?? PROXY_SECRET,
    configV4: proxyConfig(mp.port),
  });
  try {
    await using proxy = await startTestProxy(testConfig({
      tag: AD_TAG,
      proxyUrls: { secret: core.urls.secretUrl, config: core.urls.configUrl },
      externalIp: "127.0.0.1",
      ...(options.pool ? { pool: options.pool } : {}),
    }));
    await fn({ mp, core, proxy });
  } finally {
    await mp.close();
    await core.close();
  }
}

const KINDS: { kind: SecretKind; transport: TransportTag }[] = [
  { kind: "plain", transport: "intermediate" },
  { kind: "plain", transport: "abridged" },
  { kind: "dd", transport: "padded" },
  { kind: "tls", transport: "padded" },
];

function connect(port: number, kind: SecretKind, transport?: TransportTag, dcId = 2) {
  return connectTestClient({
    port,
    secret: TEST_SECRET,
    kind,
    dcId,
    maxPadding: 3,
    ...(transport ? { transport } : {}),
  });
}

async function echo(client: TestClient, size = 64): Promise<void> {
  const payload = randomBytes(size);
  await client.send(payload, { padding: 0 });
  assertEquals(await client.receive(5000), payload);
}

function proxyReqs(mp: FakeMiddleProxy) {
  return mp.events.filter((e): e is Extract<FakeMiddleEvent, { type: "proxy_req" }> =>
    e.type === "proxy_req"
  );
}

Deno.test("every client protocol reaches Telegram through a middle proxy, with the ad tag", async () => {
  await withMiddle(async ({ mp, proxy }) => {
    for (const { kind, transport } of KINDS) {
      for (const dcId of [2, -2, 4, 999]) {
        const client = await connect(proxy.port, kind, transport, dcId);
        try {
          const res = await client.reqPq();
          assertEquals(res.nonce.length, 16);
          await client.reqPq();
          await echo(client);
        } finally {
          await client.close();
        }
      }
    }
    const reqs = proxyReqs(mp);
    assert(reqs.length >= KINDS.length * 4 * 3);
    assert(reqs.every((r) => r.adTagOk === true), "every PROXY_REQ carries the ad tag");
    assertEquals(
      new Set<string | null>(reqs.map((r) => r.tag)),
      new Set<string | null>(["intermediate", "abridged", "padded"]),
    );
    // req_pq_multi is unencrypted (auth_key_id 0): the flag says so.
    assert(reqs.some((r) => r.notEncrypted));
    assert(reqs.every((r) => r.clientIp === "127.0.0.1" && r.proxyIp === "127.0.0.1"));
    // Clients that left were announced with RPC_CLOSE_CONN.
    await mp.waitUntil(() => mp.stats.closeConns >= KINDS.length * 4);
    assert(
      mp.events.every((e) => e.type !== "unexpected"),
      JSON.stringify(mp.events.filter((e) => e.type === "unexpected")),
    );
    assert(proxy.server.middleConnections() >= 2);
  });
});

Deno.test("a quick-ack request comes back as the client's quick-ack token", async () => {
  await withMiddle(async ({ proxy }) => {
    for (const transport of ["intermediate", "abridged"] as const) {
      const client = await connect(proxy.port, "plain", transport);
      try {
        await client.send(randomBytes(32), { quickAck: true });
        const token = await client.receiveQuickAck(5000);
        assertEquals(token.length, 4);
      } finally {
        await client.close();
      }
    }
  });
});

Deno.test("1,000 clients share a handful of middle-proxy connections with intact payloads", async () => {
  await withMiddle(async ({ mp, proxy }) => {
    const clients: TestClient[] = [];
    try {
      for (let i = 0; i < 1000; i += 100) {
        clients.push(
          ...await Promise.all(
            Array.from(
              { length: 100 },
              (_, j) =>
                connect(proxy.port, KINDS[(i + j) % 4]!.kind, KINDS[(i + j) % 4]!.transport),
            ),
          ),
        );
      }
      await Promise.all(clients.map((c) => echo(c, 256)));
      await Promise.all(clients.map((c) => echo(c, 1024)));
      // DC 2's pool carries them all: about one connection per 300 clients.
      const used = mp.liveConnections().filter((c) => c.clients > 0);
      assert(used.length >= 2 && used.length <= Math.ceil(1000 / 300) + 1, `${used.length} used`);
      assertEquals(used.reduce((n, c) => n + c.clients, 0), 1000);
      assertEquals(mp.activeConnIds().length, 1000);
    } finally {
      await Promise.all(clients.map((c) => c.close()));
    }
    await mp.waitUntil(() => mp.activeConnIds().length === 0);
  }, { mode: "mtproto" });
});

Deno.test("when Telegram closes a connection, its idle clients move to another and keep working", async () => {
  await withMiddle(async ({ mp, proxy }) => {
    await mp.waitUntil(() => mp.connections >= 2);
    const clients = await Promise.all(
      Array.from(
        { length: 40 },
        (_, i) => connect(proxy.port, KINDS[i % 4]!.kind, KINDS[i % 4]!.transport),
      ),
    );
    try {
      await Promise.all(clients.map((c) => echo(c)));
      await mp.closeConnection(0);
      await mp.closeConnection(0);
      // Every client is still served (over replacement connections, under new conn ids).
      await Promise.all(clients.map((c) => echo(c)));
      await mp.waitUntil(() => mp.connections >= 2);
    } finally {
      await Promise.all(clients.map((c) => c.close()));
    }
    const closedMidSend = proxy.events.filter((e) =>
      e.type === "closed" && e.reason === "dc_closed"
    );
    assertEquals(closedMidSend.length, 0);
    const counted = proxy.server.middleStats();
    assert(counted.migrated >= 40, `migrated ${counted.migrated}`);
    assertEquals(counted.closedMidSend, 0);
  });
});

Deno.test("a rotation under load moves the idle clients and closes (and counts) the ones mid-send", async () => {
  await withMiddle(async ({ mp, proxy }) => {
    await mp.waitUntil(() => mp.connections >= 2);
    const idle = await Promise.all(
      Array.from(
        { length: 20 },
        (_, i) => connect(proxy.port, KINDS[i % 4]!.kind, KINDS[i % 4]!.transport),
      ),
    );
    const busy = await Promise.all(Array.from({ length: 4 }, () => connect(proxy.port, "dd")));
    const writes: Promise<void>[] = [];
    try {
      await Promise.all([...idle, ...busy].map((c) => echo(c)));
      // Telegram stops reading: the busy clients' packets pile up in the proxy, mid-send.
      mp.stall(true);
      const packet = randomBytes(16384);
      for (const c of busy) {
        for (let i = 0; i < 384; i++) writes.push(c.send(packet, { padding: 0 }).catch(() => {}));
      }
      // Stuck, not just passing through: still in flight over several polls (24 MiB is more
      // than the sockets to the stalled middle proxy can take in).
      let stuck = 0;
      await until(
        () => (proxy.server.middleStats().sending >= busy.length ? ++stuck : (stuck = 0)) >= 5,
        "sends stuck in flight",
      );
      await mp.closeAll();
      mp.stall(false);
      // The idle clients carry on over new connections; the busy ones were closed.
      await Promise.all(idle.map((c) => echo(c)));
      await Promise.all(busy.map((c) => c.closed()));
      const stats = proxy.server.middleStats();
      assertEquals(stats.closedMidSend, busy.length);
      assert(stats.migrated >= idle.length, `migrated ${stats.migrated}`);
      const closed = proxy.events.filter((e) => e.type === "closed" && e.reason === "dc_closed");
      assertEquals(closed.length, busy.length);
    } finally {
      await Promise.all([...idle, ...busy].map((c) => c.close()));
      await Promise.all(writes);
    }
  });
});

Deno.test("the proxy answers Telegram's RPC_PING with RPC_PONG on every connection", async () => {
  await withMiddle(async ({ mp }) => {
    await mp.waitUntil(() => mp.connections >= 2);
    const ids = await mp.ping();
    assert(ids.length >= 2);
    for (const id of ids) {
      const pong = await mp.waitFor((e) => e.type === "pong" && e.pingId === id);
      assert(pong.type === "pong" && pong.expected, JSON.stringify(pong, (_k, v) => String(v)));
    }
  });
});

Deno.test("a frame the proxy cannot decode closes only that middle-proxy connection", async () => {
  await withMiddle(async ({ mp, proxy }) => {
    await mp.waitUntil(() => mp.connections >= 2);
    const clients = await Promise.all(
      Array.from(
        { length: 12 },
        (_, i) => connect(proxy.port, KINDS[i % 4]!.kind, KINDS[i % 4]!.transport),
      ),
    );
    try {
      await Promise.all(clients.map((c) => echo(c)));
      const before = proxy.server.middleStats().migrated;
      const target = mp.liveConnections()[0]!;
      await mp.sendCorrupt(0);
      await mp.waitFor((e) => e.type === "closed" && e.conn === target.conn);
      await mp.waitUntil(() => mp.connections >= 2); // replaced
      // Its clients moved; every client still works; the process is fine.
      await Promise.all(clients.map((c) => echo(c)));
      assert(proxy.server.middleStats().migrated - before >= target.clients);
      assertEquals(proxy.events.filter((e) => e.type === "closed").length, 0);
    } finally {
      await Promise.all(clients.map((c) => c.close()));
    }
  });
});

Deno.test("a client that stops reading is dropped at its limit without stalling the others", async () => {
  await withMiddle(async ({ mp, proxy }) => {
    const stuck = await openNonReadingClient(
      proxy.port,
      TEST_SECRET,
      2,
      reqPqMulti(randomBytes(16)),
    );
    const first = await mp.waitFor((e) => e.type === "proxy_req");
    const stuckId = (first as Extract<FakeMiddleEvent, { type: "proxy_req" }>).connId;
    const other = await connect(proxy.port, "dd");
    try {
      // Push far more than the client limit (256 KiB here) at the stuck client.
      const blob = randomBytes(64 * 1024);
      let sent = 0;
      while (mp.activeConnIds().includes(stuckId) && sent < 64 * 1024 * 1024) {
        await mp.sendToClient(stuckId, blob);
        sent += blob.length;
        if (sent % (1024 * 1024) === 0) await echo(other); // the neighbour keeps flowing
      }
      await mp.waitFor((e) => e.type === "close_conn" && e.connId === stuckId);
      assert(sent < 32 * 1024 * 1024, `dropped only after ${sent} bytes`);
      await proxy.waitForEvent((e) => e.type === "closed" && e.reason === "slow_client");
      await echo(other);
    } finally {
      await other.close();
      stuck.close();
    }
  }, { pool: { maxClientUnackedBytes: 256 * 1024 } });
});

Deno.test("a config refresh moves a DC to its new middle proxy", async () => {
  await withMiddle(async ({ core, proxy, mp }) => {
    const next = await startFakeMiddleProxy({ proxySecret: PROXY_SECRET, expectedAdTag: AD_TAG });
    try {
      const before = await connect(proxy.port, "dd");
      await echo(before);
      core.configV4 = proxyConfig(next.port);
      await proxy.server.refreshTelegramConfig();
      await next.waitUntil(() => next.connections >= 2);
      // The old connections closed; the existing client moved with them.
      await mp.waitUntil(() => mp.connections === 0);
      await echo(before);
      const after = await connect(proxy.port, "tls");
      await after.reqPq();
      await after.close();
      await before.close();
      assert(next.stats.proxyReqs >= 2);
    } finally {
      await next.close();
    }
  });
});

Deno.test("a wrong proxy secret fails the handshake and closes clients with a reason", async () => {
  await withMiddle(async ({ mp, proxy }) => {
    const client = await connect(proxy.port, "dd");
    await client.flushInit();
    await client.closed();
    await client.close();
    await proxy.waitForEvent((e) => e.type === "rejected" && e.reason === "dc_unreachable", 15_000);
    assertEquals(mp.handshakes, 0);
    assert(mp.stats.handshakeFailures > 0);
  }, { coreSecret: randomBytes(128) });
});

Deno.test("middle proxies that are down close new clients, and service recovers by itself", async () => {
  await withMiddle(async ({ mp, proxy }) => {
    await mp.waitUntil(() => mp.connections >= 2);
    mp.setRefuse(true);
    await mp.closeAll();
    const refused = await connect(proxy.port, "dd");
    await refused.flushInit();
    await refused.closed();
    await refused.close();
    await proxy.waitForEvent((e) => e.type === "rejected" && e.reason === "dc_unreachable", 15_000);
    mp.setRefuse(false);
    await mp.waitUntil(() => mp.connections >= 1, 20_000);
    const back = await connect(proxy.port, "dd");
    await back.reqPq();
    await back.close();
  });
});

let _markerSize = 1000;

/** The proxy's conn_id for `client`: the one whose PROXY_REQ has a size no one else used. */
async function connIdOf(mp: FakeMiddleProxy, client: TestClient): Promise<bigint> {
  const size = (_markerSize += 4);
  const marker = randomBytes(size);
  await client.send(marker, { padding: 0 });
  assertEquals(await client.receive(5000), marker); // the echo
  const req = proxyReqs(mp).findLast((r) => r.size === size);
  assert(req, "the marker's PROXY_REQ");
  return req.connId;
}

Deno.test("answers from one middle-proxy read reach a fake-TLS client in one write of full records", async () => {
  await withMiddle(async ({ mp, proxy }) => {
    for (const kind of ["tls", "dd"] as const) {
      const client = await connect(proxy.port, kind, "padded");
      const other = await connect(proxy.port, kind, "padded");
      try {
        const connId = await connIdOf(mp, client);
        const before = client.recordsReceived;
        // 40 small answers and 3 large ones in one write from Telegram, in order.
        const payloads = Array.from({ length: 40 }, (_, i) => randomBytes(4 * (1 + (i % 25))));
        payloads.push(randomBytes(16384), randomBytes(20000), randomBytes(4096));
        await mp.sendToClient(connId, payloads);
        for (const p of payloads) assertEquals(await client.receive(5000), p);
        if (kind === "tls") {
          // One record per answer before; now one write, cut into records of at most 16 KiB.
          const records = client.recordsReceived - before;
          assert(records <= 8, `${records} records for ${payloads.length} answers`);
        }
        await echo(other); // the other client on the connection is unaffected
        await echo(client);
      } finally {
        await client.close();
        await other.close();
      }
    }
  });
});

Deno.test("a client frame its transport does not allow closes that client with bad_frame", async () => {
  await withMiddle(async ({ mp, proxy }) => {
    const other = await connect(proxy.port, "dd");
    try {
      await echo(other);
      // Mid-relay: an intermediate frame whose length is not a multiple of 4, then one too large.
      const bad: { transport: TransportTag; header: Uint8Array }[] = [
        { transport: "intermediate", header: Uint8Array.of(5, 0, 0, 0) },
        { transport: "padded", header: Uint8Array.of(0, 0, 0x20, 0) }, // 2 MiB
        { transport: "abridged", header: Uint8Array.of(0x7f, 0x7e, 0, 0) }, // overlong
      ];
      for (const { transport, header } of bad) {
        const client = await connect(proxy.port, "plain", transport);
        try {
          await echo(client);
          await client.sendRaw(header);
          await client.closed();
          const e = await proxy.waitForEvent((e) =>
            e.type === "closed" && e.reason === "bad_frame"
          );
          assert(e.type === "closed" && e.detail, JSON.stringify(e));
          proxy.events.length = 0;
        } finally {
          await client.close();
        }
      }
      // In the very first packet: refused before anything reaches Telegram.
      const before = mp.stats.proxyReqs;
      const first = await connectTestClient({
        port: proxy.port,
        secret: TEST_SECRET,
        kind: "plain",
        dcId: 2,
        transport: "intermediate",
        deferInit: true, // the init and the bad frame in one write
      });
      try {
        await first.sendRaw(Uint8Array.of(6, 0, 0, 0, 1, 2, 3, 4, 5, 6));
        await first.closed();
        await proxy.waitForEvent((e) => e.type === "rejected" && e.reason === "bad_frame");
      } finally {
        await first.close();
      }
      assertEquals(mp.stats.proxyReqs, before);
      await echo(other); // the neighbour never noticed
    } finally {
      await other.close();
    }
  });
});
