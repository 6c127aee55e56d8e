/**
 * The reload plan: what a reload applies live, which keys keep their running value, and how
 * listeners are matched (by name); and a real `mtproxy run` process given a new `users_file`.
 */
import { assert, assertEquals, assertRejects, assertStringIncludes } from "./assert.ts";
import { startFakeDc } from "./kit/fake_dc.ts";
import { freePort, ProxyProcess } from "./kit/proxy_process.ts";
import { connectTestClient, type TestClient } from "./kit/test_client.ts";
import { randomBytes } from "../lib/crypto.ts";
import { buildConfig } from "../lib/config/load.ts";
import { planReload, sameValue, yamlKey } from "../lib/config/reload.ts";
import type { Config } from "../lib/config/types.ts";

const S1 = "0123456789abcdef0123456789abcdef";
const S2 = "fedcba9876543210fedcba9876543210";
const S3 = "00112233445566778899aabbccddeeff";
const S4 = "ffeeddccbbaa99887766554433221100";
const S5 = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";

// deno-lint-ignore no-explicit-any
type Raw = Record<string, any>;

function base(): Raw {
  return {
    listeners: [
      { name: "main", host: "127.0.0.1", port: 1443, secret: S1 },
      { name: "old", host: "127.0.0.1", port: 2443, secret: S2 },
    ],
    fronting: { mode: "off" },
    users: { alice: { secret: S3 }, bob: { secret: S4, max_connections: 3 } },
    timeouts: { idle: 300, handshake: 10 },
  };
}

function config(raw: Raw): Config {
  return buildConfig(raw);
}

function edit(change: (raw: Raw) => void): Config {
  const raw = structuredClone(base());
  change(raw);
  return config(raw);
}

Deno.test("planReload finds nothing to do when the file did not change", () => {
  const plan = planReload(config(base()), config(base()));
  assertEquals(plan.changed, []);
  assertEquals(plan.notLive, []);
  assertEquals([plan.added, plan.removed, plan.moved, plan.updated], [[], [], [], []]);
});

Deno.test("planReload applies users, policy, timeouts and limits live, naming each key", () => {
  const running = config(base());
  const next = edit((r) => {
    delete r.users.bob;
    r.users.alice.enabled = false;
    r.users.carol = { secret: S4 };
    r.policy = { deny_ips: ["10.0.0.0/8"] };
    r.timeouts.idle = 60;
    r.max_connections = 50;
    r.log_level = "debug";
  });
  const plan = planReload(running, next);
  assertEquals(plan.notLive, []);
  assertEquals(plan.changed.toSorted(), [
    "log_level",
    "max_connections",
    "policy",
    "timeouts.idle",
    "users.alice.enabled",
    "users.bob (removed)",
    "users.carol (added)",
  ]);
  assertEquals(plan.config.timeouts.idleMs, 60_000);
  assertEquals(plan.config.maxConnections, 50);
  assertEquals(plan.config.users.map((u) => u.name).sort(), ["alice", "carol"]);
  assertEquals(plan.config.policy.denyIps, ["10.0.0.0/8"]);
});

Deno.test("planReload keeps the running value of every key that needs a restart, and names it", () => {
  const running = config(base());
  const next = edit((r) => {
    r.workers = 4;
    r.telegram = { mode: "direct", fast_mode: false };
    r.replay = { max_entries: 10, server_error_filter: "all" };
    r.timeouts.dc_connect = 3;
    r.timeouts.handshake = 5;
    r.metrics = { listen: "127.0.0.1:9999" };
  });
  const plan = planReload(running, next);
  assertEquals(plan.notLive.toSorted(), [
    "metrics",
    "replay.max_entries",
    "telegram",
    "timeouts.dc_connect",
    "workers",
  ]);
  assertEquals(plan.changed.toSorted(), ["replay.server_error_filter", "timeouts.handshake"]);
  const c = plan.config;
  assertEquals(c.workers, running.workers);
  assert(sameValue(c.telegram, running.telegram));
  assertEquals(c.metrics, running.metrics);
  assertEquals(c.replay.maxEntries, running.replay.maxEntries);
  assertEquals(c.replay.serverErrorFilter, "all");
  assertEquals(c.timeouts.dcConnectMs, running.timeouts.dcConnectMs);
  assertEquals(c.timeouts.handshakeMs, 5000);
  // Applying the plan's config again is a no-op: nothing is named twice.
  const again = planReload(c, next);
  assertEquals(again.changed, []);
  assertEquals(again.notLive.toSorted(), plan.notLive.toSorted());
});

Deno.test("planReload matches listeners by name: added, removed, moved, updated in place", () => {
  const running = config(base());
  const next = edit((r) => {
    r.listeners = [
      { name: "main", host: "127.0.0.1", port: 1443, secret: S5, tag: S3, users: ["alice"] },
      { name: "extra", host: "127.0.0.1", port: 3443, secret: S2 },
    ];
  });
  const plan = planReload(running, next);
  assertEquals(plan.added.map((l) => l.name), ["extra"]);
  assertEquals(plan.removed.map((l) => l.name), ["old"]);
  assertEquals(plan.moved, []);
  assertEquals(plan.updated.map((l) => l.name), ["main"]);
  assertEquals(plan.changed.toSorted(), [
    "listeners.extra (added)",
    "listeners.main.secret",
    "listeners.main.tag",
    "listeners.main.users",
    "listeners.old (removed)",
  ]);
  // The new tag needs middle proxies that were never started: said, not hidden.
  assertEquals(plan.notLive, ["listeners.main.tag"]);
  // No secret value anywhere in what is logged.
  for (const line of [...plan.changed, ...plan.notLive]) {
    for (const s of [S1, S2, S3, S4, S5]) assert(!line.includes(s), line);
  }
});

Deno.test("planReload moves a listener whose port changed, and keeps a port 0 listener's port", () => {
  // Running: "old" was given port 40000 for its port 0 at start (tests configure port 0).
  const running = config(base());
  const bound: Config = {
    ...running,
    listeners: running.listeners.map((l) => l.name === "old" ? { ...l, port: 40000 } : l),
  };
  const edited = edit((r) => (r.listeners[0].port = 1444));
  const next: Config = {
    ...edited,
    listeners: edited.listeners.map((l) => l.name === "old" ? { ...l, port: 0 } : l),
  };
  const plan = planReload(bound, next);
  assertEquals(plan.moved.map((l) => [l.name, l.port]), [["main", 1444]]);
  assertEquals(plan.updated, []);
  assertEquals(plan.changed, ["listeners.main.port"]);
  assertEquals(plan.config.listeners.map((l) => l.port), [1444, 40000]);
});

Deno.test("planReload treats a key it does not know as one that needs a restart", () => {
  const running = config(base());
  const next = { ...config(base()), someFutureKey: { listen: "x" } } as unknown as Config;
  const plan = planReload(running, next);
  assertEquals(plan.notLive, ["some_future_key"]);
  assert(
    !("someFutureKey" in plan.config) ||
      (plan.config as unknown as Raw).someFutureKey === undefined,
  );
});

Deno.test("yamlKey names config fields as the file does", () => {
  assertEquals(yamlKey("shutdownGraceMs"), "shutdown_grace");
  assertEquals(yamlKey("maxClientUnackedBytes"), "max_client_unacked_bytes");
  assertEquals(yamlKey("tlsDomains"), "tls_domain");
  assertEquals(yamlKey("proxyConfigV6Url"), "proxy_config_v6_url");
  assertEquals(yamlKey("dataQuotaBytes"), "data_quota");
});

Deno.test("planReload applies a new users_file path live (its users are the ones read)", () => {
  const running = edit((r) => (r.users_file = "a.yaml"));
  const next = edit((r) => (r.users_file = "b.yaml"));
  const plan = planReload(running, next);
  assertEquals(plan.changed, ["users_file"]);
  assertEquals(plan.notLive, []);
  assertEquals(plan.config.usersFile, "b.yaml");
  assertEquals(planReload(plan.config, next).changed, []);
});

Deno.test("a reload of mtproxy run that points users_file at another file serves that file's users, and the admin API writes there", async () => {
  const dir = await Deno.makeTempDir();
  const dc = await startFakeDc({ mode: "echo" });
  try {
    const token = "reload-users-file-token-0123456789";
    const admin = freePort();
    const yaml = (usersFile: string) =>
      [
        "listeners:",
        `  - { name: main, host: 127.0.0.1, port: ${freePort()}, secret: "${S1}" }`,
        'fronting: { mode: "off" }',
        "log_level: info",
        "telegram:",
        "  mode: direct",
        `  dc_addresses: { 2: "127.0.0.1:${dc.port}" }`,
        `admin: { listen: "127.0.0.1:${admin}", token: "${token}" }`,
        `users_file: ${usersFile}`,
        "",
      ].join("\n");
    await Deno.writeTextFile(`${dir}/a.yaml`, `users:\n  alice: { secret: "${S3}" }\n`);
    await Deno.writeTextFile(`${dir}/b.yaml`, `users:\n  bob: { secret: "${S4}" }\n`);
    await Deno.writeTextFile(`${dir}/config.yaml`, yaml("a.yaml"));
    const proxy = new ProxyProcess(["run", "--config", "config.yaml", "--quiet-links"], {
      cwd: dir,
    });
    try {
      await proxy.waitFor("listening on");
      const port = proxy.port();
      const alice = await connectTestClient({ port, secret: _bytes(S3), kind: "dd", dcId: 2 });
      await _echo(alice);
      await assertRejects(() => _echoOnce(port, S4));

      // The same port (a listener moved would be another test): keep the first file's port.
      await Deno.writeTextFile(
        `${dir}/config.yaml`,
        yaml("b.yaml").replace(/port: \d+/, `port: ${port}`),
      );
      proxy.signal("SIGHUP");
      await proxy.waitForLog("Configuration reloaded:");
      const line = proxy.stderr.split("\n").find((l) => l.includes("Configuration reloaded:"))!;
      assertStringIncludes(line, "users_file");
      assertStringIncludes(line, "users.alice (removed)");
      assertStringIncludes(line, "users.bob (added)");
      assert(!proxy.stderr.includes("Not changed until a restart"), proxy.stderr);
      await alice.closed();
      await alice.close();
      await _echoOnce(port, S4);
      await assertRejects(() => _echoOnce(port, S3));

      const auth = { authorization: `Bearer ${token}` };
      const list = await fetch(`http://127.0.0.1:${admin}/api/users`, { headers: auth });
      const body = await list.json();
      assertEquals(body.users_file, `${dir}/b.yaml`);
      assertEquals(body.users.map((u: { name: string }) => u.name), ["bob"]);
      const added = await fetch(`http://127.0.0.1:${admin}/api/users`, {
        method: "POST",
        headers: { ...auth, "content-type": "application/json" },
        body: JSON.stringify({ name: "carol", secret: S5 }),
      });
      assertEquals(added.status, 201, await added.text());
      assertStringIncludes(await Deno.readTextFile(`${dir}/b.yaml`), "carol");
      assert(!(await Deno.readTextFile(`${dir}/a.yaml`)).includes("carol"));
      await _echoOnce(port, S5);
    } finally {
      await proxy.stop();
    }
  } finally {
    await dc.close();
    await Deno.remove(dir, { recursive: true });
  }
});

function _bytes(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g)!, (h) => parseInt(h, 16));
}

async function _echo(c: TestClient): Promise<void> {
  const payload = randomBytes(256);
  await c.send(payload, { padding: 0 });
  assertEquals((await c.receive(5000)).subarray(0, 256), payload);
}

async function _echoOnce(port: number, secret: string): Promise<void> {
  const c = await connectTestClient({ port, secret: _bytes(secret), kind: "dd", dcId: 2 });
  try {
    await _echo(c);
  } finally {
    await c.close();
  }
}
