/**
 * The probe suite: what a censor's prober sees from the proxy, compared with what the real
 * site (a local HTTPS server standing in for the tls_domain's site) says directly. Replays,
 * wrong secrets, stale clocks, unknown SNIs, garbage and plain HTTP must all meet the real
 * site, while real clients keep working.
 */
import { assert, assertEquals, assertRejects, assertStringIncludes } from "./assert.ts";
import { startTestProxy, TEST_SECRET, testConfig, type TestProxy, until } from "./helpers.ts";
import { type FakeDc, startFakeDc } from "./kit/fake_dc.ts";
import {
  fetchThrough,
  type HttpsSite,
  peerCertificate,
  rawProbe,
  startHttpsSite,
} from "./kit/https_site.ts";
import { buildSignedHello, connectTestClient, openRawConnection } from "./kit/test_client.ts";
import { createInit, isValidInitRandom, openClientInit } from "../lib/protocol/obfuscated2.ts";
import { encodeFrame } from "../lib/protocol/framing.ts";
import { parseServerHello } from "../lib/protocol/fake_tls.ts";
import { randomBytes } from "../lib/crypto.ts";
import { perSniSecret } from "../lib/secret.ts";
import { frontingTarget } from "../lib/guard/fronting.ts";
import type { ProxyEvent } from "../lib/client/events.ts";
import type { Config } from "../lib/config/types.ts";
import { hex } from "./vectors.ts";

const SNI = "example.com";

interface World {
  site: HttpsSite;
  dc: FakeDc;
  proxy: TestProxy;
}

/** A site, a fake DC and a proxy fronting to the site; torn down afterwards. */
async function withWorld(
  make: (site: HttpsSite, dc: FakeDc) => Config,
  fn: (w: World) => Promise<void>,
): Promise<void> {
  const site = await startHttpsSite({ names: [SNI] });
  const dc = await startFakeDc();
  try {
    await using proxy = await startTestProxy(make(site, dc));
    await fn({ site, dc, proxy });
  } finally {
    await dc.close();
    await site.close();
  }
}

/** Fronting to the site's fixed address, a TLS-only listener. */
function fronted(site: HttpsSite, dc: FakeDc, extra: Parameters<typeof testConfig>[0] = {}) {
  return testConfig({
    dcPorts: { 2: dc.port },
    tlsDomains: [SNI],
    allowed: ["tls"],
    fronting: { host: "127.0.0.1", port: site.port },
    ...extra,
  });
}

function frontedFor(reason: string) {
  return (e: ProxyEvent) => e.type === "fronted" && e.reason === reason;
}

Deno.test("a plain TLS client gets the real site's page and certificate through the proxy", async () => {
  await withWorld(fronted, async ({ site, proxy }) => {
    const res = await fetchThrough(proxy.port, { sni: SNI, caCertPem: site.certPem });
    assertEquals(res.status, 200);
    assertEquals(res.body, site.body);
    assertEquals(await peerCertificate(proxy.port, { sni: SNI }), site.certPem);
    await proxy.waitForEvent(frontedFor("tls_bad_digest"));
  });
});

Deno.test("curl through the proxy gets the real site (when curl is installed)", async () => {
  const hasCurl = await new Deno.Command("curl", {
    args: ["--version"],
    stdout: "null",
    stderr: "null",
  })
    .output().then((o) => o.success, () => false);
  if (!hasCurl) return; // Skipped: curl is not installed on this machine.
  await withWorld(fronted, async ({ site, proxy }) => {
    const dir = await Deno.makeTempDir();
    try {
      await Deno.writeTextFile(`${dir}/ca.pem`, site.certPem);
      const out = await new Deno.Command("curl", {
        args: [
          "-sS",
          "--max-time",
          "10",
          "--resolve",
          `${SNI}:${proxy.port}:127.0.0.1`,
          "--cacert",
          `${dir}/ca.pem`,
          `https://${SNI}:${proxy.port}/`,
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert(out.success, new TextDecoder().decode(out.stderr));
      assertEquals(new TextDecoder().decode(out.stdout), site.body);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
});

Deno.test("a replayed valid hello is fronted: the prober meets the site, not our ServerHello", async () => {
  await withWorld(fronted, async ({ site, proxy }) => {
    const hello = buildSignedHello(TEST_SECRET, { sni: SNI });
    const clientRandom = hello.slice(11, 43);
    // First use: our answer, which verifies with the secret.
    const first = await rawProbe(proxy.port, hello, 500);
    assertEquals(parseServerHello(first.bytes, clientRandom, TEST_SECRET).kind, "ok");
    // Second use of the same bytes: the real site answers.
    const again = await rawProbe(proxy.port, hello, 500);
    assert(again.bytes.length > 0);
    assertEquals(parseServerHello(again.bytes, clientRandom, TEST_SECRET).kind, "reject");
    await proxy.waitForEvent(frontedFor("replay"));
    // The site got the hello byte for byte.
    await site.idle();
    const seen = site.log.at(-1)!;
    assertEquals(hex(seen.rawIn!.subarray(0, hello.length)), hex(hello));
  });
});

Deno.test("wrong HMAC, stale clock and unknown SNI hellos are fronted with the fixed target", async () => {
  await withWorld(fronted, async ({ site, proxy }) => {
    const probes: [string, Uint8Array][] = [
      ["tls_bad_digest", buildSignedHello(randomBytes(16), { sni: SNI })],
      [
        "tls_bad_timestamp",
        buildSignedHello(TEST_SECRET, { sni: SNI, clockSec: Math.floor(Date.now() / 1000) - 3600 }),
      ],
      ["bad_sni", buildSignedHello(TEST_SECRET, { sni: "other.example.org" })],
    ];
    for (const [reason, hello] of probes) {
      const viaProxy = await rawProbe(proxy.port, hello, 500);
      const direct = await rawProbe(site.port, hello, 500);
      // rustls answers a ServerHello flight whose size only varies with its two signatures.
      assertEquals(viaProxy.bytes[0], 0x16);
      assert(Math.abs(viaProxy.bytes.length - direct.bytes.length) <= 4, reason);
      assertEquals(hex(viaProxy.bytes.subarray(0, 5)), hex(direct.bytes.subarray(0, 5)));
      await proxy.waitForEvent(frontedFor(reason));
    }
  });
});

Deno.test("random bytes and plain HTTP get exactly what the real site answers", async () => {
  await withWorld(fronted, async ({ site, proxy }) => {
    const probes = [
      randomBytes(64).map((b, i) => (i === 0 ? 0x41 : b)),
      randomBytes(2000).map((b, i) => (i === 0 ? 0x41 : b)),
      new TextEncoder().encode("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"),
      new TextEncoder().encode(
        "POST /login HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabc",
      ),
    ];
    for (const probe of probes) {
      const viaProxy = await rawProbe(proxy.port, probe, 2000);
      const direct = await rawProbe(site.port, probe, 2000);
      assertEquals(hex(viaProxy.bytes), hex(direct.bytes));
      assertEquals(viaProxy.end, direct.end);
    }
    assertEquals(hex((await rawProbe(site.port, probes[2]!, 2000)).bytes), "15030300020232");
  });
});

Deno.test("a valid client keeps working while probes are fronted", async () => {
  await withWorld(fronted, async ({ site, proxy }) => {
    const probing = Promise.all(
      Array.from(
        { length: 20 },
        (_, i) =>
          i % 2
            ? fetchThrough(proxy.port, { sni: SNI, caCertPem: site.certPem }).then((r) => r.status)
            : rawProbe(proxy.port, randomBytes(100).map((b, j) => (j ? b : 0x41)), 2000).then(() =>
              0
            ),
      ),
    );
    const clients = await Promise.all(
      Array.from(
        { length: 10 },
        () => connectTestClient({ port: proxy.port, secret: TEST_SECRET, kind: "tls", dcId: 2 }),
      ),
    );
    try {
      for (const c of clients) await c.reqPq();
    } finally {
      await Promise.all(clients.map((c) => c.close()));
    }
    const statuses = await probing;
    assert(statuses.filter((s) => s === 200).length === 10);
  });
});

Deno.test("sni mode fronts only configured domains; others get an alert and are closed", async () => {
  await withWorld(
    (site, dc) => fronted(site, dc, { fronting: "sni" }),
    async ({ proxy }) => {
      const hello = buildSignedHello(TEST_SECRET, { sni: "not-ours.example.net" });
      const res = await rawProbe(proxy.port, hello, 2000);
      assertEquals(hex(res.bytes), "15030300020270");
      assertEquals(res.end, "eof");
      await proxy.waitForEvent((e) => e.type === "rejected" && e.reason === "bad_sni");
    },
  );
  // The decision itself, without dialing anything outside this machine.
  const config = { mode: "sni" as const, connectTimeoutMs: 1000, allow: ["cdn.example.org"] };
  const allowed = new Set(["example.com", "cdn.example.org"]);
  assertEquals(frontingTarget(config, "Example.COM", allowed), {
    kind: "front",
    target: { host: "example.com", port: 443 },
  });
  assertEquals(frontingTarget(config, "evil.test", allowed).kind, "close");
  assertEquals(frontingTarget(config, null, allowed).kind, "close");
  assertEquals(frontingTarget({ ...config, mode: "off" }, SNI, allowed).kind, "close");
});

Deno.test("fronting to the proxy's own address is refused instead of looping", async () => {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  await using proxy = await startTestProxy(
    testConfig({ port, allowed: ["tls"], fronting: { host: "127.0.0.1", port } }),
  );
  const res = await rawProbe(proxy.port, buildSignedHello(randomBytes(16), { sni: SNI }), 3000);
  assertEquals(res.bytes.length, 0);
  await proxy.waitForEvent((e) => e.type === "rejected" && e.reason === "fronting_loop");
  assertEquals(proxy.events.filter((e) => e.type === "fronted").length, 0);
});

Deno.test("per-SNI secrets: derived links work, base-secret and cross-domain links are fronted", async () => {
  const salt = "my-private-salt-change-me";
  await withWorld(
    (site, dc) =>
      fronted(site, dc, { perSniSecrets: true, perSniSalt: salt, allowed: ["tls", "dd"] }),
    async ({ proxy }) => {
      const alice = perSniSecret(TEST_SECRET, "alice.example.com", salt);
      const ok = await connectTestClient({
        port: proxy.port,
        secret: alice,
        kind: "tls",
        dcId: 2,
        sni: "alice.example.com",
      });
      await ok.reqPq();
      await ok.close();
      for (const [secret, sni] of [[TEST_SECRET, SNI], [alice, "bob.example.com"]] as const) {
        await assertRejects(
          () => connectTestClient({ port: proxy.port, secret, kind: "tls", dcId: 2, sni }),
          Error,
          "Fake-TLS handshake failed",
        );
      }
      assertEquals(proxy.events.filter(frontedFor("tls_bad_digest")).length, 2);
      // dd links keep the base secret.
      const dd = await connectTestClient({
        port: proxy.port,
        secret: TEST_SECRET,
        kind: "dd",
        dcId: 2,
      });
      await dd.reqPq();
      await dd.close();
    },
  );
});

Deno.test("a replayed obfuscated2 init is refused", async () => {
  await withWorld(
    (site, dc) =>
      testConfig({ dcPorts: { 2: dc.port }, fronting: { host: "127.0.0.1", port: site.port } }),
    async ({ site, proxy }) => {
      let random = randomBytes(64);
      while (!isValidInitRandom(random)) random = randomBytes(64);
      const { wire, encryptor, decryptor } = createInit(random, "padded", 2, {
        secret: TEST_SECRET,
      });
      encryptor.close();
      decryptor.close();
      const first = await openRawConnection(proxy.port);
      await first.write(wire);
      await proxy.waitForEvent((e) => e.type === "established");
      await first.close();
      const again = await rawProbe(proxy.port, wire, 2000);
      const direct = await rawProbe(site.port, wire, 2000);
      assertEquals(hex(again.bytes), hex(direct.bytes));
      await proxy.waitForEvent(frontedFor("replay"));
    },
  );
});

/** A DC that answers every connection with Telegram's -404 transport error first. */
function errorDc(): { port: number; close(): Promise<void> } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const loop = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      (async () => {
        try {
          const init = new Uint8Array(64);
          let have = 0;
          while (have < 64) {
            const n = await conn.read(init.subarray(have));
            if (n === null) return;
            have += n;
          }
          const s = openClientInit(init, null)!;
          const frame = encodeFrame(s.tag, Uint8Array.of(0x6c, 0xfe, 0xff, 0xff));
          s.encryptor.update(frame);
          await conn.write(frame);
          await conn.read(new Uint8Array(1024)).catch(() => null);
          s.encryptor.close();
          s.decryptor.close();
        } catch {
          // The proxy closed first.
        } finally {
          conns.delete(conn);
          try {
            conn.close();
          } catch {
            // Already closed.
          }
        }
      })();
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    async close() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch {
          // Already closed.
        }
      }
      await loop;
      await until(() => conns.size === 0, "the error DC's connections to end", 5000);
    },
  };
}

for (const fastMode of [true, false]) {
  Deno.test(`the server error filter hides Telegram's -404 from a replaying client (fast mode ${fastMode ? "on" : "off"})`, async () => {
    const dc = errorDc();
    try {
      for (const filter of ["first", "off"] as const) {
        await using proxy = await startTestProxy(
          testConfig({ dcPorts: { 2: dc.port }, fastMode, serverErrorFilter: filter }),
        );
        for (const kind of ["dd", "tls"] as const) {
          const client = await connectTestClient({
            port: proxy.port,
            secret: TEST_SECRET,
            kind,
            dcId: 2,
          });
          await client.flushInit();
          if (filter === "first") {
            await assertRejects(() => client.receive(2000));
            await proxy.waitForEvent((e) => e.type === "closed" && e.reason === "server_error");
          } else {
            assertEquals(hex(await client.receive(2000)), "6cfeffff");
          }
          await client.close();
        }
      }
    } finally {
      await dc.close();
    }
  });
}

Deno.test("fronting follows the listener's policy: dd-only listeners front TLS hellos too", async () => {
  await withWorld(
    (site, dc) => fronted(site, dc, { allowed: ["dd"] }),
    async ({ site, proxy }) => {
      const res = await fetchThrough(proxy.port, { sni: SNI, caCertPem: site.certPem });
      assertEquals(res.status, 200);
      const e = await proxy.waitForEvent(frontedFor("protocol_disallowed"));
      assert(e.type === "fronted");
      assertStringIncludes(e.target, String(site.port));
    },
  );
});
