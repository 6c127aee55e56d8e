/**
 * A whole-configuration reload (SIGHUP) on a real `mtproxy run` process while 50 clients relay:
 * users and a listener added, a user and a listener removed, a timeout changed, keys that need
 * a restart named and kept; then a broken file that changes nothing. Untouched clients see
 * every byte, intact and in order. Once with one worker, once with two.
 */
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { startFakeDc } from "./kit/fake_dc.ts";
import { freePort, ProxyProcess } from "./kit/proxy_process.ts";
import { eventually, scrapeMetric } from "./kit/scrape.ts";
import {
  connectTestClient,
  openRawConnection,
  type SecretKind,
  type TestClient,
} from "./kit/test_client.ts";
import { randomBytes } from "../lib/crypto.ts";
import type { Config } from "../lib/config/types.ts";
import { startTestProxy, TEST_SECRET, testConfig, testUser } from "./helpers.ts";
import { backConfig, frontConfig, LINK_SECRET } from "./kit/split.ts";
import { startServer } from "../lib/server.ts";

const KINDS: SecretKind[] = ["plain", "dd", "tls"];

function hex(bytes: Uint8Array): string {
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** The secrets of this test: each listener's and each user's, all different. */
const KEYS = {
  main: randomBytes(16),
  old: randomBytes(16),
  extra: randomBytes(16),
  alice: randomBytes(16),
  bob: randomBytes(16),
  carol: randomBytes(16),
  dave: randomBytes(16),
  erin: randomBytes(16),
};

interface Ports {
  main: number;
  old: number;
  extra: number;
  dc: number;
  metrics: number;
  metrics2: number;
}

/** The file before the reload ("before"), after it ("after"), or broken. */
function yaml(ports: Ports, workers: number, version: "before" | "after" | "broken"): string {
  const after = version !== "before";
  const listener = (name: "main" | "old" | "extra") =>
    `  - { name: ${name}, host: 127.0.0.1, port: ${ports[name]}, secret: "${
      hex(KEYS[name])
    }", tls_domain: example.com }`;
  const user = (name: keyof typeof KEYS) => `  ${name}: { secret: "${hex(KEYS[name])}" }`;
  return [
    "log_level: info",
    `workers: ${after ? workers + 1 : workers}`,
    "listeners:",
    listener("main"),
    after ? listener("extra") : listener("old"),
    "users:",
    user("alice"),
    ...(after ? [] : [user("bob")]),
    user("carol"),
    ...(after ? [user("dave"), user("erin")] : []),
    "fronting: { mode: off } # tests never dial outside 127.0.0.1",
    `telegram: { dc_addresses: { "2": "127.0.0.1:${ports.dc}" } }`,
    `metrics: { listen: "127.0.0.1:${after ? ports.metrics2 : ports.metrics}" }`,
    `timeouts: { shutdown_grace: 2, handshake: ${after ? 1 : 60} }`,
    `replay: { max_entries: ${after ? 5000 : 100000} }`,
    ...(version === "broken" ? ["policy: { deny_ips: [not-a-network] }"] : []),
    "",
  ].join("\n");
}

/** One client sending numbered frames and checking each echo, until stopped. */
class Relay {
  rounds = 0;
  bytes = 0;
  error: unknown = null;
  #stop = false;
  readonly done: Promise<void>;

  constructor(readonly name: string, readonly client: TestClient) {
    this.done = this.#run();
  }

  async #run(): Promise<void> {
    try {
      while (!this.#stop) {
        const size = 4 * (16 + Math.floor(Math.random() * 500));
        const payload = randomBytes(size);
        new DataView(payload.buffer).setUint32(0, this.rounds);
        await this.client.send(payload, { padding: 0 });
        const echo = await this.client.receive(10_000);
        assertEquals(echo, payload, `${this.name}: frame ${this.rounds} came back changed`);
        this.rounds++;
        this.bytes += size;
      }
    } catch (e) {
      this.error = e;
    }
  }

  async stop(): Promise<void> {
    this.#stop = true;
    await this.done;
  }
}

/** Resolve when `p` does; fail after `ms` with `what`. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`Timed out waiting for ${what}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

async function echoOnce(port: number, secret: Uint8Array, kind: SecretKind): Promise<void> {
  const c = await connectTestClient({ port, secret, kind, dcId: 2 });
  try {
    const payload = randomBytes(256);
    await c.send(payload, { padding: 0 });
    assertEquals(await c.receive(5000), payload);
  } finally {
    await c.close();
  }
}

async function refusesConnections(port: number): Promise<boolean> {
  try {
    const c = await Deno.connect({ hostname: "127.0.0.1", port });
    c.close();
    return false;
  } catch {
    return true;
  }
}

async function reloadWhileRelaying(workers: number): Promise<void> {
  const dc = await startFakeDc({ mode: "echo" });
  const dir = await Deno.makeTempDir();
  const ports: Ports = {
    main: freePort(),
    old: freePort(),
    extra: freePort(),
    dc: dc.port,
    metrics: freePort(),
    metrics2: freePort(),
  };
  await Deno.writeTextFile(`${dir}/config.yaml`, yaml(ports, workers, "before"));
  const proxy = new ProxyProcess(["--config", "config.yaml"], { cwd: dir });
  const relays: Relay[] = [];
  try {
    await proxy.waitFor("listening on");
    if (workers > 1) await proxy.waitForLog(`${workers} workers serving`);
    // 50 clients: alice, carol and the main listener's secret stay; bob goes; "old" goes away.
    const open = async (name: string, port: number, secret: Uint8Array, n: number) => {
      for (let i = 0; i < n; i++) {
        const kind = KINDS[i % 3]!;
        const client = await connectTestClient({ port, secret, kind, dcId: 2 });
        relays.push(new Relay(`${name}#${i} (${kind})`, client));
      }
    };
    await open("alice", ports.main, KEYS.alice, 15);
    await open("carol", ports.main, KEYS.carol, 10);
    await open("main", ports.main, KEYS.main, 10);
    await open("bob", ports.main, KEYS.bob, 5);
    await open("old", ports.old, KEYS.old, 10);
    assertEquals(relays.length, 50);
    const atLeast = async (rounds: (r: Relay) => number, what: string) =>
      await eventually(
        () => Promise.resolve(relays.every((r) => r.error !== null || r.rounds >= rounds(r))),
        what,
      );
    await atLeast(() => 3, "every client relaying");
    assertEquals(relays.filter((r) => r.error !== null).map((r) => r.name), []);

    // The reload, with traffic flowing.
    await Deno.writeTextFile(`${dir}/config.yaml`, yaml(ports, workers, "after"));
    proxy.signal("SIGHUP");
    await proxy.waitForLog("Configuration reloaded:");
    const line = proxy.stderr.split("\n").find((l) => l.includes("Configuration reloaded:"))!;
    for (
      const key of [
        "users.bob (removed)",
        "users.dave (added)",
        "users.erin (added)",
        "listeners.extra (added)",
        "listeners.old (removed)",
        "timeouts.handshake",
      ]
    ) assert(line.includes(key), line);
    // Keys that need a restart: named in one line, their running values kept.
    const notLive = proxy.stderr.split("\n").filter((l) =>
      l.includes("Not changed until a restart")
    );
    assertEquals(notLive.length, 1, proxy.stderr);
    for (const key of ["workers", "metrics", "replay.max_entries"]) {
      assert(notLive[0]!.includes(key), notLive[0]);
    }
    assertEquals(await refusesConnections(ports.metrics2), true, "metrics stay where they were");

    // Bob's clients are closed as "reloaded"; nobody else is.
    const bobs = relays.filter((r) => r.name.startsWith("bob"));
    await within(Promise.all(bobs.map((r) => r.client.closed())), 10_000, "bob's clients closed");
    await eventually(
      async () =>
        await scrapeMetric(ports.metrics, "mtproxy_connections_closed_total", "reloaded") === 5,
      "5 closed (reloaded) in the metrics",
    );
    assert(line.includes("5 clients closed (reloaded)"), line);

    // The new listener accepts; new users connect; the removed user is a stranger now.
    for (const kind of KINDS) await echoOnce(ports.extra, KEYS.extra, kind);
    await echoOnce(ports.extra, KEYS.dave, "tls");
    await echoOnce(ports.main, KEYS.erin, "dd");
    await assertRejects(() => echoOnce(ports.main, KEYS.bob, "dd"));
    // The removed listener's port no longer accepts, in every worker.
    await eventually(() => refusesConnections(ports.old), "the old port to refuse");

    // The handshake timeout is 1 s now: a silent connection is closed (it was 60 s before).
    const silent = await openRawConnection(ports.main);
    await within(silent.closed(), 15_000, "a silent connection closed by the new timeout");
    await silent.close();

    // Every client but bob's keeps relaying, the removed listener's included.
    const kept = relays.filter((r) => !r.name.startsWith("bob"));
    const mark = new Map(kept.map((r) => [r, r.rounds]));
    await atLeast((r) => (mark.get(r) ?? 0) + 3, "the kept clients relaying after the reload");

    // A broken file changes nothing and says why.
    await Deno.writeTextFile(`${dir}/config.yaml`, yaml(ports, workers, "broken"));
    proxy.signal("SIGHUP");
    await proxy.waitForLog("Configuration not reloaded, the previous one stays");
    await proxy.waitForLog("policy.deny_ips[0]");
    await echoOnce(ports.extra, KEYS.dave, "plain");
    assertEquals(await refusesConnections(ports.old), true);
    await assertRejects(() => echoOnce(ports.main, KEYS.bob, "tls"));
    const mark2 = new Map(kept.map((r) => [r, r.rounds]));
    await atLeast(
      (r) => (mark2.get(r) ?? 0) + 3,
      "the kept clients relaying after the broken file",
    );

    await Promise.all(relays.map((r) => r.stop()));
    // Untouched clients saw every byte, intact and in order (each frame checked as it came).
    assertEquals(kept.filter((r) => r.error !== null).map((r) => `${r.name}: ${r.error}`), []);
    assert(bobs.every((r) => r.error !== null), "bob's clients were cut");
    assertEquals(
      await scrapeMetric(ports.metrics, "mtproxy_connections_closed_total", "reloaded"),
      5,
    );
    await Promise.all(relays.map((r) => r.client.close()));
    assertEquals(await proxy.stop(), 0, proxy.stderr);
    assert(!/uncaught|panic|died|internal_error/i.test(proxy.stderr), proxy.stderr);
    // No secret in anything the proxy printed about the reloads.
    for (const key of Object.values(KEYS)) {
      assert(!proxy.stderr.includes(hex(key)), "a secret in the log");
    }
  } finally {
    await Promise.all(relays.map((r) => r.stop()));
    await Promise.all(relays.map((r) => r.client.close()));
    // Killed after 30 s if it does not stop (a test that failed may have left it hanging).
    try {
      proxy.signal("SIGTERM");
    } catch {
      // Already gone.
    }
    await proxy.wait();
    await dc.close();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("SIGHUP reloads the whole configuration while 50 clients relay: only the refused are cut", async () => {
  await reloadWhileRelaying(1);
});

Deno.test("workers: SIGHUP reloads the whole configuration in every worker while 50 clients relay", async () => {
  await reloadWhileRelaying(2);
});

Deno.test("a reload updates a listener in place on the same socket and moves another: only the refused are cut", async () => {
  const dc = await startFakeDc({ mode: "echo" });
  await using _dc = { [Symbol.asyncDispose]: () => dc.close() };
  const side = randomBytes(16), alice = randomBytes(16), fresh = randomBytes(16);
  const base = testConfig({ dcPorts: { 2: dc.port }, listeners: [{ secret: side }] });
  const aliceUser = testUser("alice", { secret: alice });
  await using proxy = await startTestProxy({ ...base, users: [aliceUser] });
  const [main, moved] = proxy.server.addresses.map((a) => a.port) as [number, number];
  const connect = async (name: string, port: number, secret: Uint8Array, kind: SecretKind) =>
    new Relay(name, await connectTestClient({ port, secret, kind, dcId: 2 }));
  const relays = [
    ...await Promise.all(KINDS.map((k) => connect(`listener ${k}`, main, TEST_SECRET, k))),
    await connect("alice plain", main, alice, "plain"),
    await connect("alice tls", main, alice, "tls"),
    await connect("moved 1", moved, side, "dd"),
    await connect("moved 2", moved, side, "tls"),
  ];
  try {
    await eventually(() => Promise.resolve(relays.every((r) => r.rounds >= 2)), "relaying");
    const newPort = freePort();
    const running = proxy.server.config;
    const next: Config = {
      ...running,
      listeners: running.listeners.map((l) =>
        l.name === "test"
          ? { ...l, secret: fresh, allowedProtocols: ["dd", "tls"] }
          : { ...l, port: newPort }
      ),
    };
    const result = proxy.server.reconfigure(next);
    // The listener's old secret (three clients) and alice's now refused protocol: cut.
    assertEquals(result, { reloaded: 4, policy: 0, fronts: 0 });
    const cut = relays.filter((r) => r.name.startsWith("listener") || r.name === "alice plain");
    await within(Promise.all(cut.map((r) => r.client.closed())), 10_000, "the refused closed");
    const closed = proxy.events.filter((e) => e.type === "closed" && e.reason === "reloaded");
    assertEquals(closed.length, 4);
    // Same socket, new secret; the moved listener answers at its new port only.
    assertEquals(proxy.server.addresses.map((a) => a.port), [main, newPort]);
    await echoOnce(main, fresh, "dd");
    await assertRejects(() => echoOnce(main, TEST_SECRET, "dd"));
    await echoOnce(newPort, side, "tls");
    await eventually(() => refusesConnections(moved), "the old port to refuse");
    // Alice's fake-TLS client and the moved listener's clients never noticed.
    const kept = relays.filter((r) => !cut.includes(r));
    const mark = new Map(kept.map((r) => [r, r.rounds]));
    await eventually(
      () => Promise.resolve(kept.every((r) => r.error !== null || r.rounds >= mark.get(r)! + 3)),
      "the kept clients relaying",
    );
    await Promise.all(relays.map((r) => r.stop()));
    assertEquals(kept.filter((r) => r.error !== null).map((r) => `${r.name}: ${r.error}`), []);
    // A listener that cannot be bound changes nothing.
    const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    try {
      const bad: Config = {
        ...proxy.server.config,
        users: [],
        listeners: [
          ...proxy.server.config.listeners,
          { ...next.listeners[0]!, name: "third", port: (taken.addr as Deno.NetAddr).port },
        ],
      };
      let error = "";
      try {
        proxy.server.reconfigure(bad);
      } catch (e) {
        error = String(e);
      }
      assert(error.includes("Cannot listen on") && error.includes("(third)"), error);
      assertEquals(proxy.server.config.users.length, 1);
      assertEquals(proxy.server.addresses.length, 2);
      await echoOnce(main, alice, "tls");
    } finally {
      taken.close();
    }
  } finally {
    await Promise.all(relays.map((r) => r.stop()));
    await Promise.all(relays.map((r) => r.client.close()));
  }
});

Deno.test("workers: users added by a reload all connect at once (the shared counts have room)", async () => {
  const dc = await startFakeDc({ mode: "echo" });
  const dir = await Deno.makeTempDir();
  const port = freePort();
  const users = Array.from({ length: 40 }, () => randomBytes(16));
  const file = (n: number) =>
    [
      "workers: 2",
      "listeners:",
      `  - { name: main, host: 127.0.0.1, port: ${port}, secret: "${hex(KEYS.main)}" }`,
      "users:",
      ...users.slice(0, n).map((s, i) => `  u${i}: { secret: "${hex(s)}" }`),
      "fronting: { mode: off }",
      `telegram: { dc_addresses: { "2": "127.0.0.1:${dc.port}" } }`,
      "timeouts: { shutdown_grace: 2 }",
      "",
    ].join("\n");
  await Deno.writeTextFile(`${dir}/config.yaml`, file(1));
  const proxy = new ProxyProcess(["--config", "config.yaml"], { cwd: dir });
  const clients: TestClient[] = [];
  try {
    await proxy.waitForLog("2 workers serving");
    await Deno.writeTextFile(`${dir}/config.yaml`, file(users.length));
    proxy.signal("SIGHUP");
    await proxy.waitForLog("Configuration reloaded:");
    for (const secret of users) {
      clients.push(await connectTestClient({ port, secret, kind: "dd", dcId: 2 }));
    }
    await Promise.all(clients.map(async (c) => {
      const payload = randomBytes(128);
      await c.send(payload, { padding: 0 });
      assertEquals(await c.receive(5000), payload);
    }));
    await Promise.all(clients.map((c) => c.close()));
    assertEquals(await proxy.stop(), 0, proxy.stderr);
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    try {
      proxy.signal("SIGTERM");
    } catch {
      // Already gone.
    }
    await proxy.wait();
    await dc.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a back's reload revokes a front (its links close) and keeps the other's links", async () => {
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
  await eventually(
    () => Promise.resolve(home.server.linksUp() === 2 && away.server.linksUp() === 2),
    "links up",
  );
  const result = back.reconfigure({
    ...back.config,
    fronts: [{ name: "home", secret: LINK_SECRET }],
  });
  assertEquals(result, { reloaded: 0, policy: 0, fronts: 2 });
  await eventually(
    () => Promise.resolve(away.server.linksUp() === 0),
    "the revoked front's links closed",
  );
  // Through a back, a padded transport's echo may come back with padding: compare the payload.
  const client = await connectTestClient({
    port: home.port,
    secret: TEST_SECRET,
    kind: "dd",
    dcId: 2,
  });
  try {
    const payload = randomBytes(128);
    await client.send(payload, { padding: 0 });
    assertEquals((await client.receive(5000)).subarray(0, 128), payload);
  } finally {
    await client.close();
  }
  assertEquals(home.server.linksUp(), 2);
});
