/**
 * Operators' metrics: the Prometheus rendering on its own, and the HTTP endpoint of a running
 * proxy in direct and middle-proxy mode, scraped over real sockets.
 */
import { assert, assertEquals, assertRejects, assertStringIncludes } from "./assert.ts";
import {
  startFakeTelegramMiddle,
  startTestProxy,
  TEST_SECRET,
  testConfig,
  until,
} from "./helpers.ts";
import { startFakeDc } from "./kit/fake_dc.ts";
import { connectTestClient, openRawConnection } from "./kit/test_client.ts";
import { Metrics, type MetricsSnapshot } from "../lib/ops/metrics.ts";
import { randomBytes } from "../lib/crypto.ts";

const EMPTY: MetricsSnapshot = {
  active: new Map(),
  liveBytes: new Map(),
  middle: new Map(),
  replayEntries: 0,
  rssBytes: 0,
};

/** `name{labels}` -> value, from an exposition; checks that each family is declared once. */
function parse(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  const declared = new Set<string>();
  assert(text.endsWith("\n"), "the exposition ends with a newline");
  for (const line of text.trimEnd().split("\n")) {
    const type = /^# TYPE (\S+) (counter|gauge)$/.exec(line);
    if (type) {
      assert(!declared.has(type[1]!), `${type[1]} declared twice`);
      declared.add(type[1]!);
      continue;
    }
    if (line.startsWith("# HELP ")) continue;
    const m = /^([a-z_]+)(\{[^}]*\})? (\d+)$/.exec(line);
    assert(m, `not a sample line: ${line}`);
    assert(declared.has(m[1]!), `${m[1]} has no TYPE line before its samples`);
    samples.set(m[1]! + (m[2] ?? ""), Number(m[3]));
  }
  return samples;
}

Deno.test("Metrics counts events per listener and adds the live figures of open sessions", () => {
  const m = new Metrics(["a", "b"], '1.0"x', 1_700_000_000_500);
  const peer = "192.0.2.1:5000";
  m.accepted("a");
  m.accepted("a");
  m.observe({ type: "rejected", listener: "a", peer, reason: "bad_secret" });
  m.observe({
    type: "established",
    listener: "a",
    peer,
    protocol: "tls",
    transport: "padded",
    requestedDc: 2,
    dc: 2,
    dcAddress: "127.0.0.1:1",
  });
  m.observe({
    type: "closed",
    listener: "a",
    peer,
    reason: "client_closed",
    bytesFromClient: 100,
    bytesToClient: 1000,
    durationMs: 5,
  });
  m.observe({ type: "fronted", listener: "b", peer, reason: "replay", target: "x:443" });
  const s = parse(m.render({
    active: new Map([["b", 3]]),
    liveBytes: new Map([["a", { fromClients: 11, toClients: 22 }]]),
    middle: new Map([[-2, {
      connections: 2,
      clients: 5,
      sending: 1,
      migrated: 7,
      closedMidSend: 1,
    }]]),
    replayEntries: 42,
    rssBytes: 123456,
  }));
  assertEquals(s.get('mtproxy_info{version="1.0\\"x"}'), 1);
  assertEquals(s.get("mtproxy_start_time_seconds"), 1_700_000_000);
  assertEquals(s.get('mtproxy_connections_accepted_total{listener="a"}'), 2);
  assertEquals(s.get('mtproxy_connections_accepted_total{listener="b"}'), 0); // present at 0
  assertEquals(s.get('mtproxy_connections_active{listener="a"}'), 0);
  assertEquals(s.get('mtproxy_connections_active{listener="b"}'), 3);
  assertEquals(
    s.get('mtproxy_connections_rejected_total{listener="a",reason="bad_secret"}'),
    1,
  );
  assertEquals(
    s.get('mtproxy_connections_established_total{listener="a",protocol="tls"}'),
    1,
  );
  assertEquals(s.get('mtproxy_connections_closed_total{listener="a",reason="client_closed"}'), 1);
  assertEquals(s.get('mtproxy_connections_fronted_total{listener="b",reason="replay"}'), 1);
  // Closed sessions' bytes plus what open ones have moved so far.
  assertEquals(s.get('mtproxy_client_bytes_received_total{listener="a"}'), 111);
  assertEquals(s.get('mtproxy_client_bytes_sent_total{listener="a"}'), 1022);
  assertEquals(s.get('mtproxy_middle_connections{dc="-2"}'), 2);
  assertEquals(s.get('mtproxy_middle_clients{dc="-2"}'), 5);
  assertEquals(s.get('mtproxy_middle_clients_sending{dc="-2"}'), 1);
  assertEquals(s.get('mtproxy_middle_migrated_total{dc="-2"}'), 7);
  assertEquals(s.get('mtproxy_middle_closed_mid_send_total{dc="-2"}'), 1);
  assertEquals(s.get("mtproxy_replay_cache_entries"), 42);
  assertEquals(s.get("process_resident_memory_bytes"), 123456);
  // The server's stats() are these counters summed over listeners.
  assertEquals(m.totals(), {
    accepted: 2,
    established: 1,
    rejected: { bad_secret: 1 },
    closed: { client_closed: 1 },
    bytesFromClients: 100,
    bytesToClients: 1000,
  });
});

Deno.test("Metrics without middle-proxy pools renders no middle-proxy samples", () => {
  const text = new Metrics(["a"], "1", 0).render(EMPTY);
  assert(!text.includes("mtproxy_middle_"), text);
  parse(text);
});

/** GET `path` from the metrics endpoint: status, content type and body. */
async function scrape(port: number, path = "/metrics", method = "GET") {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { method });
  return { status: res.status, type: res.headers.get("content-type"), body: await res.text() };
}

Deno.test("GET /metrics on a running proxy counts accepted, refused, relayed and closed clients", async () => {
  const dc = await startFakeDc({ mode: "mtproto" });
  try {
    await using proxy = await startTestProxy(testConfig({
      dcPorts: { 2: dc.port },
      metricsListen: { host: "127.0.0.1", port: 0 },
    }));
    const port = proxy.server.metricsAddress!.port;
    const before = parse((await scrape(port)).body);
    assertEquals(before.get('mtproxy_connections_accepted_total{listener="test"}'), 0);

    // A client that relays a round trip and stays open.
    const client = await connectTestClient({
      port: proxy.port,
      secret: TEST_SECRET,
      kind: "tls",
      dcId: 2,
    });
    await client.reqPq();
    // A connection with the wrong secret.
    const wrong = await connectTestClient({
      port: proxy.port,
      secret: randomBytes(16),
      kind: "dd",
      dcId: 2,
    });
    await wrong.send(randomBytes(64)).catch(() => {});
    await wrong.closed();
    await wrong.close();
    await proxy.waitForEvent((e) => e.type === "rejected");

    const open = await scrape(port);
    assertEquals(open.status, 200);
    assertStringIncludes(open.type!, "text/plain; version=0.0.4");
    const during = parse(open.body);
    assertEquals(during.get('mtproxy_connections_accepted_total{listener="test"}'), 2);
    assertEquals(during.get('mtproxy_connections_active{listener="test"}'), 1);
    assertEquals(
      during.get('mtproxy_connections_established_total{listener="test",protocol="tls"}'),
      1,
    );
    assertEquals(
      during.get('mtproxy_connections_rejected_total{listener="test",reason="bad_secret"}'),
      1,
    );
    // Live bytes of the open client: its hello, init and req_pq up; the answer and resPQ down.
    const up = during.get('mtproxy_client_bytes_received_total{listener="test"}')!;
    const down = during.get('mtproxy_client_bytes_sent_total{listener="test"}')!;
    assert(up > 0 && down > 0, `up ${up}, down ${down}`);
    assert(during.get("mtproxy_replay_cache_entries")! >= 1);
    assert(during.get("process_resident_memory_bytes")! > 1_000_000);

    await client.close();
    await proxy.waitForEvent((e) => e.type === "closed");
    const after = parse((await scrape(port)).body);
    assertEquals(after.get('mtproxy_connections_active{listener="test"}'), 0);
    assertEquals(
      after.get('mtproxy_connections_closed_total{listener="test",reason="client_closed"}'),
      1,
    );
    // Counters never go back when a session's live bytes become closed bytes.
    assert(after.get('mtproxy_client_bytes_received_total{listener="test"}')! >= up);
    assert(after.get('mtproxy_client_bytes_sent_total{listener="test"}')! >= down);

    // Other paths and methods.
    assertEquals((await scrape(port, "/")).status, 404);
    assertEquals((await scrape(port, "/metrics", "POST")).status, 405);
    const head = await scrape(port, "/metrics", "HEAD");
    assertEquals([head.status, head.body], [200, ""]);

    await proxy.server.shutdown();
    await assertRejects(() => openRawConnection(port, { connectTimeoutMs: 1000 }));
  } finally {
    await dc.close();
  }
});

Deno.test("GET /metrics shows the middle-proxy pools and their clients", async () => {
  const tag = Uint8Array.from({ length: 16 }, (_, i) => i + 1);
  await using telegram = await startFakeTelegramMiddle(tag);
  await using proxy = await startTestProxy(testConfig({
    tag,
    proxyUrls: telegram.proxyUrls,
    metricsListen: { host: "127.0.0.1", port: 0 },
  }));
  const port = proxy.server.metricsAddress!.port;
  const client = await connectTestClient({
    port: proxy.port,
    secret: TEST_SECRET,
    kind: "dd",
    dcId: 2,
  });
  await client.reqPq();
  const s = parse((await scrape(port)).body);
  assertEquals(s.get('mtproxy_middle_connections{dc="2"}'), proxy.server.middleConnections());
  assert(s.get('mtproxy_middle_connections{dc="2"}')! >= 1);
  assertEquals(s.get('mtproxy_middle_clients{dc="2"}'), 1);
  await client.close();
  await until(() => proxy.server.middleStats().clients === 0, "the client to leave its pool");
  const after = parse((await scrape(port)).body);
  assertEquals(after.get('mtproxy_middle_clients{dc="2"}'), 0);
});

Deno.test("a metrics address that cannot be bound fails the start with the address named", async () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const port = (taken.addr as Deno.NetAddr).port;
    const error = await assertRejects(() =>
      startTestProxy(testConfig({ metricsListen: { host: "127.0.0.1", port } }))
    );
    assertStringIncludes((error as Error).message, `127.0.0.1:${port} (metrics)`);
  } finally {
    taken.close();
  }
});
