import { assert, assertEquals } from "./assert.ts";
import { bytesOf, hex, vector } from "./vectors.ts";
import { property } from "./kit/fuzz.ts";
import { randomBytes, sha256, x25519PublicKey } from "../lib/crypto.ts";
import { buildClientHello } from "../lib/protocol/client_hello.ts";
import {
  ALERT_DECODE_ERROR,
  buildServerHello,
  encodeAppData,
  GROUP_X25519,
  GROUP_X25519_MLKEM768,
  parseClientHello,
  parseServerHello,
  serverHelloKeyShare,
  signClientHello,
  TlsRecordReader,
  verifyClientHello,
} from "../lib/protocol/fake_tls.ts";

function hello(v: ReturnType<typeof vector>) {
  const step = parseClientHello(bytesOf(v, "client_hello"));
  assert(step.kind === "hello");
  return step.hello;
}

for (const id of ["tls_legacy_valid", "tls_modern_valid"]) {
  Deno.test(`verifyClientHello accepts ${id} and buildServerHello reproduces its answer`, () => {
    const v = vector(id);
    const h = hello(v);
    const secret = bytesOf(v, "secret");
    assertEquals(h.sni, v.expected.sni);
    assertEquals(hex(h.random), v.expected.client_random);
    assertEquals(verifyClientHello(h, secret, v.inputs.now as number, 600), {
      kind: "ok",
      timestamp: v.expected.timestamp as number,
    });
    const expected = bytesOf(v, "server_response", "expected");
    const appLen = v.inputs.server_appdata_len as number;
    const answer = buildServerHello(h, secret, {
      keyShare: bytesOf(v, "server_x25519_key"),
      appData: expected.subarray(expected.length - appLen),
    });
    assertEquals(hex(answer), v.expected.server_response);
    assertEquals(parseServerHello(answer, h.random, secret), { kind: "ok", length: answer.length });
  });
}

Deno.test("parseServerHello verifies the Erlang proxy's answer to a modern hello", () => {
  const v = vector("tls_server_response_erlang");
  const h = hello(v);
  const answer = bytesOf(v, "server_response", "expected");
  assertEquals(parseServerHello(answer, h.random, bytesOf(v, "secret")).kind, "ok");
  assertEquals(parseServerHello(answer, h.random, new Uint8Array(16)).kind, "reject");
});

Deno.test("verifyClientHello rejects a stale timestamp and a wrong secret", () => {
  const expired = vector("tls_legacy_expired");
  assertEquals(
    verifyClientHello(
      hello(expired),
      bytesOf(expired, "secret"),
      expired.inputs.now as number,
      600,
    ),
    { kind: "bad_timestamp", timestamp: expired.expected.timestamp as number },
  );
  const modern = vector("tls_modern_valid");
  assertEquals(
    verifyClientHello(hello(modern), new Uint8Array(16), modern.inputs.now as number, 600),
    { kind: "bad_digest" },
  );
});

Deno.test("signClientHello produces a hello that verifyClientHello accepts", () => {
  const v = vector("tls_modern_valid");
  const secret = randomBytes(16);
  const signed = signClientHello(bytesOf(v, "client_hello"), secret, 1_800_000_000);
  const step = parseClientHello(signed);
  assert(step.kind === "hello");
  assertEquals(verifyClientHello(step.hello, secret, 1_800_000_100, 600), {
    kind: "ok",
    timestamp: 1_800_000_000,
  });
});

Deno.test("parseClientHello asks for more bytes until the record is whole, keeps what follows", () => {
  const record = bytesOf(vector("tls_modern_valid"), "client_hello");
  for (const cut of [0, 1, 4, 5, 100, record.length - 1]) {
    const step = parseClientHello(record.subarray(0, cut));
    assertEquals(step.kind, "need");
  }
  const extra = Uint8Array.of(0x14, 0x03, 0x03, 0x00, 0x01, 0x01);
  const both = new Uint8Array(record.length + extra.length);
  both.set(record);
  both.set(extra, record.length);
  const step = parseClientHello(both);
  assert(step.kind === "hello");
  assertEquals(step.rest, extra);
});

/** Where the hello's random field hides the timestamp (record offsets 11 + 28 .. 11 + 32). */
const TIMESTAMP_BYTES = { from: 11 + 28, to: 11 + 32 };

property(
  "parseClientHello and verifyClientHello: a hello with bytes changed never authenticates as sent",
  (gen) => {
    const v = vector("tls_modern_valid");
    const record = bytesOf(v, "client_hello");
    const secret = bytesOf(v, "secret");
    const now = v.inputs.now as number;
    const sentAt = v.expected.timestamp as number;
    // The record header stays intact: the length is right, so every outcome is final.
    const bad = gen.mutate(record, 5);
    const changed: number[] = [];
    for (let i = 0; i < record.length; i++) if (bad[i] !== record[i]) changed.push(i);
    assert(changed.length > 0);
    const step = parseClientHello(gen.embedded(bad));
    if (step.kind === "reject") {
      assertEquals(step.reason, "tls_malformed");
      return;
    }
    assert(step.kind === "hello", `a whole record: ${step.kind}`);
    assertEquals(step.hello.record, bad);
    assertEquals(step.rest.length, 0);
    if (step.hello.sni !== null) assert(!step.hello.sni.includes("\0"));
    const check = verifyClientHello(step.hello, secret, now, 600);
    if (changed.every((i) => i >= TIMESTAMP_BYTES.from && i < TIMESTAMP_BYTES.to)) {
      // Only the timestamp changed: the digest holds, the time it claims does not.
      assert(check.kind === "ok" || check.kind === "bad_timestamp", check.kind);
      assert(check.timestamp !== sentAt, "a changed timestamp reads as the one sent");
    } else {
      assertEquals(check, { kind: "bad_digest" }, `bytes ${changed} changed`);
    }
  },
);

property(
  "parseClientHello asks for more on every prefix of a hello, and never throws on garbage",
  (gen) => {
    const record = bytesOf(vector("tls_modern_valid"), "client_hello");
    const cut = gen.int(0, record.length - 1);
    const step = parseClientHello(gen.embedded(record.subarray(0, cut)));
    assert(step.kind === "need", `a prefix of ${cut} bytes: ${step.kind}`);
    assert(step.atLeast > cut && step.atLeast <= record.length, `need ${step.atLeast}`);

    const garbage = gen.bytes(gen.int(5, 700));
    garbage.set([0x16, 0x03, 0x01]);
    if (gen.chance(0.7)) garbage.set([(garbage.length - 5) >> 8, (garbage.length - 5) & 0xff], 3);
    const g = parseClientHello(gen.embedded(garbage));
    if (g.kind === "need") assert(g.atLeast > garbage.length);
    else if (g.kind === "reject") assert(["tls_malformed", "tls_too_large"].includes(g.reason));
    else assertEquals(g.hello.record, garbage.subarray(0, g.hello.record.length));
  },
);

Deno.test("parseClientHello refuses a record of random bytes, answered by a decode_error alert", () => {
  const garbage = randomBytes(600);
  garbage.set([0x16, 0x03, 0x01, 0x02, 0x53]);
  assertEquals(parseClientHello(garbage).kind, "reject");
  assertEquals(hex(ALERT_DECODE_ERROR), vector("tls_decode_error_alert").expected.bytes);
});

Deno.test("encodeAppData splits 20000 bytes into records of 16384 and 3616", () => {
  const v = vector("tls_app_data_split");
  const out = encodeAppData(new Uint8Array(v.inputs.plain_len as number));
  assertEquals(out.length, v.expected.encoded_len);
  assertEquals(hex(out.subarray(0, 5)), v.expected.first_record_header);
  assertEquals(hex(out.subarray(16389, 16394)), v.expected.second_record_header);
});

Deno.test("TlsRecordReader recovers the payload for any split of the records", () => {
  const payload = randomBytes(40_000);
  const ccs = Uint8Array.of(0x14, 0x03, 0x03, 0x00, 0x01, 0x01);
  const records = encodeAppData(payload, 2878);
  const wire = new Uint8Array(ccs.length + records.length);
  wire.set(ccs);
  wire.set(records, ccs.length);
  for (const size of [1, 2, 5, 6, 7, 1000, 2883, 16384, wire.length]) {
    const reader = new TlsRecordReader();
    const got: Uint8Array[] = [];
    for (let i = 0; i < wire.length; i += size) {
      const chunk = wire.slice(i, i + size);
      const n = reader.unwrap(chunk);
      assert(typeof n === "number");
      got.push(chunk.subarray(0, n));
    }
    assertEquals(hex(sha256(...got)), hex(sha256(payload)), `chunks of ${size}`);
  }
});

Deno.test("TlsRecordReader refuses other record types and versions", () => {
  assertEquals(
    new TlsRecordReader().unwrap(Uint8Array.of(0x16, 0x03, 0x03, 0, 1, 1)),
    "tls_unexpected_record",
  );
  assertEquals(
    new TlsRecordReader().unwrap(Uint8Array.of(0x17, 0x03, 0x01, 0, 1, 1)),
    "tls_bad_version",
  );
  assertEquals(
    new TlsRecordReader().unwrap(Uint8Array.of(0x15, 0x03, 0x03, 0, 2, 1, 0)),
    "tls_unexpected_record",
  );
});

Deno.test("buildServerHello answers a post-quantum offer with a 1120-byte key share that still verifies", () => {
  const v = vector("tls_modern_valid");
  const h = hello(v);
  assert(h.keyShareGroups.includes(GROUP_X25519_MLKEM768));
  const secret = bytesOf(v, "secret");
  const answer = buildServerHello(h, secret, {
    keyShare: randomBytes(1120),
    keyShareGroup: GROUP_X25519_MLKEM768,
    cipherSuite: 0x1302,
    appData: randomBytes(3000),
  });
  const helloLen = (answer[3]! << 8) | answer[4]!;
  assertEquals(helloLen, 0x7a + 1120 - 32);
  // The cipher suite sits right after the echoed session id.
  const suiteAt = 5 + 4 + 2 + 32 + 1 + h.sessionId.length;
  assertEquals((answer[suiteAt]! << 8) | answer[suiteAt + 1]!, 0x1302);
  assertEquals(parseServerHello(answer, h.random, secret).kind, "ok");
});

/** Offset of the first `00 1d 00 20` (the X25519 key share entry's group and length). */
function x25519EntryAt(record: Uint8Array): number {
  for (let i = 0; i + 4 <= record.length; i++) {
    if (record[i] === 0 && record[i + 1] === 0x1d && record[i + 2] === 0 && record[i + 3] === 32) {
      return i;
    }
  }
  throw new Error("no X25519 key share entry");
}

function parsed(record: Uint8Array) {
  const step = parseClientHello(record);
  assert(step.kind === "hello");
  return step.hello;
}

Deno.test("buildClientHello puts the x25519PrivateKey's public key in the X25519 share, and another in the hybrid", () => {
  const priv = randomBytes(32);
  const pub = x25519PublicKey(priv);
  const record = buildClientHello({ sni: "example.com", x25519PrivateKey: priv });
  const h = parsed(record);
  assertEquals(h.x25519Share, pub);
  // As in Chrome's hellos (see the tls_modern_valid vector), the hybrid's X25519 half is a key
  // of its own: equal halves would mark the hello as ours.
  const hybridAt = hex(record).indexOf("11ec04c0") / 2;
  assert(hybridAt > 0);
  const hybridHalf = record.slice(hybridAt + 4 + 1184, hybridAt + 4 + 1216);
  assertEquals(hybridHalf.length, 32);
  assert(hex(hybridHalf) !== hex(pub), "the hybrid share reuses the X25519 key");
  const plain = parsed(
    buildClientHello({ sni: "example.com", mlkem: false, x25519PrivateKey: priv }),
  );
  assertEquals(plain.x25519Share, pub);
  assertEquals(plain.keyShareGroups.includes(GROUP_X25519_MLKEM768), false);
});

Deno.test("parseClientHello takes the X25519 share, else the X25519 half of X25519MLKEM768, else null", () => {
  const v = hello(vector("tls_modern_valid"));
  assertEquals(v.x25519Share?.length, 32);
  const priv = randomBytes(32);
  const record = buildClientHello({ sni: "example.com", x25519PrivateKey: priv });
  // Rename the X25519 entry to secp256r1 (whose share of 32 bytes is then ignored).
  const at = x25519EntryAt(record);
  const hybridOnly = record.slice();
  hybridOnly[at + 1] = 0x17;
  const hybridAt = hex(record).indexOf("11ec04c0") / 2;
  assertEquals(
    parsed(hybridOnly).x25519Share,
    record.slice(hybridAt + 4 + 1184, hybridAt + 4 + 1216),
  );
  const plain = buildClientHello({ sni: "example.com", mlkem: false });
  const none = plain.slice();
  none[x25519EntryAt(plain) + 1] = 0x17;
  assertEquals(parsed(none).x25519Share, null);
  assertEquals(parsed(none).keyShareGroups.includes(GROUP_X25519), false);
});

Deno.test("serverHelloKeyShare finds the server's X25519 key in either answer shape", () => {
  const h = hello(vector("tls_modern_valid"));
  const key = randomBytes(32);
  for (const extensionOrder of ["key_share_first", "versions_first"] as const) {
    const plain = buildServerHello(h, randomBytes(16), {
      keyShare: key,
      appData: 100,
      extensionOrder,
    });
    assertEquals(serverHelloKeyShare(plain), {
      group: GROUP_X25519,
      keyExchange: key,
      x25519: key,
    });
    const hybrid = new Uint8Array([...randomBytes(1088), ...key]);
    const pq = buildServerHello(h, randomBytes(16), {
      keyShare: hybrid,
      keyShareGroup: GROUP_X25519_MLKEM768,
      appData: 100,
      extensionOrder,
    });
    assertEquals(serverHelloKeyShare(pq), {
      group: GROUP_X25519_MLKEM768,
      keyExchange: hybrid,
      x25519: key,
    });
  }
  // A key of the wrong length for its group has no X25519 part.
  const odd = buildServerHello(h, randomBytes(16), { keyShare: randomBytes(33), appData: 0 });
  assertEquals(serverHelloKeyShare(odd)?.x25519, null);
});

Deno.test("serverHelloKeyShare returns null for truncated or foreign bytes without throwing", () => {
  const h = hello(vector("tls_modern_valid"));
  const answer = buildServerHello(h, randomBytes(16), { keyShare: randomBytes(32), appData: 10 });
  const helloEnd = 5 + ((answer[3]! << 8) | answer[4]!);
  for (let n = 0; n < helloEnd; n++) assertEquals(serverHelloKeyShare(answer.slice(0, n)), null);
  assertEquals(serverHelloKeyShare(ALERT_DECODE_ERROR), null);
  for (let i = 0; i < 500; i++) {
    const junk = randomBytes(1 + (i % 200));
    junk[0] = 0x16;
    serverHelloKeyShare(junk);
  }
});
