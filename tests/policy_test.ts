/**
 * Connection policy: address parsing and matching, the limits and lists on their own, then
 * applied by a running proxy to real connections.
 */
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { startByteSink, startTestProxy, TEST_SECRET, testConfig, until } from "./helpers.ts";
import { startFakeDc } from "./kit/fake_dc.ts";
import { connectTestClient, openRawConnection, type TestClient } from "./kit/test_client.ts";
import {
  cidrContains,
  ConnectionPolicy,
  ipKey,
  parseCidr,
  parseIp16,
  type PolicySlot,
} from "../lib/guard/policy.ts";
import type { PolicyConfig } from "../lib/config/types.ts";
import { DEFAULT_POLICY } from "../lib/config/defaults.ts";
import type { ProxyEvent } from "../lib/client/events.ts";

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

Deno.test("parseIp16 reads IPv4, every IPv6 spelling, and IPv4-mapped IPv6 as one address", () => {
  assertEquals(hex(parseIp16("192.0.2.1")!), "00000000000000000000ffffc0000201");
  assertEquals(hex(parseIp16("::ffff:192.0.2.1")!), hex(parseIp16("192.0.2.1")!));
  assertEquals(hex(parseIp16("[::ffff:c000:201]")!), hex(parseIp16("192.0.2.1")!));
  assertEquals(hex(parseIp16("2001:db8::1")!), "20010db8000000000000000000000001");
  assertEquals(hex(parseIp16("2001:DB8:0:0:0:0:0:1")!), hex(parseIp16("2001:db8::1")!));
  assertEquals(hex(parseIp16("::")!), "0".repeat(32));
  assertEquals(hex(parseIp16("::1")!), "0".repeat(31) + "1");
  assertEquals(hex(parseIp16("fe80::")!), "fe80" + "0".repeat(28));
  for (
    const bad of [
      "",
      "1.2.3",
      "256.1.1.1",
      "example.com",
      "1::2::3",
      "1:2:3:4:5:6:7:8:9",
      "1:2:3:4:5:6:7",
      "12345::",
      "::ffff:300.1.1.1",
      "1:2:3:4:5:6:7::8",
    ]
  ) {
    assertEquals(parseIp16(bad), null, bad);
  }
});

Deno.test("parseCidr and cidrContains: prefixes on and off byte boundaries, IPv4 inside IPv6", () => {
  const inside = (net: string, ip: string) => cidrContains(parseCidr(net)!, parseIp16(ip)!);
  assert(inside("10.0.0.0/8", "10.255.1.2"));
  assert(!inside("10.0.0.0/8", "11.0.0.1"));
  assert(inside("192.0.2.128/25", "192.0.2.200"));
  assert(!inside("192.0.2.128/25", "192.0.2.127"));
  assert(inside("192.0.2.7", "192.0.2.7")); // a bare address is one host
  assert(!inside("192.0.2.7", "192.0.2.8"));
  assert(inside("0.0.0.0/0", "203.0.113.9"));
  assert(!inside("0.0.0.0/0", "2001:db8::1")); // every IPv4 address, not every address
  assert(inside("::/0", "2001:db8::1"));
  assert(inside("2001:db8::/33", "2001:db8:7fff::1"));
  assert(!inside("2001:db8::/33", "2001:db8:8000::1"));
  assert(inside("10.1.2.3/8", "10.9.9.9")); // host bits in the network are ignored
  assert(inside("::ffff:0:0/96", "198.51.100.1"));
  for (const bad of ["10.0.0.0/33", "::/129", "10.0.0.0/", "/8", "10.0.0.0/8/8", "x/8"]) {
    assertEquals(parseCidr(bad), null, bad);
  }
});

Deno.test("ipKey counts an IPv4 address alone and IPv6 per /64", () => {
  assertEquals(ipKey(parseIp16("198.51.100.7")!), "198.51.100.7");
  assertEquals(ipKey(parseIp16("::ffff:198.51.100.7")!), "198.51.100.7");
  assertEquals(ipKey(parseIp16("2001:db8:1:2::1")!), ipKey(parseIp16("2001:db8:1:2:ffff::9")!));
  assert(ipKey(parseIp16("2001:db8:1:2::1")!) !== ipKey(parseIp16("2001:db8:1:3::1")!));
});

function policy(overrides: Partial<PolicyConfig>): ConnectionPolicy {
  return new ConnectionPolicy({ ...DEFAULT_POLICY, ...overrides });
}

function slot(s: PolicySlot | string): PolicySlot {
  if (typeof s === "string") throw new Error(`refused: ${s}`);
  return s;
}

Deno.test("ConnectionPolicy: lists refuse, limits count per key and free on release", () => {
  const none = policy({});
  assert(!none.checksIps && !none.checksSnis);
  slot(none.admitIp("192.0.2.1"));

  const lists = policy({ allowIps: ["192.0.2.0/24", "2001:db8::/32"], denyIps: ["192.0.2.66"] });
  slot(lists.admitIp("192.0.2.1"));
  slot(lists.admitIp("2001:db8::5"));
  assertEquals(lists.admitIp("192.0.2.66"), "ip_denied"); // deny wins over allow
  assertEquals(lists.admitIp("198.51.100.1"), "ip_denied");
  assertEquals(lists.admitIp("not an ip"), "ip_denied");

  const limited = policy({ maxConnectionsPerIp: 2 });
  const a = slot(limited.admitIp("192.0.2.1"));
  slot(limited.admitIp("::ffff:192.0.2.1")); // the same client over a dual-stack socket
  assertEquals(limited.admitIp("192.0.2.1"), "ip_limit");
  slot(limited.admitIp("192.0.2.2")); // another address has its own count
  a.release();
  a.release(); // twice is harmless
  const again = slot(limited.admitIp("192.0.2.1"));
  assertEquals(limited.admitIp("192.0.2.1"), "ip_limit");
  again.release();
  assertEquals(limited.held.ips, 2);

  const snis = policy({ maxConnectionsPerSni: 1, denySni: ["bob.example"] });
  assert(snis.checksSnis && !snis.checksIps);
  const alice = slot(snis.admitSni("alice.example"));
  assertEquals(snis.admitSni("alice.example"), "sni_limit");
  assertEquals(snis.admitSni("bob.example"), "sni_denied");
  alice.release();
  slot(snis.admitSni("alice.example"));
  const only = policy({ allowSni: ["alice.example"] });
  slot(only.admitSni("alice.example"));
  assertEquals(only.admitSni("carol.example"), "sni_denied");
});

// ---------------------------------------------------------------------------------------------
// Through a running proxy

const isRejected = (reason: string) => (e: ProxyEvent) =>
  e.type === "rejected" && e.reason === reason;

/** A raw connection the proxy must close without a byte. */
async function assertClosedAtOnce(port: number): Promise<void> {
  const c = await openRawConnection(port);
  try {
    assertEquals((await c.readAll(3000)).length, 0);
  } finally {
    await c.close();
  }
}

Deno.test("max_connections_per_ip refuses the connection past the limit until one ends", async () => {
  const dc = await startFakeDc({ mode: "mtproto" });
  const clients: TestClient[] = [];
  try {
    await using proxy = await startTestProxy(
      testConfig({ dcPorts: { 2: dc.port }, policy: { maxConnectionsPerIp: 2 } }),
    );
    const connect = () =>
      connectTestClient({ port: proxy.port, secret: TEST_SECRET, kind: "dd", dcId: 2 });
    for (let i = 0; i < 2; i++) {
      const c = await connect();
      await c.reqPq();
      clients.push(c);
    }
    await assertClosedAtOnce(proxy.port);
    await proxy.waitForEvent(isRejected("ip_limit"));
    assertEquals(proxy.server.stats().active, 2);
    await clients.shift()!.close();
    await until(() => proxy.server.stats().active === 1, "the closed client to leave");
    const next = await connect();
    clients.push(next);
    await next.reqPq();
  } finally {
    for (const c of clients) await c.close();
    await dc.close();
  }
});

Deno.test("deny_ips and allow_ips refuse at accept, before any handshake or DC dial", async () => {
  const dc = await startFakeDc({ mode: "mtproto" });
  try {
    for (const rules of [{ denyIps: ["127.0.0.0/8"] }, { allowIps: ["10.0.0.0/8", "::1"] }]) {
      await using proxy = await startTestProxy(
        testConfig({ dcPorts: { 2: dc.port }, policy: rules }),
      );
      await assertClosedAtOnce(proxy.port);
      await proxy.waitForEvent(isRejected("ip_denied"));
      await assertRejects(() =>
        connectTestClient({ port: proxy.port, secret: TEST_SECRET, kind: "tls", dcId: 2 })
      );
    }
    assertEquals(dc.events.length, 0, "nothing reached the DC");
    await using allowed = await startTestProxy(
      testConfig({ dcPorts: { 2: dc.port }, policy: { allowIps: ["127.0.0.1"] } }),
    );
    const c = await connectTestClient({
      port: allowed.port,
      secret: TEST_SECRET,
      kind: "dd",
      dcId: 2,
    });
    await c.reqPq();
    await c.close();
  } finally {
    await dc.close();
  }
});

Deno.test("max_connections_per_sni and deny_sni apply to fake-TLS clients that hold the secret", async () => {
  const dc = await startFakeDc({ mode: "mtproto" });
  const open: TestClient[] = [];
  try {
    await using proxy = await startTestProxy(testConfig({
      dcPorts: { 2: dc.port },
      tlsDomains: ["a.example", "b.example", "c.example"],
      policy: { maxConnectionsPerSni: 1, denySni: ["c.example"] },
    }));
    const connect = (sni: string) =>
      connectTestClient({ port: proxy.port, secret: TEST_SECRET, kind: "tls", dcId: 2, sni });
    const a = await connect("a.example");
    open.push(a);
    await a.reqPq();
    // A second user of a.example gets no ServerHello; b.example has its own count.
    await assertRejects(() => connect("a.example"));
    await proxy.waitForEvent(isRejected("sni_limit"));
    const b = await connect("B.example"); // SNIs compare in lowercase
    open.push(b);
    await b.reqPq();
    await assertRejects(() => connect("c.example"));
    await proxy.waitForEvent(isRejected("sni_denied"));
    // dd clients name no SNI and are not counted.
    const dd = await connectTestClient({
      port: proxy.port,
      secret: TEST_SECRET,
      kind: "dd",
      dcId: 2,
    });
    open.push(dd);
    await dd.reqPq();
    // The limit is checked only once the secret is proven: a probe is refused for its HMAC.
    const before = proxy.events.filter(isRejected("sni_limit")).length;
    await assertRejects(() =>
      connectTestClient({
        port: proxy.port,
        secret: new Uint8Array(16),
        kind: "tls",
        dcId: 2,
        sni: "a.example",
      })
    );
    await proxy.waitForEvent(isRejected("tls_bad_digest"));
    assertEquals(proxy.events.filter(isRejected("sni_limit")).length, before);
    // a.example is free again once its user leaves.
    await a.close();
    await until(() => proxy.server.stats().active === 2, "a.example's user to leave");
    const a2 = await connect("a.example");
    open.push(a2);
    await a2.reqPq();
  } finally {
    for (const c of open) await c.close();
    await dc.close();
  }
});

Deno.test("a refused SNI is fronted like any connection that cannot be a client", async () => {
  await using site = startByteSink();
  await using proxy = await startTestProxy(testConfig({
    tlsDomains: ["a.example"],
    fronting: { host: "127.0.0.1", port: site.port },
    policy: { denySni: ["a.example"] },
  }));
  await assertRejects(() =>
    connectTestClient({
      port: proxy.port,
      secret: TEST_SECRET,
      kind: "tls",
      dcId: 2,
      sni: "a.example",
      connectTimeoutMs: 1000,
    })
  );
  const fronted = await proxy.waitForEvent((e) => e.type === "fronted");
  assertEquals(fronted.type === "fronted" && fronted.reason, "sni_denied");
  await until(() => site.received().length > 0, "the hello to reach the site");
});

Deno.test("updatePolicy closes the clients the new lists refuse, with reason policy, and no others", async () => {
  const dc = await startFakeDc({ mode: "mtproto" });
  const open: TestClient[] = [];
  try {
    await using proxy = await startTestProxy(testConfig({
      dcPorts: { 2: dc.port },
      tlsDomains: ["a.example", "b.example"],
    }));
    const tls = (sni: string) =>
      connectTestClient({ port: proxy.port, secret: TEST_SECRET, kind: "tls", dcId: 2, sni });
    const alice = await tls("a.example");
    const bob = await tls("b.example");
    const dd = await connectTestClient({
      port: proxy.port,
      secret: TEST_SECRET,
      kind: "dd",
      dcId: 2,
    });
    open.push(alice, bob, dd);
    for (const c of open) await c.reqPq();
    // A connection still in its handshake when the rules change is refused as well.
    const waiting = await openRawConnection(proxy.port);
    const rules = { ...DEFAULT_POLICY, denySni: ["a.example"] };
    assertEquals(proxy.server.updatePolicy(rules), 1);
    await alice.closed();
    await proxy.waitForEvent((e) => e.type === "closed" && e.reason === "policy");
    await bob.reqPq();
    await dd.reqPq();
    await assertRejects(() => tls("a.example"));

    assertEquals(proxy.server.updatePolicy({ ...rules, denyIps: ["127.0.0.1"] }), 3);
    await bob.closed();
    await dd.closed();
    assertEquals((await waiting.readAll(3000)).length, 0);
    await waiting.close();
    await proxy.waitForEvent((e) => e.type === "rejected" && e.reason === "policy");
    await assertClosedAtOnce(proxy.port);
    await until(() => proxy.server.stats().active === 0, "every client to be closed");
  } finally {
    for (const c of open) await c.close();
    await dc.close();
  }
});
