import { assert, assertEquals, assertRejects } from "./assert.ts";
import { until } from "./helpers.ts";
import { randomBytes } from "../lib/crypto.ts";
import type { Packet } from "../lib/protocol/framing.ts";
import type { TransportTag } from "../lib/protocol/obfuscated2.ts";
import type { DcRoute } from "../lib/telegram/dc.ts";
import {
  type DirectStream,
  type DirectStreamOptions,
  openDirectStream,
} from "../lib/telegram/direct_stream.ts";
import {
  type TelegramClient,
  type TelegramCloseReason,
  TelegramOpenError,
  type TelegramTarget,
} from "../lib/telegram/side.ts";
import {
  type FakeDc,
  type FakeDcEvent,
  type FakeDcOptions,
  startFakeDc,
  TRANSPORT_ERROR_404,
} from "./kit/fake_dc.ts";

const TAGS: readonly TransportTag[] = ["abridged", "intermediate", "padded"];

/** Records what a stream delivers; optionally acknowledges every packet at once. */
class Recorder implements TelegramClient {
  readonly packets: Uint8Array[] = [];
  readonly confirms: Uint8Array[] = [];
  readonly closes: TelegramCloseReason[] = [];
  /** What came in, in order: "p" packet, "q" quick ack. */
  readonly order: string[] = [];
  bytes = 0;
  count = 0;
  /** Keep copies of the packets (off for floods, which check them on the fly). */
  keep = true;
  /** Acknowledge every packet as soon as it arrives. */
  autoAck: DirectStream | null = null;
  /** Called per packet with its index (after counting). */
  inspect: ((data: Uint8Array, index: number) => void) | null = null;

  onPacket(data: Uint8Array): void {
    this.inspect?.(data, this.count);
    this.bytes += data.length;
    this.count++;
    this.order.push("p");
    if (this.keep) this.packets.push(data.slice());
    this.autoAck?.ack(data.length, 1);
  }

  onQuickAck(confirm: Uint8Array): void {
    this.order.push("q");
    this.confirms.push(confirm.slice());
  }

  onClose(reason: TelegramCloseReason): void {
    this.closes.push(reason);
  }
}

function _route(port: number): DcRoute {
  return { dcId: 2, address: { host: "127.0.0.1", port }, fallback: false };
}

function _target(tag: TransportTag): TelegramTarget {
  return { dcId: 2, tag, clientIp: "127.0.0.1", clientPort: 40000, adTag: null };
}

async function _open(
  dc: FakeDc,
  tag: TransportTag,
  client: TelegramClient,
  options: Partial<DirectStreamOptions> = {},
): Promise<DirectStream> {
  return await openDirectStream(_route(dc.port), client, _target(tag), {
    timeoutMs: 2000,
    windowBytes: 1 << 20,
    ...options,
  });
}

/** Start a fake DC, open a stream to it, run `body`, and close everything. */
async function _withStream(
  dcOptions: FakeDcOptions,
  tag: TransportTag,
  client: Recorder,
  streamOptions: Partial<DirectStreamOptions>,
  body: (dc: FakeDc, stream: DirectStream) => Promise<void>,
): Promise<void> {
  const dc = await startFakeDc(dcOptions);
  try {
    const stream = await _open(dc, tag, client, streamOptions);
    try {
      await body(dc, stream);
    } finally {
      stream.release();
      await stream.finished;
    }
  } finally {
    await dc.close();
  }
}

function _packet(size: number, quickAck = false): Packet {
  const payload = randomBytes(size);
  // Keep the auth_key_id non-zero so the fake DC never reads a payload as a handshake message.
  payload[0] = 1;
  return { payload, quickAck };
}

/**
 * The DC echoes a padded packet with the whole words of our 0..15 padding still attached
 * (nobody can tell them apart), as Telegram receives them too.
 */
function _assertEchoed(tag: TransportTag, got: Uint8Array, sent: Uint8Array, what: string) {
  if (tag !== "padded") return assertEquals(got, sent, what);
  const extra = got.length - sent.length;
  assert(extra >= 0 && extra <= 12 && extra % 4 === 0, `${what}: ${extra} extra bytes`);
  assertEquals(got.subarray(0, sent.length), sent, what);
}

const SIZES = [4, 8, 12, 500, 504, 508, 4096, 65_536, 300_000, 1 << 20];

for (const tag of TAGS) {
  Deno.test(`openDirectStream round-trips packets of 4 B to 1 MiB intact over ${tag}`, async () => {
    const client = new Recorder();
    await _withStream({ mode: "mtproto" }, tag, client, {}, async (dc, stream) => {
      await dc.waitFor((e) => e.type === "init" && e.tag === tag && e.dcId === 2);
      const sent = SIZES.map((n) => _packet(n));
      // Separate sends in one turn (coalesced into one write), then one send of many packets.
      await Promise.all(sent.slice(0, 6).map((p) => stream.send([p])));
      await stream.send(sent.slice(6));
      await until(() => client.count === sent.length, "every echo");
      for (let i = 0; i < sent.length; i++) {
        _assertEchoed(tag, client.packets[i]!, sent[i]!.payload, `${tag} packet of ${SIZES[i]}`);
      }
      const seen = dc.events.filter((e) => e.type === "packet");
      assertEquals(seen.length, sent.length);
      assert(seen.every((e) => e.type === "packet" && !e.quickAck));
      assertEquals(client.closes, []);
      assertEquals(client.confirms, []);
    });
  });

  Deno.test(`openDirectStream sends the quick-ack flag and delivers the DC's token over ${tag}`, async () => {
    const client = new Recorder();
    await _withStream({ mode: "mtproto", quickAcks: true }, tag, client, {}, async (dc, stream) => {
      const asked = _packet(64, true);
      const plain = _packet(1000);
      await stream.send([asked, plain]);
      await until(() => client.count === 2, "both echoes");
      const packets = dc.events.filter((e) => e.type === "packet");
      assertEquals(packets.map((e) => e.type === "packet" && e.quickAck), [true, false]);
      const sentAck = await dc.waitFor((e): e is Extract<FakeDcEvent, { type: "quick_ack_sent" }> =>
        e.type === "quick_ack_sent"
      );
      // The confirm in the intermediate form, whatever the transport put on the wire.
      assertEquals(client.confirms, [sentAck.confirm]);
      assertEquals(client.order, ["q", "p", "p"]);
      _assertEchoed(tag, client.packets[0]!, asked.payload, "the packet that asked");
    });
  });

  Deno.test(`openDirectStream passes a transport error as a packet, then closes over ${tag}`, async () => {
    const client = new Recorder();
    await _withStream({ mode: "transport_error" }, tag, client, {}, async (_dc, stream) => {
      await stream.send([_packet(40)]);
      await until(() => client.closes.length > 0, "the close");
      assertEquals(client.packets, [TRANSPORT_ERROR_404]);
      assertEquals(client.closes, ["close_ext"]);
      await stream.finished;
    });
  });

  Deno.test(`openDirectStream stops reading at the window and resumes on acks over ${tag}`, async () => {
    const windowBytes = 64 * 1024;
    const frameBytes = 4096;
    const floodBytes = 16 * 1024 * 1024;
    const client = new Recorder();
    client.keep = false;
    const bad: string[] = [];
    client.inspect = (data, i) => {
      const want = i & 0xff;
      if (data.length !== frameBytes || data[0] !== want || data[data.length - 1] !== want) {
        bad.push(`packet ${i}: ${data.length} bytes starting ${data[0]}`);
      }
    };
    const dcOptions: FakeDcOptions = { mode: "flood", floodBytes, floodFrameBytes: frameBytes };
    await _withStream(dcOptions, tag, client, { windowBytes }, async (dc, stream) => {
      await until(() => client.bytes >= windowBytes, "a window of answers");
      // Far more than the window is on its way: a reader that did not stop would take it.
      await until(() => dc.floodedBytes >= client.bytes + 512 * 1024, "the DC to write ahead");
      await until(() => dc.floodedBytes >= client.bytes + 768 * 1024, "the DC to write ahead");
      const delivered = client.bytes;
      // At most one read (64 KiB) and one split frame past the window.
      assert(
        delivered <= windowBytes + 64 * 1024 + frameBytes,
        `${delivered} bytes delivered with a window of ${windowBytes}`,
      );
      assert(dc.floodedBytes < floodBytes, "the DC's writes should be blocked");
      // Acks bring it under the window: everything comes.
      client.autoAck = stream;
      stream.ack(client.bytes, client.count);
      await until(() => client.bytes === floodBytes, "every answer", 30_000);
      await dc.waitFor((e) => e.type === "flooded");
      assertEquals(bad, []);
      assertEquals(client.count, floodBytes / frameBytes);
      assertEquals(client.closes, []);
    });
  });
}

Deno.test("openDirectStream reads on without acks while the answers fit the window", async () => {
  const floodBytes = 2 * 1024 * 1024;
  const client = new Recorder();
  client.keep = false;
  const dcOptions: FakeDcOptions = { mode: "flood", floodBytes };
  await _withStream(
    dcOptions,
    "intermediate",
    client,
    { windowBytes: 4 * floodBytes },
    async () => {
      await until(() => client.bytes === floodBytes, "every answer");
    },
  );
});

Deno.test("openDirectStream reports close_ext when the DC closes the connection", async () => {
  const client = new Recorder();
  const dc = await startFakeDc({ mode: "mtproto" });
  const stream = await _open(dc, "padded", client);
  try {
    await dc.waitFor((e) => e.type === "init");
    await dc.close();
    await until(() => client.closes.length > 0, "the close");
    assertEquals(client.closes, ["close_ext"]);
    await stream.finished;
    await assertRejects(() => stream.send([_packet(8)]), Error, "closed");
    stream.release();
    assertEquals(client.closes, ["close_ext"]);
  } finally {
    stream.release();
    await stream.finished;
    await dc.close();
  }
});

Deno.test("openDirectStream reports connection_lost when the DC breaks the framing", async () => {
  for (const tag of TAGS) {
    const client = new Recorder();
    await _withStream({ mode: "bad_frame" }, tag, client, {}, async (dc) => {
      await until(() => client.closes.length > 0, "the close");
      assertEquals(client.closes, ["connection_lost"], tag);
      assertEquals(client.packets, []);
      // The stream closed its socket.
      await dc.waitFor((e) => e.type === "closed");
    });
  }
});

Deno.test("DirectStream release is idempotent, closes the DC socket and never calls onClose", async () => {
  const client = new Recorder();
  await _withStream({ mode: "mtproto" }, "abridged", client, {}, async (dc, stream) => {
    await stream.send([_packet(16)]);
    await until(() => client.count === 1, "the echo");
    stream.release();
    stream.release();
    await dc.waitFor((e) => e.type === "closed" && e.conn === 1);
    stream.release();
    await stream.finished;
    await assertRejects(() => stream.send([_packet(8)]), Error, "closed");
    stream.ack(16, 1);
    assertEquals(client.closes, []);
  });
});

Deno.test("DirectStream release wakes a reader paused by backpressure", async () => {
  const client = new Recorder();
  client.keep = false;
  const dcOptions: FakeDcOptions = { mode: "flood", floodBytes: 8 * 1024 * 1024 };
  await _withStream(
    dcOptions,
    "intermediate",
    client,
    { windowBytes: 1024 },
    async (dc, stream) => {
      await until(() => client.bytes >= 1024, "a window of answers");
      await until(() => dc.floodedBytes > client.bytes + 256 * 1024, "the DC to write ahead");
      stream.release();
      await stream.finished;
      assertEquals(client.closes, []);
    },
  );
});

Deno.test("DirectStream release rejects the sends a stalled DC has not taken", async () => {
  const client = new Recorder();
  await _withStream({ mode: "stall" }, "padded", client, {}, async (dc, stream) => {
    await dc.waitFor((e) => e.type === "init");
    await stream.send([_packet(64)]);
    // 16 MiB: more than the socket buffers of a peer that never reads can take.
    const big = _packet(1 << 20);
    const outcomes: string[] = [];
    const sends = Array.from(
      { length: 16 },
      () => stream.send([big]).then(() => outcomes.push("sent"), () => outcomes.push("rejected")),
    );
    // A few turns of the event loop, so that the write is usually under way (either way, what
    // was not written must be rejected).
    let polls = 0;
    await until(() => ++polls > 3, "a few turns");
    assertEquals(outcomes, []);
    stream.release();
    await Promise.all(sends);
    assertEquals(outcomes, Array(16).fill("rejected"));
    await assertRejects(() => stream.send([_packet(8)]), Error, "closed");
    assertEquals(client.closes, []);
  });
});

Deno.test("DirectStream closes with connection_lost when a client callback throws", async () => {
  const client = new Recorder();
  client.inspect = () => {
    throw new Error("client bug");
  };
  await _withStream({ mode: "mtproto" }, "intermediate", client, {}, async (dc, stream) => {
    await stream.send([_packet(32)]);
    await until(() => client.closes.length > 0, "the close");
    assertEquals(client.closes, ["connection_lost"]);
    await stream.finished;
    await dc.waitFor((e) => e.type === "closed");
  });
});

Deno.test("DirectStream rejects an abridged packet that is not a multiple of 4 bytes", async () => {
  const client = new Recorder();
  await _withStream({ mode: "mtproto" }, "abridged", client, {}, async (_dc, stream) => {
    await assertRejects(
      () => stream.send([{ payload: new Uint8Array(6), quickAck: false }]),
      RangeError,
    );
    // The stream still works.
    await stream.send([_packet(8)]);
    await until(() => client.count === 1, "the echo");
  });
});

Deno.test("openDirectStream rejects with unreachable when nothing listens", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const err = await assertRejects(
    () =>
      openDirectStream(_route(port), new Recorder(), _target("padded"), {
        timeoutMs: 2000,
        windowBytes: 1024,
      }),
    TelegramOpenError,
  );
  assertEquals((err as TelegramOpenError).kind, "unreachable");
});

Deno.test("openDirectStream rejects with timeout when its signal is aborted", async () => {
  const dc = await startFakeDc({ mode: "mtproto" });
  try {
    const controller = new AbortController();
    controller.abort();
    const err = await assertRejects(
      () => _open(dc, "padded", new Recorder(), { signal: controller.signal }),
      TelegramOpenError,
    );
    assertEquals((err as TelegramOpenError).kind, "timeout");
  } finally {
    await dc.close();
  }
});

Deno.test("openDirectStream refuses a window that is not positive", async () => {
  await assertRejects(
    () =>
      openDirectStream(_route(9), new Recorder(), _target("padded"), {
        timeoutMs: 100,
        windowBytes: 0,
      }),
    RangeError,
  );
});
