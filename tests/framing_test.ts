import { assert, assertEquals } from "./assert.ts";
import { bytesOf, hex, vector } from "./vectors.ts";
import { randomBytes } from "../lib/crypto.ts";
import {
  decodeAbridged,
  decodeFrame,
  decodeIntermediate,
  decodePadded,
  encodeAbridged,
  encodeFrame,
  encodeIntermediate,
  encodePadded,
  type Packet,
  quickAckToken,
  type Step,
} from "../lib/protocol/framing.ts";
import type { TransportTag } from "../lib/protocol/obfuscated2.ts";

Deno.test("framing encoders match the vectors", () => {
  for (const id of ["abridged_encode_short", "abridged_encode_long"]) {
    const v = vector(id);
    assertEquals(hex(encodeAbridged(bytesOf(v, "payload"))), v.expected.frame);
  }
  const i = vector("intermediate_encode");
  assertEquals(hex(encodeIntermediate(bytesOf(i, "payload"))), i.expected.frame);
  const p = vector("secure_encode_pad3");
  assertEquals(hex(encodePadded(bytesOf(p, "payload"), bytesOf(p, "padding"))), p.expected.frame);
});

Deno.test("framing decoders match the vectors, quick-ack bit included", () => {
  const cases: [string, (b: Uint8Array) => Step<Packet>][] = [
    ["abridged_decode_quickack", decodeAbridged],
    ["intermediate_decode_quickack", decodeIntermediate],
    ["secure_decode_pad7", decodePadded],
  ];
  for (const [id, decode] of cases) {
    const v = vector(id);
    const step = decode(bytesOf(v, "frame"));
    assert(step.kind === "frame", id);
    assertEquals(hex(step.frame.payload), v.expected.payload);
    assertEquals(step.frame.quickAck, v.expected.quickack ?? false);
    assertEquals(step.rest.length, 0);
  }
});

Deno.test("quickAckToken reverses for abridged and not for intermediate", () => {
  const a = vector("abridged_simple_ack_to_client");
  assertEquals(hex(quickAckToken("abridged", bytesOf(a, "confirm"))), a.expected.wire);
  const i = vector("intermediate_simple_ack_to_client");
  assertEquals(hex(quickAckToken("intermediate", bytesOf(i, "confirm"))), i.expected.wire);
  assertEquals(hex(quickAckToken("padded", bytesOf(i, "confirm"))), i.expected.wire);
});

function decodeAll(tag: TransportTag, chunks: Uint8Array[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  let pending: Uint8Array = new Uint8Array(0);
  for (const chunk of chunks) {
    const next = new Uint8Array(pending.length + chunk.length);
    next.set(pending);
    next.set(chunk, pending.length);
    pending = next;
    for (let s = decodeFrame(tag, pending); s.kind === "frame"; s = decodeFrame(tag, pending)) {
      out.push(s.frame.payload.slice());
      pending = s.rest;
    }
  }
  assertEquals(pending.length, 0);
  return out;
}

Deno.test("decodeFrame yields the same frames for any chunking, for every transport", () => {
  const payloads = [4, 8, 500, 508, 512, 4096, 70_000].map((n) => randomBytes(n));
  for (const tag of ["abridged", "intermediate", "padded"] as TransportTag[]) {
    const wire = payloads.map((p) => encodeFrame(tag, p, randomBytes(p.length % 4)));
    const all = new Uint8Array(wire.reduce((n, w) => n + w.length, 0));
    let off = 0;
    for (const w of wire) {
      all.set(w, off);
      off += w.length;
    }
    for (const size of [1, 3, 7, 64, 1000, all.length]) {
      const chunks = [];
      for (let i = 0; i < all.length; i += size) chunks.push(all.subarray(i, i + size));
      assertEquals(decodeAll(tag, chunks), payloads, `${tag} in chunks of ${size}`);
    }
  }
});

Deno.test("decoders refuse oversized, overlong and misaligned frames", () => {
  assertEquals(decodeAbridged(Uint8Array.of(0x7f, 0x10, 0, 0)).kind, "reject"); // overlong: 16 words
  assertEquals(decodeAbridged(Uint8Array.of(0x7f, 0xff, 0xff, 0xff)), {
    kind: "reject",
    reason: "frame_too_large",
  });
  assertEquals(decodeIntermediate(Uint8Array.of(0, 0, 0x20, 0)), {
    kind: "reject",
    reason: "frame_too_large",
  });
  assertEquals(decodeIntermediate(Uint8Array.of(5, 0, 0, 0)), {
    kind: "reject",
    reason: "frame_misaligned",
  });
  assertEquals(decodePadded(Uint8Array.of(5, 0, 0, 0)), { kind: "need", atLeast: 9 });
});

Deno.test("writeFrame writes exactly what encodeFrame returns, at an offset", async () => {
  const { frameLength, writeFrame } = await import("../lib/protocol/framing.ts");
  for (const tag of ["abridged", "intermediate", "padded"] as TransportTag[]) {
    for (const n of [4, 500, 508, 4096]) {
      const payload = randomBytes(n);
      const padding = randomBytes(n % 4);
      const expected = encodeFrame(tag, payload, padding);
      const len = frameLength(tag, n, padding.length);
      assertEquals(len, expected.length);
      const out = new Uint8Array(7 + len);
      writeFrame(tag, payload, padding, out, 7);
      assertEquals(out.subarray(7), expected);
    }
  }
});
