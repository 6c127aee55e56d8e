/**
 * Seeded random-input properties for the parsers that face the network: the PROXY protocol
 * header, the client packet reader and the TLS record reader. For each: valid input round-trips,
 * any chunking gives the same result, random and mutated input never throws and yields only
 * documented outcomes, and nothing depends on bytes outside the view it was given.
 *
 * Cases per property: MTP_FUZZ_CASES (default 2000); seed: MTP_FUZZ_SEED (printed on failure).
 */
import { assert, assertEquals } from "./assert.ts";
import { type Gen, property } from "./kit/fuzz.ts";
import { parseProxyHeader, type ProxyHeaderStep } from "../lib/protocol/proxy_protocol.ts";
import { PacketReader } from "../lib/protocol/packet_reader.ts";
import {
  decodeFrame,
  encodeFrame,
  type FrameRejectReason,
  MAX_FRAME_BYTES,
} from "../lib/protocol/framing.ts";
import type { TransportTag } from "../lib/protocol/obfuscated2.ts";
import { encodeAppData, TlsRecordReader, type TlsRejectReason } from "../lib/protocol/fake_tls.ts";

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

const _hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

function _same(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

const latin1 = (text: string) => Uint8Array.from(text, (c) => c.charCodeAt(0));

// ---------------------------------------------------------------------------------------------
// PROXY protocol header

/** RFC 5952 text of 16 address bytes: lowercase, the first longest run of 2+ zero groups as ::. */
function ipv6Text(b: Uint8Array): string {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((b[i]! << 8) | b[i + 1]!);
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  const hex = (g: number[]) => g.map((x) => x.toString(16)).join(":");
  if (best < 0) return hex(groups);
  return `${hex(groups.slice(0, best))}::${hex(groups.slice(best + bestLen))}`;
}

/** 16 address bytes, often with runs of zeros (the interesting case for ::). */
function ipv6Bytes(gen: Gen): Uint8Array {
  const b = gen.bytes(16);
  for (let i = 0; i < 16; i += 2) if (gen.chance(0.4)) b[i] = b[i + 1] = 0;
  // v4-mapped addresses read back as IPv4 through parseIp: keep them out of the text round trip.
  if (b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff) b[10] = 0;
  return b;
}

interface ProxyCase {
  bytes: Uint8Array;
  source: { ip: string; port: number } | null;
}

/** A valid header of any kind (v1 TCP4/TCP6/UNKNOWN, v2 PROXY/LOCAL, other families). */
function validProxyHeader(gen: Gen): ProxyCase {
  const port = gen.int(0, 65535);
  const otherPort = gen.int(0, 65535);
  if (gen.chance(0.5)) {
    const kind = gen.pick(["TCP4", "TCP6", "UNKNOWN"] as const);
    if (kind === "UNKNOWN") {
      const junk = gen.chance(0.5) ? "" : ` ${"x".repeat(gen.int(0, 80))}`;
      return { bytes: latin1(`PROXY UNKNOWN${junk}\r\n`), source: null };
    }
    let ip: string;
    let dst: string;
    if (kind === "TCP4") {
      ip = Array.from(gen.bytes(4)).join(".");
      dst = Array.from(gen.bytes(4)).join(".");
    } else {
      ip = ipv6Text(ipv6Bytes(gen));
      dst = ipv6Text(ipv6Bytes(gen));
    }
    const shown = kind === "TCP6" && gen.chance(0.3) ? ip.toUpperCase() : ip;
    return {
      bytes: latin1(`PROXY ${kind} ${shown} ${dst} ${port} ${otherPort}\r\n`),
      source: { ip, port },
    };
  }
  const signature = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];
  const local = gen.chance(0.2);
  const family = gen.pick([0x11, 0x21, 0x11, 0x21, 0x12, 0x22, 0x31, 0x00]);
  let addresses: Uint8Array;
  let source: ProxyCase["source"] = null;
  const ports = Uint8Array.of(port >> 8, port & 0xff, otherPort >> 8, otherPort & 0xff);
  if (family === 0x11) {
    const src = gen.bytes(4);
    addresses = concat([src, gen.bytes(4), ports]);
    source = { ip: Array.from(src).join("."), port };
  } else if (family === 0x21) {
    const src = ipv6Bytes(gen);
    addresses = concat([src, gen.bytes(16), ports]);
    source = { ip: ipv6Text(src), port };
  } else {
    addresses = gen.bytes(gen.int(0, 216));
  }
  if (local) source = null;
  const tlvs = gen.chance(0.5) ? new Uint8Array(0) : gen.bytes(gen.int(1, 300));
  const body = concat([addresses, tlvs]);
  const header = concat([
    Uint8Array.from(signature),
    Uint8Array.of(local ? 0x20 : 0x21, family, body.length >> 8, body.length & 0xff),
    body,
  ]);
  return { bytes: header, source };
}

/** Parse as a session does: read chunks into a growing buffer until the step is not "need". */
function parseProxyChunked(chunks: readonly Uint8Array[]): ProxyHeaderStep {
  let have: Uint8Array = new Uint8Array(0);
  let step = parseProxyHeader(have);
  for (const c of chunks) {
    if (step.kind !== "need") break;
    have = concat([have, c]);
    step = parseProxyHeader(have);
  }
  return step;
}

/** What every outcome of parseProxyHeader(bytes) must satisfy. */
function checkProxyStep(bytes: Uint8Array, step: ProxyHeaderStep): void {
  switch (step.kind) {
    case "need":
      assert(step.atLeast > bytes.length, `need ${step.atLeast} with ${bytes.length} in hand`);
      assert(step.atLeast <= 16 + 4096, `need ${step.atLeast}: more than any header`);
      break;
    case "reject":
      assert(typeof step.reason === "string" && step.reason.length > 0);
      break;
    case "header":
      assert(step.length > 0 && step.length <= bytes.length, `header of ${step.length}`);
      assert(step.length <= 16 + 4096);
      if (step.source) {
        assert(Number.isInteger(step.source.port) && step.source.port >= 0);
        assert(step.source.port <= 65535);
        assert(/^[0-9a-f.:]+$/.test(step.source.ip), step.source.ip);
      }
      break;
    default:
      throw new Error(`Unknown outcome ${JSON.stringify(step)}`);
  }
}

property(
  "parseProxyHeader accepts every valid header, and only its bytes, in any chunking",
  (gen) => {
    const { bytes: header, source } = validProxyHeader(gen);
    const wire = concat([header, gen.bytes(gen.int(0, 64))]);
    const expected: ProxyHeaderStep = { kind: "header", length: header.length, source };
    assertEquals(parseProxyHeader(gen.embedded(wire)), expected);
    assertEquals(parseProxyChunked(gen.chunks(wire)), expected);
    // Every strict prefix asks for more, never for more than the header needs.
    const cut = gen.int(0, header.length - 1);
    const step = parseProxyHeader(header.subarray(0, cut));
    assert(step.kind === "need", `a prefix of ${cut} bytes: ${JSON.stringify(step)}`);
    assert(step.atLeast > cut && step.atLeast <= header.length, `need ${step.atLeast}`);
  },
);

property(
  "parseProxyHeader never throws on random or mutated input, and more bytes never change a verdict",
  (gen) => {
    const base = gen.chance(0.7)
      ? gen.mutate(validProxyHeader(gen).bytes)
      : gen.bytes(gen.int(0, 200));
    const bytes = gen.chance(0.3) ? base.subarray(0, gen.int(0, base.length)) : base;
    const step = parseProxyHeader(gen.embedded(bytes));
    checkProxyStep(bytes, step);
    assertEquals(parseProxyHeader(bytes.slice()), step, "the same bytes, not a view");
    const more = concat([bytes, gen.bytes(gen.int(1, 300))]);
    const later = parseProxyHeader(more);
    if (step.kind === "reject") assertEquals(later.kind, "reject", "a refusal stands");
    if (step.kind === "header") {
      assertEquals(later, step, "a header does not depend on what follows");
    }
    const chunks = gen.chunks(more);
    assertEquals(
      parseProxyChunked(chunks).kind,
      parseProxyChunked([more]).kind,
      `${_hex(more)} in chunks of ${chunks.map((c) => c.length)}`,
    );
  },
);

Deno.test("parseProxyHeader refuses a v1 address that is not bare: a zone, brackets, junk", () => {
  // Found by the property above (a zone survived parseIp and became the client's address).
  for (
    const line of [
      "PROXY TCP6 fe80::1%eth0 ::1 1 2",
      "PROXY TCP6 [::1] ::1 1 2",
      "PROXY TCP4 192.0.2.1 junk 1 2",
      "PROXY TCP6 ::1 192.0.2.1 1 2",
    ]
  ) {
    assertEquals(parseProxyHeader(latin1(`${line}\r\n`)).kind, "reject", line);
  }
});

// ---------------------------------------------------------------------------------------------
// PacketReader

const TAGS: readonly TransportTag[] = ["abridged", "intermediate", "padded"];
const FRAME_REJECTS: readonly FrameRejectReason[] = [
  "frame_too_large",
  "frame_overlong",
  "frame_misaligned",
];

interface Decoded {
  packets: { payload: Uint8Array; quickAck: boolean }[];
  reject: FrameRejectReason | null;
}

/** The reference: decodeFrame (the pure step function) over the whole input. */
function decodeAll(tag: TransportTag, wire: Uint8Array): Decoded {
  const packets: Decoded["packets"] = [];
  let rest = wire;
  for (;;) {
    const step = decodeFrame(tag, rest);
    if (step.kind === "need") return { packets, reject: null };
    if (step.kind === "reject") return { packets, reject: step.reason };
    packets.push({ payload: step.frame.payload.slice(), quickAck: step.frame.quickAck });
    rest = step.rest;
  }
}

/** Feed `chunks` to a PacketReader, copying packets out before the next push. */
function readAll(tag: TransportTag, chunks: readonly Uint8Array[]): Decoded {
  const reader = new PacketReader(tag);
  const packets: Decoded["packets"] = [];
  for (const c of chunks) {
    const out = reader.push(c);
    if (typeof out === "string") {
      assert(FRAME_REJECTS.includes(out), `undocumented refusal ${JSON.stringify(out)}`);
      return { packets, reject: out };
    }
    for (const p of out) packets.push({ payload: p.payload.slice(), quickAck: p.quickAck });
  }
  return { packets, reject: null };
}

/** A frame with the quick-ack bit set (encodeFrame has no flag for it). */
function withQuickAck(tag: TransportTag, frame: Uint8Array): Uint8Array {
  if (tag === "abridged") frame[0] = frame[0]! | 0x80;
  else frame[3] = frame[3]! | 0x80;
  return frame;
}

function randomPackets(gen: Gen): { payload: Uint8Array; quickAck: boolean }[] {
  return Array.from({ length: gen.int(0, 8) }, () => {
    // Mostly small; sometimes past abridged's one-byte length (508 bytes) or a read buffer.
    const words = gen.chance(0.8) ? gen.int(0, 160) : gen.int(127, 6000);
    return { payload: gen.bytes(4 * words), quickAck: gen.chance(0.2) };
  });
}

property(
  "PacketReader yields exactly the packets that were framed, for any chunking and transport",
  (gen) => {
    const tag = gen.pick(TAGS);
    const packets = randomPackets(gen);
    const frames = packets.map((p) => {
      const frame = encodeFrame(tag, p.payload, gen.bytes(gen.int(0, 3)));
      return p.quickAck ? withQuickAck(tag, frame) : frame;
    });
    const wire = concat(frames);
    const expected = { packets, reject: null };
    assertEquals(readAll(tag, [gen.embedded(wire)]), expected);
    assertEquals(readAll(tag, gen.chunks(wire).map((c) => gen.embedded(c))), expected);
  },
);

property(
  "PacketReader agrees with decodeFrame on random and mutated streams, for any chunking",
  (gen) => {
    const tag = gen.pick(TAGS);
    let wire: Uint8Array;
    if (gen.chance(0.5)) {
      const frames = randomPackets(gen).map((p) => encodeFrame(tag, p.payload));
      wire = gen.mutate(concat(frames));
    } else {
      wire = gen.bytes(gen.int(0, 600));
      // Lengths a random byte seldom makes: just under and over the limits.
      if (gen.chance(0.2) && wire.length >= 4) {
        const len = gen.pick([MAX_FRAME_BYTES, MAX_FRAME_BYTES + 4, 0x7f * 4 - 4]);
        if (tag === "abridged") wire.set([0x7f, (len / 4) & 0xff, (len / 4) >> 8, (len / 4) >> 16]);
        else new DataView(wire.buffer).setUint32(0, len, true);
      }
    }
    const reference = decodeAll(tag, wire);
    const got = readAll(tag, gen.chunks(wire).map((c) => gen.embedded(c)));
    assertEquals(got.reject, reference.reject);
    if (reference.reject === null) {
      assertEquals(got.packets, reference.packets);
    } else {
      // Packets of the chunk that hit the refusal are not handed out: a prefix, in order.
      assertEquals(got.packets, reference.packets.slice(0, got.packets.length));
    }
  },
);

// ---------------------------------------------------------------------------------------------
// TLS record reader (what a fake-TLS client sends after its hello)

const TLS_REJECTS: readonly TlsRejectReason[] = ["tls_bad_version", "tls_unexpected_record"];
const CCS = Uint8Array.of(0x14, 0x03, 0x03, 0x00, 0x01, 0x01);

/** The reference: the record stream parsed whole, header byte by header byte. */
function unwrapReference(
  wire: Uint8Array,
): { payload: Uint8Array; reject: TlsRejectReason | null } {
  const out: Uint8Array[] = [];
  let off = 0;
  while (off < wire.length) {
    const header = wire.subarray(off, off + 5);
    for (let i = 1; i < Math.min(3, header.length); i++) {
      if (header[i] !== 0x03) return { payload: concat(out), reject: "tls_bad_version" };
    }
    if (header.length < 5) break;
    const type = header[0]!;
    const size = (header[3]! << 8) | header[4]!;
    if (type !== 0x17 && !(type === 0x14 && size === 1)) {
      return { payload: concat(out), reject: "tls_unexpected_record" };
    }
    const body = wire.subarray(off + 5, off + 5 + size);
    if (type === 0x17) out.push(body);
    off += 5 + size;
  }
  return { payload: concat(out), reject: null };
}

/**
 * Unwrap `chunks` in place, each inside a larger buffer whose bytes around it must stay
 * untouched; the payload bytes in order, and the refusal if any.
 */
function unwrapAll(gen: Gen, chunks: readonly Uint8Array[]) {
  const reader = new TlsRecordReader();
  const out: Uint8Array[] = [];
  for (const c of chunks) {
    const view = gen.embedded(c);
    const outer = new Uint8Array(view.buffer);
    const before = outer.slice(0, view.byteOffset);
    const after = outer.slice(view.byteOffset + view.length);
    const n = reader.unwrap(view);
    assert(_same(outer.subarray(0, view.byteOffset), before), "wrote before the view");
    assert(_same(outer.subarray(view.byteOffset + view.length), after), "wrote past the view");
    if (typeof n === "string") {
      assert(TLS_REJECTS.includes(n), `undocumented refusal ${JSON.stringify(n)}`);
      return { payload: concat(out), reject: n };
    }
    assert(Number.isInteger(n) && n >= 0 && n <= c.length, `${n} payload bytes of ${c.length}`);
    out.push(view.slice(0, n));
  }
  return { payload: concat(out), reject: null };
}

property(
  "TlsRecordReader returns the payload of any records (and ChangeCipherSpecs), in any chunking",
  (gen) => {
    const parts: Uint8Array[] = [];
    const payloads: Uint8Array[] = [];
    for (let i = gen.int(0, 6); i > 0; i--) {
      if (gen.chance(0.2)) parts.push(CCS);
      const payload = gen.bytes(gen.chance(0.95) ? gen.int(0, 3000) : gen.int(3000, 40_000));
      payloads.push(payload);
      // Tiny records (down to 1 byte) only for small payloads: thousands of headers are slow.
      const maxRecord = payload.length <= 300 ? gen.int(1, 300) : gen.pick([16384, 2878, 100]);
      parts.push(encodeAppData(payload, maxRecord));
    }
    const wire = concat(parts);
    assertEquals(unwrapAll(gen, gen.chunks(wire)), { payload: concat(payloads), reject: null });
  },
);

property(
  "TlsRecordReader agrees with a whole-stream parse on random and mutated streams",
  (gen) => {
    let wire: Uint8Array;
    if (gen.chance(0.6)) {
      const parts = [CCS, encodeAppData(gen.bytes(gen.int(0, 500)), gen.int(1, 200))];
      wire = gen.mutate(concat(parts));
    } else {
      // Random bytes behind a valid-looking first header, so parsing gets somewhere.
      wire = concat([
        Uint8Array.of(0x17, 0x03, 0x03, 0, gen.int(0, 40)),
        gen.bytes(gen.int(0, 400)),
      ]);
    }
    const reference = unwrapReference(wire);
    const whole = unwrapAll(gen, [wire]);
    const split = unwrapAll(gen, gen.chunks(wire));
    assertEquals(whole.reject, reference.reject);
    assertEquals(split.reject, reference.reject);
    if (reference.reject === null) {
      assertEquals(whole.payload, reference.payload);
      assertEquals(split.payload, reference.payload);
    } else {
      // The chunk that hit the refusal yields nothing: what came before is a prefix.
      assertEquals(split.payload, reference.payload.subarray(0, split.payload.length));
    }
  },
);
