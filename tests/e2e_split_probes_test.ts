/**
 * The probe suite for a back's link port: what a prober of the port where fronts open their links
 * sees, compared with what the real site (the local HTTPS stand-in, the back's fronting target)
 * says directly. A TLS client without a secret, a link hello signed with a wrong secret, a
 * replayed front hello, a hello with a stale clock, garbage and plain HTTP must all meet the
 * site; the back opens no link for any of them and counts each refusal by its reason.
 */
import { assert, assertEquals } from "./assert.ts";
import { startTestProxy, until } from "./helpers.ts";
import {
  fetchThrough,
  type HttpsSite,
  peerCertificate,
  rawProbe,
  type RawProbeResult,
  startHttpsSite,
} from "./kit/https_site.ts";
import { buildClientHello } from "./kit/client_hello.ts";
import { directBack, frontConfig, LINK_SECRET } from "./kit/split.ts";
import { hex } from "./vectors.ts";
import { createLinkHello, finishLinkHello } from "../lib/protocol/link_records.ts";
import { randomBytes } from "../lib/crypto.ts";
import { concatBytes } from "../lib/protocol/bytes.ts";
import { type ServerHandle, startServer } from "../lib/server.ts";

/** The back's link domain, and a name the site's certificate covers. */
const SNI = "example.com";

interface World {
  site: HttpsSite;
  back: ServerHandle;
  /** The back's link port. */
  port: number;
}

/** A site and a back (knowing front "home" by LINK_SECRET) fronting to it; torn down after. */
async function withBack(fn: (w: World) => Promise<void>): Promise<void> {
  const site = await startHttpsSite({ names: [SNI] });
  try {
    const config = directBack(9); // No probe gets far enough to need a DC.
    const back = await startServer({
      ...config,
      fronting: { mode: { host: "127.0.0.1", port: site.port }, connectTimeoutMs: 2000, allow: [] },
    });
    try {
      await fn({ site, back, port: back.linkAddresses[0]!.port });
    } finally {
      await back.shutdown();
    }
  } finally {
    await site.close();
  }
}

/** `mtproxy_link_refused_total` by reason, from the back's metrics. */
function refusals(back: ServerHandle): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of back.metricsText().split("\n")) {
    const m = /^mtproxy_link_refused_total\{reason="([^"]+)"\} (\d+)$/.exec(line);
    if (m) out.set(m[1]!, Number(m[2]));
  }
  return out;
}

/** Run `probe`; the back must have refused exactly one connection, as `reason`, and linked none. */
async function refusedOnce<T>(
  w: World,
  reason: string,
  probe: () => Promise<T>,
  linksBefore = 0,
): Promise<T> {
  const before = refusals(w.back);
  const result = await probe();
  const after = refusals(w.back);
  const expected = new Map(before).set(reason, (before.get(reason) ?? 0) + 1);
  assertEquals(Object.fromEntries(after), Object.fromEntries(expected), `refused as ${reason}`);
  assertEquals(w.back.linksUp(), linksBefore, `${reason}: no link`);
  return result;
}

/** What the site received on its last connection, once it is over. */
async function lastSeenBySite(site: HttpsSite): Promise<Uint8Array> {
  await site.idle();
  return site.log.at(-1)!.rawIn!;
}

/**
 * A TLS ClientHello probe: through the back and to the site directly, the site's own ServerHello
 * flight (rustls: same record header, sizes differing only by its signatures), and the site got
 * the hello byte for byte from the back.
 */
async function assertHelloFronted(
  w: World,
  reason: string,
  hello: Uint8Array,
  linksBefore = 0,
): Promise<RawProbeResult> {
  const viaBack = await refusedOnce(w, reason, () => rawProbe(w.port, hello, 500), linksBefore);
  assertEquals(hex((await lastSeenBySite(w.site)).subarray(0, hello.length)), hex(hello), reason);
  const direct = await rawProbe(w.site.port, hello, 500);
  assertEquals(viaBack.bytes[0], 0x16, reason);
  assertEquals(hex(viaBack.bytes.subarray(0, 5)), hex(direct.bytes.subarray(0, 5)), reason);
  assert(Math.abs(viaBack.bytes.length - direct.bytes.length) <= 4, reason);
  return viaBack;
}

const nowSec = () => Math.floor(Date.now() / 1000);

Deno.test("a TLS client without a secret gets the site's page and certificate from the back's link port", async () => {
  await withBack(async (w) => {
    const res = await refusedOnce(
      w,
      "bad_secret",
      () => fetchThrough(w.port, { sni: SNI, caCertPem: w.site.certPem }),
    );
    assertEquals(res.status, 200);
    assertEquals(res.body, w.site.body);
    const direct = await fetchThrough(w.site.port, { sni: SNI, caCertPem: w.site.certPem });
    assertEquals(hex(res.raw), hex(direct.raw));
    const cert = await refusedOnce(w, "bad_secret", () => peerCertificate(w.port, { sni: SNI }));
    assertEquals(cert, w.site.certPem);
    // A Chrome-like hello with a random random field, as a browser sends it.
    const hello = buildClientHello({ sni: SNI, random: randomBytes(32) });
    await assertHelloFronted(w, "bad_secret", hello);
  });
});

Deno.test("a link hello signed with a wrong secret is fronted to the site", async () => {
  await withBack(async (w) => {
    const wrong = LINK_SECRET.map((b) => b ^ 0xff);
    const state = createLinkHello({ secret: wrong, domain: SNI, nowSec: nowSec() });
    const got = await assertHelloFronted(w, "bad_secret", state.record);
    assertEquals(finishLinkHello(got.bytes, state, wrong).kind, "reject");
    assertEquals(finishLinkHello(got.bytes, state, LINK_SECRET).kind, "reject");
  });
});

Deno.test("a replayed link hello is fronted to the site: the back answers it only once", async () => {
  await withBack(async (w) => {
    const state = createLinkHello({ secret: LINK_SECRET, domain: SNI, nowSec: nowSec() });
    // First use: the back's own answer, which proves it knows the secret. The link never comes
    // up (no hello frame follows), and the site never sees the hello.
    const before = refusals(w.back);
    const first = await rawProbe(w.port, state.record, 500);
    assertEquals(finishLinkHello(first.bytes, state, LINK_SECRET).kind, "ok");
    assertEquals(w.site.connections, 0);
    // The probe closed the half-open link; a failed link is no refusal.
    assertEquals(Object.fromEntries(refusals(w.back)), Object.fromEntries(before));
    assertEquals(w.back.linksUp(), 0);
    // The same bytes again: the site answers.
    const again = await assertHelloFronted(w, "replay", state.record);
    assertEquals(finishLinkHello(again.bytes, state, LINK_SECRET).kind, "reject");
  });
});

/** A TCP relay that records the first bytes each connection sends toward `target`. */
function startRecordingRelay(target: number) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const sent: Uint8Array[][] = [];
  const pipe = async (from: Deno.Conn, to: Deno.Conn, record: Uint8Array[] | null) => {
    const buf = new Uint8Array(65536);
    try {
      while (true) {
        const n = await from.read(buf);
        if (n === null) break;
        if (record && record.length < 8) record.push(buf.slice(0, n));
        let off = 0;
        while (off < n) off += await to.write(buf.subarray(off, n));
      }
    } catch {
      // Either side went away.
    } finally {
      for (const c of [from, to]) {
        if (conns.delete(c)) c.close();
      }
    }
  };
  const jobs: Promise<void>[] = [];
  const serving = (async () => {
    for await (const front of listener) {
      const back = await Deno.connect({ hostname: "127.0.0.1", port: target });
      conns.add(front).add(back);
      const record: Uint8Array[] = [];
      sent.push(record);
      jobs.push(pipe(front, back, record), pipe(back, front, null));
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    /** The first ClientHello record each connection carried toward the target. */
    hellos(): Uint8Array[] {
      return sent.map((chunks) => {
        const all = concatBytes(chunks);
        return all.subarray(0, 5 + ((all[3]! << 8) | all[4]!));
      });
    },
    async close() {
      listener.close();
      for (const c of [...conns]) {
        conns.delete(c);
        c.close();
      }
      await serving;
      await Promise.all(jobs);
    },
  };
}

Deno.test("a real front's captured hello, replayed, is fronted to the site; the front's links stay up", async () => {
  await withBack(async (w) => {
    const relay = startRecordingRelay(w.port);
    await using _relay = { [Symbol.asyncDispose]: () => relay.close() };
    await using front = await startTestProxy(frontConfig(relay.port));
    await until(() => front.server.linksUp() === 2 && w.back.linksUp() === 2, "both links up");
    const hellos = relay.hellos();
    assertEquals(hellos.length, 2);
    for (const hello of hellos) {
      assertEquals(hello[0], 0x16);
      await assertHelloFronted(w, "replay", hello, 2);
    }
    assertEquals(front.server.linksUp(), 2);
  });
});

Deno.test("link hellos with the right secret but a clock outside the window are fronted", async () => {
  await withBack(async (w) => {
    // testConfig's window is 600 s either way.
    for (const offset of [-3600, 3600]) {
      const state = createLinkHello({
        secret: LINK_SECRET,
        domain: SNI,
        nowSec: nowSec() + offset,
      });
      const got = await assertHelloFronted(w, "stale_clock", state.record);
      assertEquals(finishLinkHello(got.bytes, state, LINK_SECRET).kind, "reject");
    }
  });
});

Deno.test("a signed link hello naming a domain the link port does not serve is fronted", async () => {
  await withBack(async (w) => {
    const state = createLinkHello({
      secret: LINK_SECRET,
      domain: "other.example.org",
      nowSec: nowSec(),
    });
    await assertHelloFronted(w, "bad_sni", state.record);
  });
});

Deno.test("garbage and plain HTTP on the link port get exactly what the site answers", async () => {
  await withBack(async (w) => {
    const notTls = (n: number) => randomBytes(n).map((b, i) => (i === 0 ? 0x41 : b));
    const probes: [string, Uint8Array][] = [
      ["not_tls", notTls(64)],
      ["not_tls", notTls(2000)],
      // A handshake record whose body is no ClientHello.
      ["tls_malformed", Uint8Array.of(0x16, 0x03, 0x01, 0x00, 0x08, ...randomBytes(8))],
      ["not_tls", new TextEncoder().encode("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")],
      [
        "not_tls",
        new TextEncoder().encode(
          "POST /login HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabc",
        ),
      ],
    ];
    for (const [reason, probe] of probes) {
      const viaBack = await refusedOnce(w, reason, () => rawProbe(w.port, probe, 2000));
      const seen = await lastSeenBySite(w.site);
      assert(seen.length > 0, `${reason}: the site got the probe`);
      assertEquals(hex(seen), hex(probe.subarray(0, seen.length)), `${reason}: byte for byte`);
      const direct = await rawProbe(w.site.port, probe, 2000);
      assertEquals(hex(viaBack.bytes), hex(direct.bytes), reason);
      assertEquals(viaBack.end, direct.end, reason);
    }
    const http = probes[3]![1];
    assertEquals(hex((await rawProbe(w.port, http, 2000)).bytes), "15030300020232");
  });
});
