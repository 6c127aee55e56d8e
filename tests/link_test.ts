import { assert, assertEquals, assertThrows } from "./assert.ts";
import { seededRandom } from "./kit/seeded.ts";
import {
  LINK_CLOSE_REASONS,
  LINK_MAX_PAYLOAD,
  LinkFrameReader,
  type LinkFrameReject,
  type LinkFrameSink,
  LinkFrameType,
  LinkFrameWriter,
} from "../lib/protocol/link.ts";

/** A sink that records every call, copying views (they are valid only during the call). */
function recorder(): { sink: LinkFrameSink; events: unknown[][] } {
  const events: unknown[][] = [];
  const sink: LinkFrameSink = {
    hello: (f) => events.push(["hello", { ...f }]),
    welcome: (f) => events.push(["welcome", { ...f, instance: f.instance.slice() }]),
    ping: (id) => events.push(["ping", id]),
    pong: (id) => events.push(["pong", id]),
    goaway: (ms) => events.push(["goaway", ms]),
    open: (s, f) => events.push(["open", s, { ...f, adTag: f.adTag?.slice() ?? null }]),
    opened: (s, f) => events.push(["opened", s, { ...f }]),
    data: (s, p, q) => events.push(["data", s, p.slice(), q]),
    answer: (s, p) => events.push(["answer", s, p.slice()]),
    quickAck: (s, c) => events.push(["quickAck", s, c.slice()]),
    ack: (s, b) => events.push(["ack", s, b]),
    close: (s, r, d) => events.push(["close", s, r, d]),
  };
  return { sink, events };
}

/** Feed `wire` in the given pieces; the events and the first reject. */
function decode(pieces: Uint8Array[]): { events: unknown[][]; reject: LinkFrameReject | null } {
  const { sink, events } = recorder();
  const reader = new LinkFrameReader();
  let reject: LinkFrameReject | null = null;
  for (const p of pieces) {
    reject = reader.push(p, sink);
    if (reject !== null) break;
  }
  return { events, reject };
}

function cutAt(wire: Uint8Array, cuts: number[]): Uint8Array[] {
  const sorted = [...new Set(cuts)].sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let prev = 0;
  for (const c of [...sorted, wire.length]) {
    out.push(wire.slice(prev, c));
    prev = c;
  }
  return out;
}

function bytes(n: number, seed: number): Uint8Array {
  const rnd = seededRandom(seed);
  return Uint8Array.from({ length: n }, () => Math.floor(rnd() * 256));
}

const instance = Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8);
const adTag = bytes(16, 1);

/** One of every frame type (and the edge values), with the events they must decode to. */
function sample(): { wire: Uint8Array; expected: unknown[][] } {
  const w = new LinkFrameWriter();
  const expected: unknown[][] = [];
  w.hello({ version: 1, capabilities: 0xdeadbeef, window: 1 << 20, name: "front-ams-1 ✓" });
  expected.push(["hello", {
    version: 1,
    capabilities: 0xdeadbeef,
    window: 1 << 20,
    name: "front-ams-1 ✓",
  }]);
  w.welcome({ version: 1, capabilities: 0, window: 0xffff_ffff, instance });
  expected.push(["welcome", { version: 1, capabilities: 0, window: 0xffff_ffff, instance }]);
  w.ping(0n);
  expected.push(["ping", 0n]);
  w.pong(0xffff_ffff_ffff_ffffn);
  expected.push(["pong", 0xffff_ffff_ffff_ffffn]);
  w.ping(0x0102_0304_0506_0708n);
  expected.push(["ping", 0x0102_0304_0506_0708n]);
  w.goaway(30_000);
  expected.push(["goaway", 30_000]);
  w.open(1, { dcId: 2, tag: "abridged", clientIp: "203.0.113.7", clientPort: 443, adTag: null });
  expected.push(["open", 1, {
    dcId: 2,
    tag: "abridged",
    clientIp: "203.0.113.7",
    clientPort: 443,
    adTag: null,
  }]);
  w.open(0xffff_ffff, {
    dcId: -4,
    tag: "padded",
    clientIp: "2001:db8::1",
    clientPort: 65535,
    adTag,
  });
  expected.push(["open", 0xffff_ffff, {
    dcId: -4,
    tag: "padded",
    clientIp: "2001:db8::1",
    clientPort: 65535,
    adTag,
  }]);
  w.open(7, {
    dcId: -32768,
    tag: "intermediate",
    clientIp: "::ffff:10.1.2.3",
    clientPort: 0,
    adTag: null,
  });
  expected.push(["open", 7, {
    dcId: -32768,
    tag: "intermediate",
    clientIp: "10.1.2.3",
    clientPort: 0,
    adTag: null,
  }]);
  w.opened(1, { dcId: 2, via: "direct", where: "149.154.167.51:443" });
  expected.push(["opened", 1, { dcId: 2, via: "direct", where: "149.154.167.51:443" }]);
  w.opened(7, { dcId: -4, via: "middle", where: "" });
  expected.push(["opened", 7, { dcId: -4, via: "middle", where: "" }]);
  const big = bytes(LINK_MAX_PAYLOAD, 2);
  for (
    const [s, p, q] of [[1, bytes(300, 3), true], [7, new Uint8Array(0), false], [
      1,
      big,
      false,
    ]] as const
  ) {
    w.data(s, p, q);
    expected.push(["data", s, p, q]);
  }
  w.answer(1, bytes(20_000, 4));
  expected.push(["answer", 1, bytes(20_000, 4)]);
  w.answer(7, new Uint8Array(0));
  expected.push(["answer", 7, new Uint8Array(0)]);
  w.quickAck(1, Uint8Array.of(0x80, 1, 2, 3));
  expected.push(["quickAck", 1, Uint8Array.of(0x80, 1, 2, 3)]);
  w.ack(1, 0);
  expected.push(["ack", 1, 0]);
  w.ack(7, 0xffff_ffff);
  expected.push(["ack", 7, 0xffff_ffff]);
  LINK_CLOSE_REASONS.forEach((reason, i) => {
    const detail = i % 2 === 0 ? "" : `détail ${reason}`;
    w.close(i + 1, reason, detail);
    expected.push(["close", i + 1, reason, detail]);
  });
  return { wire: w.take().slice(), expected };
}

Deno.test("LinkFrameReader decodes every frame type LinkFrameWriter writes", () => {
  const { wire, expected } = sample();
  const { events, reject } = decode([wire]);
  assertEquals(reject, null);
  assertEquals(events, expected);
});

Deno.test("LinkFrameReader yields the same frames whole, byte by byte and at random cuts", () => {
  // Without the 1 MiB frame, so that byte-by-byte stays quick; a second run keeps it.
  const w = new LinkFrameWriter();
  w.hello({ version: 1, capabilities: 3, window: 65536, name: "f" });
  w.data(3, bytes(1000, 5), true);
  w.open(3, { dcId: 5, tag: "intermediate", clientIp: "1.2.3.4", clientPort: 5, adTag });
  w.ack(3, 1000);
  w.ping(9n);
  w.answer(3, bytes(70, 6));
  w.close(3, "dc_timeout", "no answer in 10 s");
  const small = w.take().slice();
  const whole = decode([small]);
  assertEquals(whole.reject, null);
  assertEquals(whole.events.length, 7);
  const oneByOne = decode(Array.from(small, (b) => Uint8Array.of(b)));
  assertEquals(oneByOne, whole);
  const rnd = seededRandom(42);
  for (let round = 0; round < 300; round++) {
    const cuts = Array.from(
      { length: 1 + Math.floor(rnd() * 12) },
      () => Math.floor(rnd() * small.length),
    );
    assertEquals(decode(cutAt(small, cuts)), whole, `cuts ${cuts}`);
  }
  // Every frame boundary and every offset inside a header, two cuts at a time.
  for (let a = 0; a < 40; a++) {
    for (let b = a; b < small.length; b += 97) assertEquals(decode(cutAt(small, [a, b])), whole);
  }
  const { wire, expected } = sample();
  for (let round = 0; round < 20; round++) {
    const cuts = Array.from(
      { length: 1 + Math.floor(rnd() * 30) },
      () => Math.floor(rnd() * wire.length),
    );
    assertEquals(decode(cutAt(wire, cuts)), { events: expected, reject: null });
  }
});

Deno.test("LinkFrameReader hands over views of the pushed bytes for whole frames", () => {
  const w = new LinkFrameWriter();
  w.data(1, Uint8Array.of(9, 9, 9), false);
  const wire = w.take().slice();
  let seen: Uint8Array | null = null;
  const { sink } = recorder();
  new LinkFrameReader().push(wire, { ...sink, data: (_s, p) => seen = p });
  assert(seen !== null);
  assert((seen as Uint8Array).buffer === wire.buffer, "a whole frame is not copied");
});

function header(type: number, stream: number, len: number, flags = 0): Uint8Array {
  const h = new Uint8Array(10);
  const v = new DataView(h.buffer);
  h[0] = type;
  h[1] = flags;
  v.setUint32(2, stream, true);
  v.setUint32(6, len, true);
  return h;
}

function frame(type: number, stream: number, payload: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(10 + payload.length);
  out.set(header(type, stream, payload.length));
  out.set(Array.from(payload), 10);
  return out;
}

Deno.test("LinkFrameReader refuses an oversized length or an unknown type from the header alone", () => {
  const { sink } = recorder();
  assertEquals(
    new LinkFrameReader().push(header(LinkFrameType.DATA, 1, LINK_MAX_PAYLOAD + 1), sink),
    "frame_too_large",
  );
  assertEquals(
    new LinkFrameReader().push(header(LinkFrameType.ANSWER, 1, 0xffff_ffff), sink),
    "frame_too_large",
  );
  for (const type of [0x00, 0x06, 0x0f, 0x17, 0xff]) {
    assertEquals(new LinkFrameReader().push(header(type, 1, 4), sink), "unknown_frame", `${type}`);
  }
  // Split header: refused as soon as its tenth byte arrives.
  const reader = new LinkFrameReader();
  const h = header(LinkFrameType.DATA, 1, LINK_MAX_PAYLOAD + 1);
  assertEquals(reader.push(h.subarray(0, 9), sink), null);
  assertEquals(reader.push(h.subarray(9), sink), "frame_too_large");
  // The largest payload is fine.
  assertEquals(
    new LinkFrameReader().push(header(LinkFrameType.DATA, 1, LINK_MAX_PAYLOAD), sink),
    null,
  );
});

Deno.test("LinkFrameReader refuses malformed payloads of known types as bad_payload", () => {
  const okOpen = [2, 0, 0, ...new Uint8Array(10), 0xff, 0xff, 1, 2, 3, 4, 0x50, 0];
  const name = (n: number) => [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, n, ...new Uint8Array(n).fill(0x61)];
  const cases: [string, Uint8Array][] = [
    ["short OPEN", frame(LinkFrameType.OPEN, 1, okOpen.slice(0, 20))],
    [
      "OPEN with a 15-byte ad tag",
      frame(LinkFrameType.OPEN, 1, [...okOpen, ...new Uint8Array(15)]),
    ],
    [
      "OPEN with transport tag 3",
      frame(LinkFrameType.OPEN, 1, okOpen.map((b, i) => i === 2 ? 3 : b)),
    ],
    ["OPEN on stream 0", frame(LinkFrameType.OPEN, 0, okOpen)],
    ["HELLO name of 65 bytes", frame(LinkFrameType.HELLO, 0, name(65))],
    ["HELLO empty name", frame(LinkFrameType.HELLO, 0, name(0))],
    ["HELLO name length past the payload", frame(LinkFrameType.HELLO, 0, name(5).slice(0, 14))],
    ["HELLO trailing bytes", frame(LinkFrameType.HELLO, 0, [...name(3), 0])],
    [
      "HELLO name not UTF-8",
      frame(LinkFrameType.HELLO, 0, [...name(0).slice(0, 10), 2, 0xc3, 0x28]),
    ],
    ["HELLO on stream 1", frame(LinkFrameType.HELLO, 1, name(3))],
    ["WELCOME of 17 bytes", frame(LinkFrameType.WELCOME, 0, new Uint8Array(17))],
    ["PING of 7 bytes", frame(LinkFrameType.PING, 0, new Uint8Array(7))],
    ["PONG of 9 bytes", frame(LinkFrameType.PONG, 0, new Uint8Array(9))],
    ["GOAWAY of 0 bytes", frame(LinkFrameType.GOAWAY, 0, [])],
    ["DATA on stream 0", frame(LinkFrameType.DATA, 0, [1, 2])],
    ["ACK of 3 bytes", frame(LinkFrameType.ACK, 1, [1, 2, 3])],
    ["QUICK_ACK of 5 bytes", frame(LinkFrameType.QUICK_ACK, 1, [1, 2, 3, 4, 5])],
    ["OPENED via 2", frame(LinkFrameType.OPENED, 1, [2, 0, 2])],
    ["OPENED short", frame(LinkFrameType.OPENED, 1, [2, 0])],
    [
      "OPENED where of 201 bytes",
      frame(LinkFrameType.OPENED, 1, [2, 0, 0, ...new Uint8Array(201)]),
    ],
    ["CLOSE empty", frame(LinkFrameType.CLOSE, 1, [])],
    ["CLOSE detail not UTF-8", frame(LinkFrameType.CLOSE, 1, [0, 0xff])],
    ["CLOSE on stream 0", frame(LinkFrameType.CLOSE, 0, [0])],
  ];
  for (const [what, wire] of cases) {
    assertEquals(decode([wire]), { events: [], reject: "bad_payload" }, what);
    assertEquals(decode(Array.from(wire, (b) => Uint8Array.of(b))).reject, "bad_payload", what);
  }
});

Deno.test("LinkFrameReader stays refused after a reject and delivers the frames before it", () => {
  const w = new LinkFrameWriter();
  w.ack(1, 5);
  const wire = new Uint8Array([...w.take(), ...header(0x42, 1, 0)]);
  const { sink, events } = recorder();
  const reader = new LinkFrameReader();
  assertEquals(reader.push(wire, sink), "unknown_frame");
  assertEquals(events, [["ack", 1, 5]]);
  w.ack(1, 6);
  assertEquals(reader.push(w.take(), sink), "unknown_frame");
  assertEquals(events.length, 1);
});

Deno.test("LinkFrameReader decodes an unknown close code as protocol_error", () => {
  const { events, reject } = decode([
    frame(LinkFrameType.CLOSE, 3, [10, 0x68, 0x69]),
    frame(LinkFrameType.CLOSE, 4, [0xff]),
  ]);
  assertEquals(reject, null);
  assertEquals(events, [["close", 3, "protocol_error", "hi"], ["close", 4, "protocol_error", ""]]);
});

Deno.test("LinkFrameWriter cuts long text at a character boundary and refuses misuse", () => {
  const w = new LinkFrameWriter();
  w.close(1, "refused", "é".repeat(150)); // 300 bytes: cut to 200, i.e. 100 characters
  w.opened(2, { dcId: 1, via: "middle", where: "x" + "€".repeat(100) }); // 1 + 3 * 66 = 199 bytes
  const { events, reject } = decode([w.take()]);
  assertEquals(reject, null);
  assertEquals(events, [
    ["close", 1, "refused", "é".repeat(100)],
    ["opened", 2, { dcId: 1, via: "middle", where: "x" + "€".repeat(66) }],
  ]);
  const open = {
    dcId: 2,
    tag: "abridged",
    clientIp: "1.2.3.4",
    clientPort: 1,
    adTag: null,
  } as const;
  assertThrows(() => w.hello({ version: 1, capabilities: 0, window: 1, name: "" }), RangeError);
  assertThrows(
    () => w.hello({ version: 1, capabilities: 0, window: 1, name: "n".repeat(65) }),
    RangeError,
  );
  assertThrows(
    () => w.welcome({ version: 1, capabilities: 0, window: 1, instance: new Uint8Array(7) }),
    RangeError,
  );
  assertThrows(() => w.open(0, open), RangeError);
  assertThrows(() => w.open(1, { ...open, clientIp: "not an ip" }), RangeError);
  assertThrows(() => w.open(1, { ...open, dcId: 40000 }), RangeError);
  assertThrows(() => w.open(1, { ...open, adTag: new Uint8Array(8) }), RangeError);
  assertThrows(() => w.data(0, new Uint8Array(1), false), RangeError);
  assertThrows(() => w.data(1, new Uint8Array(LINK_MAX_PAYLOAD + 1), false), RangeError);
  assertThrows(() => w.ack(1, -1), RangeError);
  assertThrows(() => w.quickAck(1, new Uint8Array(3)), RangeError);
  assertEquals(w.length, 0, "a refused frame writes nothing");
});

Deno.test("LinkFrameWriter take returns what was written since the last take and reuses its buffer", () => {
  const w = new LinkFrameWriter();
  assertEquals(w.length, 0);
  assertEquals(w.take().length, 0);
  w.ack(1, 1);
  w.ack(2, 2);
  assertEquals(w.length, 28);
  const first = w.take();
  assertEquals(first.length, 28);
  assertEquals(w.length, 0);
  assertEquals(w.take().length, 0);
  assertEquals(decode([first]).events, [["ack", 1, 1], ["ack", 2, 2]]);
  w.ack(3, 3);
  const second = w.take();
  assert(second.buffer === first.buffer, "the buffer is reused");
  assertEquals(decode([second]).events, [["ack", 3, 3]]);
});

Deno.test("LinkFrameReader never throws on random bytes or mutated frames", () => {
  const rnd = seededRandom(7);
  const { wire } = (() => {
    const w = new LinkFrameWriter();
    w.hello({ version: 1, capabilities: 0, window: 1, name: "fuzz" });
    w.welcome({ version: 1, capabilities: 0, window: 1, instance });
    w.open(1, { dcId: 2, tag: "padded", clientIp: "::1", clientPort: 9, adTag });
    w.opened(1, { dcId: 2, via: "direct", where: "here" });
    w.data(1, bytes(40, 8), true);
    w.answer(1, bytes(40, 9));
    w.quickAck(1, Uint8Array.of(1, 2, 3, 4));
    w.ack(1, 40);
    w.ping(1n);
    w.pong(1n);
    w.goaway(5);
    w.close(1, "shutdown", "bye");
    return { wire: w.take().slice() };
  })();
  const { sink } = recorder();
  const outcomes = new Map<string, number>();
  for (let i = 0; i < 4000; i++) {
    let input: Uint8Array;
    if (i % 2 === 0) {
      input = bytes(1 + Math.floor(rnd() * 300), i);
      // Make most of them start with a known type and a small length, to get past the header.
      if (i % 4 === 0) {
        input[0] = [0x01, 0x02, 0x03, 0x05, 0x10, 0x11, 0x12, 0x14, 0x15, 0x16][i % 10]!;
        if (input.length >= 10) input.set([Math.floor(rnd() * 40), 0, 0, 0], 6);
      }
    } else {
      input = wire.slice();
      for (let k = 1 + Math.floor(rnd() * 4); k > 0; k--) {
        input[Math.floor(rnd() * input.length)] = Math.floor(rnd() * 256);
      }
    }
    const reader = new LinkFrameReader();
    let result: LinkFrameReject | null = null;
    for (let off = 0; off < input.length && result === null;) {
      const n = 1 + Math.floor(rnd() * 64);
      result = reader.push(input.subarray(off, off + n), sink);
      off += n;
    }
    const key = String(result);
    outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
  }
  // The fuzz reached every outcome.
  for (const key of ["null", "unknown_frame", "bad_payload", "frame_too_large"]) {
    assert((outcomes.get(key) ?? 0) > 0, `no input ended with ${key}`);
  }
});
