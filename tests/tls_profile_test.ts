import { concatBytes as concatList } from "../lib/protocol/bytes.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { randomBytes, randomInt, x25519PublicKey } from "../lib/crypto.ts";
import { buildServerHello, parseClientHello } from "../lib/protocol/fake_tls.ts";
import { buildClientHello } from "../lib/protocol/client_hello.ts";
import {
  FAKE_CERT_JITTER,
  fakeCertSize,
  MAX_FAKE_CERT_SIZE,
  measureTlsProfile,
  type MeasureTlsProfileOptions,
  parseServerFlight,
  TlsProbeError,
  type TlsProfile,
  TlsProfileStore,
} from "../lib/guard/tls_profile.ts";
import { makeSelfSignedCert } from "./kit/self_signed.ts";
import { until } from "./helpers.ts";

// ---------------------------------------------------------------------------------------------
// Helpers

/** Deterministic bytes (xorshift32), so a hello built from a seed is reproducible. */
function seeded(seed: number): (n: number) => Uint8Array {
  let s = seed >>> 0 || 1;
  return (n) => {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      s ^= s << 13;
      s >>>= 0;
      s ^= s >>> 17;
      s ^= s << 5;
      s >>>= 0;
      out[i] = s & 0xff;
    }
    return out;
  };
}

function record(type: number, payload: Uint8Array): Uint8Array {
  return Uint8Array.from([type, 0x03, 0x03, ...u16(payload.length), ...payload]);
}

function u16(v: number): number[] {
  return [(v >> 8) & 0xff, v & 0xff];
}

/** Our own fake-TLS answer followed by `extra` more ApplicationData records. */
function syntheticFlight(
  order: "key_share_first" | "versions_first",
  firstSize: number,
  extra: number[],
): Uint8Array {
  const step = parseClientHello(buildClientHello({ sni: "site.example" }));
  assert(step.kind === "hello");
  const answer = buildServerHello(step.hello, randomBytes(16), {
    keyShare: x25519PublicKey(),
    appData: randomBytes(firstSize),
    extensionOrder: order,
  });
  return concat(answer, ...extra.map((n) => record(0x17, randomBytes(n))));
}

/** A TLS 1.3 ServerHello record with the given extensions (type, data) and random. */
function serverHello(
  exts: [number, number[]][],
  options: { suite?: number; random?: Uint8Array } = {},
): Uint8Array {
  const ext = exts.flatMap(([t, d]) => [...u16(t), ...u16(d.length), ...d]);
  const body = [
    0x03,
    0x03,
    ...(options.random ?? randomBytes(32)),
    32,
    ...randomBytes(32),
    ...u16(options.suite ?? 0x1302),
    0x00,
    ...u16(ext.length),
    ...ext,
  ];
  return record(0x16, Uint8Array.from([0x02, 0, ...u16(body.length), ...body]));
}

const KEY_SHARE: [number, number[]] = [0x0033, [0x00, 0x1d, 0x00, 0x20, ...new Uint8Array(32)]];
const VERSIONS: [number, number[]] = [0x002b, [0x03, 0x04]];
const CCS = Uint8Array.of(0x14, 0x03, 0x03, 0x00, 0x01, 0x01);

// ---------------------------------------------------------------------------------------------
// buildClientHello (lib)

Deno.test("buildClientHello is reproducible from an injected random source", () => {
  const a = buildClientHello({ sni: "a.example", randomBytes: seeded(7) });
  const b = buildClientHello({ sni: "a.example", randomBytes: seeded(7) });
  const c = buildClientHello({ sni: "a.example", randomBytes: seeded(8) });
  assertEquals(a, b);
  assert(a.length !== c.length || a.some((x, i) => x !== c[i]), "different seeds, same hello");
});

Deno.test("buildClientHello writes the given random field and ALPN list", () => {
  const random = randomBytes(32);
  const record = buildClientHello({ sni: "a.example", random, alpn: ["http/1.1"] });
  assertEquals(record.subarray(11, 43), random);
  const text = new TextDecoder("latin1").decode(record);
  assert(text.includes("\x00\x09\x08http/1.1"), "ALPN list missing");
  const withH2 = new TextDecoder("latin1").decode(buildClientHello({ sni: "a.example" }));
  assert(withH2.includes("\x00\x0c\x02h2\x08http/1.1"), "default ALPN missing");
  assertEquals(buildClientHello({ sni: "a.example" }).subarray(11, 43), new Uint8Array(32));
  assertThrows(
    () => buildClientHello({ sni: "a.example", random: new Uint8Array(31) }),
    RangeError,
  );
});

Deno.test("buildClientHello offers a well-formed ML-KEM-768 encapsulation key", () => {
  for (let seed = 1; seed < 20; seed++) {
    const hello = buildClientHello({ sni: "a.example", shuffle: false, randomBytes: seeded(seed) });
    // key_share entry 11 ec, length 04 c0 (1216) = 1184 ML-KEM + 32 X25519.
    let at = -1;
    for (let i = 0; i + 4 < hello.length; i++) {
      if (hello[i] === 0x11 && hello[i + 1] === 0xec && hello[i + 2] === 0x04) at = i + 4;
    }
    assert(at > 0, "no ML-KEM key share");
    const ek = hello.subarray(at, at + 1152);
    for (let i = 0; i < ek.length; i += 3) {
      const d1 = ek[i]! | ((ek[i + 1]! & 0x0f) << 8);
      const d2 = (ek[i + 1]! >> 4) | (ek[i + 2]! << 4);
      assert(d1 < 3329 && d2 < 3329, `coefficient not below q at ${i}`);
    }
  }
});

// ---------------------------------------------------------------------------------------------
// parseServerFlight

Deno.test("parseServerFlight reads our own answer followed by more encrypted records", () => {
  const flight = syntheticFlight("key_share_first", 2000, [300, 53]);
  assertEquals(parseServerFlight(flight), {
    kind: "flight",
    flight: {
      cipherSuite: 0x1301,
      extensionOrder: "key_share_first",
      keyShareGroup: 0x001d,
      changeCipherSpec: true,
      appDataSizes: [2000, 300, 53],
    },
    missing: 0,
  });
});

Deno.test("parseServerFlight reports versions_first when supported_versions leads", () => {
  const step = parseServerFlight(syntheticFlight("versions_first", 4000, []));
  assert(step.kind === "flight");
  assertEquals(step.flight.extensionOrder, "versions_first");
  assertEquals(step.flight.appDataSizes, [4000]);
  const other = parseServerFlight(concat(serverHello([VERSIONS, [0x0029, [0, 0]], KEY_SHARE])));
  assert(other.kind === "flight");
  assertEquals(other.flight.extensionOrder, "versions_first");
  assertEquals(other.flight.cipherSuite, 0x1302);
  assertEquals(other.flight.changeCipherSpec, false);
  assertEquals(other.flight.appDataSizes, []);
});

Deno.test("parseServerFlight gives consistent answers for every prefix of a flight", () => {
  const sizes = [25, 2100, 80, 53];
  const flight = concat(serverHello([KEY_SHARE, VERSIONS]), CCS);
  const helloEnd = flight.length - CCS.length;
  const full = concat(flight, ...sizes.map((n) => record(0x17, randomBytes(n))));
  const starts = [flight.length];
  for (const n of sizes) starts.push(starts.at(-1)! + 5 + n);
  for (let cut = 0; cut <= full.length; cut++) {
    const step = parseServerFlight(full.subarray(0, cut));
    if (cut < helloEnd) {
      assert(step.kind === "need", `cut ${cut}: ${step.kind}`);
      assert(step.atLeast > cut && step.atLeast <= helloEnd, `cut ${cut}: atLeast ${step.atLeast}`);
      continue;
    }
    assert(step.kind === "flight", `cut ${cut}: ${step.kind}`);
    const begun = starts.filter((s, i) => i < sizes.length && s + 5 <= cut).length;
    assertEquals(step.flight.appDataSizes, sizes.slice(0, begun), `cut ${cut}`);
    assertEquals(step.flight.changeCipherSpec, cut >= helloEnd + 5, `cut ${cut}`);
    const boundary = cut === helloEnd || cut === flight.length || starts.includes(cut) ||
      cut === full.length;
    assertEquals(step.missing === 0, boundary, `cut ${cut}: missing ${step.missing}`);
    if (!boundary) {
      const next = [helloEnd + 6, ...starts, ...starts.map((s) => s + 5)]
        .filter((e) => e > cut).sort((a, b) => a - b)[0]!;
      assert(cut + step.missing <= next, `cut ${cut}: missing ${step.missing}`);
    }
  }
});

Deno.test("parseServerFlight rejects alerts, TLS 1.2, HelloRetryRequest and odd records", () => {
  const alert = Uint8Array.of(0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70);
  assertEquals(parseServerFlight(alert), { kind: "reject", reason: "tls_alert", alert: 112 });
  assertEquals(parseServerFlight(alert.subarray(0, 6)), { kind: "need", atLeast: 7 });
  const hello = serverHello([KEY_SHARE, VERSIONS]);
  assertEquals(parseServerFlight(concat(hello, CCS, alert)).kind, "reject");
  // TLS 1.2: no supported_versions, or another version in it, or no extensions at all.
  assertEquals(parseServerFlight(serverHello([[0xff01, [0]]])).kind, "reject");
  assertEquals(parseServerFlight(serverHello([KEY_SHARE, [0x002b, [3, 3]]])), {
    kind: "reject",
    reason: "tls12",
  });
  const hrrRandom = Uint8Array.from(
    "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c".match(/../g)!
      .map((h) => parseInt(h, 16)),
  );
  assertEquals(parseServerFlight(serverHello([VERSIONS, KEY_SHARE], { random: hrrRandom })), {
    kind: "reject",
    reason: "hello_retry",
  });
  assertEquals(parseServerFlight(concat(hello, CCS, CCS)), {
    kind: "reject",
    reason: "tls_unexpected_record",
  });
  assertEquals(parseServerFlight(concat(hello, hello)), {
    kind: "reject",
    reason: "tls_unexpected_record",
  });
  assertEquals(parseServerFlight(concat(hello, Uint8Array.of(0x17, 0x03, 0x03, 0x41, 0x01))), {
    kind: "reject",
    reason: "tls_too_large",
  });
  assertEquals(parseServerFlight(new TextEncoder().encode("HTTP/1.1 400 Bad Request\r\n")), {
    kind: "reject",
    reason: "tls_malformed",
  });
  assertEquals(parseServerFlight(serverHello([VERSIONS])), {
    kind: "reject",
    reason: "tls_malformed",
  });
});

Deno.test("parseServerFlight never throws on random bytes", () => {
  const hello = serverHello([KEY_SHARE, VERSIONS]);
  for (let i = 0; i < 3000; i++) {
    const junk = randomBytes(randomInt(0, 300));
    parseServerFlight(junk);
    const mutated = concat(hello, CCS, junk);
    mutated[randomInt(0, hello.length - 1)] = randomInt(0, 255);
    parseServerFlight(mutated);
  }
});

// ---------------------------------------------------------------------------------------------
// fakeCertSize

function profile(appDataSizes: number[]): TlsProfile {
  return {
    cipherSuite: 0x1301,
    extensionOrder: "key_share_first",
    appDataSizes,
    changeCipherSpec: true,
    measuredAt: 0,
    source: "test",
  };
}

Deno.test("fakeCertSize jitters around the total of the site's records", () => {
  const calls: [number, number][] = [];
  const spy = (min: number, max: number) => {
    calls.push([min, max]);
    return min;
  };
  assertEquals(fakeCertSize(profile([25, 3000, 975]), spy, { min: 1, max: 2 }), 3920);
  assertEquals(calls, [[4000 - 4000 * FAKE_CERT_JITTER, 4000 + 4000 * FAKE_CERT_JITTER]]);
  for (let i = 0; i < 200; i++) {
    const n = fakeCertSize(profile([1143]), randomInt, { min: 1, max: 2 });
    assert(n >= 1120 && n <= 1166, `size ${n}`);
  }
  // Tiny totals still get some jitter; huge ones stay a valid TLS record.
  assertEquals(fakeCertSize(profile([10]), (a, b) => b - a, { min: 1, max: 2 }), 2);
  calls.length = 0;
  assertEquals(fakeCertSize(profile([16000, 9000]), spy, { min: 1, max: 2 }), 16307);
  assertEquals(calls, [[16307, MAX_FAKE_CERT_SIZE]]);
});

Deno.test("fakeCertSize draws from the fallback range without a usable profile", () => {
  for (const p of [null, profile([])]) {
    for (let i = 0; i < 200; i++) {
      const n = fakeCertSize(p, randomInt, { min: 2500, max: 4700 });
      assert(n >= 2500 && n <= 4700, `size ${n}`);
    }
  }
  assertEquals(fakeCertSize(null, (_a, b) => b, { min: 100, max: 99_999 }), MAX_FAKE_CERT_SIZE);
  assertThrows(() => fakeCertSize(null, randomInt, { min: 10, max: 5 }), RangeError, "10..5");
  assertThrows(() => fakeCertSize(null, randomInt, { min: 0, max: 5 }), RangeError);
});

// ---------------------------------------------------------------------------------------------
// measureTlsProfile against a real TLS server (Deno.listenTls is rustls)

function derLength(pem: string): number {
  const b64 = pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, "");
  return atob(b64).length;
}

async function withRustls(
  alpn: string[] | null,
  fn: (port: number, certDer: number) => Promise<void>,
): Promise<void> {
  const { certPem, keyPem } = await makeSelfSignedCert({ names: ["site.test"] });
  const listener = Deno.listenTls({
    hostname: "127.0.0.1",
    port: 0,
    cert: certPem,
    key: keyPem,
    ...(alpn ? { alpnProtocols: alpn } : {}),
  });
  const handshakes: Promise<void>[] = [];
  const accepting = (async () => {
    for await (const conn of listener) {
      // The probe never finishes the handshake: rustls fails once the probe hangs up.
      handshakes.push(conn.handshake().then(() => {}, () => {}).finally(() => conn.close()));
    }
  })();
  try {
    await fn(listener.addr.port, derLength(certPem));
  } finally {
    listener.close();
    await accepting.catch(() => {});
    await Promise.all(handshakes);
  }
}

Deno.test("measureTlsProfile measures rustls: TLS 1.3 suite, key_share first, one record", async () => {
  await withRustls(["h2", "http/1.1"], async (port, certDer) => {
    const before = Date.now();
    const p = await measureTlsProfile("127.0.0.1", port, { sni: "site.test", timeoutMs: 3000 });
    assert([0x1301, 0x1302, 0x1303].includes(p.cipherSuite), `suite ${p.cipherSuite}`);
    assertEquals(p.extensionOrder, "key_share_first");
    assertEquals(p.changeCipherSpec, true);
    assertEquals(p.source, `127.0.0.1:${port}`);
    assert(p.measuredAt >= before && p.measuredAt <= Date.now());
    assert([0x11ec, 0x001d].includes(p.keyShareGroup!), `group ${p.keyShareGroup}`);
    // rustls coalesces EncryptedExtensions, Certificate, CertificateVerify and Finished into
    // one record: certificate + about 160 bytes of framing, P-256 signature, MAC and tag.
    assertEquals(p.appDataSizes.length, 1, `sizes ${p.appDataSizes}`);
    const extra = p.appDataSizes[0]! - certDer;
    assert(extra >= 140 && extra <= 200, `record ${p.appDataSizes[0]} for a ${certDer}-byte cert`);

    const x25519 = await measureTlsProfile("127.0.0.1", port, {
      sni: "site.test",
      timeoutMs: 3000,
      hello: { mlkem: false, shuffle: false },
      source: "site.test",
      now: () => 42,
    });
    assertEquals(x25519.keyShareGroup, 0x001d);
    assertEquals(x25519.source, "site.test");
    assertEquals(x25519.measuredAt, 42);
    // Same certificate; only the CertificateVerify signature may differ: DER ECDSA is 70-72
    // bytes, and about 1 in 256 is shorter still (a leading zero byte in r or s).
    const sizes = `${x25519.appDataSizes[0]} vs ${p.appDataSizes[0]}`;
    assert(Math.abs(x25519.appDataSizes[0]! - p.appDataSizes[0]!) <= 4, sizes);
  });
});

Deno.test("measureTlsProfile sees the ALPN answer grow rustls's encrypted extensions", async () => {
  // Each server gets its own freshly signed certificate, whose length varies by a few bytes
  // (serial number, signature), so compare what the record adds beyond the certificate.
  let withAlpn = 0;
  let without = 0;
  await withRustls(["h2"], async (port, certDer) => {
    const p = await measureTlsProfile("127.0.0.1", port, { sni: "site.test", timeoutMs: 3000 });
    withAlpn = p.appDataSizes[0]! - certDer;
  });
  await withRustls(null, async (port, certDer) => {
    const p = await measureTlsProfile("127.0.0.1", port, { sni: "site.test", timeoutMs: 3000 });
    without = p.appDataSizes[0]! - certDer;
  });
  // ALPN extension "h2": 2 type + 2 length + 2 list length + 1 + 2 = 9 bytes, give or take the
  // CertificateVerify signature (DER ECDSA, 70-72 bytes, rarely shorter).
  assert(Math.abs(withAlpn - without - 9) <= 4, `${withAlpn} vs ${without} beyond the cert`);
});

// ---------------------------------------------------------------------------------------------
// measureTlsProfile failures (plain TCP servers scripted per test)

/** Read one whole TLS record (the probe's hello) from `conn`. */
async function readHello(conn: Deno.TcpConn): Promise<void> {
  const buf = new Uint8Array(4096);
  let have = 0;
  while (have < 5 || have < 5 + ((buf[3]! << 8) | buf[4]!)) {
    const n = await conn.read(buf.subarray(have)).catch(() => null);
    if (n === null) return;
    have += n;
  }
}

/** A TCP server that runs `serve` on each connection and closes it afterwards. */
async function withServer(
  serve: (conn: Deno.TcpConn) => Promise<void>,
  fn: (port: number) => Promise<void>,
): Promise<void> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const served: Promise<void>[] = [];
  const accepting = (async () => {
    for await (const conn of listener) {
      served.push(
        (async () => {
          await readHello(conn); // all of it: unread bytes would turn our close into a reset
          await serve(conn).catch(() => {});
        })().finally(() => {
          try {
            conn.close();
          } catch {
            // Already closed.
          }
        }),
      );
    }
  })();
  try {
    await fn((listener.addr as Deno.NetAddr).port);
  } finally {
    listener.close();
    await accepting.catch(() => {});
    await Promise.all(served);
  }
}

function probe(port: number, extra: Partial<MeasureTlsProfileOptions> = {}) {
  return measureTlsProfile("127.0.0.1", port, { sni: "site.test", timeoutMs: 1000, ...extra });
}

Deno.test("measureTlsProfile names the failing step in its error", async () => {
  const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const deadPort = (closed.addr as Deno.NetAddr).port;
  closed.close();
  await assertRejects(() => probe(deadPort), TlsProbeError, `127.0.0.1:${deadPort}`);
  await assertRejects(() => probe(deadPort), TlsProbeError, "connect:");

  await withServer(async () => {}, async (port) => {
    await assertRejects(() => probe(port), TlsProbeError, "connection closed after 0 bytes");
  });
  await withServer(async (conn) => {
    await conn.write(Uint8Array.of(0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28));
  }, async (port) => {
    await assertRejects(() => probe(port), TlsProbeError, "fatal alert: handshake_failure (40)");
  });
  const hold = Promise.withResolvers<void>();
  await withServer(() => hold.promise, async (port) => {
    await assertRejects(
      () => probe(port, { timeoutMs: 300 }),
      TlsProbeError,
      "TLS probe of 127.0.0.1:" + port +
        ' (SNI "site.test") failed: no complete server flight within 300 ms',
    );
    const aborter = new AbortController();
    setTimeout(() => aborter.abort(), 50);
    // The deadline is far off: only the abort can end this probe.
    await assertRejects(
      () => probe(port, { signal: aborter.signal, timeoutMs: 60_000 }),
      TlsProbeError,
      "aborted",
    );
    hold.resolve();
  });
});

Deno.test("measureTlsProfile counts every record of a flight that arrives in pieces", async () => {
  const hello = serverHello([VERSIONS, KEY_SHARE]);
  const pieces = [
    concat(hello, CCS, record(0x17, randomBytes(30)), Uint8Array.of(0x17, 3)),
    concat(Uint8Array.of(3, 0, 100), randomBytes(40)), // a header split, a record split
    randomBytes(60),
    record(0x17, randomBytes(53)),
  ];
  const total = pieces.reduce((n, p) => n + p.length, 0);
  const hold = Promise.withResolvers<void>();
  await withServer(async (conn) => {
    for (const p of pieces) await conn.write(p);
    await hold.promise;
  }, async (port) => {
    // No quiet period can end this probe: it ends at the last byte (maxBytes), whatever the
    // timing of the pieces.
    const p = await probe(port, { quietMs: 60_000, maxBytes: total, timeoutMs: 10_000 });
    hold.resolve();
    assertEquals(p.appDataSizes, [30, 100, 53]);
    assertEquals(p.extensionOrder, "versions_first");
    assertEquals(p.cipherSuite, 0x1302);
  });
});

Deno.test("measureTlsProfile reads on through quiet while a record header is incomplete, then stops after a quiet period", async () => {
  const hello = serverHello([VERSIONS, KEY_SHARE]);
  const hold = Promise.withResolvers<void>();
  const resume = Promise.withResolvers<void>();
  const lastWritten = Promise.withResolvers<void>();
  await withServer(async (conn) => {
    await conn.write(concat(hello, CCS, record(0x17, randomBytes(30)), Uint8Array.of(0x17, 3)));
    await resume.promise;
    await conn.write(concat(Uint8Array.of(3, 0, 100), randomBytes(100)));
    lastWritten.resolve();
    await hold.promise; // then stays open and silent
  }, async (port) => {
    const quietMs = 20;
    let stopped = false;
    // A deadline far away: only the quiet period can end the probe in time.
    const probing = probe(port, { quietMs, timeoutMs: 30_000 }).finally(() => (stopped = true));
    try {
      // Ten quiet periods with half a record header pending: the probe must still be reading.
      // (This window can only be longer than asked, which never fails a correct probe.)
      await new Promise((r) => setTimeout(r, 10 * quietMs));
      assert(!stopped, "the probe stopped while a record header was incomplete");
      resume.resolve();
      await lastWritten.promise;
      await until(() => stopped, "the probe to stop after a quiet period", 5000);
    } finally {
      resume.resolve();
      hold.resolve();
    }
    const p = await probing;
    assertEquals(p.appDataSizes, [30, 100]);
  });
});

Deno.test("measureTlsProfile stops at maxBytes", async () => {
  const hello = serverHello([KEY_SHARE, VERSIONS]);
  const hold = Promise.withResolvers<void>();
  await withServer(async (conn) => {
    await conn.write(concat(hello, CCS, record(0x17, randomBytes(3000))));
    await hold.promise;
  }, async (port) => {
    const p = await probe(port, { maxBytes: hello.length + 6 + 5 + 10, timeoutMs: 3000 });
    hold.resolve();
    assertEquals(p.appDataSizes, [3000]);
  });
});

// ---------------------------------------------------------------------------------------------
// TlsProfileStore

Deno.test("TlsProfileStore keeps the previous profile when a refresh fails", async () => {
  const seen: [string, number, MeasureTlsProfileOptions][] = [];
  let fail = false;
  const store = new TlsProfileStore({
    timeoutMs: 1234,
    measure: (host, port, options) => {
      seen.push([host, port, options]);
      if (fail) return Promise.reject(new TlsProbeError("h:1", "s", "connect: refused"));
      return Promise.resolve({ ...profile([seen.length]), source: host });
    },
  });
  assertEquals(store.get("Site.Example"), null);
  const first = await store.refresh("Site.Example");
  assertEquals(first, { ok: true, profile: { ...profile([1]), source: "site.example" } });
  assertEquals(seen[0], ["site.example", 443, { sni: "site.example", timeoutMs: 1234 }]);
  assertEquals(store.get("site.example"), first.profile);
  fail = true;
  const second = await store.refresh("site.example", { host: "10.0.0.1", port: 8443 });
  assert(!second.ok);
  assert(second.error instanceof TlsProbeError);
  assertEquals(second.profile, first.profile);
  assertEquals(store.get("site.example"), first.profile);
  assertEquals(seen[1]![0], "10.0.0.1");
  assertEquals(seen[1]![1], 8443);
  assertEquals(store.domains(), ["site.example"]);
  const none = await store.refresh("other.example");
  assertEquals(none.ok, false);
  assertEquals(none.profile, null);
  assertEquals(store.delete("SITE.example"), true);
  assertEquals(store.domains(), []);
});

Deno.test("TlsProfileStore shares one probe between concurrent refreshes of a domain", async () => {
  let calls = 0;
  const gate = Promise.withResolvers<void>();
  const store = new TlsProfileStore({
    measure: async () => {
      calls++;
      await gate.promise;
      return profile([calls]);
    },
  });
  const a = store.refresh("a.example");
  const b = store.refresh("A.example");
  const c = store.refresh("c.example");
  gate.resolve();
  assertEquals(await a, await b);
  await c;
  assertEquals(calls, 2);
  await store.refresh("a.example");
  assertEquals(calls, 3);
});

function concat(...parts: Uint8Array[]): Uint8Array {
  return concatList(parts);
}
