/**
 * The allocation-free entry points of the full codec (lib/protocol/full.ts) that middle-proxy
 * connections use on every packet: bodies as header / payload pairs on the way out, bodies as
 * offsets handed to a sink on the way in. Each must match the array forms byte for byte.
 */
import { concatBytes } from "../lib/protocol/bytes.ts";
import { assertEquals, assertThrows } from "./assert.ts";
import { createAes, randomBytes } from "../lib/crypto.ts";
import {
  FullCodec,
  FullDecoder,
  FullEncoder,
  type FullFrameSink,
  type FullRejectReason,
} from "../lib/protocol/full.ts";

/** A sink that copies what it is handed, and checks its tail view. */
class Copier implements FullFrameSink {
  bodies: Uint8Array[] = [];
  constructor(readonly skip = 0) {}
  frame(buf: Uint8Array, start: number, end: number, tail: Uint8Array): void {
    const body = buf.slice(start, end);
    assertEquals(tail, body.subarray(Math.min(this.skip, body.length)));
    this.bodies.push(body);
  }
}

/** `wire` cut into random chunks (some of one byte), the same cuts for the same seed. */
function chunks(wire: Uint8Array, seed: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let s = seed;
  let prev = 0;
  for (let i = 1; i < wire.length; i++) {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    if (s % 7 === 0) {
      out.push(wire.slice(prev, i));
      prev = i;
    }
  }
  out.push(wire.slice(prev));
  return out;
}

const KEY_A = randomBytes(32);
const IV_A = randomBytes(16);
const KEY_B = randomBytes(32);
const IV_B = randomBytes(16);

/** Two codecs past a plaintext nonce each way: `a` sends to `b` encrypted. */
function pair(): { a: FullCodec; b: FullCodec } {
  const a = new FullCodec();
  const b = new FullCodec();
  b.decode(a.encode(new Uint8Array(32)));
  a.decode(b.encode(new Uint8Array(32)));
  a.startEncryption(createAes("cbc-encrypt", KEY_A, IV_A), createAes("cbc-decrypt", KEY_B, IV_B));
  b.startEncryption(createAes("cbc-encrypt", KEY_B, IV_B), createAes("cbc-decrypt", KEY_A, IV_A));
  return { a, b };
}

const PARTS = [
  randomBytes(56),
  randomBytes(1024),
  randomBytes(80),
  new Uint8Array(0),
  randomBytes(12),
  randomBytes(4),
  randomBytes(80),
  randomBytes(16384),
];
const BODIES = [0, 2, 4, 6].map((i) => concatBytes([PARTS[i]!, PARTS[i + 1]!]));

Deno.test("encodePairs writes the same frames as encodeMany of the joined bodies", () => {
  const pairs = new FullEncoder();
  const many = new FullEncoder();
  for (const pad of [false, true]) {
    assertEquals(pairs.encodePairs(PARTS, pad), many.encodeMany(BODIES, pad));
  }
  assertEquals(pairs.nextSeq, many.nextSeq);
  assertThrows(() => pairs.encodePairs(PARTS.slice(1)), RangeError);
  assertThrows(() => pairs.encodePairs([new Uint8Array(4), new Uint8Array(3)]), RangeError);
  assertEquals(pairs.nextSeq, many.nextSeq, "a refused batch numbers nothing");

  const one = pair();
  const other = pair();
  const dirty = new Uint8Array(64 * 1024).fill(0xee);
  const reused = one.a.encodePairs(PARTS, () => dirty);
  assertEquals(reused.buffer, dirty.buffer);
  assertEquals(reused, other.a.encodeMany(BODIES));
  for (const c of [one.a, one.b, other.a, other.b]) c.close();
});

Deno.test("encodePairs with a count uses only the first pairs of a longer array", () => {
  const counted = new FullEncoder();
  const whole = new FullEncoder();
  // Room to spare after the pairs in use (stale entries from an earlier, longer batch).
  const roomy = [...PARTS.slice(0, 4), randomBytes(8), randomBytes(20), randomBytes(3)];
  assertEquals(
    counted.encodePairs(roomy, true, undefined, 4),
    whole.encodePairs(PARTS.slice(0, 4), true),
  );
  assertEquals(counted.nextSeq, whole.nextSeq);
  assertEquals(counted.encodePairs(roomy, true, undefined, 0).length, 0);
  assertThrows(() => counted.encodePairs(roomy, true, undefined, 3), RangeError);
  assertThrows(() => counted.encodePairs(PARTS, true, undefined, PARTS.length + 2), RangeError);
  assertEquals(counted.nextSeq, whole.nextSeq, "a refused batch numbers nothing");
});

Deno.test("FullDecoder.pushTo hands out the bodies push returns, for any chunking", () => {
  const wire = new FullEncoder().encodeMany(BODIES, true);
  for (let seed = 1; seed <= 20; seed++) {
    for (const reuse of [false, true]) {
      const viaPush = new FullDecoder();
      const viaSink = new FullDecoder();
      if (reuse) {
        viaPush.reuseBuffers();
        viaSink.reuseBuffers();
      }
      const pushed: Uint8Array[] = [];
      const sink = new Copier(seed % 2 === 0 ? 16 : 0);
      for (const chunk of chunks(wire, seed)) {
        for (const body of viaPush.push(chunk.slice()).frames) pushed.push(body.slice());
        assertEquals(viaSink.pushTo(chunk.slice(), sink), null);
      }
      assertEquals(sink.bodies, pushed);
      assertEquals(sink.bodies, BODIES);
    }
  }
});

Deno.test("FullDecoder.pushTo refuses a flipped bit anywhere in a frame, and keeps refusing", () => {
  const wire = new FullEncoder().encodeMany(BODIES, true);
  // In len's high byte, seq, the skipped head, the tail, the CRC: whole or split in two.
  for (const at of [3, 5, 8 + 3, 8 + 15, 8 + 16, 8 + 40, 8 + 56 + 1024 - 1, 8 + 56 + 1024 + 2]) {
    for (const skip of [0, 16]) {
      for (const split of [0, 30]) {
        const bad = wire.slice();
        bad[at] = bad[at]! ^ 1;
        const d = new FullDecoder();
        const sink = new Copier(skip);
        const r = split === 0 ? d.pushTo(bad, sink) : (d.pushTo(bad.subarray(0, split), sink) ??
          d.pushTo(bad.subarray(split), sink));
        // The CRC is checked before the seq, as it always was.
        const expected: FullRejectReason = at === 3 ? "bad_length" : "bad_crc";
        assertEquals(r, expected, `byte ${at}, skip ${skip}`);
        assertEquals(d.pushTo(new Uint8Array(16), sink), r);
        assertEquals(sink.bodies.length, 0);
      }
    }
  }
  // A good CRC with the wrong seq is a bad_seq.
  const d = new FullDecoder({ firstSeq: 5 });
  assertEquals(d.pushTo(wire, new Copier(16)), "bad_seq");
});

Deno.test("FullCodec.decodeTo yields what decode does, plaintext frame and CBC included", () => {
  for (let seed = 1; seed <= 10; seed++) {
    const tx = pair();
    const rxArray = pair();
    const rxSink = pair();
    const wire = tx.a.encodePairs(PARTS);
    const viaDecode: Uint8Array[] = [];
    const sink = new Copier();
    for (const chunk of chunks(wire, seed)) {
      const r = rxArray.b.decode(chunk.slice());
      assertEquals(r.reject, null);
      for (const body of r.frames) viaDecode.push(body.slice());
      assertEquals(rxSink.b.decodeTo(chunk.slice(), sink), null);
    }
    assertEquals(sink.bodies, viaDecode);
    assertEquals(sink.bodies, BODIES);
    for (const c of [tx.a, tx.b, rxArray.a, rxArray.b, rxSink.a, rxSink.b]) c.close();
  }
  // Before encryption is on, the one plaintext frame comes out through the sink too.
  const a = new FullCodec();
  const b = new FullCodec();
  const sink = new Copier();
  const nonce = randomBytes(32);
  assertEquals(b.decodeTo(a.encode(nonce), sink), null);
  assertEquals(sink.bodies, [nonce]);
  a.close();
  b.close();
});
