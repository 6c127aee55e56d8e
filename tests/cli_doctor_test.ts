/**
 * `mtproxy doctor` over real sockets, every target on 127.0.0.1: a configuration where every
 * check passes, one with a good and a broken item of each kind (listeners, tls_domains, DCs;
 * and a skewed clock, a foreign public_host, a huge max_connections), middle-proxy mode with a
 * good and an unreachable middle proxy and a failing Telegram config, and the command line.
 * Names resolve from a table (the `lookup` seam), so no DNS query leaves the machine.
 */
import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import { fileURLToPath as fromFileUrl } from "node:url";
import {
  startFakeTelegramMiddle,
  startTestProxy,
  TEST_SECRET,
  testConfig,
  type TestConfigOptions,
} from "./helpers.ts";
import { type FakeDc, startFakeDc } from "./kit/fake_dc.ts";
import { type HttpsSite, startHttpsSite } from "./kit/https_site.ts";
import { freePort } from "./kit/proxy_process.ts";
import type { Config } from "../lib/config/types.ts";
import {
  type DoctorCheck,
  formatDoctorReport,
  type HostLookup,
  runDoctorChecks,
} from "../lib/cli/doctor.ts";
import { toHex } from "../lib/secret.ts";

const MAIN = fromFileUrl(new URL("../main.ts", import.meta.url));
const AD_TAG = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);

/** good.test and the IP literals resolve to 127.0.0.1; everything else does not exist. */
const lookup: HostLookup = (host) =>
  host === "good.test" || host === "127.0.0.1"
    ? Promise.resolve(["127.0.0.1"])
    : Promise.reject(new Error(`getaddrinfo ENOTFOUND ${host}`));

/** An HTTP server on 127.0.0.1 answering every request with `answer()`. */
function startHttp(answer: () => Response): { url: string; close(): Promise<void> } {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, answer);
  return { url: `http://127.0.0.1:${server.addr.port}/`, close: () => server.shutdown() };
}

/** An HTTP server whose Date header is `offsetMs` off this machine's clock. */
function startDateServer(offsetMs: number): { url: string; close(): Promise<void> } {
  return startHttp(() =>
    new Response(null, { headers: { date: new Date(Date.now() + offsetMs).toUTCString() } })
  );
}

interface World {
  dc: FakeDc;
  site: HttpsSite;
}

async function withWorld(fn: (w: World) => Promise<void>): Promise<void> {
  const dc = await startFakeDc({ mode: "mtproto" });
  const site = await startHttpsSite({ names: ["good.test"] });
  try {
    await fn({ dc, site });
  } finally {
    await dc.close();
    await site.close();
  }
}

/** A direct-mode config whose every target is on 127.0.0.1. */
function directConfig(w: World, extra: TestConfigOptions = {}): Config {
  const dcPorts: Record<number, number> = {};
  for (const id of [1, 2, 3, 4, 5]) dcPorts[id] = w.dc.port;
  const base = testConfig({
    port: freePort(),
    tlsDomains: ["good.test"],
    dcPorts,
    fronting: { host: "127.0.0.1", port: w.site.port },
    maxConnections: 100,
    ...extra,
  });
  return { ...base, publicHost: "127.0.0.1" };
}

function find(checks: readonly DoctorCheck[], name: string): DoctorCheck {
  const c = checks.find((c) => c.name === name || c.name.startsWith(`${name} (`));
  assert(c, `no check ${JSON.stringify(name)} in:\n${formatDoctorReport(checks).join("\n")}`);
  return c;
}

Deno.test("doctor passes every check of a healthy direct-mode configuration", async () => {
  await withWorld(async (w) => {
    const clock = startDateServer(0);
    try {
      const config = directConfig(w);
      const checks = await runDoctorChecks(config, {
        clockUrl: clock.url,
        lookup,
        timeoutMs: 3000,
      });
      const report = formatDoctorReport(checks).join("\n");
      assert(checks.every((c) => c.ok), report);
      const names = checks.map((c) => c.name.replace(/ \(.*/, ""));
      for (
        const name of [
          "libcrypto",
          "open files",
          "listener test",
          "clock",
          "public_host",
          "tls_domain good.test",
          "fronting good.test",
          "DC 1",
          "DC 5",
        ]
      ) assert(names.includes(name), `${name} missing:\n${report}`);
      assertStringIncludes(find(checks, "fronting good.test").detail, "answers TLS 1.3");
      assertStringIncludes(find(checks, "DC 2").detail, "resPQ in");
      assertStringIncludes(find(checks, "public_host").detail, "an address of this machine");
      // Every DC check really reached the fake DC with its own id.
      const inits = w.dc.events.flatMap((e) => e.type === "init" ? [e.dcId] : []);
      assertEquals([...new Set(inits)].sort(), [1, 2, 3, 4, 5]);
    } finally {
      await clock.close();
    }
  });
});

Deno.test("doctor tells each good item from its broken twin", async () => {
  await withWorld(async (w) => {
    const clock = startDateServer(3_600_000);
    const foreign = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const closed = freePort();
    try {
      // A running proxy holds one port: that one passes.
      await using proxy = await startTestProxy(testConfig({ tlsDomains: ["good.test"] }));
      const base = directConfig(w, {
        tlsDomains: ["good.test", "broken.test"],
        dcAddresses: { 3: { host: "127.0.0.1", port: closed } },
        maxConnections: 10_000_000,
        listeners: [
          { port: (foreign.addr as Deno.NetAddr).port },
          { port: proxy.port, secret: TEST_SECRET, tlsDomains: ["good.test"] },
        ],
      });
      const config: Config = { ...base, publicHost: "198.51.100.7" };
      const checks = await runDoctorChecks(config, {
        clockUrl: clock.url,
        lookup,
        timeoutMs: 2000,
      });
      const report = formatDoctorReport(checks).join("\n");

      assert(find(checks, "listener test").ok, report);
      const held = find(checks, "listener test2");
      assertEquals(held.ok, false, report);
      assertStringIncludes(held.detail, "in use");
      const running = find(checks, "listener test3");
      assert(running.ok, report);
      assertStringIncludes(running.detail, "in use by a running mtproxy");

      assert(find(checks, "tls_domain good.test").ok, report);
      const broken = find(checks, "tls_domain broken.test");
      assertEquals(broken.ok, false);
      assertStringIncludes(broken.detail, "does not resolve");
      assert(broken.hint !== undefined);

      for (const id of [1, 2, 4, 5]) assert(find(checks, `DC ${id}`).ok, report);
      const dc3 = find(checks, "DC 3");
      assertEquals(dc3.ok, false);
      assertEquals(dc3.name, `DC 3 (127.0.0.1:${closed})`);
      assertStringIncludes(dc3.detail, "port closed");

      const skew = find(checks, "clock");
      assertEquals(skew.ok, false);
      assert(/^3\d{3}\.\d s behind http/.test(skew.detail), skew.detail);
      assertStringIncludes(skew.hint ?? "", "NTP");
      const host = find(checks, "public_host");
      assertEquals(host.ok, false);
      assertStringIncludes(host.detail, "198.51.100.7, which is not this machine");
      const files = find(checks, "open files");
      assertEquals(files.ok, false);
      assertStringIncludes(files.detail, "max_connections 10000000 × 3 listeners");

      // The report: a cross and a hint line for each failure.
      assertStringIncludes(report, `✖ DC 3 (127.0.0.1:${closed}): port closed`);
      assertStringIncludes(report, "✔ tls_domain good.test: resolves to 127.0.0.1");
      const lines = report.split("\n");
      const at = lines.findIndex((l) => l.startsWith("✖ tls_domain broken.test"));
      assert(lines[at + 1]?.startsWith("    hint: "), report);
    } finally {
      foreign.close();
      await clock.close();
    }
  });
});

Deno.test("doctor fails a fronting target that does not speak TLS", async () => {
  await withWorld(async (w) => {
    const clock = startDateServer(0);
    try {
      const config = directConfig(w, { fronting: { host: "127.0.0.1", port: w.dc.port } });
      const checks = await runDoctorChecks(config, {
        clockUrl: clock.url,
        lookup,
        timeoutMs: 2000,
      });
      const fronting = find(checks, "fronting good.test");
      assertEquals(fronting.ok, false);
      assertStringIncludes(fronting.detail, `127.0.0.1:${w.dc.port}`);
      assertStringIncludes(fronting.hint ?? "", "fronting.mode");
    } finally {
      await clock.close();
    }
  });
});

Deno.test("doctor checks Telegram's config and each middle proxy in middle-proxy mode", async () => {
  await using tg = await startFakeTelegramMiddle(AD_TAG);
  const closed = freePort();
  tg.core.configV4 = `proxy_for 2 127.0.0.1:${tg.mp.port};\nproxy_for 4 127.0.0.1:${closed};\n`;
  const clock = startDateServer(0);
  const ipEcho = startHttp(() => new Response("127.0.0.1\n"));
  try {
    // external_ip unset: the IP-echo service says it, and the middle proxies' keys prove it.
    const config: Config = {
      ...testConfig({
        port: freePort(),
        tag: AD_TAG,
        proxyUrls: tg.proxyUrls,
        maxConnections: 100,
      }),
      publicHost: "127.0.0.1",
      externalIp: null,
      ipLookupUrls: [`${ipEcho.url}ip`],
    };
    const options = { clockUrl: clock.url, lookup, timeoutMs: 2000 };
    const checks = await runDoctorChecks(config, options);
    const report = formatDoctorReport(checks).join("\n");
    const ip = find(checks, "external IP");
    assert(ip.ok, report);
    assertEquals(ip.detail, `127.0.0.1 (from ${ipEcho.url}ip)`);
    const telegram = find(checks, "Telegram config");
    assert(telegram.ok, report);
    assertStringIncludes(telegram.detail, "proxy secret (128 bytes) and middle-proxy list (2 DCs)");
    const good = find(checks, "middle proxy DC 2");
    assert(good.ok, report);
    assertStringIncludes(good.detail, "RPC handshake in");
    const bad = find(checks, "middle proxy DC 4");
    assertEquals(bad.ok, false);
    assertStringIncludes(bad.detail, `127.0.0.1:${closed}`);
    // Only the tagged listener exists: no DC is dialed directly.
    assert(!checks.some((c) => /^DC \d/.test(c.name)), report);

    tg.core.setMode("status500", "configV4");
    const again = await runDoctorChecks(config, options);
    const failed = find(again, "Telegram config");
    assertEquals(failed.ok, false);
    assertStringIncludes(failed.detail, "HTTP 500");
    assertStringIncludes(failed.detail, "middle proxies not checked");
    assert(!again.some((c) => c.name.startsWith("middle proxy")));
  } finally {
    await clock.close();
    await ipEcho.close();
  }
});

async function mtproxy(
  args: string[],
  cwd: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const env: Record<string, string> = { NO_COLOR: "1" };
  for (const v of ["MTP_CONFIG", "MTP_STATE_FILE", "MTP_PORT", "MTP_SECRET", "MTP_PUBLIC_HOST"]) {
    env[v] = "";
  }
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    cwd,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("mtproxy doctor exits 0 when every check passes, 1 when one fails or the config is invalid", async () => {
  const dir = await Deno.makeTempDir();
  const dc = await startFakeDc({ mode: "mtproto" });
  const clock = startDateServer(0);
  try {
    // An IP literal as tls_domain resolves without DNS; fronting off leaves it unprobed.
    const dcs = [1, 2, 3, 4, 5].map((id) => `    "${id}": "127.0.0.1:${dc.port}"`).join("\n");
    const yaml = (extra: string) =>
      `listeners:\n  - host: 127.0.0.1\n    port: ${freePort()}\n    secret: "${
        toHex(TEST_SECRET)
      }"\n    tls_domain: 127.0.0.1\npublic_host: 127.0.0.1\nexternal_ip: 127.0.0.1\nmax_connections: 100\nfronting:\n  mode: off\ntelegram:\n  dc_addresses:\n${dcs}\n${extra}`;
    await Deno.writeTextFile(`${dir}/good.yaml`, yaml(""));
    const good = await mtproxy(
      ["doctor", "--config", "good.yaml", "--clock-url", clock.url, "--timeout", "3"],
      dir,
    );
    assertEquals(good.code, 0, good.stdout + good.stderr);
    assertStringIncludes(
      good.stdout,
      "✔ configuration: good.yaml is valid: role standalone, 1 listener",
    );
    assertStringIncludes(good.stdout, "✔ DC 5 (127.0.0.1:");
    assert(/All \d+ checks passed/.test(good.stdout), good.stdout);
    assert(!good.stdout.includes("✖"), good.stdout);

    await Deno.writeTextFile(
      `${dir}/bad.yaml`,
      yaml(`    "-2": "127.0.0.1:${freePort()}"\n`),
    );
    const bad = await mtproxy(["doctor", "--config", "bad.yaml", "--clock-url", clock.url], dir);
    assertEquals(bad.code, 1, bad.stdout + bad.stderr);
    assertStringIncludes(bad.stdout, "✖ DC 2 media (127.0.0.1:");
    assert(/1 of \d+ checks failed/.test(bad.stdout), bad.stdout);

    // No secret and no state file yet: reported, checked with a throwaway one, none created.
    const noSecret = yaml("").replace(/^ {4}secret: .*\n/m, "");
    await Deno.writeTextFile(`${dir}/nostate.yaml`, noSecret);
    const fresh = await mtproxy(
      ["doctor", "--config", "nostate.yaml", "--clock-url", clock.url],
      dir,
    );
    assertEquals(fresh.code, 0, fresh.stdout + fresh.stderr);
    assertStringIncludes(fresh.stdout, "mtproxy-state.json does not exist yet");
    assertEquals(await Deno.stat(`${dir}/mtproxy-state.json`).then(() => true, () => false), false);

    await Deno.writeTextFile(`${dir}/invalid.yaml`, "listeners:\n  - port: abc\n");
    const invalid = await mtproxy(["doctor", "--config", "invalid.yaml"], dir);
    assertEquals(invalid.code, 1);
    assertStringIncludes(invalid.stdout, "✖ configuration: 1 problem");
    assertStringIncludes(invalid.stdout, "listeners[0].port");

    const usage = await mtproxy(["doctor", "--timeout", "soon"], dir);
    assertEquals(usage.code, 2);
    assertStringIncludes(usage.stderr, "mtproxy doctor: --timeout must be seconds");
  } finally {
    await clock.close();
    await dc.close();
    await Deno.remove(dir, { recursive: true });
  }
});
