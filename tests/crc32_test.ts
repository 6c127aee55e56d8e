import zlib from "node:zlib";
import { assertEquals } from "./assert.ts";
import {
  crc32,
  Crc32Fixed,
  crc32Known,
  crc32Range,
  crc32Register,
  crc32Words,
} from "../lib/protocol/crc32.ts";
import { encodeFull, FullEncoder } from "../lib/protocol/full.ts";
import { encodeProxyReq, ProxyReqHeader } from "../lib/protocol/rpc.ts";

/** zlib's CRC-32 (the reference), continuing `previous`. */
function _zlib(data: Uint8Array, previous = 0): number {
  return (zlib as unknown as { crc32(d: Uint8Array, v: number): number }).crc32(data, previous) >>>
    0;
}

/** A seeded generator (xorshift32), so that a failure names a case that can be rerun. */
function _rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 32;
  };
}

function _bytes(next: () => number, n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(next() * 256);
  return b;
}

Deno.test("crc32Range, crc32Words, Crc32Fixed and crc32Known agree with zlib", () => {
  const next = _rng(0x5eed_c3c3);
  for (let c = 0; c < 2000; c++) {
    const n = Math.floor(next() * 300);
    const data = _bytes(next, n);
    const previous = Math.floor(next() * 2 ** 32);
    const from = Math.floor(next() * (n + 1));
    const to = from + Math.floor(next() * (n - from + 1));
    assertEquals(
      crc32Range(data, from, to, previous),
      _zlib(data.subarray(from, to), previous),
      `case ${c}: range`,
    );
    const fixed = new Crc32Fixed(data);
    assertEquals(fixed.extend(previous), _zlib(data, previous), `case ${c}: fixed`);
    assertEquals(fixed.extend(0), _zlib(data), `case ${c}: fixed from 0`);
    // Registered or not, crc32Known gives the same; runs of one string use the last-hit path.
    assertEquals(crc32Known(data, previous), _zlib(data, previous), `case ${c}: unregistered`);
    crc32Register(data);
    assertEquals(crc32Known(data, previous), _zlib(data, previous), `case ${c}: registered`);
    const other = (previous ^ 0x1234_5678) >>> 0;
    assertEquals(crc32Known(data, other), _zlib(data, other), `case ${c}: registered, again`);
    const a = Math.floor(next() * 2 ** 32);
    const b = Math.floor(next() * 2 ** 32);
    const words = new Uint8Array(8);
    new DataView(words.buffer).setUint32(0, a, true);
    new DataView(words.buffer).setUint32(4, b, true);
    assertEquals(crc32Words(a | 0, b | 0), _zlib(words), `case ${c}: words`);
  }
  assertEquals(crc32Range(new TextEncoder().encode("123456789"), 0, 9), 0xcbf43926);
});

Deno.test("frames of a ProxyReqHeader (its CRC precomputed) carry the CRC of the joined body", () => {
  const next = _rng(7);
  for (const adTag of [null, new Uint8Array(16).fill(0xa5), new Uint8Array(5).fill(1)]) {
    const req = {
      connId: 0x0102030405060708n,
      tag: "padded" as const,
      clientIp: "198.51.100.23",
      clientPort: 51234,
      proxyIp: "203.0.113.7",
      proxyPort: 40001,
      adTag,
    };
    const header = new ProxyReqHeader(req);
    for (let c = 0; c < 50; c++) {
      // Encrypted packets (the shared template) and unencrypted ones (a copy with other flags).
      const packet = _bytes(next, 4 * Math.floor(next() * 300));
      if (c % 5 === 0 && packet.length >= 8) packet.fill(0, 0, 8);
      const h = header.header(packet, c % 7 === 0);
      const joined = encodeProxyReq({ ...req, quickAck: c % 7 === 0 }, packet);
      const seq = Math.floor(next() * 2 ** 31);
      // encodePairs is the path that uses the precomputed CRC.
      const frame = new FullEncoder({ firstSeq: seq }).encodePairs([h, packet], true);
      assertEquals(frame, encodeFull(joined, seq, true));
      const len = new DataView(frame.buffer).getUint32(0, true);
      assertEquals(
        new DataView(frame.buffer).getUint32(len - 4, true),
        crc32(frame.subarray(0, len - 4)),
      );
    }
  }
});
