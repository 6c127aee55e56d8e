/**
 * Split mode end to end: test clients -> front -> link -> back -> fake middle proxies, with the
 * front's ad tag checked by the fake middle proxy, and the link's failure modes.
 */
import { assert, assertEquals } from "./assert.ts";
import {
  startByteSink,
  startFakeTelegramMiddle,
  startTestProxy,
  TEST_SECRET,
  testConfig,
  until,
} from "./helpers.ts";
import { startFakeDc } from "./kit/fake_dc.ts";
import { connectTestClient, type SecretKind } from "./kit/test_client.ts";
import { AD_TAG, backConfig, directBack, frontConfig, LINK, LINK_SECRET } from "./kit/split.ts";
import { randomBytes } from "../lib/crypto.ts";
import type { Config } from "../lib/config/types.ts";
import { startServer } from "../lib/server.ts";

const KINDS: SecretKind[] = ["plain", "dd", "tls"];

/** A test client of the front, asking for DC 2. */
function connect(port: number, kind: SecretKind, maxPadding: number) {
  return connectTestClient({ port, secret: TEST_SECRET, kind, dcId: 2, maxPadding });
}

Deno.test("split mode carries every client protocol front -> back -> middle proxy with the front's ad tag", async () => {
  await using telegram = await startFakeTelegramMiddle(AD_TAG, "echo");
  const back = await startServer(backConfig(telegram.proxyUrls));
  await using _back = { [Symbol.asyncDispose]: () => back.shutdown() };
  await using front = await startTestProxy(frontConfig(back.linkAddresses[0]!.port));
  await until(() => front.server.linksUp() === 2, "both links up");
  for (const kind of KINDS) {
    const client = await connect(front.port, kind, 3);
    try {
      for (const size of [64, 4096, 100_000]) {
        const payload = randomBytes(size);
        await client.send(payload, { padding: 0 });
        assertEquals(await client.receive(5000), payload, `${kind}: ${size} bytes`);
      }
    } finally {
      client.close();
    }
  }
  assert(back.linksUp() === 2);
});

Deno.test("a front whose secret the back does not know gets no link, and its clients are refused as link_unavailable", async () => {
  // No client gets past the front, so the back's DC is never dialled.
  const back = await startServer(directBack(9));
  await using _back = { [Symbol.asyncDispose]: () => back.shutdown() };
  const wrong = LINK_SECRET.map((b) => b ^ 0xff);
  const config = frontConfig(back.linkAddresses[0]!.port, wrong);
  await using front = await startTestProxy({ ...config, link: { ...LINK, waitMs: 300 } });
  const client = await connect(front.port, "dd", 3);
  try {
    await front.waitForEvent((e) => e.type === "rejected" && e.reason === "link_unavailable");
  } finally {
    client.close();
  }
  assertEquals(front.server.linksUp(), 0);
  assertEquals(back.linksUp(), 0);
});

Deno.test("split mode in direct mode: the back owns the DC connection, the front only sees packets", async () => {
  const dc = await startFakeDc({ mode: "echo" });
  await using _dc = { [Symbol.asyncDispose]: () => dc.close() };
  const back = await startServer(directBack(dc.port));
  await using _back = { [Symbol.asyncDispose]: () => back.shutdown() };
  await using front = await startTestProxy(frontConfig(back.linkAddresses[0]!.port));
  await until(() => front.server.linksUp() === 2, "both links up");
  for (const kind of KINDS) {
    const client = await connect(front.port, kind, 0);
    try {
      for (const size of [64, 4096, 100_000]) {
        const payload = randomBytes(size);
        await client.send(payload, { padding: 0 });
        const got = await client.receive(5000);
        // A padded DC transport may add up to 12 bytes the back cannot tell from the packet.
        assertEquals(got.subarray(0, size), payload, `${kind}: ${size} bytes`);
      }
    } finally {
      client.close();
    }
  }
});

Deno.test("a probe of the back's link port is fronted byte for byte: garbage and HTTP", async () => {
  await using site = startByteSink();
  const back = await startServer({
    ...backConfig({ secret: "http://127.0.0.1:9/s", config: "http://127.0.0.1:9/c" }),
    telegram: { ...testConfig().telegram, mode: "direct" },
    fronting: { mode: { host: "127.0.0.1", port: site.port }, connectTimeoutMs: 2000, allow: [] },
  });
  await using _back = { [Symbol.asyncDispose]: () => back.shutdown() };
  const port = back.linkAddresses[0]!.port;
  const probes = [
    randomBytes(300),
    new TextEncoder().encode("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"),
  ];
  let expected = 0;
  for (const probe of probes) {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(probe);
    expected += probe.length;
    await until(() => site.received().length >= expected, "the probe reached the site");
    conn.close();
  }
  const all = site.received();
  assertEquals(all.subarray(all.length - probes[1]!.length), probes[1]);
  assertEquals(back.linksUp(), 0);
});

Deno.test("when the back goes away the front's clients are closed as link_lost, and the front serves again once it is back", async () => {
  const dc = await startFakeDc({ mode: "echo" });
  await using _dc = { [Symbol.asyncDispose]: () => dc.close() };
  const config = (port: number): Config => {
    const b = backConfig({ secret: "http://127.0.0.1:9/s", config: "http://127.0.0.1:9/c" });
    return {
      ...b,
      telegram: { ...testConfig({ dcPorts: { 2: dc.port } }).telegram, mode: "direct" },
      linkListeners: [{ ...b.linkListeners[0]!, port }],
    };
  };
  let back = await startServer(config(0));
  const port = back.linkAddresses[0]!.port;
  await using front = await startTestProxy(frontConfig(port));
  await until(() => front.server.linksUp() === 2, "both links up");
  const client = await connect(front.port, "dd", 0);
  try {
    const payload = randomBytes(256);
    await client.send(payload, { padding: 0 });
    assertEquals((await client.receive(5000)).subarray(0, 256), payload);
    await back.shutdown();
    await front.waitForEvent((e) => e.type === "closed" && e.reason === "link_lost");
  } finally {
    client.close();
  }
  back = await startServer(config(port));
  try {
    await until(() => front.server.linksUp() >= 1, "a link up again", 20_000);
    const again = await connect(front.port, "tls", 0);
    try {
      const payload = randomBytes(512);
      await again.send(payload, { padding: 0 });
      assertEquals((await again.receive(5000)).subarray(0, 512), payload);
    } finally {
      again.close();
    }
  } finally {
    await back.shutdown();
  }
});

Deno.test("revoking one front on the back cuts its links; another front is untouched", async () => {
  const dc = await startFakeDc({ mode: "echo" });
  await using _dc = { [Symbol.asyncDispose]: () => dc.close() };
  const other = Uint8Array.from({ length: 16 }, (_, i) => 0x70 + i);
  const b = backConfig({ secret: "http://127.0.0.1:9/s", config: "http://127.0.0.1:9/c" });
  const back = await startServer({
    ...b,
    telegram: { ...testConfig({ dcPorts: { 2: dc.port } }).telegram, mode: "direct" },
    fronts: [...b.fronts, { name: "away", secret: other }],
  });
  await using _back = { [Symbol.asyncDispose]: () => back.shutdown() };
  const port = back.linkAddresses[0]!.port;
  await using home = await startTestProxy(frontConfig(port));
  await using away = await startTestProxy(frontConfig(port, other));
  await until(() => home.server.linksUp() === 2 && away.server.linksUp() === 2, "links up");
  const closed = back.updateFronts([{ name: "home", secret: LINK_SECRET }]);
  assertEquals(closed, 2);
  await until(() => away.server.linksUp() === 0, "the revoked front's links closed");
  const client = await connect(home.port, "dd", 0);
  try {
    const payload = randomBytes(128);
    await client.send(payload, { padding: 0 });
    assertEquals((await client.receive(5000)).subarray(0, 128), payload);
  } finally {
    client.close();
  }
  assertEquals(home.server.linksUp(), 2);
  assertEquals(back.linksUp(), 2);
});

/** A TCP relay between a front and a back that flips one byte of the back's next chunk once armed. */
function startTamperingRelay(target: number) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const armed = new Set<Deno.Conn>();
  const pipe = async (from: Deno.Conn, to: Deno.Conn, tamper: boolean) => {
    const buf = new Uint8Array(65536);
    try {
      while (true) {
        const n = await from.read(buf);
        if (n === null) break;
        if (tamper && armed.delete(from)) buf[n - 1]! ^= 0x01;
        let off = 0;
        while (off < n) off += await to.write(buf.subarray(off, n));
      }
    } catch {
      // Either side went away.
    } finally {
      for (const c of [from, to]) {
        try {
          c.close();
        } catch {
          // Already closed.
        }
        conns.delete(c);
      }
    }
  };
  const jobs: Promise<void>[] = [];
  const serving = (async () => {
    for await (const front of listener) {
      const back = await Deno.connect({ hostname: "127.0.0.1", port: target });
      conns.add(front).add(back);
      jobs.push(pipe(front, back, false), pipe(back, front, true));
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    /** Flip one byte in the next chunk each open back-to-front direction carries. */
    arm() {
      for (const c of conns) armed.add(c);
    },
    async close() {
      listener.close();
      for (const c of conns) c.close();
      await serving;
      await Promise.all(jobs);
    },
  };
}

Deno.test("a flipped bit on the link closes it as an integrity failure: no client sees corrupted data, the front redials", async () => {
  const dc = await startFakeDc({ mode: "echo" });
  await using _dc = { [Symbol.asyncDispose]: () => dc.close() };
  const back = await startServer(directBack(dc.port));
  await using _back = { [Symbol.asyncDispose]: () => back.shutdown() };
  const relay = startTamperingRelay(back.linkAddresses[0]!.port);
  await using _relay = { [Symbol.asyncDispose]: () => relay.close() };
  await using front = await startTestProxy(frontConfig(relay.port));
  await until(() => front.server.linksUp() === 2, "both links up");
  const client = await connect(front.port, "dd", 0);
  try {
    const first = randomBytes(256);
    await client.send(first, { padding: 0 });
    assertEquals((await client.receive(5000)).subarray(0, 256), first);
    relay.arm();
    const second = randomBytes(256);
    await client.send(second, { padding: 0 }).catch(() => {});
    const got = await client.receive(5000).catch(() => null);
    if (got !== null) assertEquals(got.subarray(0, 256), second, "never corrupted data");
    await front.waitForEvent((e) => e.type === "closed" && e.reason === "link_lost", 10_000);
  } finally {
    client.close();
  }
  await until(() => front.server.linksUp() === 2, "the front redialled", 20_000);
  assert((front.server.backLinks()[0]!.ended.get("integrity") ?? 0) >= 1, "ended as integrity");
});
