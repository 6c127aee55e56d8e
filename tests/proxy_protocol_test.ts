/**
 * PROXY protocol (a balancer in front of the proxy): the header parser on its own, then
 * listeners with `proxy_protocol` through real sockets, in direct and middle-proxy mode.
 */
import { assert, assertEquals, assertRejects } from "./assert.ts";
import {
  startByteSink,
  startFakeTelegramMiddle,
  startTestProxy,
  TEST_SECRET,
  testConfig,
  until,
} from "./helpers.ts";
import { startFakeDc } from "./kit/fake_dc.ts";
import {
  buildSignedHello,
  connectTestClient,
  openRawConnection,
  type TestClient,
} from "./kit/test_client.ts";
import { parseProxyHeader } from "../lib/protocol/proxy_protocol.ts";
import { randomBytes } from "../lib/crypto.ts";
import type { ListenerConfig } from "../lib/config/types.ts";
import type { ProxyEvent } from "../lib/client/events.ts";

const text = (s: string) => new TextEncoder().encode(s);

/** A version 2 header: PROXY (or LOCAL) command, TCP over IPv4 or IPv6, optional TLV bytes. */
function v2(
  source: { ip: number[]; port: number } | "local",
  tlv: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const sig = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];
  if (source === "local") return Uint8Array.of(...sig, 0x20, 0x00, 0x00, 0x00);
  const six = source.ip.length === 16;
  const addrs = [...source.ip, ...source.ip.map(() => 1)];
  const ports = [source.port >> 8, source.port & 0xff, 0x01, 0xbb];
  const body = [...addrs, ...ports, ...tlv];
  return Uint8Array.of(
    ...sig,
    0x21,
    six ? 0x21 : 0x11,
    body.length >> 8,
    body.length & 0xff,
    ...body,
  );
}

Deno.test("parseProxyHeader reads v1 TCP4, TCP6 and UNKNOWN lines and stops at their CRLF", () => {
  const line = "PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n";
  const withData = new Uint8Array([...text(line), 0x16, 0x03, 0x01]);
  assertEquals(parseProxyHeader(withData), {
    kind: "header",
    length: line.length,
    source: { ip: "203.0.113.7", port: 51000 },
  });
  const six = "PROXY TCP6 2001:DB8::7 2001:db8::1 1 443\r\n";
  assertEquals(parseProxyHeader(text(six)), {
    kind: "header",
    length: six.length,
    source: { ip: "2001:db8::7", port: 1 },
  });
  assertEquals(parseProxyHeader(text("PROXY UNKNOWN\r\n")), {
    kind: "header",
    length: 15,
    source: null,
  });
  // Byte by byte: "need" until the CRLF.
  for (let n = 0; n < line.length; n++) {
    assertEquals(parseProxyHeader(text(line.slice(0, n))).kind, "need", `${n} bytes`);
  }
});

Deno.test("parseProxyHeader refuses what is not a PROXY header, or a broken one", () => {
  for (
    const bad of [
      "GET / HTTP/1.1\r\n",
      "\x16\x03\x01\x02\x00",
      "PROXY TCP4 203.0.113.7 192.0.2.1 51000\r\n",
      "PROXY TCP4 203.0.113.7 192.0.2.1 51000 65536\r\n",
      "PROXY TCP4 2001:db8::7 192.0.2.1 1 2\r\n",
      "PROXY TCP6 203.0.113.7 192.0.2.1 1 2\r\n",
      "PROXY TCP4 256.0.0.1 192.0.2.1 1 2\r\n",
      "PROXY UDP4 203.0.113.7 192.0.2.1 1 2\r\n",
      "PROXY " + "9".repeat(120),
    ]
  ) {
    assertEquals(parseProxyHeader(text(bad)).kind, "reject", JSON.stringify(bad));
  }
  const badVersion = v2("local");
  badVersion[12] = 0x10;
  assertEquals(parseProxyHeader(badVersion).kind, "reject");
  const badCommand = v2("local");
  badCommand[12] = 0x22;
  assertEquals(parseProxyHeader(badCommand).kind, "reject");
  const short = v2({ ip: [203, 0, 113, 7], port: 1 });
  short[15] = 4; // claims 4 bytes: too few for two IPv4 addresses and ports
  assertEquals(parseProxyHeader(short).kind, "reject");
});

Deno.test("parseProxyHeader reads v2 PROXY over IPv4 and IPv6 (with TLVs) and LOCAL", () => {
  const four = v2({ ip: [203, 0, 113, 7], port: 51000 }, Uint8Array.of(0x04, 0x00, 0x01, 0x00));
  assertEquals(parseProxyHeader(four), {
    kind: "header",
    length: four.length,
    source: { ip: "203.0.113.7", port: 51000 },
  });
  for (let n = 0; n < four.length; n++) {
    assertEquals(parseProxyHeader(four.subarray(0, n)).kind, "need", `${n} bytes`);
  }
  const ip6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
  const six = v2({ ip: ip6, port: 443 });
  assertEquals(parseProxyHeader(six), {
    kind: "header",
    length: six.length,
    source: { ip: "2001:db8::7", port: 443 },
  });
  assertEquals(parseProxyHeader(v2("local")), { kind: "header", length: 16, source: null });
});

// ---------------------------------------------------------------------------------------------
// Through a running proxy

const BEHIND: Partial<ListenerConfig> = { proxyProtocol: true };

function established(e: ProxyEvent): boolean {
  return e.type === "established";
}

Deno.test("behind a balancer the PROXY header's client is the one logged and policed", async () => {
  const dc = await startFakeDc({ mode: "mtproto" });
  const open: TestClient[] = [];
  try {
    // The test listener itself is left plain; the second one sits behind the "balancer".
    await using proxy = await startTestProxy(testConfig({
      dcPorts: { 2: dc.port },
      listeners: [BEHIND],
      policy: { maxConnectionsPerIp: 1, denyIps: ["198.51.100.0/24"] },
    }));
    const port = proxy.server.addresses[1]!.port;
    const via = (preface: Uint8Array, kind: "dd" | "tls" = "dd") =>
      connectTestClient({ port, secret: TEST_SECRET, kind, dcId: 2, preface });
    // v1 for a dd client, v2 for a fake-TLS one.
    const a = await via(text("PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n"));
    open.push(a);
    await a.reqPq();
    const e1 = await proxy.waitForEvent(established);
    assertEquals(e1.type === "established" && e1.peer, "203.0.113.7:51000");
    const b = await via(v2({ ip: [203, 0, 113, 8], port: 40000 }), "tls");
    open.push(b);
    await b.reqPq();
    await until(() => proxy.events.filter(established).length === 2, "the second client");
    const e2 = proxy.events.filter(established)[1]!;
    assertEquals(e2.type === "established" && e2.peer, "203.0.113.8:40000");
    // A dd client only learns it was refused when its first request goes unanswered.
    const refused = (preface: Uint8Array) =>
      assertRejects(() =>
        via(preface).then((c) => c.reqPq({ timeoutMs: 2000 }).finally(() => c.close()))
      );
    // Both came from 127.0.0.1, yet the per-IP limit counts the real clients...
    await refused(text("PROXY TCP4 203.0.113.7 192.0.2.1 51001 443\r\n"));
    await proxy.waitForEvent((e) => e.type === "rejected" && e.reason === "ip_limit");
    // ...and the lists see them too.
    await refused(text("PROXY TCP4 198.51.100.1 192.0.2.1 1 443\r\n"));
    await proxy.waitForEvent((e) => e.type === "rejected" && e.reason === "ip_denied");
    // A LOCAL header (a health check) leaves the balancer's own address in place.
    const local = await via(v2("local"));
    open.push(local);
    await local.reqPq();
  } finally {
    for (const c of open) await c.close();
    await dc.close();
  }
});

Deno.test("a connection without a valid PROXY header is closed and logged; others are unaffected", async () => {
  const dc = await startFakeDc({ mode: "mtproto" });
  try {
    await using proxy = await startTestProxy(
      testConfig({ dcPorts: { 2: dc.port }, listeners: [BEHIND] }),
    );
    const port = proxy.server.addresses[1]!.port;
    // A client that skipped the balancer: its handshake is not a PROXY header.
    await assertRejects(() =>
      connectTestClient({ port, secret: TEST_SECRET, kind: "dd", dcId: 2 }).then((c) =>
        c.reqPq({ timeoutMs: 2000 }).finally(() => c.close())
      )
    );
    const refused = await proxy.waitForEvent((e) =>
      e.type === "rejected" && e.reason === "bad_proxy_header"
    );
    assert(refused.type === "rejected" && refused.detail!.includes("no PROXY protocol header"));
    assertEquals(dc.events.length, 0);
    // The plain listener of the same proxy takes the same client as usual.
    const direct = await connectTestClient({
      port: proxy.port,
      secret: TEST_SECRET,
      kind: "dd",
      dcId: 2,
    });
    await direct.reqPq();
    await direct.close();
  } finally {
    await dc.close();
  }
});

Deno.test("a fronted connection behind a balancer reaches the site without the PROXY header", async () => {
  await using site = startByteSink();
  await using proxy = await startTestProxy(testConfig({
    listeners: [BEHIND],
    fronting: { host: "127.0.0.1", port: site.port },
  }));
  const raw = await openRawConnection(proxy.server.addresses[1]!.port);
  const hello = buildSignedHello(randomBytes(16), { sni: "example.com" }); // wrong secret
  await raw.write(
    new Uint8Array([...text("PROXY TCP4 203.0.113.7 192.0.2.1 5 443\r\n"), ...hello]),
  );
  await until(() => site.received().length >= hello.length, "the hello to reach the site");
  assertEquals(site.received().subarray(0, hello.length), hello);
  const fronted = await proxy.waitForEvent((e) => e.type === "fronted");
  assertEquals(fronted.peer, "203.0.113.7:5");
  await raw.close();
});

Deno.test("middle-proxy mode sends Telegram the client address from the PROXY header", async () => {
  const tag = Uint8Array.from({ length: 16 }, (_, i) => 0x40 + i);
  await using telegram = await startFakeTelegramMiddle(tag);
  await using proxy = await startTestProxy(testConfig({
    tag,
    listeners: [{ proxyProtocol: true, tag }],
    proxyUrls: telegram.proxyUrls,
  }));
  const client = await connectTestClient({
    port: proxy.server.addresses[1]!.port,
    secret: TEST_SECRET,
    kind: "dd",
    dcId: 2,
    preface: text("PROXY TCP4 203.0.113.9 192.0.2.1 44321 443\r\n"),
  });
  await client.reqPq();
  const req = telegram.mp.events.find((e) => e.type === "proxy_req");
  assert(req && req.type === "proxy_req");
  assertEquals([req.clientIp, req.clientPort], ["203.0.113.9", 44321]);
  await client.close();
});
