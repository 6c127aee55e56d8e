import { concatBytes as concatList } from "../lib/protocol/bytes.ts";
import { assertEquals } from "./assert.ts";
import { ServerErrorScanner } from "../lib/guard/server_error.ts";
import { encodeFrame, quickAckToken } from "../lib/protocol/framing.ts";
import type { TransportTag } from "../lib/protocol/obfuscated2.ts";
import { randomBytes } from "../lib/crypto.ts";

const ERROR_404 = Uint8Array.of(0x6c, 0xfe, 0xff, 0xff);
const TAGS: TransportTag[] = ["abridged", "intermediate", "padded"];

function scanInChunks(s: ServerErrorScanner, bytes: Uint8Array, size: number): string {
  let last = "undecided";
  for (let i = 0; i < bytes.length; i += size) {
    last = s.scan(bytes.subarray(i, i + size));
    if (last === "error") return last;
  }
  return last;
}

Deno.test("ServerErrorScanner spots -404 as the first packet in every transport and chunking", () => {
  for (const tag of TAGS) {
    for (const size of [1, 2, 3, 100]) {
      const wire = encodeFrame(tag, ERROR_404, randomBytes(tag === "padded" ? 3 : 0));
      assertEquals(
        scanInChunks(new ServerErrorScanner(tag, { firstOnly: true }), wire, size),
        "error",
      );
    }
  }
});

Deno.test("ServerErrorScanner passes an ordinary first packet and then stops looking (first)", () => {
  for (const tag of TAGS) {
    const wire = concat(encodeFrame(tag, randomBytes(80)), encodeFrame(tag, ERROR_404));
    assertEquals(scanInChunks(new ServerErrorScanner(tag, { firstOnly: true }), wire, 7), "clean");
    assertEquals(scanInChunks(new ServerErrorScanner(tag, { firstOnly: false }), wire, 7), "error");
  }
});

Deno.test("ServerErrorScanner skips quick-ack tokens and positive 4-byte packets", () => {
  for (const tag of TAGS) {
    const ack = quickAckToken(tag, Uint8Array.of(0x01, 0x02, 0x03, 0x84));
    const ackWire = tag === "abridged" ? ack : Uint8Array.of(0x01, 0x02, 0x03, 0x84);
    const wire = concat(
      ackWire,
      encodeFrame(tag, Uint8Array.of(1, 0, 0, 0)),
      encodeFrame(tag, randomBytes(600)),
    );
    const s = new ServerErrorScanner(tag, { firstOnly: false });
    assertEquals(scanInChunks(s, wire, 5), "undecided");
    assertEquals(s.scan(encodeFrame(tag, ERROR_404)), "error");
  }
});

Deno.test("ServerErrorScanner handles long abridged frames", () => {
  const s = new ServerErrorScanner("abridged", { firstOnly: false });
  const wire = concat(
    encodeFrame("abridged", randomBytes(4 * 200)),
    encodeFrame("abridged", ERROR_404),
  );
  assertEquals(scanInChunks(s, wire, 13), "error");
});

Deno.test("ServerErrorScanner in first mode settles on the first header when it is not 4 bytes", () => {
  for (const tag of TAGS) {
    const s = new ServerErrorScanner(tag, { firstOnly: true });
    // A header announcing 1000 bytes settles it: the payload is never needed.
    const header = encodeFrame(tag, randomBytes(1000)).subarray(0, tag === "abridged" ? 4 : 4);
    assertEquals(s.scan(header), "clean");
  }
});

function concat(...parts: Uint8Array[]): Uint8Array {
  return concatList(parts);
}
