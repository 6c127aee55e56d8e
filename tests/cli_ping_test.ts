/**
 * `mtproxy ping`: a proxy link tried DC by DC over real sockets on 127.0.0.1, against a healthy
 * proxy (every DC of a fake DC answering), a wrong secret or clock (the proxy fronts the hello
 * to a stand-in site), a proxy that cannot reach one DC, and a closed port; in-process and as
 * `deno run -A main.ts ping ...`.
 */
import { assert, assertEquals, assertStringIncludes, assertThrows } from "./assert.ts";
import { fileURLToPath as fromFileUrl } from "node:url";
import { startTestProxy, TEST_SECRET, testConfig, type TestProxy } from "./helpers.ts";
import { type FakeDc, startFakeDc } from "./kit/fake_dc.ts";
import { type HttpsSite, startHttpsSite } from "./kit/https_site.ts";
import { freePort } from "./kit/proxy_process.ts";
import {
  classifyAnswer,
  type DcPingResult,
  formatPingReport,
  parseProxyLink,
  pingDc,
  pingProxy,
  type PingTarget,
  reqPqMultiMessage,
} from "../lib/cli/ping.ts";
import {
  formatDdSecret,
  formatPlainSecret,
  formatTlsSecret,
  parseSecret,
  proxyLink,
} from "../lib/secret.ts";

const MAIN = fromFileUrl(new URL("../main.ts", import.meta.url));
const SNI = "example.com";
const WRONG = Uint8Array.from({ length: 16 }, (_, i) => 0xf0 ^ i);
const SECRETS = {
  tls: formatTlsSecret(TEST_SECRET, SNI),
  dd: formatDdSecret(TEST_SECRET),
  plain: formatPlainSecret(TEST_SECRET),
};

interface World {
  dc: FakeDc;
  site: HttpsSite;
  proxy: TestProxy;
}

/**
 * A fake DC for DCs 1-5 (except those in `closedDcs`, pointed at a closed port), a stand-in
 * site the proxy fronts wrong hellos to, and the proxy.
 */
async function withProxy(
  fn: (w: World) => Promise<void>,
  options: { closedDcs?: number[] } = {},
): Promise<void> {
  const dc = await startFakeDc({ mode: "mtproto" });
  const site = await startHttpsSite({ names: [SNI] });
  try {
    const dcPorts: Record<number, number> = {};
    const closed = freePort();
    for (const id of [1, 2, 3, 4, 5]) {
      dcPorts[id] = options.closedDcs?.includes(id) ? closed : dc.port;
    }
    await using proxy = await startTestProxy(
      testConfig({
        dcPorts,
        tlsDomains: [SNI],
        fronting: { host: "127.0.0.1", port: site.port },
        dcConnectMs: 1000,
      }),
    );
    await fn({ dc, site, proxy });
  } finally {
    await dc.close();
    await site.close();
  }
}

function target(port: number, secret: string): PingTarget {
  return { host: "127.0.0.1", port, secret: parseSecret(secret) };
}

async function mtproxy(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("parseProxyLink reads tg:// and t.me links and keeps a + in the secret", () => {
  const tg = parseProxyLink(
    "tg://proxy?server=proxy.example.com&port=443&secret=dd0123456789abcdef0123456789abcdef",
  );
  assertEquals(tg, {
    host: "proxy.example.com",
    port: 443,
    secret: "dd0123456789abcdef0123456789abcdef",
  });
  const https = parseProxyLink("https://t.me/proxy?server=2001:db8::1&port=8443&secret=7g+/x%3D");
  assertEquals(https, { host: "2001:db8::1", port: 8443, secret: "7g+/x=" });
  assertEquals(parseProxyLink("t.me/proxy?server=[::1]&port=1&secret=s").host, "::1");
  assertThrows(() => parseProxyLink("https://example.com/?server=a"), RangeError, "tg://proxy?");
  assertThrows(() => parseProxyLink("tg://proxy?server=a&port=1"), RangeError, "no secret");
  assertThrows(
    () => parseProxyLink("tg://proxy?server=a&port=70000&secret=s"),
    RangeError,
    "1-65535",
  );
});

Deno.test("classifyAnswer tells a resPQ with our nonce from other answers", () => {
  const nonce = Uint8Array.from({ length: 16 }, (_, i) => i);
  // A resPQ is laid out like req_pq_multi up to the nonce: header, constructor, nonce.
  const res = reqPqMultiMessage(nonce);
  new DataView(res.buffer).setUint32(20, 0x05162463, true);
  assertEquals(classifyAnswer(res, nonce), { kind: "res_pq" });
  assertEquals(classifyAnswer(res, new Uint8Array(16)), { kind: "wrong_nonce" });
  assertEquals(classifyAnswer(reqPqMultiMessage(nonce), nonce), {
    kind: "other",
    constructor: 0xbe7e8ef1,
  });
  assertEquals(classifyAnswer(Uint8Array.of(0x44, 0xfe, 0xff, 0xff), nonce), {
    kind: "transport_error",
    code: -444,
  });
});

Deno.test("ping gets a resPQ from every DC and media DC through a healthy proxy, for every secret kind", async () => {
  await withProxy(async ({ dc, proxy }) => {
    for (const [kind, secret] of Object.entries(SECRETS)) {
      const dcs = [1, 2, 3, 4, 5, -1, -2, -3, -4, -5];
      const before = dc.events.filter((e) => e.type === "req_pq").length;
      const results = await pingProxy(target(proxy.port, secret), dcs, { timeoutMs: 5000 });
      assertEquals(results.map((r) => r.dc), dcs);
      for (const r of results) {
        assert(r.ok, `${kind} DC ${r.dc}: ${r.diagnosis}`);
        assertEquals(r.outcome, "ok");
        assertEquals(r.protocol, kind);
        assert(r.connectMs !== null && r.answerMs !== null && r.answerMs >= 0, JSON.stringify(r));
        assertEquals(r.diagnosis, null);
      }
      // Each ping really reached the DC: one req_pq_multi per DC, media ids as sent.
      const reqs = dc.events.filter((e) => e.type === "req_pq").slice(before);
      assertEquals(reqs.length, dcs.length);
      assert(reqs.every((e) => e.type === "req_pq" && e.multi));
      const lines = formatPingReport(target(proxy.port, secret), results);
      assertStringIncludes(lines.join("\n"), "All 10 DCs answered");
    }
  });
});

Deno.test("ping says wrong secret or clock when the fake-TLS answer is the real site's", async () => {
  await withProxy(async ({ proxy, site }) => {
    const wrong = await pingDc(target(proxy.port, formatTlsSecret(WRONG, SNI)), 2, {
      timeoutMs: 5000,
    });
    assertEquals(wrong.ok, false);
    assertEquals(wrong.outcome, "not_signed");
    assert(wrong.connectMs !== null && wrong.answerMs === null);
    assertStringIncludes(wrong.diagnosis ?? "", "wrong secret, or this machine's clock is off");
    // The right secret signed an hour off is fronted the same way: the clock is the culprit.
    const late = await pingDc(target(proxy.port, SECRETS.tls), 2, {
      timeoutMs: 5000,
      nowSec: () => Math.floor(Date.now() / 1000) - 3600,
    });
    assertEquals(late.outcome, "not_signed");
    // Both hellos really went to the site (the proxy fronted them).
    assert(site.log.length >= 2, `site saw ${site.log.length} connections`);
  });
});

Deno.test("ping says wrong secret for a dd or plain link the proxy fronts to its site", async () => {
  await withProxy(async ({ proxy }) => {
    for (const secret of [formatDdSecret(WRONG), formatPlainSecret(WRONG)]) {
      const r = await pingDc(target(proxy.port, secret), 2, { timeoutMs: 5000 });
      assertEquals(r.ok, false, secret);
      assertEquals(r.outcome, "tls_other");
      assertStringIncludes(r.diagnosis ?? "", "wrong secret");
    }
  });
});

Deno.test("ping names the DC the proxy cannot reach", async () => {
  await withProxy(async ({ proxy }) => {
    const results = await pingProxy(target(proxy.port, SECRETS.tls), [2, 3], { timeoutMs: 5000 });
    assertEquals(results.map((r) => r.ok), [true, false]);
    const bad = results[1]!;
    assertEquals(bad.outcome, "closed");
    assertStringIncludes(bad.diagnosis ?? "", "could not reach DC 3");
    const report = formatPingReport(target(proxy.port, SECRETS.tls), results).join("\n");
    assertStringIncludes(report, "1 of 2 DCs answered");
    assertStringIncludes(report, "DC 3: the proxy accepted the fake-TLS handshake");
  }, { closedDcs: [3] });
});

Deno.test("ping says port closed for a port nobody listens on", async () => {
  const port = freePort();
  const results = await pingProxy(target(port, SECRETS.dd), [1, 2], { timeoutMs: 2000 });
  for (const r of results) {
    assertEquals(r.ok, false);
    assertEquals(r.outcome, "port_closed");
    assertEquals(r.connectMs, null);
    assertStringIncludes(r.diagnosis ?? "", "port closed");
    assertStringIncludes(r.diagnosis ?? "", `127.0.0.1:${port}`);
  }
});

Deno.test("ping pings a Telegram DC directly without a secret", async () => {
  const dc = await startFakeDc({ mode: "mtproto" });
  try {
    const r = await pingDc({ host: "127.0.0.1", port: dc.port, secret: null }, -4, {
      timeoutMs: 2000,
    });
    assert(r.ok, r.diagnosis ?? "");
    assertEquals(r.protocol, "direct");
    const init = await dc.waitFor((e) => e.type === "init");
    assert(init.type === "init" && init.dcId === -4 && init.tag === "intermediate");
  } finally {
    await dc.close();
  }
});

Deno.test("mtproxy ping exits 0 with a table when every DC answered, 1 otherwise, 2 on a bad command line", async () => {
  await withProxy(async ({ proxy }) => {
    const link = proxyLink({ host: "127.0.0.1", port: proxy.port }, SECRETS.tls, {
      scheme: "https",
    });
    const ok = await mtproxy(["ping", link, "--dc", "1,2", "--media", "--timeout", "5"]);
    assertEquals(ok.code, 0, ok.stdout + ok.stderr);
    assertStringIncludes(ok.stdout, `Proxy 127.0.0.1:${proxy.port}, fake-TLS (ee, SNI ${SNI})`);
    assertStringIncludes(ok.stdout, "DC       protocol  connect ms  first answer ms  result");
    assert(/^2 media +tls +\d+ +\d+ +ok \(resPQ\)$/m.test(ok.stdout), ok.stdout);
    assertStringIncludes(ok.stdout, "All 4 DCs answered");

    const json = await mtproxy([
      "ping",
      "--json",
      "--host",
      "127.0.0.1",
      "--port",
      String(proxy.port),
      "--secret",
      formatDdSecret(WRONG),
      "--dc",
      "2",
    ]);
    assertEquals(json.code, 1, json.stdout + json.stderr);
    const parsed = JSON.parse(json.stdout) as {
      ok: boolean;
      protocol: string;
      dcs: DcPingResult[];
    };
    assertEquals(parsed.ok, false);
    assertEquals(parsed.protocol, "dd");
    assertEquals(parsed.dcs.length, 1);
    assertEquals(parsed.dcs[0]!.ok, false);
    assertStringIncludes(parsed.dcs[0]!.diagnosis ?? "", "wrong secret");
  });

  const closed = await mtproxy([
    "ping",
    `tg://proxy?server=127.0.0.1&port=${freePort()}&secret=${SECRETS.plain}`,
    "--dc",
    "2",
  ]);
  assertEquals(closed.code, 1, closed.stdout + closed.stderr);
  assertStringIncludes(closed.stdout, "DC 2: port closed");
  assertStringIncludes(closed.stdout, "0 of 1 DCs answered");

  const usage = await mtproxy(["ping", "--host", "127.0.0.1"]);
  assertEquals(usage.code, 2);
  assertStringIncludes(usage.stderr, "mtproxy ping: Missing a proxy link, or --port, --secret");
  const badDc = await mtproxy([
    "ping",
    "--host",
    "h",
    "--port",
    "1",
    "--secret",
    SECRETS.dd,
    "--dc",
    "x",
  ]);
  assertEquals(badDc.code, 2);
  assertStringIncludes(badDc.stderr, "--dc must be DC numbers");
});
