import { assert, assertEquals, assertNotEquals, assertThrows } from "./assert.ts";
import { seededRandom } from "./kit/seeded.ts";
import { hex } from "./vectors.ts";
import {
  createAesGcm,
  hkdfSha256,
  randomBytes,
  x25519PublicKey,
  x25519SharedSecret,
} from "../lib/crypto.ts";
import {
  buildServerHello,
  type ClientHello,
  GROUP_X25519,
  GROUP_X25519_MLKEM768,
  parseClientHello,
  serverHelloKeyShare,
  verifyClientHello,
} from "../lib/protocol/fake_tls.ts";
import {
  answerLinkHello,
  createLinkHello,
  finishLinkHello,
  LINK_RECORD_MAX_PLAINTEXT,
  type LinkAnswerShape,
  type LinkKeys,
  type RecordError,
  RecordOpener,
  RecordSealer,
} from "../lib/protocol/link_records.ts";

/** A deterministic `randomBytes` for reproducible handshakes. */
function seededBytes(seed: number): (n: number) => Uint8Array {
  const rnd = seededRandom(seed);
  return (n) => Uint8Array.from({ length: n }, () => Math.floor(rnd() * 256));
}

const NOW = 1_700_000_000;
const SECRET = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);
const SHAPE: LinkAnswerShape = {
  appDataLength: 2500,
  extensionOrder: "key_share_first",
  keyShareGroup: GROUP_X25519_MLKEM768,
};

function parsed(record: Uint8Array): ClientHello {
  const step = parseClientHello(record);
  assert(step.kind === "hello", "hello parses");
  return step.hello;
}

/** One whole handshake; the keys of both ends and the bytes exchanged. */
function handshake(
  shape: LinkAnswerShape = SHAPE,
  seed?: number,
): { front: LinkKeys; back: LinkKeys; record: Uint8Array; answer: Uint8Array } {
  const rand = seed === undefined ? undefined : seededBytes(seed);
  const state = createLinkHello({
    secret: SECRET,
    domain: "www.example.com",
    nowSec: NOW,
    ...(rand ? { randomBytes: rand } : {}),
  });
  const hello = parsed(state.record);
  assertEquals(verifyClientHello(hello, SECRET, NOW + 3, 60).kind, "ok");
  const answered = answerLinkHello(hello, SECRET, shape, rand);
  assert(!("reject" in answered));
  const step = finishLinkHello(answered.answer, state, SECRET);
  assert(step.kind === "ok", `finish: ${JSON.stringify(step)}`);
  assertEquals(step.length, answered.answer.length);
  return { front: step.keys, back: answered.keys, record: state.record, answer: answered.answer };
}

function assertPaired(front: LinkKeys, back: LinkKeys): void {
  assertEquals(front.sendKey, back.recvKey);
  assertEquals(front.sendIv, back.recvIv);
  assertEquals(front.recvKey, back.sendKey);
  assertEquals(front.recvIv, back.sendIv);
  assertNotEquals(front.sendKey, front.recvKey);
  assertNotEquals(front.sendIv, front.recvIv);
  for (const k of [front.sendKey, front.recvKey]) assertEquals(k.length, 32);
  for (const iv of [front.sendIv, front.recvIv]) assertEquals(iv.length, 12);
}

Deno.test("front and back derive matching link keys for every answer shape", () => {
  const shapes: LinkAnswerShape[] = [
    SHAPE,
    { ...SHAPE, extensionOrder: "versions_first", cipherSuite: 0x1302 },
    { appDataLength: 0, extensionOrder: "key_share_first", keyShareGroup: GROUP_X25519 },
  ];
  for (const shape of shapes) {
    const { front, back, answer } = handshake(shape);
    assertPaired(front, back);
    const share = serverHelloKeyShare(answer);
    assertEquals(share?.group, shape.keyShareGroup);
    assertEquals(share?.keyExchange.length, shape.keyShareGroup === GROUP_X25519 ? 32 : 1120);
  }
});

Deno.test("the link key schedule is HKDF-SHA256 over the X25519 secret, salted with the secret", () => {
  const rand = seededBytes(99);
  const state = createLinkHello({
    secret: SECRET,
    domain: "example.org",
    nowSec: NOW,
    randomBytes: rand,
  });
  const hello = parsed(state.record);
  assertEquals(hello.x25519Share, x25519PublicKey(state.privateKey));
  assertEquals(state.clientRandom, hello.random);
  const answered = answerLinkHello(hello, SECRET, SHAPE, rand);
  assert(!("reject" in answered));
  const backPublic = serverHelloKeyShare(answered.answer)!.x25519!;
  const shared = x25519SharedSecret(state.privateKey, backPublic);
  const info = new Uint8Array([
    ...new TextEncoder().encode("mtproxy link v1"),
    ...state.clientRandom,
    ...answered.answer.slice(11, 43),
  ]);
  const okm = hkdfSha256(shared, SECRET, info, 88);
  const step = finishLinkHello(answered.answer, state, SECRET);
  assert(step.kind === "ok");
  assertEquals(step.keys, {
    sendKey: okm.slice(0, 32),
    recvKey: okm.slice(32, 64),
    sendIv: okm.slice(64, 76),
    recvIv: okm.slice(76, 88),
  });
  // The same random source gives the same handshake (the functions are pure).
  const again = handshake(SHAPE, 5);
  const twin = handshake(SHAPE, 5);
  assertEquals(again, twin);
});

Deno.test("two link handshakes never give the same keys", () => {
  const seen = new Set<string>();
  for (let i = 0; i < 20; i++) {
    const { front, back } = handshake();
    assertPaired(front, back);
    for (const k of [front.sendKey, front.recvKey, front.sendIv, front.recvIv]) {
      assert(!seen.has(hex(k)), "a key repeated");
      seen.add(hex(k));
    }
  }
});

Deno.test("a wrong secret fails on either side: verifyClientHello on the back, bad_digest on the front", () => {
  const other = SECRET.map((b) => b ^ 1);
  const state = createLinkHello({ secret: SECRET, domain: "example.com", nowSec: NOW });
  const hello = parsed(state.record);
  assertEquals(verifyClientHello(hello, other, NOW, 60).kind, "bad_digest");
  // A back that answers with another secret (or a site that is not our back).
  const answered = answerLinkHello(hello, other, SHAPE);
  assert(!("reject" in answered));
  assertEquals(finishLinkHello(answered.answer, state, SECRET), {
    kind: "reject",
    reason: "bad_digest",
  });
  // An answer to someone else's hello.
  const stranger = createLinkHello({ secret: SECRET, domain: "example.com", nowSec: NOW });
  const replayed = answerLinkHello(parsed(stranger.record), SECRET, SHAPE);
  assert(!("reject" in replayed));
  assertEquals(finishLinkHello(replayed.answer, state, SECRET).kind, "reject");
});

Deno.test("finishLinkHello asks for more bytes and leaves what follows the answer", () => {
  const state = createLinkHello({ secret: SECRET, domain: "example.com", nowSec: NOW });
  const answered = answerLinkHello(parsed(state.record), SECRET, SHAPE);
  assert(!("reject" in answered));
  const answer = answered.answer;
  for (let n = 0; n < answer.length; n += 97) {
    const step = finishLinkHello(answer.subarray(0, n), state, SECRET);
    assert(step.kind === "need", `at ${n}`);
    assert(step.atLeast > n && step.atLeast <= answer.length);
  }
  const more = new Uint8Array([...answer, 0x17, 0x03, 0x03, 0x00, 0x10]);
  const step = finishLinkHello(more, state, SECRET);
  assert(step.kind === "ok");
  assertEquals(step.length, answer.length);
  assertEquals(
    finishLinkHello(Uint8Array.of(0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28), state, SECRET),
    { kind: "reject", reason: "tls_malformed" },
  );
});

Deno.test("link handshakes refuse a missing or low-order key share", () => {
  // Back: a hello without any X25519 share (its entry renamed to secp256r1).
  const state = createLinkHello({ secret: SECRET, domain: "example.com", nowSec: NOW });
  const record = state.record.slice();
  let at = -1;
  for (let i = 0; i + 4 <= record.length && at < 0; i++) {
    if (record[i] === 0 && record[i + 1] === 0x1d && record[i + 2] === 0 && record[i + 3] === 32) {
      at = i;
    }
  }
  record[at + 1] = 0x17;
  const hybridOnly = parsed(record);
  assert(hybridOnly.x25519Share !== null, "the hybrid share still has an X25519 half");
  const noShare: ClientHello = { ...hybridOnly, x25519Share: null };
  assertEquals(answerLinkHello(noShare, SECRET, SHAPE), { reject: "no_key_share" });
  const lowOrder: ClientHello = { ...hybridOnly, x25519Share: new Uint8Array(32) };
  assertEquals(answerLinkHello(lowOrder, SECRET, SHAPE), { reject: "no_key_share" });
  // Front: a correctly signed answer whose key share is a low-order point or missing.
  const hello = parsed(state.record);
  for (const keyShare of [new Uint8Array(32), randomBytes(31)]) {
    const answer = buildServerHello(hello, SECRET, { keyShare, appData: 100 });
    assertEquals(finishLinkHello(answer, state, SECRET), {
      kind: "reject",
      reason: "no_key_share",
    });
  }
});

// ---------------------------------------------------------------------------------------------
// Records

const KEY = Uint8Array.from({ length: 32 }, (_, i) => i);
const IV = Uint8Array.from({ length: 12 }, (_, i) => 0xf0 ^ i);

function bytes(n: number, seed: number): Uint8Array {
  return seededBytes(seed)(n);
}

/** Open `pieces` with a fresh opener; the joined plaintext, the record count and the outcome. */
function openAll(
  pieces: Uint8Array[],
  options: { backend?: "openssl" | "node" } = {},
): { plain: Uint8Array; records: number; error: RecordError | null } {
  const opener = new RecordOpener(KEY, IV, options);
  const parts: number[] = [];
  let records = 0;
  let error: RecordError | null = null;
  for (const p of pieces) {
    // The opener decrypts in place: give it copies so the tests can reuse the wire bytes.
    error = opener.push(p.slice(), (plain) => {
      records++;
      parts.push(...plain);
    });
    if (error !== null) break;
  }
  opener.close();
  return { plain: Uint8Array.from(parts), records, error };
}

function cutAt(wire: Uint8Array, cuts: number[]): Uint8Array[] {
  const sorted = [...new Set(cuts)].sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let prev = 0;
  for (const c of [...sorted, wire.length]) {
    out.push(wire.subarray(prev, c));
    prev = c;
  }
  return out;
}

/** Several seals' worth of wire bytes and the plaintext they carry. */
function sealedStream(sizes: number[], backend?: "openssl" | "node"): {
  wire: Uint8Array;
  plain: Uint8Array;
} {
  const sealer = new RecordSealer(KEY, IV, backend ? { backend } : {});
  const wire: number[] = [];
  const plain: number[] = [];
  sizes.forEach((n, i) => {
    const p = bytes(n, 100 + i);
    plain.push(...p);
    wire.push(...sealer.seal(p));
  });
  sealer.close();
  return { wire: Uint8Array.from(wire), plain: Uint8Array.from(plain) };
}

Deno.test("RecordOpener recovers what RecordSealer sealed for any chunking and either backend", () => {
  const sizes = [1, 100, 16384, 16385, 3, 40000, 0, 7];
  const { wire, plain } = sealedStream(sizes);
  const whole = openAll([wire]);
  assertEquals(whole.error, null);
  assertEquals(whole.plain, plain);
  assertEquals(whole.records, 1 + 1 + 1 + 2 + 1 + 3 + 1);
  const small = sealedStream([5, 300, 17000]);
  assertEquals(openAll(Array.from(small.wire, (b) => Uint8Array.of(b))), openAll([small.wire]));
  const rnd = seededRandom(3);
  for (let round = 0; round < 100; round++) {
    const cuts = Array.from(
      { length: 1 + Math.floor(rnd() * 20) },
      () => Math.floor(rnd() * wire.length),
    );
    assertEquals(openAll(cutAt(wire, cuts)), whole, `cuts ${cuts}`);
  }
  // Sealed through one backend, opened through the other.
  const viaNode = sealedStream(sizes, "node");
  assertEquals(viaNode.wire, wire);
  assertEquals(openAll([wire], { backend: "node" }), whole);
});

Deno.test("RecordOpener pushJoined gives a push's records' plaintext in one piece, for any chunking", () => {
  const sizes = [1, 100, 16384, 16385, 3, 40000, 0, 7];
  const { wire, plain } = sealedStream(sizes);
  const joined = (pieces: Uint8Array[], backend?: "openssl" | "node") => {
    const opener = new RecordOpener(KEY, IV, backend ? { backend } : {});
    const parts: number[] = [];
    const calls: number[] = [];
    let error: RecordError | null = null;
    for (const p of pieces) {
      const given = p.slice();
      const before = given.slice();
      let n = 0;
      error = opener.pushJoined(given, (chunk) => {
        n++;
        parts.push(...chunk);
      });
      assertEquals(given, before, "the pushed bytes are left as they were");
      calls.push(n);
      if (error !== null) break;
    }
    opener.close();
    return { plain: Uint8Array.from(parts), calls, error };
  };
  const whole = joined([wire]);
  assertEquals(whole.error, null);
  assertEquals(whole.plain, plain);
  assertEquals(whole.calls, [1], "every record of one push in one call");
  assertEquals(joined([wire], "node").plain, plain);
  const rnd = seededRandom(9);
  for (let round = 0; round < 100; round++) {
    const cuts = Array.from(
      { length: 1 + Math.floor(rnd() * 20) },
      () => Math.floor(rnd() * wire.length),
    );
    const got = joined(cutAt(wire, cuts));
    assertEquals(got.error, null, `cuts ${cuts}`);
    assertEquals(got.plain, plain, `cuts ${cuts}`);
    assert(got.calls.every((n) => n <= 1), `cuts ${cuts}: at most one call per push`);
  }
  // Byte by byte: no call until a record is whole.
  const small = sealedStream([5, 300]);
  const byByte = joined(Array.from(small.wire, (b) => Uint8Array.of(b)));
  assertEquals(byByte.plain, small.plain);
  assertEquals(byByte.calls.filter((n) => n > 0).length, 2);
  // A tampered record: the records before it in the same push come out, then integrity.
  const three = sealedStream([100, 200, 300]);
  const bad = three.wire.slice();
  bad[three.wire.length - 10]! ^= 1;
  const failed = joined([bad]);
  assertEquals(failed.error, "integrity");
  assertEquals(failed.plain, three.plain.subarray(0, 300));
});

Deno.test("RecordSealer splits at 16 KiB and follows the TLS 1.3 record and nonce layout", () => {
  const sealer = new RecordSealer(KEY, IV);
  assertEquals(sealer.seal(new Uint8Array(0)).length, 0);
  const wire = sealer.seal(bytes(16384 * 2 + 1, 1)).slice();
  assertEquals(sealer.sequence, 3);
  const lengths: number[] = [];
  for (let o = 0; o < wire.length;) {
    assertEquals(Array.from(wire.subarray(o, o + 3)), [0x17, 0x03, 0x03]);
    const len = (wire[o + 3]! << 8) | wire[o + 4]!;
    lengths.push(len);
    o += 5 + len;
  }
  assertEquals(lengths, [16400, 16400, 17]);
  // The fourth record by hand: nonce = iv XOR 64-bit big-endian 3, AAD = the header.
  const tail = sealer.seal(Uint8Array.of(0xab, 0xcd));
  const nonce = IV.slice();
  nonce[11]! ^= 3; // sequence 3
  const body = Uint8Array.of(0xab, 0xcd);
  const tag = new Uint8Array(16);
  const aead = createAesGcm(KEY);
  aead.seal(nonce, Uint8Array.of(0x17, 0x03, 0x03, 0x00, 0x12), body, tag);
  aead.close();
  assertEquals(tail, Uint8Array.of(0x17, 0x03, 0x03, 0x00, 0x12, ...body, ...tag));
  sealer.close();
});

Deno.test("RecordSealer reuses its output buffer between seals", () => {
  const sealer = new RecordSealer(KEY, IV);
  const a = sealer.seal(bytes(10, 1));
  const b = sealer.seal(bytes(10, 2));
  assert(a.buffer === b.buffer);
  sealer.close();
});

Deno.test("RecordOpener reports integrity for a flipped bit anywhere in a record", () => {
  const { wire } = sealedStream([30]);
  const rest = sealedStream([30, 20000, 5]).wire.subarray(wire.length);
  for (let bit = 0; bit < wire.length * 8; bit++) {
    const bad = wire.slice();
    bad[bit >> 3]! ^= 1 << (bit & 7);
    // Followed by more records, so that a longer length has bytes to read.
    const got = openAll([bad, rest]);
    assertEquals(got.records, 0, `bit ${bit}`);
    const expected = bit < 24 ? "bad_record" : "integrity";
    if (bit < 24 || bit >= 40) assertEquals(got.error, expected, `bit ${bit}`);
    else assert(got.error !== null, `bit ${bit} of the length`);
  }
});

Deno.test("RecordOpener reports integrity for a reordered, replayed or dropped record", () => {
  const sealer = new RecordSealer(KEY, IV);
  const recs = [1, 2, 3].map((i) => sealer.seal(bytes(40, i)).slice());
  sealer.close();
  const [a, b, c] = recs as [Uint8Array, Uint8Array, Uint8Array];
  assertEquals(openAll([a, b, c]).error, null);
  for (
    const [what, order] of [["reordered", [b, a]], ["replayed", [a, a]], ["dropped", [
      a,
      c,
    ]]] as const
  ) {
    const got = openAll([...order]);
    assertEquals(got.error, "integrity", what);
    assertEquals(got.records, 1 - (what === "reordered" ? 1 : 0), what);
  }
  // A record sealed with the other direction's keys.
  const wrong = new RecordSealer(KEY, IV.map((x) => x ^ 0x80));
  assertEquals(openAll([wrong.seal(Uint8Array.of(1))]).error, "integrity");
  wrong.close();
});

const CCS = Uint8Array.of(0x14, 0x03, 0x03, 0x00, 0x01, 0x01);

Deno.test("RecordOpener skips one ChangeCipherSpec wherever it comes", () => {
  const { wire, plain } = sealedStream([50, 60]);
  const first = 5 + 50 + 16;
  for (const at of [0, first, wire.length]) {
    const joined = new Uint8Array([...wire.subarray(0, at), ...CCS, ...wire.subarray(at)]);
    const whole = openAll([joined]);
    assertEquals(whole, { plain, records: 2, error: null }, `CCS at ${at}`);
    assertEquals(openAll(Array.from(joined, (x) => Uint8Array.of(x))), whole, `CCS at ${at}`);
  }
  assertEquals(openAll([CCS, wire, CCS]).error, "bad_record");
  assertEquals(openAll([CCS, CCS]).error, "bad_record");
  assertEquals(openAll([Uint8Array.of(0x14, 0x03, 0x03, 0x00, 0x01, 0x02)]).error, "bad_record");
  assertEquals(
    openAll([Uint8Array.of(0x14, 0x03, 0x03, 0x00, 0x02, 0x01, 0x01)]).error,
    "bad_record",
  );
});

Deno.test("RecordOpener refuses other record types, versions and lengths", () => {
  const { wire } = sealedStream([20]);
  for (const type of [0x00, 0x15, 0x16, 0x18, 0xff]) {
    const bad = wire.slice();
    bad[0] = type;
    assertEquals(openAll([bad]).error, "bad_record", `type ${type}`);
  }
  for (const version of [[0x03, 0x01], [0x03, 0x04], [0x02, 0x03]]) {
    const bad = wire.slice();
    bad.set(version, 1);
    assertEquals(openAll([bad]).error, "bad_record", `version ${version}`);
  }
  // Shorter than a tag.
  assertEquals(openAll([Uint8Array.of(0x17, 0x03, 0x03, 0x00, 0x0f)]).error, "bad_record");
  // The largest allowed record is read (and fails authentication); one byte more is refused
  // from the header alone.
  const max = new Uint8Array(5 + 16400);
  max.set([0x17, 0x03, 0x03, 16400 >> 8, 16400 & 0xff]);
  assertEquals(openAll([max]).error, "integrity");
  for (const len of [16401, 0xffff]) {
    const header = Uint8Array.of(0x17, 0x03, 0x03, len >> 8, len & 0xff);
    assertEquals(openAll([header]).error, "record_too_large", `${len}`);
    assertEquals(openAll([header.subarray(0, 4), header.subarray(4)]).error, "record_too_large");
  }
  assertEquals(LINK_RECORD_MAX_PLAINTEXT, 16384);
});

Deno.test("RecordOpener stays refused after an error", () => {
  const { wire } = sealedStream([20]);
  const opener = new RecordOpener(KEY, IV);
  let seen = 0;
  assertEquals(
    opener.push(Uint8Array.of(0x16, 0x03, 0x03, 0x00, 0x01), () => seen++),
    "bad_record",
  );
  assertEquals(opener.push(wire.slice(), () => seen++), "bad_record");
  assertEquals(seen, 0);
  opener.close();
});

Deno.test("RecordSealer and RecordOpener refuse bad key and IV lengths", () => {
  assertThrows(() => new RecordSealer(new Uint8Array(16), IV), RangeError);
  assertThrows(() => new RecordOpener(KEY, new Uint8Array(16)), RangeError);
});

Deno.test("link keys from a handshake carry records both ways", () => {
  const { front, back } = handshake();
  const up = new RecordSealer(front.sendKey, front.sendIv);
  const upOpen = new RecordOpener(back.recvKey, back.recvIv);
  const down = new RecordSealer(back.sendKey, back.sendIv);
  const downOpen = new RecordOpener(front.recvKey, front.recvIv);
  const got: string[] = [];
  const text = (p: Uint8Array) => got.push(new TextDecoder().decode(p));
  assertEquals(
    upOpen.push(new Uint8Array([...CCS, ...up.seal(new TextEncoder().encode("ping"))]), text),
    null,
  );
  assertEquals(downOpen.push(down.seal(new TextEncoder().encode("pong")).slice(), text), null);
  assertEquals(got, ["ping", "pong"]);
  // A direction's records do not open in the other direction.
  assertEquals(downOpen.push(up.seal(Uint8Array.of(1)).slice(), text), "integrity");
  for (const c of [up, upOpen, down, downOpen]) c.close();
});

Deno.test("both ends move to the next key every keyUpdateRecords records, by HKDF, with no message", () => {
  const every = 4;
  const sealer = new RecordSealer(KEY, IV, { keyUpdateRecords: every });
  const opener = new RecordOpener(KEY, IV, { keyUpdateRecords: every });
  const stale = new RecordOpener(KEY, IV, { keyUpdateRecords: 1000 });
  const records: Uint8Array[] = [];
  for (let i = 0; i < 3 * every + 1; i++) records.push(sealer.seal(bytes(100, i)).slice());
  // The same ends agree across every update.
  for (let i = 0; i < records.length; i++) {
    const got: number[] = [];
    assertEquals(opener.push(records[i]!.slice(), (p) => got.push(p[0]!)), null);
    assertEquals(got, [bytes(100, i)[0]!], `record ${i}`);
  }
  // An end that did not update fails at the first record of the next key, never before.
  for (let i = 0; i < every; i++) assertEquals(stale.push(records[i]!.slice(), () => {}), null);
  assertEquals(stale.push(records[every]!.slice(), () => {}), "integrity");
  // Record `every` is sealed with HKDF(key, salt = iv, "mtproxy link key update") -> key', iv'.
  const okm = hkdfSha256(KEY, IV, new TextEncoder().encode("mtproxy link key update"), 44);
  // Its nonce continues the sequence: skip the first `every` sequence numbers by sealing them.
  const probe = new RecordSealer(okm.slice(0, 32), okm.slice(32, 44));
  for (let i = 0; i < every; i++) probe.seal(bytes(1, 0));
  assertEquals(probe.seal(bytes(100, every)), records[every]);
  for (const x of [sealer, opener, stale, probe]) x.close();
  assertThrows(() => new RecordSealer(KEY, IV, { keyUpdateRecords: 0 }), RangeError);
});
