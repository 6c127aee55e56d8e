/**
 * End-to-end tests of direct mode through real sockets: test clients -> proxy -> fake DCs.
 */
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { startTestProxy, TEST_SECRET, testConfig } from "./helpers.ts";
import { type FakeDc, type FakeDcEvent, startFakeDc } from "./kit/fake_dc.ts";
import {
  connectTestClient,
  openRawConnection,
  type SecretKind,
  type TestClient,
} from "./kit/test_client.ts";
import { randomBytes, sha256 } from "../lib/crypto.ts";
import type { TransportTag } from "../lib/protocol/obfuscated2.ts";
import { hex } from "./vectors.ts";
import type { ProxyEvent } from "../lib/client/events.ts";

const KINDS: { kind: SecretKind; transport: TransportTag }[] = [
  { kind: "plain", transport: "intermediate" },
  { kind: "plain", transport: "abridged" },
  { kind: "dd", transport: "padded" },
  { kind: "tls", transport: "padded" },
];

async function withDcs<T>(
  modes: ("mtproto" | "echo" | "silent" | "close")[],
  fn: (dcs: FakeDc[]) => Promise<T>,
): Promise<T> {
  const dcs: FakeDc[] = [];
  try {
    for (const mode of modes) dcs.push(await startFakeDc({ mode }));
    return await fn(dcs);
  } finally {
    await Promise.all(dcs.map((d) => d.close()));
  }
}

function isRejected(reason: string) {
  return (e: ProxyEvent) => e.type === "rejected" && e.reason === reason;
}

Deno.test("every client protocol reaches the DC it asks for: 2, 4, media -2, unknown -> default", async () => {
  await withDcs(["mtproto", "mtproto"], async ([dc2, dc4]) => {
    await using proxy = await startTestProxy(
      testConfig({ dcPorts: { 2: dc2!.port, 4: dc4!.port } }),
    );
    const cases = [
      { asked: 2, dc: dc2!, announced: 2 },
      { asked: 4, dc: dc4!, announced: 4 },
      { asked: -2, dc: dc2!, announced: -2 },
      { asked: 999, dc: dc2!, announced: 2 },
    ];
    for (const { kind, transport } of KINDS) {
      for (const { asked, dc, announced } of cases) {
        const before = dc.events.length;
        const client = await connectTestClient({
          port: proxy.port,
          secret: TEST_SECRET,
          kind,
          transport,
          dcId: asked,
        });
        try {
          const res = await client.reqPq();
          assertEquals(res.nonce.length, 16);
          await client.reqPq(); // a second one on the same connection, as TDLib does
          const payload = randomBytes(64);
          await client.send(payload, { padding: 0 });
          assertEquals(await client.receive(), payload);
          const init = dc.events.slice(before).find((e) => e.type === "init");
          assertEquals(init, {
            type: "init",
            conn: init?.conn ?? 0,
            tag: transport,
            dcId: announced,
          });
        } finally {
          await client.close();
        }
      }
    }
    const established = proxy.events.filter((e) => e.type === "established");
    assertEquals(established.length, KINDS.length * cases.length);
    assertEquals(
      new Set(established.map((e) => e.type === "established" ? e.protocol : "")),
      new Set<string>(["plain", "dd", "tls"]),
    );
    const fallback = established.find((e) => e.type === "established" && e.requestedDc === 999);
    assert(fallback?.type === "established" && fallback.dc === 2);
  });
});

Deno.test("a handshake sent one byte at a time works for every protocol", async () => {
  await withDcs(["mtproto"], async ([dc]) => {
    await using proxy = await startTestProxy(testConfig({ dcPorts: { 2: dc!.port } }));
    for (const { kind, transport } of KINDS) {
      const client = await connectTestClient({
        port: proxy.port,
        secret: TEST_SECRET,
        kind,
        transport,
        dcId: 2,
        chunkSize: 1,
      });
      try {
        await client.reqPq();
      } finally {
        await client.close();
      }
    }
  });
});

Deno.test("a plain client with a wrong secret is closed and logged as bad_secret", async () => {
  await withDcs(["mtproto"], async ([dc]) => {
    await using proxy = await startTestProxy(testConfig({ dcPorts: { 2: dc!.port } }));
    for (const kind of ["plain", "dd"] as const) {
      const client = await connectTestClient({
        port: proxy.port,
        secret: randomBytes(16),
        kind,
        dcId: 2,
      });
      await client.closed();
      await client.close();
    }
    await proxy.waitForEvent(isRejected("bad_secret"));
    assertEquals(dc!.accepted, 0);
  });
});

Deno.test("fake-TLS with a wrong secret, unknown SNI or stale clock gets no ServerHello", async () => {
  await withDcs(["mtproto"], async ([dc]) => {
    await using proxy = await startTestProxy(testConfig({ dcPorts: { 2: dc!.port } }));
    const tries: [string, Parameters<typeof connectTestClient>[0]][] = [
      ["tls_bad_digest", { port: proxy.port, secret: randomBytes(16), kind: "tls", dcId: 2 }],
      ["bad_sni", {
        port: proxy.port,
        secret: TEST_SECRET,
        kind: "tls",
        dcId: 2,
        sni: "evil.test",
      }],
      ["tls_bad_timestamp", {
        port: proxy.port,
        secret: TEST_SECRET,
        kind: "tls",
        dcId: 2,
        clockSec: Math.floor(Date.now() / 1000) - 3600,
      }],
    ];
    for (const [reason, options] of tries) {
      await assertRejects(() => connectTestClient(options), Error, "Fake-TLS handshake failed");
      await proxy.waitForEvent(isRejected(reason));
    }
    assertEquals(dc!.accepted, 0);
  });
});

Deno.test("the SNI check ignores case and accepts every configured domain", async () => {
  await withDcs(["mtproto"], async ([dc]) => {
    await using proxy = await startTestProxy(
      testConfig({ dcPorts: { 2: dc!.port }, tlsDomains: ["example.com", "cdn.example.org"] }),
    );
    for (const sni of ["EXAMPLE.com", "cdn.example.org"]) {
      const client = await connectTestClient({
        port: proxy.port,
        secret: TEST_SECRET,
        kind: "tls",
        dcId: 2,
        sni,
      });
      await client.reqPq();
      await client.close();
    }
  });
});

Deno.test("allowed_protocols is enforced for each protocol family", async () => {
  await withDcs(["mtproto"], async ([dc]) => {
    const connect = (port: number, kind: SecretKind, transport?: TransportTag) =>
      connectTestClient({
        port,
        secret: TEST_SECRET,
        kind,
        dcId: 2,
        ...(transport ? { transport } : {}),
      });
    {
      await using proxy = await startTestProxy(
        testConfig({ dcPorts: { 2: dc!.port }, allowed: ["tls"] }),
      );
      const plain = await connect(proxy.port, "plain");
      await plain.closed();
      await plain.close();
      await proxy.waitForEvent(isRejected("tls_expected"));
      const tls = await connect(proxy.port, "tls");
      await tls.reqPq();
      await tls.close();
    }
    {
      await using proxy = await startTestProxy(
        testConfig({ dcPorts: { 2: dc!.port }, allowed: ["dd"] }),
      );
      const plain = await connect(proxy.port, "plain", "abridged");
      await plain.closed();
      await plain.close();
      await proxy.waitForEvent(isRejected("protocol_disallowed"));
      await assertRejects(() => connect(proxy.port, "tls"), Error, "Fake-TLS handshake failed");
      const dd = await connect(proxy.port, "dd");
      await dd.reqPq();
      await dd.close();
    }
  });
});

Deno.test("with fronting off, random garbage and HTTP requests are closed without reaching a DC", async () => {
  await withDcs(["mtproto"], async ([dc]) => {
    await using proxy = await startTestProxy(
      testConfig({ dcPorts: { 2: dc!.port }, handshakeMs: 300 }),
    );
    const probes = [
      randomBytes(64).map((b, i) => (i === 0 ? b & 0x7f : b)),
      randomBytes(5000).map((b, i) => (i === 0 ? b & 0x7f : b)),
      new TextEncoder().encode("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"),
      new TextEncoder().encode(
        "GET /index.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
      ),
    ];
    for (const probe of probes) {
      const raw = await openRawConnection(proxy.port);
      await raw.write(probe);
      const answer = await raw.readAll(3000);
      assertEquals(answer.length, 0, "the proxy says nothing to a prober");
      await raw.close();
    }
    assertEquals(dc!.accepted, 0);
    const reasons = proxy.events.filter((e) => e.type === "rejected").map((e) =>
      e.type === "rejected" ? e.reason : ""
    );
    assertEquals(reasons.length, probes.length);
    assertEquals(reasons, ["bad_secret", "bad_secret", "http_request", "http_request"]);
  });
});

Deno.test("a malformed TLS hello gets a decode_error alert", async () => {
  await using proxy = await startTestProxy(testConfig({}));
  const raw = await openRawConnection(proxy.port);
  await raw.write(Uint8Array.of(0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04, 0, 0, 0, 0));
  assertEquals(hex(await raw.readAll(3000)), "15030300020232");
  await raw.close();
  await proxy.waitForEvent(isRejected("tls_malformed"));
});

Deno.test("a client that stalls mid-handshake is closed when the handshake timeout fires", async () => {
  await using proxy = await startTestProxy(testConfig({ handshakeMs: 200 }));
  for (
    const partial of [new Uint8Array(0), randomBytes(10), Uint8Array.of(0x16, 0x03, 0x01, 0x02)]
  ) {
    const raw = await openRawConnection(proxy.port);
    if (partial.length) await raw.write(partial);
    await raw.closed();
    await raw.close();
  }
  const timeouts = proxy.events.filter(isRejected("timeout"));
  assertEquals(timeouts.length, 3);
});

Deno.test("a client that half-closes mid-handshake is released at once", async () => {
  await using proxy = await startTestProxy(testConfig({ handshakeMs: 60_000 }));
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: proxy.port });
  await conn.write(randomBytes(20));
  await conn.closeWrite();
  await proxy.waitForEvent(isRejected("eof"));
  assertEquals(await conn.read(new Uint8Array(10)), null);
  conn.close();
  assertEquals(proxy.server.stats().active, 0);
});

Deno.test("an unreachable DC closes the client with a logged reason", async () => {
  const unused = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const deadPort = (unused.addr as Deno.NetAddr).port;
  unused.close();
  await using proxy = await startTestProxy(testConfig({ dcPorts: { 2: deadPort } }));
  const client = await connectTestClient({
    port: proxy.port,
    secret: TEST_SECRET,
    kind: "dd",
    dcId: 2,
  });
  await client.closed();
  await client.close();
  const e = await proxy.waitForEvent(isRejected("dc_unreachable"));
  assert(e.type === "rejected" && e.detail?.includes(`127.0.0.1:${deadPort}`));
});

Deno.test("a DC that closes the connection closes the client", async () => {
  await withDcs(["close"], async ([dc]) => {
    await using proxy = await startTestProxy(testConfig({ dcPorts: { 2: dc!.port } }));
    for (const { kind, transport } of KINDS) {
      const client = await connectTestClient({
        port: proxy.port,
        secret: TEST_SECRET,
        kind,
        transport,
        dcId: 2,
      });
      await client.flushInit();
      await client.closed();
      await client.close();
    }
    await proxy.waitForEvent((e) => e.type === "closed" && e.reason === "dc_closed");
  });
});

Deno.test("a client disconnect releases the DC connection immediately", async () => {
  await withDcs(["mtproto"], async ([dc]) => {
    await using proxy = await startTestProxy(testConfig({ dcPorts: { 2: dc!.port } }));
    const client = await connectTestClient({
      port: proxy.port,
      secret: TEST_SECRET,
      kind: "tls",
      dcId: 2,
    });
    await client.reqPq();
    assertEquals(dc!.connections, 1);
    await client.close();
    await dc!.waitUntil(() => dc!.connections === 0);
    await proxy.waitForEvent((e) => e.type === "closed" && e.reason === "client_closed");
    assertEquals(proxy.server.stats().active, 0);
  });
});

async function transfer(client: TestClient, bytes: number): Promise<void> {
  const chunk = 65536;
  const sent = sha256Stream();
  const got = sha256Stream();
  const writer = (async () => {
    for (let off = 0; off < bytes; off += chunk) {
      const data = randomBytes(Math.min(chunk, bytes - off));
      sent.update(data);
      await client.sendRaw(data);
    }
  })();
  let received = 0;
  while (received < bytes) {
    const data = await client.readRaw(undefined, 10_000);
    got.update(data);
    received += data.length;
  }
  await writer;
  assertEquals(received, bytes);
  assertEquals(hex(got.digest()), hex(sent.digest()));
}

function sha256Stream() {
  const parts: Uint8Array[] = [];
  return {
    update: (d: Uint8Array) => parts.push(d.slice()),
    digest: () => sha256(...parts),
  };
}

for (const fastMode of [true, false]) {
  Deno.test(`32 MB each way arrive intact through dd and fake-TLS (fast mode ${fastMode ? "on" : "off"})`, async () => {
    await withDcs(["echo"], async ([dc]) => {
      await using proxy = await startTestProxy(testConfig({ dcPorts: { 2: dc!.port }, fastMode }));
      for (const kind of ["dd", "tls"] as const) {
        const client = await connectTestClient({
          port: proxy.port,
          secret: TEST_SECRET,
          kind,
          dcId: 2,
        });
        try {
          await client.flushInit();
          await transfer(client, 32 * 1024 * 1024);
        } finally {
          await client.close();
        }
      }
      const closed = await proxy.waitForEvent((e) => e.type === "closed" && e.bytesToClient > 0);
      assert(closed.type === "closed" && closed.bytesFromClient >= 32 * 1024 * 1024);
    });
  });
}

Deno.test("400 concurrent clients of every protocol are served", async () => {
  await withDcs(["mtproto"], async ([dc]) => {
    await using proxy = await startTestProxy(testConfig({ dcPorts: { 2: dc!.port } }));
    const clients = await Promise.all(
      Array.from({ length: 400 }, (_, i) => {
        const { kind, transport } = KINDS[i % KINDS.length]!;
        return connectTestClient({
          port: proxy.port,
          secret: TEST_SECRET,
          kind,
          transport,
          dcId: 2,
        });
      }),
    );
    try {
      await Promise.all(clients.map(async (c) => {
        await c.reqPq();
        const payload = randomBytes(256);
        await c.send(payload, { padding: 0 });
        assertEquals(await c.receive(), payload);
      }));
      assertEquals(proxy.server.stats().active, 400);
      assertEquals(dc!.connections, 400);
    } finally {
      await Promise.all(clients.map((c) => c.close()));
    }
    await dc!.waitUntil(() => dc!.connections === 0);
  });
});

Deno.test("an idle relayed client is closed after the idle timeout", async () => {
  await withDcs(["mtproto"], async ([dc]) => {
    await using proxy = await startTestProxy(testConfig({ dcPorts: { 2: dc!.port }, idleMs: 300 }));
    const client = await connectTestClient({
      port: proxy.port,
      secret: TEST_SECRET,
      kind: "dd",
      dcId: 2,
    });
    await client.reqPq();
    await client.closed();
    await client.close();
    await proxy.waitForEvent((e) => e.type === "closed" && e.reason === "idle");
  });
});

Deno.test("connections past max_connections are refused at accept", async () => {
  await withDcs(["mtproto"], async ([dc]) => {
    await using proxy = await startTestProxy(
      testConfig({ dcPorts: { 2: dc!.port }, maxConnections: 2 }),
    );
    const a = await connectTestClient({
      port: proxy.port,
      secret: TEST_SECRET,
      kind: "dd",
      dcId: 2,
    });
    const b = await connectTestClient({
      port: proxy.port,
      secret: TEST_SECRET,
      kind: "dd",
      dcId: 2,
    });
    await a.reqPq();
    await b.reqPq();
    const raw = await openRawConnection(proxy.port);
    await raw.closed();
    await raw.close();
    await proxy.waitForEvent(isRejected("too_many_connections"));
    await a.close();
    await b.close();
  });
});

Deno.test("shutdown stops accepting, lets clients finish, then closes the rest", async () => {
  await withDcs(["mtproto"], async ([dc]) => {
    const proxy = await startTestProxy(
      testConfig({ dcPorts: { 2: dc!.port }, shutdownGraceMs: 300 }),
    );
    const client = await connectTestClient({
      port: proxy.port,
      secret: TEST_SECRET,
      kind: "tls",
      dcId: 2,
    });
    await client.reqPq();
    const stopping = proxy.server.shutdown();
    await assertRejects(() =>
      Deno.connect({ hostname: "127.0.0.1", port: proxy.port }).then((c) => c.close())
    );
    await client.reqPq(); // still served during the grace period
    await stopping;
    await client.closed();
    await client.close();
    await proxy.waitForEvent((e) => e.type === "closed" && e.reason === "shutdown");
    await proxy.server.closed;
    await proxy[Symbol.asyncDispose]();
  });
});

Deno.test("a client asking for DC 0 goes to the default DC, which is told its own id", async () => {
  // Direct mode writes the routed DC id into its own init (the fake DC records it).
  await withDcs(["mtproto"], async ([dc]) => {
    await using proxy = await startTestProxy(testConfig({ dcPorts: { 2: dc!.port } }));
    const client = await connectTestClient({
      port: proxy.port,
      secret: TEST_SECRET,
      kind: "plain",
      dcId: 0,
    });
    await client.reqPq();
    await client.close();
    const init = dc!.events.find((e): e is Extract<FakeDcEvent, { type: "init" }> =>
      e.type === "init"
    );
    assertEquals(init?.dcId, 2);
  });
});
