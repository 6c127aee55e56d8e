/**
 * Many users on one port: each connects with their own secret in every protocol, is known by
 * name from then on, and meets their own limits; a refused user's fake-TLS client is fronted.
 */
import { assert, assertEquals, assertRejects } from "./assert.ts";
import {
  startByteSink,
  startFakeTelegramMiddle,
  startTestProxy,
  TEST_SECRET,
  testConfig,
  testUser,
} from "./helpers.ts";
import { startFakeDc } from "./kit/fake_dc.ts";
import {
  buildSignedHello,
  connectTestClient,
  openRawConnection,
  type SecretKind,
  type TestClient,
} from "./kit/test_client.ts";
import { randomBytes } from "../lib/crypto.ts";
import type { Config, UserConfig } from "../lib/config/types.ts";
import type { ProxyEvent } from "../lib/client/events.ts";

const KINDS: SecretKind[] = ["plain", "dd", "tls"];

function withUsers(base: Config, users: UserConfig[], listenerUsers: string[] | null = null) {
  return {
    ...base,
    users,
    listeners: base.listeners.map((l) => ({ ...l, users: listenerUsers })),
  };
}

async function echo(client: TestClient): Promise<void> {
  const payload = randomBytes(200);
  await client.send(payload, { padding: 0 });
  assertEquals((await client.receive(5000)).subarray(0, 200), payload);
}

const established = (events: readonly ProxyEvent[]) =>
  events.filter((e): e is Extract<ProxyEvent, { type: "established" }> => e.type === "established");

Deno.test("200 users on one port each connect with their own secret in every protocol", async () => {
  const dc = await startFakeDc({ mode: "echo" });
  await using _dc = { [Symbol.asyncDispose]: () => dc.close() };
  const users = Array.from({ length: 200 }, (_, i) => testUser(`user${i}`));
  await using proxy = await startTestProxy(
    withUsers(testConfig({ dcPorts: { 2: dc.port } }), users),
  );
  for (let i = 0; i < users.length; i += 50) {
    const batch = users.slice(i, i + 50).flatMap((u) =>
      KINDS.map((kind) =>
        connectTestClient({ port: proxy.port, secret: u.secret, kind, dcId: 2 }).then(async (c) => {
          try {
            await echo(c);
          } finally {
            await c.close();
          }
        })
      )
    );
    await Promise.all(batch);
  }
  // The listener's own secret still works, as no user.
  const own = await connectTestClient({
    port: proxy.port,
    secret: TEST_SECRET,
    kind: "dd",
    dcId: 2,
  });
  await echo(own);
  await own.close();
  const got = established(proxy.events);
  assertEquals(got.length, 601);
  const byUser = new Map<string, Set<string>>();
  for (const e of got) {
    if (e.user === undefined) continue;
    byUser.set(e.user, (byUser.get(e.user) ?? new Set()).add(e.protocol));
  }
  assertEquals(byUser.size, 200);
  for (const protocols of byUser.values()) {
    assertEquals([...protocols].sort(), ["dd", "plain", "tls"]);
  }
  assertEquals(got.filter((e) => e.user === undefined).length, 1);
});

Deno.test("a user's max_connections refuses exactly at its boundary, for that user only", async () => {
  const dc = await startFakeDc({ mode: "echo" });
  await using _dc = { [Symbol.asyncDispose]: () => dc.close() };
  const alice = testUser("alice", { maxConnections: 2 });
  const bob = testUser("bob");
  await using proxy = await startTestProxy(
    withUsers(testConfig({ dcPorts: { 2: dc.port } }), [alice, bob]),
  );
  const open = (u: UserConfig, kind: SecretKind = "dd") =>
    connectTestClient({ port: proxy.port, secret: u.secret, kind, dcId: 2 });
  const a1 = await open(alice);
  const a2 = await open(alice, "plain");
  await Promise.all([echo(a1), echo(a2)]);
  const a3 = await open(alice);
  await a3.closed();
  await a3.close();
  await proxy.waitForEvent((e) => e.type === "rejected" && e.reason === "user_limit");
  // Bob is not counted against Alice.
  const bobs = await Promise.all([open(bob), open(bob), open(bob)]);
  await Promise.all(bobs.map(echo));
  // One of Alice's leaves: one place is free again, and only one.
  await a1.close();
  await proxy.waitForEvent((e) => e.type === "closed");
  const a4 = await open(alice, "tls");
  await echo(a4);
  await Promise.all([a2, a4, ...bobs].map((c) => c.close()));
  assertEquals(
    proxy.events.filter((e) => e.type === "rejected" && e.reason === "user_limit").length,
    1,
  );
  // Counted per user.
  await proxy.waitForEvent((e) => e.type === "closed" && e.user === "bob");
  const text = proxy.server.metricsText();
  assert(text.includes('mtproxy_user_connections_established_total{user="alice"} 3'), text);
  assert(text.includes('mtproxy_user_connections_established_total{user="bob"} 3'), text);
  assert(/mtproxy_user_bytes_received_total\{user="alice"\} [1-9]/.test(text), text);
});

Deno.test("a disabled or expired user's fake-TLS client is fronted like any stranger; other listeners' users are unknown here", async () => {
  await using site = startByteSink();
  const dc = await startFakeDc({ mode: "echo" });
  await using _dc = { [Symbol.asyncDispose]: () => dc.close() };
  const off = testUser("off", { enabled: false });
  const old = testUser("old", { expiresAt: Date.now() - 1000 });
  const elsewhere = testUser("elsewhere");
  const fine = testUser("fine");
  const base = testConfig({
    dcPorts: { 2: dc.port },
    fronting: { host: "127.0.0.1", port: site.port },
  });
  await using proxy = await startTestProxy(
    withUsers(base, [off, old, elsewhere, fine], ["off", "old", "fine"]),
  );
  // A signed hello of each: the site gets it byte for byte, as it gets a stranger's.
  const probe = async (secret: Uint8Array, reason: string) => {
    const c = await openRawConnection(proxy.port);
    await c.write(buildSignedHello(secret, { sni: "example.com" }));
    await proxy.waitForEvent((e) => e.type === "fronted" && e.reason === reason);
    await c.close();
  };
  await probe(off.secret, "user_disabled");
  await probe(old.secret, "user_expired");
  // A user the listener does not list is a wrong secret here.
  await probe(elsewhere.secret, "tls_bad_digest");
  const ok = await connectTestClient({
    port: proxy.port,
    secret: fine.secret,
    kind: "tls",
    dcId: 2,
  });
  await echo(ok);
  await ok.close();
  assertEquals(established(proxy.events).map((e) => e.user), ["fine"]);
});

Deno.test("a user's own ad tag takes that user through the middle proxies; the others go direct", async () => {
  const tag = Uint8Array.from({ length: 16 }, (_, i) => 0xc0 + i);
  await using telegram = await startFakeTelegramMiddle(tag, "mtproto");
  const dc = await startFakeDc({ mode: "echo" });
  await using _dc = { [Symbol.asyncDispose]: () => dc.close() };
  const promoted = testUser("promoted", { tag });
  const plain = testUser("plain");
  const base = testConfig({
    dcPorts: { 2: dc.port },
    proxyUrls: telegram.proxyUrls,
    externalIp: "127.0.0.1",
    telegramMode: "auto",
  });
  await using proxy = await startTestProxy(withUsers(base, [promoted, plain]));
  for (const u of [promoted, plain]) {
    const c = await connectTestClient({ port: proxy.port, secret: u.secret, kind: "dd", dcId: 2 });
    await echo(c);
    await c.close();
  }
  // The middle proxy checks every PROXY_REQ's tag against the user's.
  const reqs = telegram.mp.events.filter((e) => e.type === "proxy_req");
  assert(reqs.length >= 1, "the promoted user reached the middle proxy");
  assertEquals(telegram.mp.stats.adTagMismatches, 0);
  const routes = established(proxy.events).map((e) => [e.user, e.dcAddress.includes("middle")]);
  assertEquals(routes, [["promoted", true], ["plain", false]]);
});

Deno.test("a reload adds, changes and removes users while their clients relay: untouched ones see every byte", async () => {
  const dc = await startFakeDc({ mode: "echo" });
  await using _dc = { [Symbol.asyncDispose]: () => dc.close() };
  const alice = testUser("alice"),
    bob = testUser("bob"),
    carol = testUser("carol"),
    dave = testUser("dave");
  await using proxy = await startTestProxy(
    withUsers(testConfig({ dcPorts: { 2: dc.port } }), [alice, bob, carol]),
  );
  const open = (u: UserConfig, kind: SecretKind) =>
    connectTestClient({ port: proxy.port, secret: u.secret, kind, dcId: 2 });
  const kept = await Promise.all(KINDS.flatMap((k) => [open(alice, k), open(alice, k)]));
  const gone = await Promise.all([open(bob, "tls"), open(carol, "dd")]);
  await Promise.all([...kept, ...gone].map(echo));
  // Bob is removed, Carol gets a new secret, Dave arrives; Alice is as she was.
  const carol2 = { ...carol, secret: randomBytes(16) };
  const closed = proxy.server.updateUsers([alice, carol2, dave], new Map());
  assertEquals(closed, 2);
  await Promise.all(gone.map((c) => c.closed()));
  const reloaded = proxy.events.filter((e) => e.type === "closed" && e.reason === "reloaded");
  assertEquals(reloaded.map((e) => e.type === "closed" && e.user).sort(), ["bob", "carol"]);
  // Alice's clients never noticed; every byte still arrives.
  await Promise.all(kept.map(echo));
  const d = await open(dave, "tls");
  const c2 = await open(carol2, "plain");
  await Promise.all([echo(d), echo(c2)]);
  // The old secrets are strangers now.
  const stale = await open(bob, "dd");
  await assertRejects(() => echo(stale));
  await stale.close();
  await Promise.all([...kept, ...gone, d, c2].map((c) => c.close()));
});
