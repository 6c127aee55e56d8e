import { assertEquals } from "./assert.ts";
import { PacketReader } from "../lib/protocol/packet_reader.ts";
import { encodeFrame } from "../lib/protocol/framing.ts";
import type { TransportTag } from "../lib/protocol/obfuscated2.ts";
import { randomBytes } from "../lib/crypto.ts";

Deno.test("PacketReader yields the same packets for any chunking, for every transport", () => {
  for (const tag of ["abridged", "intermediate", "padded"] as TransportTag[]) {
    const payloads = [8, 4, 1000, 508, 70_000, 12].map((n) => randomBytes(n));
    const frames = payloads.map((p) => encodeFrame(tag, p, randomBytes(p.length % 4)));
    const wire = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
    let off = 0;
    for (const f of frames) {
      wire.set(f, off);
      off += f.length;
    }
    for (const size of [1, 3, 17, 1000, 65536, wire.length]) {
      const reader = new PacketReader(tag);
      const got: Uint8Array[] = [];
      for (let i = 0; i < wire.length; i += size) {
        const out = reader.push(wire.slice(i, i + size));
        if (typeof out === "string") throw new Error(out);
        for (const p of out) got.push(p.payload.slice());
      }
      assertEquals(got, payloads, `${tag} in chunks of ${size}`);
    }
  }
});

Deno.test("PacketReader returns exactly this push's packets, however many the last one had", () => {
  const reader = new PacketReader("intermediate");
  const frames = (n: number, fill: number) =>
    Uint8Array.from(
      Array.from(
        { length: n },
        () => [...encodeFrame("intermediate", new Uint8Array(8).fill(fill))],
      )
        .flat(),
    );
  for (const [n, fill] of [[5, 1], [2, 2], [0, 0], [7, 3], [1, 4], [64, 5], [3, 6]] as const) {
    const out = reader.push(frames(n, fill));
    if (typeof out === "string") throw new Error(out);
    assertEquals(out.length, n, `a push of ${n}`);
    for (const p of out) assertEquals(p.payload, new Uint8Array(8).fill(fill));
  }
  // A push that only completes a carried-over frame returns that one packet.
  const wire = frames(3, 9);
  const first = reader.push(wire.subarray(0, 30));
  if (typeof first === "string") throw new Error(first);
  assertEquals(first.length, 2);
  const rest = reader.push(wire.subarray(30));
  if (typeof rest === "string") throw new Error(rest);
  assertEquals(rest.length, 1);
  assertEquals(rest[0]!.payload, new Uint8Array(8).fill(9));
});

Deno.test("PacketReader reports a broken stream", () => {
  const reader = new PacketReader("intermediate");
  assertEquals(reader.push(Uint8Array.of(0, 0, 0x20, 0)), "frame_too_large");
});
