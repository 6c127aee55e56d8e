/**
 * Bad input at scale, through real sockets: while well-behaved clients echo data through a
 * direct-mode and a middle-mode listener of one proxy, a crowd of misbehaving connections
 * (garbage, truncated and mutated handshakes, wrong secrets, garbage after a good handshake,
 * absurd frame lengths, aborts mid-transfer, clients that never read, silent sockets) hits
 * both listeners. The good clients must not notice, and every connection must be accounted for.
 *
 * The sequence of misbehaviours comes from a seeded generator; a failure prints the seed, and
 * `MTP_CHAOS_SEED=N` replays the same sequence.
 */
import { assert, assertEquals } from "./assert.ts";
import {
  seededRandom,
  startFakeTelegramMiddle,
  startTestProxy,
  TEST_SECRET,
  testConfig,
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
import type { TransportTag } from "../lib/protocol/obfuscated2.ts";

const AD_TAG = Uint8Array.from({ length: 16 }, (_, i) => 0xb0 + i);
const KINDS: { kind: SecretKind; transport: TransportTag }[] = [
  { kind: "plain", transport: "intermediate" },
  { kind: "plain", transport: "abridged" },
  { kind: "dd", transport: "padded" },
  { kind: "tls", transport: "padded" },
];
const GOOD_CLIENTS = 8; // half per listener
const GOOD_ROUNDS = 25;
const CHAOS_WORKERS = 16;
const CHAOS_PER_WORKER = 14;

type Rng = () => number;
const below = (rng: Rng, n: number) => Math.floor(rng() * n);
const pick = <T>(rng: Rng, items: readonly T[]): T => items[below(rng, items.length)]!;
const pause = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Wait for `p` at most `ms`; the timer never outlives the call. */
async function within<T>(p: Promise<T>, ms: number): Promise<T | "late"> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<"late">((r) => timer = setTimeout(() => r("late"), ms)),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

function connectGood(port: number, rng: Rng): Promise<TestClient> {
  const { kind, transport } = pick(rng, KINDS);
  return connectTestClient({ port, secret: TEST_SECRET, kind, transport, dcId: 2 });
}

/** Each misbehaviour, on one connection to `port`. Only a surprise on our side throws. */
const MISBEHAVIOURS: Record<string, (port: number, rng: Rng) => Promise<void>> = {
  async garbage(port, rng) {
    const c = await openRawConnection(port);
    await c.write(randomBytes(1 + below(rng, 3000))).catch(() => {});
    if (rng() < 0.5) await c.readAll(5000).catch(() => {});
    await c.close();
  },
  async connectAndClose(port) {
    const c = await openRawConnection(port);
    await c.close();
  },
  async truncatedInit(port, rng) {
    const c = await openRawConnection(port);
    const { wire } = buildObfuscatedInit(TEST_SECRET, "intermediate", 2);
    await c.write(wire.subarray(0, 1 + below(rng, 63))).catch(() => {});
    // Either hang up, or wait for the proxy's handshake timeout to end it.
    if (rng() < 0.3) await c.readAll(5000);
    await c.close();
  },
  async mutatedHello(port, rng) {
    const c = await openRawConnection(port);
    const hello = buildSignedHello(TEST_SECRET, { sni: "example.com" });
    hello[5 + below(rng, hello.length - 5)]! ^= 1 + below(rng, 255);
    const cut = rng() < 0.3 ? 1 + below(rng, hello.length - 1) : hello.length;
    await c.write(hello.subarray(0, cut)).catch(() => {});
    if (rng() < 0.5) await c.readAll(5000).catch(() => {});
    await c.close();
  },
  async wrongSecret(port, rng) {
    const { kind, transport } = pick(rng, KINDS.filter((k) => k.kind !== "tls"));
    const c = await connectTestClient({ port, secret: randomBytes(16), kind, transport, dcId: 2 });
    await c.send(randomBytes(64)).catch(() => {});
    await within(c.closed(), 5000);
    await c.close();
  },
  async garbageAfterHandshake(port, rng) {
    const c = await connectGood(port, rng);
    await c.sendRaw(randomBytes(1 + below(rng, 5000))).catch(() => {});
    await within(c.closed(), 300);
    await c.close();
  },
  async absurdLength(port, rng) {
    const c = await connectGood(port, rng);
    const header = new Uint8Array(4);
    new DataView(header.buffer).setUint32(0, 0x7fff_fff0, true);
    await c.sendRaw(header).catch(() => {});
    await c.sendRaw(randomBytes(below(rng, 20_000))).catch(() => {});
    await within(c.closed(), 300);
    await c.close();
  },
  async abortMidTransfer(port, rng) {
    const c = await connectGood(port, rng);
    const sending = c.send(randomBytes(200_000)).catch(() => {});
    await pause(below(rng, 20));
    await c.close();
    await sending;
  },
  async neverReads(port, rng) {
    const c = await connectGood(port, rng);
    for (let i = 0; i < 24; i++) {
      if (await within(c.send(randomBytes(32_768)).then(() => true, () => false), 300) !== true) {
        break;
      }
    }
    await c.close();
  },
  async silent(port) {
    const c = await openRawConnection(port);
    await c.readAll(5000); // the handshake timeout must end it
    await c.close();
  },
  async oddDc(port, rng) {
    const { kind, transport } = pick(rng, KINDS);
    const dcId = pick(rng, [0, 99, -99, 32767, -32768, 203]);
    const c = await connectTestClient({ port, secret: TEST_SECRET, kind, transport, dcId });
    await c.send(randomBytes(64)).catch(() => {});
    await c.receive(1000).catch(() => {});
    await c.close();
  },
};

Deno.test("a crowd of misbehaving connections does not disturb good clients in direct or middle mode", async () => {
  const seed = Number(Deno.env.get("MTP_CHAOS_SEED") ?? Math.floor(Math.random() * 2 ** 31));
  await using telegram = await startFakeTelegramMiddle(AD_TAG, "echo");
  const { mp } = telegram;
  const dc = await startFakeDc({ mode: "echo" });
  try {
    await using proxy = await startTestProxy(testConfig({
      tag: AD_TAG, // listener "test": middle mode
      listeners: [{ tag: null }], // listener "test2": direct mode
      proxyUrls: telegram.proxyUrls,
      dcPorts: { 2: dc.port },
      handshakeMs: 1000,
      pool: { maxClientUnackedBytes: 256 * 1024 },
    }));
    const ports = proxy.server.addresses.map((a) => a.port);
    const failures: string[] = [];
    const tried: Record<string, number> = {};
    let echoed = 0;

    const good = async (i: number) => {
      const rng = seededRandom(seed + 1000 + i);
      const port = ports[i % 2]!;
      const client = await connectGood(port, rng);
      const what = `good client ${i} (${client.kind}/${client.transport}, ${
        i % 2 ? "direct" : "middle"
      })`;
      try {
        for (let r = 0; r < GOOD_ROUNDS; r++) {
          // At least 8 bytes: a 4-byte first answer would look like Telegram's transport error.
          const payload = randomBytes(8 + 4 * below(rng, i < 4 ? 10_000 : 500));
          await client.send(payload);
          const back = await client.receive(10_000);
          // The padded transport echoes the client's padding (0-15 bytes) too.
          const extra = back.length - payload.length;
          const sizeOk = client.transport === "padded" ? extra >= 0 && extra < 16 : extra === 0;
          if (!sizeOk || !payload.every((b, j) => b === back[j])) {
            throw new Error(`round ${r}: sent ${payload.length} bytes, got ${back.length} back`);
          }
          echoed++;
        }
      } catch (e) {
        failures.push(`${what}: ${(e as Error).message}`);
      } finally {
        await client.close();
      }
    };
    const crowd = async (w: number) => {
      const rng = seededRandom(seed + w);
      const names = Object.keys(MISBEHAVIOURS);
      for (let i = 0; i < CHAOS_PER_WORKER; i++) {
        const name = pick(rng, names);
        const port = pick(rng, ports);
        tried[name] = (tried[name] ?? 0) + 1;
        try {
          await MISBEHAVIOURS[name]!(port, rng);
        } catch (e) {
          failures.push(`${name} on ${port}: ${(e as Error).message}`);
        }
      }
    };
    await Promise.all([
      ...Array.from({ length: GOOD_CLIENTS }, (_, i) => good(i)),
      ...Array.from({ length: CHAOS_WORKERS }, (_, w) => crowd(w)),
    ]);

    const context = `seed ${seed}, tried ${JSON.stringify(tried)}`;
    assertEquals(failures, [], context);
    assertEquals(echoed, GOOD_CLIENTS * GOOD_ROUNDS);
    // Every connection ends, and each is counted once: rejected at the handshake, or closed
    // after it was established.
    await until(() => proxy.server.stats().active === 0, "every connection to end");
    await until(() => proxy.server.middleStats().clients === 0, "middle-mode clients to leave");
    const stats = proxy.server.stats();
    const sum = (counts: Record<string, number>) =>
      Object.values(counts).reduce((a, b) => a + b, 0);
    const summary = `${context}, stats ${JSON.stringify(stats)}`;
    assertEquals(stats.established + sum(stats.rejected), stats.accepted, summary);
    assertEquals(sum(stats.closed), stats.established, summary);
    // The crowd really reached the checks it was meant to hit.
    assert(stats.accepted >= CHAOS_WORKERS * CHAOS_PER_WORKER + GOOD_CLIENTS, summary);
    assert((stats.rejected["bad_secret"] ?? 0) > 0, summary);
    assert((stats.rejected["timeout"] ?? 0) > 0, summary);
    assert((stats.rejected["bad_frame"] ?? 0) + (stats.closed["bad_frame"] ?? 0) > 0, summary);
    // The middle proxy never saw a broken message from us.
    assertEquals(mp.events.filter((e) => e.type === "unexpected"), [], summary);
  } finally {
    await dc.close();
  }
});
