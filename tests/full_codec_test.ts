import { concatBytes } from "../lib/protocol/bytes.ts";
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { bytesOf, hex, unhex, vector } from "./vectors.ts";
import zlib from "node:zlib";
import { createAes, randomBytes } from "../lib/crypto.ts";
import { crc32 } from "../lib/protocol/crc32.ts";
import {
  decodeFull,
  encodeFull,
  FullCodec,
  FullDecoder,
  FullEncoder,
  fullFrameLength,
  MAX_FULL_BODY,
} from "../lib/protocol/full.ts";

const PAD = unhex("04000000");

/** Cut `wire` at the given offsets. */
function cut(wire: Uint8Array, at: number[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  let prev = 0;
  for (const c of [...at, wire.length]) {
    out.push(wire.slice(prev, c));
    prev = c;
  }
  return out;
}

/** Every way of cutting `wire` once, and a few random many-way cuts including 1-byte chunks. */
function* chunkings(wire: Uint8Array, seed = 1): Generator<Uint8Array[]> {
  yield [wire.slice()];
  for (let i = 1; i < wire.length; i++) yield cut(wire, [i]);
  yield Array.from(wire, (b) => Uint8Array.of(b));
  let s = seed;
  const rnd = () => (s = (s * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  for (let k = 0; k < 30; k++) {
    const at: number[] = [];
    for (let i = 1; i < wire.length; i++) if (rnd() < 0.15) at.push(i);
    yield cut(wire, at);
  }
}

function decodeChunks(dec: FullDecoder, chunks: Uint8Array[]) {
  const frames: string[] = [];
  for (const c of chunks) {
    const r = dec.push(c);
    frames.push(...r.frames.map(hex));
    if (r.reject) return { frames, reject: r.reject };
  }
  return { frames, reject: null };
}

Deno.test("crc32 matches the check value and zlib, also when continued", () => {
  assertEquals(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
  assertEquals(crc32(new Uint8Array(0)), 0);
  const data = randomBytes(4099);
  for (const n of [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 1000, 4099]) {
    const part = data.subarray(0, n);
    assertEquals(crc32(part), zlib.crc32(part) >>> 0, `length ${n}`);
    const k = n >> 1;
    assertEquals(crc32(part.subarray(k), crc32(part.subarray(0, k))), crc32(part));
  }
});

Deno.test("encodeFull matches the full_* vectors (padded to 16)", () => {
  for (const id of ["full_seq0_4bytes", "full_seq0_8bytes", "full_seqm2_nonce"]) {
    const v = vector(id);
    const seq = v.inputs.seq_no as number;
    assertEquals(hex(encodeFull(bytesOf(v, "body"), seq, true)), v.expected.frame, id);
  }
});

Deno.test("encodeFull joins body parts and pads only when asked", () => {
  const v = vector("full_seq0_8bytes");
  const body = bytesOf(v, "body");
  const whole = encodeFull(body, 0, true);
  assertEquals(encodeFull([body.subarray(0, 4), body.subarray(4)], 0, true), whole);
  assertEquals(encodeFull([new Uint8Array(0), body], 0, true), whole);
  assertEquals(hex(encodeFull(body, 0)), (v.expected.frame as string).slice(0, 40));
  assertEquals(fullFrameLength(8, true), 32);
  assertEquals(fullFrameLength(8, false), 20);
  assertEquals(fullFrameLength(4, true), 16);
});

Deno.test("encodeFull refuses bodies that are not whole words or too large", () => {
  assertThrows(() => encodeFull(new Uint8Array(5), 0), RangeError, "multiple of 4");
  assertThrows(() => encodeFull([new Uint8Array(2), new Uint8Array(1)], 0), RangeError);
  assertThrows(() => encodeFull(new Uint8Array(MAX_FULL_BODY + 4), 0), RangeError, "at most");
});

Deno.test("FullEncoder numbers frames from -2 and FullDecoder checks the same order", () => {
  const enc = new FullEncoder();
  const bodies = [0, 4, 8, 12, 16, 20, 1000].map((n) => randomBytes(n));
  const wire = concatBytes(bodies.map((b, i) => enc.encode(b, i % 2 === 0)));
  assertEquals(enc.nextSeq, 5);
  const dec = new FullDecoder();
  const r = dec.push(wire);
  assertEquals(r.reject, null);
  assertEquals(r.frames.map(hex), bodies.map(hex));
  assertEquals(dec.nextSeq, 5);
  assertEquals(dec.pendingBytes, 0);
});

Deno.test("decodeFull reports seq and needs exact byte counts", () => {
  const wire = unhex(vector("full_seqm2_nonce").expected.frame as string);
  const step = decodeFull(wire, { expectedSeq: -2 });
  assert(step.kind === "frame");
  assertEquals(step.frame.seq, -2);
  assertEquals(step.frame.body.length, 32);
  assertEquals(hex(step.rest), "04000000");
  assertEquals(decodeFull(wire.subarray(0, 3)), { kind: "need", atLeast: 4 });
  assertEquals(decodeFull(wire.subarray(0, 43)), { kind: "need", atLeast: 44 });
  assertEquals(decodeFull(step.rest), { kind: "need", atLeast: 8 });
  assertEquals(decodeFull(concatBytes([PAD, PAD, wire.subarray(0, 10)])), {
    kind: "need",
    atLeast: 52,
  });
  assertEquals(decodeFull(wire, { expectedSeq: 0 }), { kind: "reject", reason: "bad_seq" });
});

Deno.test("FullDecoder yields the same frames for any chunking", () => {
  const enc = new FullEncoder();
  const bodies = [4, 0, 32, 8, 100, 12].map((n) => randomBytes(n));
  // Some frames padded, some not, plus stray padding words between frames.
  const wire = concatBytes([
    PAD,
    ...bodies.flatMap((b, i) => i === 2 ? [enc.encode(b), PAD, PAD] : [enc.encode(b, i % 2 === 1)]),
    PAD,
  ]);
  const expected = bodies.map(hex);
  for (const chunks of chunkings(wire)) {
    const dec = new FullDecoder();
    assertEquals(decodeChunks(dec, chunks), { frames: expected, reject: null });
    assertEquals(dec.nextSeq, 4);
  }
});

Deno.test("FullDecoder bodies stay valid after later chunks arrive", () => {
  const enc = new FullEncoder();
  const bodies = [randomBytes(40), randomBytes(64), randomBytes(8)];
  const wire = concatBytes(bodies.map((b) => enc.encode(b, true)));
  const dec = new FullDecoder();
  const got: Uint8Array[] = [];
  for (const c of cut(wire, [3, 30, 50, 51, 70, 100])) got.push(...dec.push(c).frames);
  assertEquals(got.map(hex), bodies.map(hex));
});

Deno.test("FullDecoder rejects a corrupted CRC, a wrong seq and bad lengths", () => {
  const enc = new FullEncoder();
  const good = concatBytes([enc.encode(randomBytes(16), true), enc.encode(randomBytes(8), true)]);
  for (let i = 8; i < 28; i++) {
    // Any body or CRC byte of the first frame (16-byte body: bytes 8..27).
    const bad = good.slice();
    bad[i]! ^= 0x40;
    assertEquals(new FullDecoder().push(bad).reject, "bad_crc", `byte ${i}`);
  }
  assertEquals(new FullDecoder({ firstSeq: -1 }).push(good).reject, "bad_seq");
  // A seq field corrupted along with a matching CRC: bad_seq.
  const reseq = encodeFull(new Uint8Array(4), 7, true);
  assertEquals(new FullDecoder().push(reseq).reject, "bad_seq");
  for (const len of [0, 8, 13, 14, 15, (1 << 24) + 4, 0xfffffffc]) {
    const head = new Uint8Array(8);
    new DataView(head.buffer).setUint32(0, len, true);
    assertEquals(new FullDecoder().push(head).reject, "bad_length", `len ${len}`);
  }
  // Refusals are sticky.
  const dec = new FullDecoder();
  const replayed = dec.push(concatBytes([good.subarray(0, 32), good.subarray(0, 32)]));
  assertEquals(replayed.frames.length, 1);
  assertEquals(replayed.reject, "bad_seq");
  assertEquals(dec.push(good), { frames: [], reject: "bad_seq" });
});

Deno.test("FullDecoder returns the frames before a refusal in the same chunk", () => {
  const enc = new FullEncoder();
  const first = enc.encode(Uint8Array.of(1, 2, 3, 4), true);
  const broken = enc.encode(Uint8Array.of(5, 6, 7, 8), true);
  broken[9]! ^= 1;
  const r = new FullDecoder().push(concatBytes([first, broken]));
  assertEquals(r.frames.map(hex), ["01020304"]);
  assertEquals(r.reject, "bad_crc");
});

Deno.test("FullDecoder skips the CRC check when told to", () => {
  const frame = encodeFull(new Uint8Array(4), -2);
  frame[frame.length - 1]! ^= 0xff;
  assertEquals(new FullDecoder().push(frame).reject, "bad_crc");
  assertEquals(new FullDecoder({ checkCrc: false }).push(frame).frames.length, 1);
});

Deno.test("FullDecoder never throws on random bytes", () => {
  for (let i = 0; i < 300; i++) {
    const junk = randomBytes(1 + (i % 97));
    if (i % 3 === 0 && junk.length >= 4) junk.set(Uint8Array.of(12 + 4 * (i % 5), 0, 0, 0));
    const dec = new FullDecoder({ checkCrc: i % 2 === 0 });
    for (const c of cut(junk, [1, 5, 9])) dec.push(c.length ? c : new Uint8Array(0));
  }
});

Deno.test("FullDecoder handles a frame of the largest size arriving in pieces", () => {
  const body = randomBytes(MAX_FULL_BODY);
  const wire = encodeFull(body, -2, true);
  const dec = new FullDecoder();
  const frames: Uint8Array[] = [];
  for (let off = 0; off < wire.length; off += 65536) {
    frames.push(...dec.push(wire.subarray(off, off + 65536)).frames);
  }
  assertEquals(frames.length, 1);
  assert(frames[0]!.length === body.length && crc32(frames[0]!) === crc32(body));
});

// ---------------------------------------------------------------------------------------------
// FullCodec

const KEY_A = randomBytes(32);
const IV_A = randomBytes(16);
const KEY_B = randomBytes(32);
const IV_B = randomBytes(16);

function cbc(key: Uint8Array, iv: Uint8Array, mode: "cbc-encrypt" | "cbc-decrypt") {
  return createAes(mode, key, iv);
}

/** A sender's stream: one plaintext frame (the nonce), then encrypted frames. */
function senderStream(bodies: Uint8Array[], padPlaintext: boolean): Uint8Array {
  const tx = new FullCodec({ padPlaintext });
  try {
    const parts = [tx.encode(new Uint8Array(32).fill(0xaa))];
    tx.startEncryption(cbc(KEY_A, IV_A, "cbc-encrypt"), cbc(KEY_B, IV_B, "cbc-decrypt"));
    for (const b of bodies) parts.push(tx.encode(b));
    return concatBytes(parts);
  } finally {
    tx.close();
  }
}

/** Receive `chunks` the way an RPC connection does: encryption on after the first frame. */
function receiveStream(chunks: Uint8Array[]) {
  const rx = new FullCodec();
  const frames: string[] = [];
  try {
    for (const chunk of chunks) {
      let r = rx.decode(chunk);
      frames.push(...r.frames.map(hex));
      if (!rx.encrypted && frames.length === 1) {
        rx.startEncryption(cbc(KEY_B, IV_B, "cbc-encrypt"), cbc(KEY_A, IV_A, "cbc-decrypt"));
        r = rx.decode(new Uint8Array(0));
        frames.push(...r.frames.map(hex));
      }
      if (r.reject) return { frames, reject: r.reject };
    }
    return { frames, reject: null };
  } finally {
    rx.close();
  }
}

Deno.test("FullCodec pads the first frame only when padPlaintext is on", () => {
  const a = new FullCodec();
  const b = new FullCodec({ padPlaintext: false });
  assertEquals(a.encode(new Uint8Array(32)).length, 48);
  assertEquals(b.encode(new Uint8Array(32)).length, 44);
  assertEquals(a.nextSendSeq, -1);
  assertEquals(b.nextReceiveSeq, -2);
  a.close();
  b.close();
});

Deno.test("FullCodec decodes a nonce then CBC frames the same for any chunking", () => {
  const bodies = [32, 4, 8, 12, 16, 0, 200, 28].map((n) => randomBytes(n));
  const want = ["aa".repeat(32), ...bodies.map(hex)];
  for (const padPlaintext of [true, false]) {
    const wire = senderStream(bodies, padPlaintext);
    assertEquals(wire.length % 16, padPlaintext ? 0 : 12);
    for (const chunks of chunkings(wire, padPlaintext ? 3 : 5)) {
      assertEquals(receiveStream(chunks), { frames: want, reject: null });
    }
  }
});

Deno.test("FullCodec keeps the bytes after the plaintext frame until encryption is on", () => {
  const wire = senderStream([Uint8Array.of(9, 9, 9, 9)], false);
  const rx = new FullCodec();
  try {
    const first = rx.decode(wire.slice());
    assertEquals(first.frames.length, 1);
    rx.startEncryption(cbc(KEY_B, IV_B, "cbc-encrypt"), cbc(KEY_A, IV_A, "cbc-decrypt"));
    assertEquals(rx.decode(new Uint8Array(0)), {
      frames: [Uint8Array.of(9, 9, 9, 9)],
      reject: null,
    });
    assertEquals(rx.nextReceiveSeq, 0);
    const [e, d] = [cbc(KEY_A, IV_A, "cbc-encrypt"), cbc(KEY_A, IV_A, "cbc-decrypt")];
    assertThrows(() => rx.startEncryption(e, d), Error, "already on");
    e.close();
    d.close();
  } finally {
    rx.close();
  }
});

Deno.test("FullCodec decodes plaintext frames one per call", () => {
  const enc = new FullEncoder();
  const wire = concatBytes([
    enc.encode(Uint8Array.of(1, 1, 1, 1), true),
    enc.encode(new Uint8Array(8)),
  ]);
  const rx = new FullCodec();
  assertEquals(rx.decode(wire).frames, [Uint8Array.of(1, 1, 1, 1)]);
  assertEquals(rx.decode(new Uint8Array(0)).frames, [new Uint8Array(8)]);
  assertEquals(rx.decode(new Uint8Array(0)), { frames: [], reject: null });
  assertEquals(rx.nextReceiveSeq, 0);
  rx.close();
});

Deno.test("FullDecoder holds no bytes at a frame boundary followed by padding", () => {
  const enc = new FullEncoder();
  const dec = new FullDecoder();
  for (let i = 0; i < 5; i++) {
    const r = dec.push(enc.encode(new Uint8Array(4 * i), true));
    assertEquals(r.frames.length, 1);
    assertEquals(dec.pendingBytes, 0);
  }
});

Deno.test("FullCodec round-trips both ways and reports corrupted ciphertext", () => {
  const a = new FullCodec();
  const b = new FullCodec({ padPlaintext: false });
  try {
    assertEquals(b.decode(a.encode(new Uint8Array(32).fill(1))).frames.length, 1);
    assertEquals(a.decode(b.encode(new Uint8Array(32).fill(2))).frames.length, 1);
    a.startEncryption(cbc(KEY_A, IV_A, "cbc-encrypt"), cbc(KEY_B, IV_B, "cbc-decrypt"));
    b.startEncryption(cbc(KEY_B, IV_B, "cbc-encrypt"), cbc(KEY_A, IV_A, "cbc-decrypt"));
    assertEquals(b.decode(new Uint8Array(0)).frames.length, 0);
    for (let i = 0; i < 20; i++) {
      const ab = randomBytes(4 * i);
      const ba = randomBytes(4 * (20 - i));
      assertEquals(b.decode(a.encode(ab)).frames, [ab]);
      assertEquals(
        a.decode(b.encode([ba.subarray(0, 4 * (i % 3)), ba.subarray(4 * (i % 3))])).frames,
        [ba],
      );
    }
    const bad = a.encode(randomBytes(64));
    bad[20]! ^= 1;
    const r = b.decode(bad);
    assertEquals(r.frames.length, 0);
    assert(r.reject === "bad_crc" || r.reject === "bad_length", String(r.reject));
    assertEquals(b.decode(a.encode(new Uint8Array(4))).reject, r.reject);
  } finally {
    a.close();
    b.close();
  }
});

Deno.test("FullCodec reports a broken plaintext frame", () => {
  const c = new FullCodec();
  const frame = encodeFull(new Uint8Array(32), -1, true);
  assertEquals(c.decode(frame), { frames: [], reject: "bad_seq" });
  assertEquals(c.decode(new Uint8Array(16)).reject, "bad_seq");
  c.close();
});

Deno.test("encodeMany writes the same bytes as one encode per body, CBC included", () => {
  const bodies = [
    randomBytes(8),
    [randomBytes(80), randomBytes(40)],
    new Uint8Array(0),
    randomBytes(4),
  ];
  const one = new FullEncoder();
  const many = new FullEncoder();
  for (const pad of [false, true]) {
    assertEquals(many.encodeMany(bodies, pad), concatBytes(bodies.map((b) => one.encode(b, pad))));
  }
  assertEquals(many.nextSeq, one.nextSeq);
  assertEquals(many.encodeMany([]).length, 0);
  assertThrows(() => many.encodeMany([new Uint8Array(4), new Uint8Array(3)]), RangeError);
  assertEquals(many.nextSeq, one.nextSeq, "a refused batch numbers nothing");

  const a = new FullCodec();
  const b = new FullCodec();
  for (const c of [a, b]) {
    c.encode(new Uint8Array(32));
    c.startEncryption(cbc(KEY_A, IV_A, "cbc-encrypt"), cbc(KEY_B, IV_B, "cbc-decrypt"));
  }
  assertEquals(a.encodeMany(bodies), concatBytes(bodies.map((x) => b.encode(x))));
  // Into a reused buffer full of old bytes: the same frames, padding words included.
  const dirty = new Uint8Array(4096).fill(0xee);
  const reused = a.encodeMany(bodies, (total) => {
    assert(total <= dirty.length);
    return dirty;
  });
  assertEquals(reused.buffer, dirty.buffer);
  assertEquals(reused, concatBytes(bodies.map((x) => b.encode(x))));
  assertThrows(() => a.encodeMany(bodies, () => new Uint8Array(8)), RangeError);
  a.close();
  b.close();
});

Deno.test("crc32 gives the same values through zlib and the table code, chained or not", async () => {
  const { crc32, crc32Js } = await import("../lib/protocol/crc32.ts");
  for (const n of [0, 1, 7, 63, 64, 65, 1000, 70_000]) {
    const data = Uint8Array.from({ length: n }, (_, i) => (i * 131 + 7) & 0xff);
    assertEquals(crc32(data), crc32Js(data));
    const cut = Math.floor(n / 3);
    assertEquals(crc32(data.subarray(cut), crc32(data.subarray(0, cut))), crc32Js(data));
  }
});

Deno.test("FullDecoder in reuse mode gives the same bodies, gathering split frames in reused buffers", () => {
  const enc = new FullEncoder();
  const bodies = Array.from({ length: 40 }, (_, i) => randomBytes(4 * (1 + ((i * 37) % 300))));
  const wire = concatBytes(bodies.map((b, i) => enc.encode(b, i % 3 === 0)));
  for (const cut of [7, 100, 333, 1024]) {
    const dec = new FullDecoder();
    dec.reuseBuffers();
    const got: Uint8Array[] = [];
    const splitBuffers: ArrayBufferLike[] = [];
    for (let off = 0; off < wire.length; off += cut) {
      const chunk = wire.slice(off, off + cut);
      const r = dec.push(chunk);
      assertEquals(r.reject, null);
      for (const f of r.frames) {
        // Valid until the next push: copy now.
        got.push(f.slice());
        if (f.buffer !== chunk.buffer) splitBuffers.push(f.buffer);
      }
    }
    assertEquals(got, bodies, `cut ${cut}`);
    if (splitBuffers.length >= 3) {
      // Two buffers take turns instead of one allocation per split frame.
      assert(new Set(splitBuffers).size < splitBuffers.length, `cut ${cut}`);
    }
  }
});
