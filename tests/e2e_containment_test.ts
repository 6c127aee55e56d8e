/**
 * One unexpected exception costs one client, never the process or the clients it shares a
 * connection with: a throwing session callback (a middle proxy's answer the client's transport
 * cannot frame) and a throwing cipher, injected into a running proxy, close their own client as
 * internal_error (reported, counted) while every other client keeps relaying intact data.
 */
import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import {
  startFakeTelegramMiddle,
  startTestProxy,
  TEST_SECRET,
  testConfig,
  type TestProxy,
  until,
} from "./helpers.ts";
import { seededRandom } from "./kit/seeded.ts";
import { startFakeDc } from "./kit/fake_dc.ts";
import { connectTestClient, type SecretKind, type TestClient } from "./kit/test_client.ts";
import type { TransportTag } from "../lib/protocol/obfuscated2.ts";
import type { ProxyEvent } from "../lib/client/events.ts";
import type { Config } from "../lib/config/types.ts";
import type { StreamCipher } from "../lib/crypto.ts";
import { pumpFaults } from "../lib/client/relay.ts";
import { Session } from "../lib/client/session.ts";
import { installLastResort } from "../lib/ops/last_resort.ts";

const AD_TAG = Uint8Array.from({ length: 16 }, (_, i) => 0x40 + i);

const GOOD: { kind: SecretKind; transport: TransportTag }[] = [
  { kind: "plain", transport: "intermediate" },
  { kind: "plain", transport: "abridged" },
  { kind: "dd", transport: "padded" },
  { kind: "tls", transport: "padded" },
];

/** What reached the last resort while a test ran. */
interface Watch {
  /** Every report, as "message: error". */
  readonly reports: string[];
  /** Rejects as soon as an error escaped containment (an unhandled rejection, say). */
  readonly escaped: Promise<never>;
}

/**
 * Run `fn` with a proxy for `config` and the last resort installed. Shutting the proxy down must
 * finish in time: a client whose failure was not contained would keep it waiting forever.
 */
async function withProxy(
  config: Config,
  fn: (proxy: TestProxy, watch: Watch) => Promise<void>,
): Promise<void> {
  const reports: string[] = [];
  const escaped = Promise.withResolvers<never>();
  escaped.promise.catch(() => {});
  const uninstall = installLastResort({
    log: (message, error) => {
      reports.push(`${message}: ${String(error)}`);
      if (message === "Unhandled promise rejection" || message === "Uncaught exception") {
        escaped.reject(new Error(`${message} escaped containment: ${String(error)}`));
      }
    },
    onCaught: () => {},
  });
  try {
    const proxy = await startTestProxy(config);
    const failed = await fn(proxy, { reports, escaped: escaped.promise }).then(
      () => null,
      (e) => e,
    );
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise((_, reject) => {
      timer = setTimeout(
        () => reject(new Error("The proxy did not shut down within 5 s: a session leaked")),
        5000,
      );
    });
    try {
      await Promise.race([proxy.server.shutdown(), deadline]);
    } catch (e) {
      throw failed ?? e; // The first failure tells more.
    } finally {
      clearTimeout(timer);
    }
    if (failed) throw failed;
  } finally {
    uninstall();
  }
}

/** The first session closed as internal_error, unless an error escaped first. */
function internalErrorClose(proxy: TestProxy, watch: Watch) {
  return Promise.race([
    proxy.waitForEvent((e) => e.type === "closed" && e.reason === "internal_error"),
    watch.escaped,
  ]);
}

function connect(port: number, kind: SecretKind, transport: TransportTag): Promise<TestClient> {
  return connectTestClient({ port, secret: TEST_SECRET, kind, transport, dcId: 2 });
}

/** Payloads of random sizes (multiples of 4, as the abridged transport needs), seeded. */
function payloads(seed: number, count: number): Uint8Array[] {
  const rng = seededRandom(seed);
  return Array.from({ length: count }, () => {
    const p = new Uint8Array(4 * (1 + Math.floor(rng() * 2000)));
    for (let i = 0; i < p.length; i++) p[i] = Math.floor(rng() * 256);
    return p;
  });
}

/**
 * Every client sends `rounds` payloads and gets each back byte for byte (echo upstream; no
 * padding, which an echo would return as data).
 */
async function assertRelaying(clients: TestClient[], seed: number, rounds = 5): Promise<void> {
  await Promise.all(clients.map(async (c, i) => {
    for (const p of payloads(seed + i, rounds)) {
      await c.send(p, { padding: 0 });
      assertEquals(await c.receive(), p, `client ${i} (${c.kind}/${c.transport})`);
    }
  }));
}

function closedEvents(proxy: TestProxy, reason: string) {
  return proxy.events.filter((e): e is Extract<ProxyEvent, { type: "closed" }> =>
    e.type === "closed" && e.reason === reason
  );
}

/** The peer of the last client the proxy accepted. */
function lastAcceptedPeer(proxy: TestProxy): string {
  const accepted = proxy.events.filter((e) => e.type === "accepted");
  return accepted[accepted.length - 1]!.peer;
}

function metricValue(proxy: TestProxy, series: string): number {
  const line = proxy.server.metricsText().split("\n").find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : 0;
}

/**
 * Make `onPacket` throw for the session whose peer is `peer` (every other session is untouched):
 * the session callback a shared middle-proxy connection calls, failing as a bug in it would.
 */
function injectThrowingOnPacket(peer: () => string | null): Disposable {
  const original = Session.prototype.onPacket;
  Session.prototype.onPacket = function (this: Session, data: Uint8Array) {
    if (this.peer === peer()) throw new Error("Injected onPacket failure");
    original.call(this, data);
  };
  return { [Symbol.dispose]: () => void (Session.prototype.onPacket = original) };
}

Deno.test("a client whose packet handler throws is closed alone; its middle-proxy connection serves the others on", async () => {
  await using tg = await startFakeTelegramMiddle(AD_TAG, "echo");
  const config = testConfig({
    tag: AD_TAG,
    proxyUrls: tg.proxyUrls,
    externalIp: "127.0.0.1",
    // One shared connection: a throw that ended it would reach every client.
    pool: { minConnections: 1 },
  });
  await withProxy(config, async (proxy, { reports, escaped }) => {
    let victimPeer: string | null = null;
    using _fault = injectThrowingOnPacket(() => victimPeer);
    const good: TestClient[] = [];
    try {
      for (const { kind, transport } of GOOD) good.push(await connect(proxy.port, kind, transport));
      await assertRelaying(good, 1);
      const before = new Set(tg.mp.activeConnIds());
      const victim = await connect(proxy.port, "plain", "abridged");
      try {
        await victim.send(Uint8Array.of(1, 2, 3, 4));
        assertEquals(await victim.receive(), Uint8Array.of(1, 2, 3, 4));
        const victimIds = tg.mp.activeConnIds().filter((id) => !before.has(id));
        assertEquals(victimIds.length, 1);
        assertEquals(tg.mp.connections, 1, "every client on one middle-proxy connection");

        // From now on the victim's onPacket throws, in the middle of the shared read loop.
        const peer = lastAcceptedPeer(proxy);
        victimPeer = peer;
        await tg.mp.sendToClient(victimIds[0]!, Uint8Array.of(9, 9, 9, 9));
        const closed = await internalErrorClose(proxy, { reports, escaped });
        assert(closed.type === "closed");
        assertEquals(closed.peer, peer);
        await victim.closed();
        // Telegram was told the client left (RPC_CLOSE_CONN), and only that one.
        await tg.mp.waitUntil(() => !tg.mp.activeConnIds().includes(victimIds[0]!));
        assertEquals(tg.mp.activeConnIds().length, GOOD.length);

        await assertRelaying(good, 100);
        assertEquals(tg.mp.connections, 1);
        assertEquals(tg.mp.handshakes, 1, "the shared connection was never replaced");
        const pool = proxy.server.middleStats();
        assertEquals([pool.connections, pool.migrated, pool.closedMidSend], [1, 0, 0]);
        assertEquals(closedEvents(proxy, "internal_error").length, 1);
        assertEquals(proxy.events.filter((e) => e.type === "closed").length, 1);
        assertEquals(
          metricValue(
            proxy,
            'mtproxy_connections_closed_total{listener="test",reason="internal_error"}',
          ),
          1,
        );
        assertEquals(reports.length, 1, reports.join("\n"));
        assertStringIncludes(reports[0]!, "a client's handler failed; that client was closed");
        assertStringIncludes(reports[0]!, "Injected onPacket failure");
      } finally {
        await victim.close();
      }
    } finally {
      for (const c of good) await c.close();
    }
  });
});

/** A cipher that throws on the first bytes it is given: a broken backend, or a bug. */
const throwingCipher: StreamCipher = {
  update(data: Uint8Array): void {
    if (data.length > 0) throw new Error("Injected cipher failure");
  },
  close(): void {},
};

for (const mode of ["direct", "middle"] as const) {
  Deno.test(`a client whose cipher throws is closed alone as internal_error (${mode} mode)`, async () => {
    await using dc = await _echoDc();
    await using tg = await startFakeTelegramMiddle(AD_TAG, "echo");
    const config = testConfig(
      mode === "direct"
        ? { dcPorts: { 2: dc.port }, telegramMode: "direct" }
        : { tag: AD_TAG, proxyUrls: tg.proxyUrls, externalIp: "127.0.0.1" },
    );
    await withProxy(config, async (proxy, watch) => {
      const { reports } = watch;
      const good: TestClient[] = [];
      try {
        for (const { kind, transport } of GOOD) {
          good.push(await connect(proxy.port, kind, transport));
        }
        await assertRelaying(good, 200);
        // The next pump to start (the victim's, client to Telegram) gets a throwing cipher.
        let armed = true;
        pumpFaults.ciphers = (side, ciphers) => {
          if (side !== "client" || !armed) return ciphers;
          armed = false;
          return [...ciphers, throwingCipher];
        };
        let victim: TestClient;
        try {
          victim = await connect(proxy.port, "dd", "padded");
          await victim.flushInit();
          await until(() => !armed, "the victim's pump to take the throwing cipher", 5000);
        } finally {
          pumpFaults.ciphers = null;
        }
        const peer = lastAcceptedPeer(proxy);
        try {
          await victim.send(Uint8Array.of(1, 2, 3, 4), { padding: 0 });
          const closed = await internalErrorClose(proxy, watch);
          assert(closed.type === "closed");
          assertEquals(closed.peer, peer);
          assertEquals(closed.detail, "Error: Injected cipher failure");
          await victim.closed();

          await assertRelaying(good, 300);
          assertEquals(closedEvents(proxy, "internal_error").length, 1);
          assertEquals(proxy.events.filter((e) => e.type === "closed").length, 1);
          assertEquals(
            metricValue(
              proxy,
              'mtproxy_connections_closed_total{listener="test",reason="internal_error"}',
            ),
            1,
          );
          assertEquals(reports.length, 1, reports.join("\n"));
          assertStringIncludes(
            reports[0]!,
            `Client ${peer} closed (internal_error, client side): Error: Injected cipher failure`,
          );
        } finally {
          await victim.close();
        }
      } finally {
        for (const c of good) await c.close();
      }
    });
  });
}

async function _echoDc() {
  const dc = await startFakeDc({ mode: "echo" });
  return { port: dc.port, [Symbol.asyncDispose]: () => dc.close() };
}
