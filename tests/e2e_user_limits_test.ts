/**
 * A user's limits through real sockets: unique client addresses within a window, a data quota
 * (refusing new clients and closing live ones, persisted across restarts) and a bandwidth limit
 * that slows a fast client without breaking its stream. Refused fake-TLS clients are fronted.
 */
import { assert, assertEquals } from "./assert.ts";
import {
  startByteSink,
  startFakeTelegramMiddle,
  startTestProxy,
  testConfig,
  type TestProxy,
  testUser,
  until,
} from "./helpers.ts";
import { startFakeDc } from "./kit/fake_dc.ts";
import {
  buildObfuscatedInit,
  buildSignedHello,
  connectTestClient,
  openRawConnection,
  type SecretKind,
  type TestClient,
} from "./kit/test_client.ts";
import { randomBytes } from "../lib/crypto.ts";
import { encodeFrame } from "../lib/protocol/framing.ts";
import { concatBytes } from "../lib/protocol/bytes.ts";
import type { Config, UserConfig } from "../lib/config/types.ts";
import type { ProxyEvent } from "../lib/client/events.ts";
import { startSupervisor } from "../lib/workers/supervisor.ts";

function withUsers(base: Config, users: UserConfig[], proxyProtocol = false): Config {
  return {
    ...base,
    users,
    listeners: base.listeners.map((l) => ({ ...l, users: null, proxyProtocol })),
  };
}

async function echo(client: TestClient, size = 200): Promise<void> {
  const payload = randomBytes(size);
  await client.send(payload, { padding: 0 });
  assertEquals((await client.receive(5000)).subarray(0, size), payload);
}

/** A PROXY protocol v1 header naming `ip` as the client. */
function from(ip: string): Uint8Array {
  return new TextEncoder().encode(`PROXY TCP4 ${ip} 127.0.0.1 40000 443\r\n`);
}

const rejected = (events: readonly ProxyEvent[], reason: string) =>
  events.filter((e) => (e.type === "rejected" || e.type === "fronted") && e.reason === reason);

Deno.test("max_unique_ips lets N addresses in, refuses the N+1th as user_ips, and the N keep working", async () => {
  await using site = startByteSink();
  const dc = await startFakeDc({ mode: "echo" });
  await using _dc = { [Symbol.asyncDispose]: () => dc.close() };
  const alice = testUser("alice", { maxUniqueIps: 2 });
  const bob = testUser("bob");
  await using proxy = await startTestProxy(withUsers(
    testConfig({ dcPorts: { 2: dc.port }, fronting: { host: "127.0.0.1", port: site.port } }),
    [alice, bob],
    true,
  ));
  const open = (u: UserConfig, ip: string, kind: SecretKind = "dd") =>
    connectTestClient({ port: proxy.port, secret: u.secret, kind, dcId: 2, preface: from(ip) });
  const a1 = await open(alice, "10.0.0.1");
  const a2 = await open(alice, "10.0.0.2", "plain");
  await Promise.all([echo(a1), echo(a2)]);
  // A third address: refused with its own reason, and fronted like a stranger.
  const a3 = await open(alice, "10.0.0.3");
  await proxy.waitForEvent((e) => e.type === "fronted" && e.reason === "user_ips");
  await a3.close();
  // So is its fake-TLS client.
  const probe = await openRawConnection(proxy.port);
  await probe.write(from("10.0.0.4"));
  await probe.write(buildSignedHello(alice.secret, { sni: "example.com" }));
  await until(() => rejected(proxy.events, "user_ips").length === 2, "the probe fronted");
  await probe.close();
  // The two addresses seen keep working, in every protocol, live and new.
  const again = await Promise.all([
    open(alice, "10.0.0.1", "tls"),
    open(alice, "10.0.0.2"),
    open(alice, "10.0.0.1", "plain"),
  ]);
  await Promise.all([a1, a2, ...again].map((c) => echo(c)));
  // Bob, from anywhere, is not counted against Alice.
  const bobs = await Promise.all(["10.0.0.3", "10.0.0.5", "10.0.0.6"].map((ip) => open(bob, ip)));
  await Promise.all(bobs.map((c) => echo(c)));
  await Promise.all([a1, a2, ...again, ...bobs].map((c) => c.close()));
  assertEquals(rejected(proxy.events, "user_ips").length, 2);
  const text = proxy.server.metricsText();
  assert(text.includes('mtproxy_user_refused_total{user="alice",reason="user_ips"} 2'), text);
  assert(text.includes('mtproxy_user_unique_ips{user="alice"} 2'), text);
  const usage = proxy.server.userUsage().find((u) => u.name === "alice")!;
  assertEquals(usage.uniqueIps, 2);
});

Deno.test("max_unique_ips: an address whose window has passed gives its place to a new one", async () => {
  const dc = await startFakeDc({ mode: "echo" });
  await using _dc = { [Symbol.asyncDispose]: () => dc.close() };
  const alice = testUser("alice", { maxUniqueIps: 1, uniqueIpWindowMs: 300 });
  await using proxy = await startTestProxy(
    withUsers(testConfig({ dcPorts: { 2: dc.port } }), [alice], true),
  );
  const open = (ip: string) =>
    connectTestClient({
      port: proxy.port,
      secret: alice.secret,
      kind: "dd",
      dcId: 2,
      preface: from(ip),
    });
  const a = await open("10.0.0.1");
  await echo(a);
  await a.close();
  const b = await open("10.0.0.2");
  await b.closed();
  await b.close();
  await proxy.waitForEvent((e) => e.type === "rejected" && e.reason === "user_ips");
  // Once 10.0.0.1 was last seen more than the window ago, 10.0.0.2 may come in.
  let admitted: TestClient | null = null;
  await until(() => {
    const usage = proxy.server.userUsage()[0]!;
    return usage.uniqueIps === 0;
  }, "the first address to leave the window");
  admitted = await open("10.0.0.2");
  await echo(admitted);
  await admitted.close();
});

Deno.test("data_quota: a user moves bytes up to the quota, the client that passes it is closed as user_quota, new ones are refused", async () => {
  await using site = startByteSink();
  const dc = await startFakeDc({ mode: "echo" });
  await using _dc = { [Symbol.asyncDispose]: () => dc.close() };
  const quota = 100_000;
  const alice = testUser("alice", { dataQuotaBytes: quota });
  const bob = testUser("bob");
  await using proxy = await startTestProxy(withUsers(
    testConfig({ dcPorts: { 2: dc.port }, fronting: { host: "127.0.0.1", port: site.port } }),
    [alice, bob],
  ));
  const open = (u: UserConfig, kind: SecretKind = "dd") =>
    connectTestClient({ port: proxy.port, secret: u.secret, kind, dcId: 2 });
  const used = () => proxy.server.userUsage().find((u) => u.name === "alice")!.bytesUsed;
  const a = await open(alice);
  // 10 x 4 KB each way: about 82 kB of the 100 kB, all of it relayed.
  for (let i = 0; i < 10; i++) await echo(a, 4000);
  await until(() => used() >= 80_000, "the bytes to be counted");
  assert(used() < quota, `used ${used()}`);
  const b = await open(alice, "tls");
  await echo(b, 1000);
  // Passing the quota: that client is closed as user_quota (every byte before it arrived).
  await a.send(randomBytes(16_000), { padding: 0 });
  await a.closed();
  await a.close();
  await proxy.waitForEvent((e) => e.type === "closed" && e.reason === "user_quota");
  assert(used() >= quota, `used ${used()}`);
  // The other live one goes at its next bytes; new ones are refused (fake-TLS: fronted).
  await b.send(randomBytes(100), { padding: 0 }).catch(() => {});
  await b.closed();
  await b.close();
  const c = await open(alice, "plain");
  await proxy.waitForEvent((e) => e.type === "fronted" && e.reason === "user_quota");
  await c.close();
  // The site got the refused plain client's 64-byte init before this.
  const before = 64;
  const probe = await openRawConnection(proxy.port);
  const hello = buildSignedHello(alice.secret, { sni: "example.com" });
  await probe.write(hello);
  await until(() => rejected(proxy.events, "user_quota").length === 2, "the probe fronted");
  // The site gets all it is sent, as from any stranger: fronted bytes are nobody's quota.
  const more = randomBytes(50_000);
  await probe.write(more);
  await until(
    () => site.received().length === before + hello.length + more.length,
    "the fronted bytes to reach the site",
  );
  await probe.close();
  // Bob has no quota.
  const bobs = await open(bob);
  await echo(bobs, 50_000);
  await bobs.close();
  const usage = proxy.server.userUsage().find((u) => u.name === "alice")!;
  assertEquals(usage.quotaLeft, 0);
  assertEquals(usage.periodStart, null);
  await until(
    () => proxy.events.filter((e) => e.type === "closed" && e.reason === "user_quota").length === 2,
    "both live clients closed as user_quota",
  );
  const text = proxy.server.metricsText();
  assert(text.includes('mtproxy_user_refused_total{user="alice",reason="user_quota"} 2'), text);
  assert(text.includes('mtproxy_user_closed_total{user="alice",reason="user_quota"} 2'), text);
  assert(text.includes('mtproxy_user_quota_left_bytes{user="alice"} 0'), text);
});

Deno.test("rate_limit slows a fast client without breaking its stream: every byte arrives, the bucket paused", async () => {
  const dc = await startFakeDc({ mode: "echo" });
  await using _dc = { [Symbol.asyncDispose]: () => dc.close() };
  const alice = testUser("alice", { rateLimitBytesPerSec: 1_000_000 });
  await using proxy = await startTestProxy(
    withUsers(testConfig({ dcPorts: { 2: dc.port } }), [alice]),
  );
  const clients = await Promise.all(
    (["dd", "tls"] as const).map((kind) =>
      connectTestClient({ port: proxy.port, secret: alice.secret, kind, dcId: 2 })
    ),
  );
  // 2 clients x 20 frames of 16 kB each way: several times the bucket, sent as fast as they go.
  await Promise.all(clients.map(async (c) => {
    const frames = Array.from({ length: 20 }, () => randomBytes(16_000));
    const sending = (async () => {
      for (const f of frames) await c.send(f, { padding: 0 });
    })();
    for (const f of frames) assertEquals(await c.receive(20_000), f);
    await sending;
  }));
  await Promise.all(clients.map((c) => c.close()));
  await until(
    () => proxy.events.filter((e) => e.type === "closed").length === 2,
    "both clients closed",
  );
  const text = proxy.server.metricsText();
  const m = text.match(/mtproxy_user_rate_limited_total\{user="alice"\} (\d+)/);
  assert(m && Number(m[1]) >= 1, text);
  assert(
    proxy.events.every((e) => e.type !== "closed" || e.reason === "client_closed"),
    JSON.stringify(proxy.events.filter((e) => e.type === "closed")),
  );
});

Deno.test("with 2 workers the limits are one proxy's: addresses, quota and bucket are shared", async () => {
  const dc = await startFakeDc({ mode: "echo" });
  await using _dc = { [Symbol.asyncDispose]: () => dc.close() };
  const alice = testUser("alice", { maxUniqueIps: 2, dataQuotaBytes: 2_000_000 });
  const bob = testUser("bob", { rateLimitBytesPerSec: 2_000_000 });
  const base = testConfig({ dcPorts: { 2: dc.port } });
  const sup = await startSupervisor(
    { ...withUsers(base, [alice, bob], true), metrics: { listen: null } },
    { workers: 2, usageFile: null },
  );
  await using _sup = { [Symbol.asyncDispose]: () => sup.shutdown() };
  const port = sup.addresses[0]!.port;
  const open = (u: UserConfig, ip: string) =>
    connectTestClient({ port, secret: u.secret, kind: "dd", dcId: 2, preface: from(ip) });
  // Many connections from two addresses: the kernel spreads them over both workers.
  const alices = await Promise.all(
    Array.from({ length: 12 }, (_, i) => open(alice, i % 2 ? "10.0.0.1" : "10.0.0.2")),
  );
  await Promise.all(alices.map((c) => echo(c, 1000)));
  const usage = () => sup.userUsage().find((u) => u.name === "alice")!;
  assertEquals(usage().connections, 12);
  assertEquals(usage().uniqueIps, 2);
  // A third address is refused by whichever worker gets it.
  for (let i = 0; i < 4; i++) {
    const c = await open(alice, "10.0.0.3");
    await c.closed();
    await c.close();
  }
  // Bytes from every worker count against one quota.
  await until(() => usage().bytesUsed >= 24_000, "both workers' bytes counted");
  await Promise.all(alices.map((c) => c.close()));
  await until(() => usage().connections === 0, "alice's connections released");
  // Bob's bucket is one for his clients on both workers: the pauses add up.
  const bobs = await Promise.all(Array.from({ length: 4 }, (_, i) => open(bob, `10.0.1.${i}`)));
  await Promise.all(bobs.map(async (c) => {
    for (let i = 0; i < 10; i++) await echo(c, 16_000);
  }));
  await Promise.all(bobs.map((c) => c.close()));
  const text = await sup.metricsText();
  assert(text.includes('mtproxy_user_refused_total{user="alice",reason="user_ips"} 4'), text);
  assert(text.includes('mtproxy_user_unique_ips{user="alice"} 2'), text);
  const used = text.match(/mtproxy_user_quota_used_bytes\{user="alice"\} (\d+)/);
  assertEquals(Number(used?.[1]), usage().bytesUsed);
  const paused = text.match(/mtproxy_user_rate_limited_total\{user="bob"\} (\d+)/);
  assert(paused && Number(paused[1]) >= 1, text);
});

Deno.test("through the middle proxies (a user's ad tag) the rate limit keeps every byte and the quota closes", async () => {
  const tag = Uint8Array.from({ length: 16 }, (_, i) => 0xc0 + i);
  await using telegram = await startFakeTelegramMiddle(tag, "echo");
  const alice = testUser("alice", { tag, rateLimitBytesPerSec: 1_000_000 });
  const bob = testUser("bob", { tag, dataQuotaBytes: 50_000 });
  const base = testConfig({
    proxyUrls: telegram.proxyUrls,
    externalIp: "127.0.0.1",
    telegramMode: "auto",
  });
  await using proxy = await startTestProxy(withUsers(base, [alice, bob]));
  const a = await connectTestClient({
    port: proxy.port,
    secret: alice.secret,
    kind: "tls",
    dcId: 2,
  });
  const frames = Array.from({ length: 20 }, () => randomBytes(16_000));
  const sending = (async () => {
    for (const f of frames) await a.send(f, { padding: 0 });
  })();
  for (const f of frames) assertEquals(await a.receive(20_000), f);
  await sending;
  await a.close();
  const b = await connectTestClient({ port: proxy.port, secret: bob.secret, kind: "dd", dcId: 2 });
  for (let i = 0; i < 5; i++) await echo(b, 4000);
  await b.send(randomBytes(16_000), { padding: 0 }).catch(() => {});
  await b.send(randomBytes(16_000), { padding: 0 }).catch(() => {});
  await b.closed();
  await b.close();
  await proxy.waitForEvent((e) => e.type === "closed" && e.reason === "user_quota");
  await proxy.waitForEvent((e) => e.type === "closed" && e.user === "alice");
  const text = proxy.server.metricsText();
  const m = text.match(/mtproxy_user_rate_limited_total\{user="alice"\} (\d+)/);
  assert(m && Number(m[1]) >= 1, text);
  const closes = proxy.events.filter((e) => e.type === "closed").map((e) =>
    e.type === "closed" && [e.user, e.reason]
  );
  assertEquals(closes.sort(), [["alice", "client_closed"], ["bob", "user_quota"]]);
});

/**
 * A `dd` client's init and its first packet in one write: the proxy reads both at once, so the
 * packet's bytes are charged with the handshake.
 */
function initWithPacket(secret: Uint8Array, size: number): Uint8Array {
  const init = buildObfuscatedInit(secret, "padded", 2);
  const packet = encodeFrame("padded", randomBytes(size));
  init.encryptor.update(packet);
  init.encryptor.close();
  init.decryptor.close();
  return concatBytes([init.wire, packet]);
}

/**
 * `user`'s client sends its init with 1,500 bytes (under the handshake buffer's first 2 KiB,
 * past a 1,000-byte quota) and is closed: refused as user_quota, with no relay established.
 */
async function refusedWithFirstBytes(proxy: TestProxy, user: UserConfig): Promise<void> {
  const conn = await openRawConnection(proxy.port);
  await conn.write(initWithPacket(user.secret, 1500));
  await conn.closed();
  await conn.close();
  const refusal = await proxy.waitForEvent((e) => e.type === "rejected");
  assertEquals(refusal.type === "rejected" && [refusal.reason, refusal.user], [
    "user_quota",
    user.name,
  ]);
  assert(!proxy.events.some((e) => e.type === "established"));
}

Deno.test("data_quota: a client whose first bytes already pass the quota is refused before the DC is dialled", async () => {
  const dc = await startFakeDc({ mode: "echo" });
  await using _dc = { [Symbol.asyncDispose]: () => dc.close() };
  const alice = testUser("alice", { dataQuotaBytes: 1000 });
  const bob = testUser("bob", { dataQuotaBytes: 100_000 });
  await using proxy = await startTestProxy(
    withUsers(testConfig({ dcPorts: { 2: dc.port } }), [alice, bob]),
  );
  await refusedWithFirstBytes(proxy, alice);
  assertEquals(dc.accepted, 0, "no DC connection for a refused client");
  assert(proxy.server.userUsage().find((u) => u.name === "alice")!.bytesUsed >= 1000);
  const text = proxy.server.metricsText();
  assert(text.includes('mtproxy_user_refused_total{user="alice",reason="user_quota"} 1'), text);
  // Under the quota, the same first bytes are relayed: the DC is dialled.
  const ok = await openRawConnection(proxy.port);
  await ok.write(initWithPacket(bob.secret, 1500));
  await until(() => dc.accepted === 1, "bob's DC connection");
  await ok.close();
});

Deno.test("data_quota through the middle proxies: first bytes past the quota open no Telegram stream", async () => {
  const tag = Uint8Array.from({ length: 16 }, (_, i) => 0xc0 + i);
  await using telegram = await startFakeTelegramMiddle(tag, "echo");
  const carol = testUser("carol", { tag, dataQuotaBytes: 1000 });
  const base = testConfig({
    proxyUrls: telegram.proxyUrls,
    externalIp: "127.0.0.1",
    telegramMode: "auto",
  });
  await using proxy = await startTestProxy(withUsers(base, [carol]));
  await refusedWithFirstBytes(proxy, carol);
});
