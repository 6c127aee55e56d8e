import { assert, assertEquals } from "./assert.ts";
import {
  MAX_PADDED_SERVER_FRAME,
  quickAckConfirm,
  scanServerFrame,
  ServerFrameReader,
  type ServerItem,
} from "../lib/protocol/server_frame_reader.ts";
import { encodeFrame, FrameSpan, MAX_FRAME_BYTES, quickAckToken } from "../lib/protocol/framing.ts";
import { writeU32 } from "../lib/protocol/bytes.ts";
import { concatBytes } from "../lib/protocol/bytes.ts";
import type { TransportTag } from "../lib/protocol/obfuscated2.ts";
import { randomBytes } from "../lib/crypto.ts";

const TAGS: readonly TransportTag[] = ["abridged", "intermediate", "padded"];

/** What a reader yields, copied so that views can be compared after later pushes. */
type Got = { packet: Uint8Array } | { ack: Uint8Array };

function _readAll(tag: TransportTag, chunks: Uint8Array[]): Got[] | string {
  const reader = new ServerFrameReader(tag);
  const got: Got[] = [];
  for (const c of chunks) {
    const out = reader.push(c);
    if (typeof out === "string") return out;
    for (const item of out) got.push(_copy(item));
  }
  return got;
}

function _copy(item: ServerItem): Got {
  return item.kind === "packet" ? { packet: item.data.slice() } : { ack: item.confirm.slice() };
}

/** A confirm as a server computes it: any 4 bytes whose u32 LE has bit 31 set. */
function _confirm(): Uint8Array {
  const c = randomBytes(4);
  c[3]! |= 0x80;
  return c;
}

/** A server stream of `tag`: packets (padded: 0..3 padding bytes) mixed with quick-ack tokens. */
function _wire(tag: TransportTag): { wire: Uint8Array; expected: Got[] } {
  const parts: Uint8Array[] = [];
  const expected: Got[] = [];
  for (const n of [8, 4, 0, 1000, 508, 70_000, 12, 4]) {
    const p = randomBytes(n);
    parts.push(encodeFrame(tag, p, randomBytes(n % 4)));
    expected.push({ packet: p });
    if (n % 3 === 0) {
      const c = _confirm();
      parts.push(quickAckToken(tag, c));
      expected.push({ ack: c });
    }
  }
  return { wire: concatBytes(parts), expected };
}

Deno.test("ServerFrameReader yields the same items for any chunking, for every transport", () => {
  for (const tag of TAGS) {
    const { wire, expected } = _wire(tag);
    for (const size of [1, 2, 3, 5, 17, 1000, 65536, wire.length]) {
      const chunks: Uint8Array[] = [];
      for (let i = 0; i < wire.length; i += size) chunks.push(wire.slice(i, i + size));
      assertEquals(_readAll(tag, chunks), expected, `${tag} in chunks of ${size}`);
    }
  }
});

Deno.test("ServerFrameReader yields the same items when the stream is split anywhere", () => {
  for (const tag of TAGS) {
    const parts: Uint8Array[] = [];
    const expected: Got[] = [];
    for (const n of [4, 0, 12]) {
      const p = randomBytes(n);
      parts.push(encodeFrame(tag, p, randomBytes(3)));
      expected.push({ packet: p });
      const c = _confirm();
      parts.push(quickAckToken(tag, c));
      expected.push({ ack: c });
    }
    const wire = concatBytes(parts);
    for (let a = 0; a <= wire.length; a++) {
      for (let b = a; b <= wire.length; b++) {
        const chunks = [wire.slice(0, a), wire.slice(a, b), wire.slice(b)];
        assertEquals(_readAll(tag, chunks), expected, `${tag} cut at ${a} and ${b}`);
      }
    }
  }
});

Deno.test("ServerFrameReader keeps earlier items intact when a later one is split in the same chunk", () => {
  // Item A completes from the carry-over buffer; item B then starts in the same chunk and is
  // carried over: A's view must survive until the next push.
  for (const tag of TAGS) {
    const a = randomBytes(400);
    const b = randomBytes(400);
    const wire = concatBytes([encodeFrame(tag, a), encodeFrame(tag, b)]);
    const reader = new ServerFrameReader(tag);
    assertEquals(reader.push(wire.subarray(0, 200)), []);
    const out = reader.push(wire.subarray(200, wire.length - 100));
    assert(typeof out !== "string");
    assertEquals(out.length, 1);
    const first = out[0]!;
    assert(first.kind === "packet");
    assertEquals(first.data, a, tag);
    const rest = reader.push(wire.subarray(wire.length - 100));
    assert(typeof rest !== "string");
    assertEquals(rest.map(_copy), [{ packet: b }], tag);
  }
});

Deno.test("ServerFrameReader reads a quick-ack token in each transport's server form", () => {
  const confirm = Uint8Array.of(0x11, 0x22, 0x33, 0xc4);
  // Abridged: the confirm reversed, so the first byte has bit 7 set.
  assertEquals(_readAll("abridged", [Uint8Array.of(0xc4, 0x33, 0x22, 0x11)]), [{ ack: confirm }]);
  // Intermediate and padded: the confirm as is, bit 31 of the u32 LE set.
  for (const tag of ["intermediate", "padded"] as const) {
    assertEquals(_readAll(tag, [confirm.slice()]), [{ ack: confirm }], tag);
  }
  assertEquals(quickAckConfirm("abridged", Uint8Array.of(0xc4, 0x33, 0x22, 0x11)), confirm);
  // The confirm is what quickAckToken turns back into the wire form.
  for (const tag of TAGS) {
    assertEquals(quickAckConfirm(tag, quickAckToken(tag, confirm)), confirm, tag);
  }
});

Deno.test("ServerFrameReader passes a transport error as an ordinary 4-byte packet", () => {
  const error = Uint8Array.of(0x6c, 0xfe, 0xff, 0xff); // int32 LE -404
  for (const tag of TAGS) {
    assertEquals(_readAll(tag, [encodeFrame(tag, error)]), [{ packet: error }], tag);
  }
});

Deno.test("ServerFrameReader strips the padding of padded frames that can be told apart", () => {
  const payload = randomBytes(16);
  for (let pad = 0; pad <= 15; pad++) {
    const frame = new Uint8Array(4 + 16 + pad);
    writeU32(frame, 0, 16 + pad);
    frame.set(payload, 4);
    frame.set(randomBytes(pad), 20);
    const got = _readAll("padded", [frame]);
    assert(typeof got !== "string");
    const packet = (got[0] as { packet: Uint8Array }).packet;
    // Whole surplus words stay attached, as with client frames.
    assertEquals(packet.length, 16 + pad - (pad % 4), `padding ${pad}`);
    assertEquals(packet.subarray(0, 16), payload);
  }
});

Deno.test("ServerFrameReader accepts the abridged long form with a short length", () => {
  const p = randomBytes(8);
  assertEquals(_readAll("abridged", [concatBytes([Uint8Array.of(0x7f, 2, 0, 0), p])]), [{
    packet: p,
  }]);
});

Deno.test("scanServerFrame refuses lengths over the limit and misaligned intermediate frames", () => {
  const span = new FrameSpan();
  const big = (n: number) => {
    const b = new Uint8Array(4);
    writeU32(b, 0, n);
    return b;
  };
  const words = (MAX_FRAME_BYTES / 4) + 1;
  const abridgedBig = Uint8Array.of(0x7f, words & 0xff, (words >> 8) & 0xff, words >> 16);
  assertEquals(scanServerFrame("abridged", abridgedBig, 0, span), "reject");
  assertEquals(span.reason, "frame_too_large");
  assertEquals(scanServerFrame("intermediate", big(MAX_FRAME_BYTES + 4), 0, span), "reject");
  assertEquals(span.reason, "frame_too_large");
  assertEquals(scanServerFrame("intermediate", big(6), 0, span), "reject");
  assertEquals(span.reason, "frame_misaligned");
  assertEquals(scanServerFrame("padded", big(MAX_PADDED_SERVER_FRAME), 0, span), "need");
  assertEquals(scanServerFrame("padded", big(MAX_PADDED_SERVER_FRAME + 1), 0, span), "reject");
  // One 4-byte header that breaks all three transports.
  for (const tag of TAGS) {
    assertEquals(_readAll(tag, [Uint8Array.of(0x7f, 0xff, 0xff, 0x7f)]), "frame_too_large", tag);
  }
});

Deno.test("scanServerFrame asks for the header, then for the whole frame", () => {
  const span = new FrameSpan();
  assertEquals(scanServerFrame("abridged", new Uint8Array(0), 0, span), "need");
  assertEquals(span.end, 1);
  assertEquals(scanServerFrame("abridged", Uint8Array.of(0x7f), 0, span), "need");
  assertEquals(span.end, 4);
  assertEquals(scanServerFrame("abridged", Uint8Array.of(0x80), 0, span), "need");
  assertEquals(span.end, 4);
  assertEquals(scanServerFrame("abridged", Uint8Array.of(9, 9, 3), 2, span), "need");
  assertEquals(span.end, 2 + 1 + 12);
  assertEquals(scanServerFrame("padded", Uint8Array.of(7, 0, 0), 0, span), "need");
  assertEquals(span.end, 4);
  assertEquals(scanServerFrame("padded", Uint8Array.of(7, 0, 0, 0), 0, span), "need");
  assertEquals(span.end, 11);
});

Deno.test("ServerFrameReader never throws on random bytes", () => {
  for (let i = 0; i < 300; i++) {
    for (const tag of TAGS) {
      const reader = new ServerFrameReader(tag);
      for (let j = 0; j < 4; j++) {
        const out = reader.push(randomBytes(1 + (i * 7 + j * 13) % 300));
        if (typeof out === "string") break;
        for (const item of out) {
          if (item.kind === "quick_ack") assertEquals(item.confirm.length, 4);
        }
      }
    }
  }
});
