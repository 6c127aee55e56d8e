/**
 * The local HTTPS site used as the domain-fronting target (tests/kit/https_site.ts) and its
 * pure-TypeScript self-signed certificate (tests/kit/self_signed.ts): rustls accepts and
 * verifies the certificate, the site serves its page, and what it answers to probes is pinned
 * byte-for-byte, since that is what a censor's probe must also see through the proxy.
 */
import { X509Certificate } from "node:crypto";
import { assert, assertEquals, assertRejects, assertStringIncludes } from "./assert.ts";
import { buildClientHello } from "./kit/client_hello.ts";
import {
  fetchThrough,
  type HttpsSite,
  peerCertificate,
  rawExchange,
  rawProbe,
  startHttpsSite,
} from "./kit/https_site.ts";
import { ipLiteralBytes, makeSelfSignedCert } from "./kit/self_signed.ts";
import { until } from "./helpers.ts";

const enc = new TextEncoder();

/** The TLS alert record rustls sends for input that is not a TLS record: fatal decode_error. */
const ALERT_DECODE_ERROR = Uint8Array.of(0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32);
/** ... and for a well-formed record of the wrong type first: fatal unexpected_message. */
const ALERT_UNEXPECTED_MESSAGE = Uint8Array.of(0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a);

async function withSite(
  options: Parameters<typeof startHttpsSite>[0],
  fn: (site: HttpsSite) => Promise<void>,
): Promise<void> {
  const site = await startHttpsSite(options);
  try {
    await fn(site);
  } finally {
    await site.close();
  }
}

/** Random bytes whose first byte is not a TLS content type (0x14..0x18). */
function garbage(n: number): Uint8Array {
  const b = crypto.getRandomValues(new Uint8Array(n));
  while (b[0]! >= 0x14 && b[0]! <= 0x18) b[0] = crypto.getRandomValues(new Uint8Array(1))[0]!;
  return b;
}

/** Split a byte stream into TLS records (type, body); a trailing partial record is dropped. */
function records(bytes: Uint8Array): { type: number; version: number; body: Uint8Array }[] {
  const out = [];
  let off = 0;
  while (off + 5 <= bytes.length) {
    const len = (bytes[off + 3]! << 8) | bytes[off + 4]!;
    if (off + 5 + len > bytes.length) break;
    out.push({
      type: bytes[off]!,
      version: (bytes[off + 1]! << 8) | bytes[off + 2]!,
      body: bytes.subarray(off + 5, off + 5 + len),
    });
    off += 5 + len;
  }
  return out;
}

async function assertSiteStillServes(site: HttpsSite): Promise<void> {
  const res = await fetchThrough(site.port, { sni: site.names[0]!, caCertPem: site.certPem });
  assertEquals(res.status, 200);
  assertEquals(res.body, site.body);
}

Deno.test("self-signed cert: X.509 v3 fields as requested, parsed by node:crypto", async () => {
  const before = Date.now();
  const { certPem, keyPem } = await makeSelfSignedCert({
    names: ["example.com", "www.example.com", "127.0.0.1", "::1"],
    days: 10,
  });
  assert(certPem.startsWith("-----BEGIN CERTIFICATE-----\n"));
  assert(keyPem.startsWith("-----BEGIN PRIVATE KEY-----\n"));
  const x = new X509Certificate(certPem);
  assertEquals(x.subject, "CN=example.com");
  assertEquals(x.issuer, "CN=example.com");
  assertEquals(
    x.subjectAltName,
    "DNS:example.com, DNS:www.example.com, IP Address:127.0.0.1, IP Address:::1",
  );
  assertEquals(x.ca, false);
  assertEquals(x.keyUsage, ["DigitalSignature"]);
  assert(x.verify(x.publicKey), "self-signature verifies");
  assertEquals(x.publicKey.asymmetricKeyDetails?.namedCurve, "prime256v1");
  // A positive 16-byte serial whose first byte is non-zero (node prints it without padding).
  const serial = BigInt(`0x${x.serialNumber}`);
  assert(serial >= 1n << 120n && serial < 1n << 127n, `serial ${x.serialNumber}`);
  const day = 86_400_000;
  const from = x.validFromDate.getTime();
  const to = x.validToDate.getTime();
  assert(from <= before - day + 1000 && from >= before - day - 2000, x.validFrom);
  assertEquals(to - from, 11 * day);

  // Two certificates never share a serial.
  const other = new X509Certificate((await makeSelfSignedCert({ names: ["a.test"] })).certPem);
  assert(other.serialNumber !== x.serialNumber);
  assertEquals(other.validToDate.getTime() - other.validFromDate.getTime(), 31 * day);
});

Deno.test("self-signed cert: IP literal parsing for iPAddress entries", () => {
  assertEquals(ipLiteralBytes("127.0.0.1"), Uint8Array.of(127, 0, 0, 1));
  assertEquals(
    ipLiteralBytes("::1"),
    Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1),
  );
  assertEquals(
    ipLiteralBytes("[2001:db8::8:800:200c:417a]"),
    Uint8Array.of(0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 8, 8, 0, 0x20, 0x0c, 0x41, 0x7a),
  );
  assertEquals(
    ipLiteralBytes("::ffff:10.0.0.1"),
    Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1),
  );
  assertEquals(ipLiteralBytes("example.com"), null);
  assertEquals(ipLiteralBytes("1.2.3"), null);
});

Deno.test("self-signed cert: rustls serves it and verifies it for each name (DNS and IP)", async () => {
  const { certPem, keyPem } = await makeSelfSignedCert({
    names: ["example.com", "cdn.example.net", "127.0.0.1"],
  });
  using listener = Deno.listenTls({ hostname: "127.0.0.1", port: 0, cert: certPem, key: keyPem });
  const served = (async () => {
    for (let i = 0; i < 3; i++) {
      const conn = await listener.accept();
      try {
        const buf = new Uint8Array(16);
        const n = await conn.read(buf);
        await conn.write(buf.subarray(0, n ?? 0));
      } finally {
        conn.close();
      }
    }
  })();
  for (const name of ["example.com", "cdn.example.net", "127.0.0.1"]) {
    // connectTls verifies against the address it dials; startTls against any hostname.
    const conn = name === "127.0.0.1"
      ? await Deno.connectTls({ hostname: name, port: listener.addr.port, caCerts: [certPem] })
      : await Deno.startTls(
        await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
        { hostname: name, caCerts: [certPem] },
      );
    try {
      await conn.handshake();
      await conn.write(enc.encode("ping"));
      const buf = new Uint8Array(16);
      assertEquals(await conn.read(buf), 4, name);
    } finally {
      conn.close();
    }
  }
  await served;
});

Deno.test("https site: serves the page to fetchThrough with each certificate name as SNI", async () => {
  await withSite({ names: ["example.com", "www.example.com"] }, async (site) => {
    assertEquals(site.hostname, "127.0.0.1");
    assertEquals(site.body, "<html>real site example.com</html>");
    for (const sni of site.names) {
      const res = await fetchThrough(site.port, {
        sni,
        caCertPem: site.certPem,
        path: "/index.html",
      });
      assertEquals(res.status, 200);
      assertEquals(res.body, "<html>real site example.com</html>");
      assertEquals(res.headers["content-type"], "text/html; charset=utf-8");
      assertEquals(res.headers["content-length"], String(res.body.length));
      assertEquals(res.headers["connection"], "close");
      assertEquals(res.raw, site.response);
    }
    await site.idle();
    assertEquals(site.connections, 2);
    const [first, second] = site.log;
    assert(first && second);
    assert(first.handshake && first.done && first.error === null, JSON.stringify(first));
    assertEquals(first.status, 200);
    assert(first.request?.startsWith("GET /index.html HTTP/1.1\r\nHost: example.com\r\n"));
    assertEquals(first.bytesReceived, enc.encode(first.request ?? "").length);
    assertStringIncludes(second.request ?? "", "Host: www.example.com\r\n");
    assertEquals(first.rawIn?.[0], 0x16); // The relay saw the ClientHello.
  });
});

Deno.test("https site: custom body, and 400 for a request line that is not HTTP/1.x", async () => {
  await withSite({ names: ["front.test"], body: "<html>hello</html>" }, async (site) => {
    const res = await fetchThrough(site.port, { sni: "front.test", caCertPem: site.certPem });
    assertEquals(res.body, "<html>hello</html>");
    // Garbage inside TLS: a well-formed request line is required for the 200 page.
    const tcp = await Deno.connect({ hostname: "127.0.0.1", port: site.port });
    const conn = await Deno.startTls(tcp, { hostname: "front.test", caCerts: [site.certPem] });
    try {
      await conn.write(enc.encode("hello there\r\n\r\n"));
      const buf = new Uint8Array(4096);
      let text = "";
      for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
        text += new TextDecoder().decode(buf.subarray(0, n));
      }
      assert(text.startsWith("HTTP/1.1 400 Bad Request\r\n"), text);
    } finally {
      conn.close();
    }
  });
});

Deno.test("https site: verification fails with another CA or a name not in the certificate", async () => {
  await withSite({ names: ["example.com"] }, async (site) => {
    const impostor = await makeSelfSignedCert({ names: ["example.com"] });
    const e1 = await assertRejects(() =>
      fetchThrough(site.port, { sni: "example.com", caCertPem: impostor.certPem })
    );
    assertStringIncludes(e1.message, "invalid peer certificate");
    const e2 = await assertRejects(() =>
      fetchThrough(site.port, { sni: "other.example", caCertPem: site.certPem })
    );
    assertStringIncludes(e2.message, 'certificate not valid for name "other.example"');
    const e3 = await assertRejects(() =>
      fetchThrough(site.port, { sni: "127.0.0.1", caCertPem: site.certPem })
    );
    assertStringIncludes(e3.message, "certificate not valid for name");
    await assertSiteStillServes(site);
    await site.idle();
    // The client's alert ends the failed handshakes on the site's side.
    for (const rec of site.log.slice(0, 3)) {
      assert(!rec.handshake && rec.done, JSON.stringify(rec));
      assertStringIncludes(rec.error ?? "", "received fatal alert");
    }
  });
});

Deno.test("https site: peerCertificate returns the served certificate, whatever the SNI", async () => {
  await withSite({}, async (site) => {
    assertEquals(await peerCertificate(site.port, { sni: "example.com" }), site.certPem);
    assertEquals(await peerCertificate(site.port, { sni: "unrelated.org" }), site.certPem);
    await site.idle();
  });
});

Deno.test("https site: random bytes get a decode_error alert and a FIN; the site survives", async () => {
  await withSite({}, async (site) => {
    for (const size of [1, 64, 2000]) {
      const probe = await rawProbe(site.port, garbage(size), 2000);
      // rustls: "received corrupt message of type InvalidContentType" -> alert, then close.
      assertEquals(probe.bytes, ALERT_DECODE_ERROR, `size ${size}`);
      assertEquals(probe.end, "eof");
    }
    assertEquals(await rawExchange(site.port, garbage(100), 2000), ALERT_DECODE_ERROR);
    await assertSiteStillServes(site);
    await site.idle();
    assertEquals(site.connections, 5);
    for (const rec of site.log.slice(0, 4)) {
      assert(!rec.handshake && rec.done);
      assertStringIncludes(rec.error ?? "", "InvalidContentType");
    }
  });
});

Deno.test("https site: plaintext HTTP gets the same decode_error alert, not an HTTP answer", async () => {
  await withSite({}, async (site) => {
    const http = enc.encode("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    const probe = await rawProbe(site.port, http, 2000);
    assertEquals(probe.bytes, ALERT_DECODE_ERROR);
    assertEquals(probe.end, "eof");
    // Half-closing after the request changes nothing.
    assertEquals(
      (await rawProbe(site.port, http, 2000, { halfClose: true })).bytes,
      ALERT_DECODE_ERROR,
    );
    await assertSiteStillServes(site);
  });
});

Deno.test("https site: other malformed first records (pinned alerts)", async () => {
  await withSite({}, async (site) => {
    const cases: [string, Uint8Array, Uint8Array][] = [
      // Handshake record with an unknown record version.
      ["bad version", Uint8Array.of(0x16, 9, 9, 0, 5, 1, 0, 0, 1, 0), ALERT_DECODE_ERROR],
      // Handshake record longer than any TLS record may be.
      ["too large", Uint8Array.of(0x16, 3, 1, 0xff, 0xff, 1, 2, 3), ALERT_DECODE_ERROR],
      // Empty handshake record.
      ["empty record", Uint8Array.of(0x16, 3, 1, 0, 0), ALERT_DECODE_ERROR],
      // Application data before any handshake.
      ["app data", Uint8Array.of(0x17, 3, 3, 0, 3, 1, 2, 3), ALERT_UNEXPECTED_MESSAGE],
      // ChangeCipherSpec before any handshake.
      ["ccs", Uint8Array.of(0x14, 3, 3, 0, 1, 1), ALERT_UNEXPECTED_MESSAGE],
      // SSLv2-format ClientHello (no record layer).
      [
        "sslv2",
        Uint8Array.of(0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0, 0, 0, 0x10, 1, 1),
        ALERT_DECODE_ERROR,
      ],
      // A handshake message announcing more than rustls accepts: closed without an alert.
      [
        "huge handshake",
        Uint8Array.of(0x16, 3, 1, 0, 5, 0x41, 0x41, 0x41, 0x41, 0x41),
        new Uint8Array(0),
      ],
      // An alert from the client: rustls just closes.
      ["client alert", Uint8Array.of(0x15, 3, 3, 0, 2, 2, 40), new Uint8Array(0)],
    ];
    for (const [name, bytes, expected] of cases) {
      const probe = await rawProbe(site.port, bytes, 2000);
      assertEquals(probe.bytes, expected, name);
      assertEquals(probe.end, "eof", name);
    }
    // An incomplete record header, or nothing at all: no answer and no timeout on the site.
    for (const bytes of [new Uint8Array(0), Uint8Array.of(0x16, 3)]) {
      const probe = await rawProbe(site.port, bytes, 300);
      assertEquals(probe.bytes.length, 0);
      assertEquals(probe.end, "timeout");
    }
    await assertSiteStillServes(site);
  });
});

Deno.test("https site: a ClientHello with an unknown SNI gets a normal TLS 1.3 server flight", async () => {
  await withSite({}, async (site) => {
    for (const mlkem of [false, true]) {
      const hello = buildClientHello({ sni: "not-in-cert.invalid", mlkem });
      const probe = await rawProbe(site.port, hello, 500);
      // The site waits for the client's Finished: the probe's deadline ends it.
      assertEquals(probe.end, "timeout");
      const recs = records(probe.bytes);
      assert(recs.length >= 3, `records: ${recs.length}`);
      const [sh, ccs, ...encrypted] = recs;
      assertEquals(sh!.type, 0x16);
      assertEquals(sh!.version, 0x0303);
      assertEquals(sh!.body[0], 0x02); // ServerHello
      // legacy_session_id_echo: the ClientHello's 32-byte session id (record offset 44).
      assertEquals(sh!.body.subarray(39, 71), hello.subarray(44, 76));
      // Cipher suite right after it: TLS_AES_128_GCM_SHA256 (first of the client's list).
      assertEquals([sh!.body[71], sh!.body[72]], [0x13, 0x01]);
      assertEquals(ccs, { type: 0x14, version: 0x0303, body: Uint8Array.of(1) });
      assert(encrypted.every((r) => r.type === 0x17 && r.version === 0x0303));
      // Sizes: ServerHello 127 bytes with X25519 only, 1215 with X25519MLKEM768; CCS 6; one
      // encrypted record of about 539 (the two ECDSA signatures, certificate and
      // CertificateVerify, are 70-72 bytes each); so 672 or 1760 bytes, +-2 (rarely more).
      const total = 5 * recs.length + recs.reduce((s, r) => s + r.body.length, 0);
      assertEquals(total, probe.bytes.length); // No trailing partial record.
      assertEquals(sh!.body.length, mlkem ? 1210 : 122);
      const expected = mlkem ? 1760 : 672;
      assert(Math.abs(probe.bytes.length - expected) <= 6, `flight ${probe.bytes.length}`);
      // Closing our side instead: the site closes too (FIN), with no alert.
      const closed = await rawProbe(site.port, hello, 2000, { halfClose: true });
      assertEquals(closed.end, "eof");
      assertEquals(records(closed.bytes).length, recs.length);
    }
    await assertSiteStillServes(site);
  });
});

Deno.test("https site: the relay records every raw byte in both directions", async () => {
  await withSite({}, async (site) => {
    const junk = garbage(300);
    const probe = await rawProbe(site.port, junk, 2000);
    assertEquals(probe.bytes, ALERT_DECODE_ERROR);
    assertEquals(probe.end, "eof");
    const res = await fetchThrough(site.port, { sni: "example.com", caCertPem: site.certPem });
    assertEquals(res.status, 200);
    await site.idle();
    assertEquals(site.connections, 2);
    const [bad, good] = site.log;
    assert(bad && good);
    assertEquals(bad.rawIn, junk);
    assertEquals(bad.rawOut, ALERT_DECODE_ERROR);
    assertStringIncludes(bad.error ?? "", "InvalidContentType");
    assert(good.handshake && good.status === 200, JSON.stringify(good));
    assertEquals(good.rawIn?.[0], 0x16); // The client's ClientHello...
    assertEquals(good.rawOut?.[0], 0x16); // ...and the site's ServerHello.
  });
});

Deno.test("https site: direct mode (no relay) serves and answers probes the same", async () => {
  await withSite({ direct: true }, async (site) => {
    await assertSiteStillServes(site);
    assertEquals(await rawExchange(site.port, garbage(64), 2000), ALERT_DECODE_ERROR);
    await site.idle();
    assertEquals(site.connections, 2);
    assertEquals(site.log[0]!.rawIn, null);
    assertStringIncludes(site.log[1]!.error ?? "", "InvalidContentType");
  });
});

Deno.test("https site: optional ALPN announcement", async () => {
  await withSite({ alpnProtocols: ["http/1.1"] }, async (site) => {
    const tcp = await Deno.connect({ hostname: "127.0.0.1", port: site.port });
    const conn = await Deno.startTls(tcp, {
      hostname: "example.com",
      caCerts: [site.certPem],
      alpnProtocols: ["h2", "http/1.1"],
    });
    try {
      assertEquals((await conn.handshake()).alpnProtocol, "http/1.1");
    } finally {
      conn.close();
    }
    await assertSiteStillServes(site); // No ALPN offered: fine too.
  });
});

Deno.test("https site: close() ends live connections and frees the port", async () => {
  const site = await startHttpsSite({});
  const port = site.port;
  // A probe that sends nothing keeps a connection open until the site closes.
  const pending = rawProbe(port, new Uint8Array(0), 5000);
  const tcp = await Deno.connect({ hostname: "127.0.0.1", port });
  const tlsConn = await Deno.startTls(tcp, { hostname: "example.com", caCerts: [site.certPem] });
  try {
    await tlsConn.handshake(); // An idle, established TLS connection too.
    await until(() => site.connections >= 2, "the site to hold both connections", 5000);
    await site.close();
    await site.close(); // Idempotent.
    const probe = await pending;
    assertEquals(probe.end, "eof");
    // The established connection ends too (abruptly: the relay drops it without close_notify).
    const end = await tlsConn.read(new Uint8Array(16)).catch((e) => e);
    assert(end === null || end instanceof Deno.errors.UnexpectedEof, String(end));
    assert(site.log.every((r) => r.done));
    await assertRejects(
      () => Deno.connect({ hostname: "127.0.0.1", port }),
      Deno.errors.ConnectionRefused,
    );
  } finally {
    tlsConn.close();
  }
});

const CURL = (() => {
  try {
    return new Deno.Command("curl", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "https site: curl (OpenSSL) gets the page with --resolve and --cacert",
  ignore: !CURL,
  fn: async () => {
    await withSite({ names: ["example.com"] }, async (site) => {
      const caFile = await Deno.makeTempFile({ prefix: "https_site_ca_", suffix: ".pem" });
      try {
        await Deno.writeTextFile(caFile, site.certPem);
        const curl = (name: string) =>
          new Deno.Command("curl", {
            args: [
              "--silent",
              "--show-error",
              "--max-time",
              "10",
              "--resolve",
              `${name}:${site.port}:127.0.0.1`,
              "--cacert",
              caFile,
              `https://${name}:${site.port}/`,
            ],
            stdout: "piped",
            stderr: "piped",
          }).output();
        const ok = await curl("example.com");
        assertEquals(new TextDecoder().decode(ok.stderr), "");
        assertEquals(ok.code, 0);
        assertEquals(new TextDecoder().decode(ok.stdout), "<html>real site example.com</html>");
        const bad = await curl("other.example");
        assertEquals(bad.code, 60); // CURLE_PEER_FAILED_VERIFICATION
      } finally {
        await Deno.remove(caFile);
      }
    });
  },
});
