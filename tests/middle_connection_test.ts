/**
 * One middle-proxy connection (lib/telegram/middle.ts) against the fake middle proxy, without a
 * pool or sessions: batched sends, keepalive pings.
 */
import { assert, assertEquals } from "./assert.ts";
import { startFakeMiddleProxy } from "./kit/fake_middle_proxy.ts";
import { randomBytes } from "../lib/crypto.ts";
import { middleConnectOptions } from "./helpers.ts";
import {
  type MiddleClient,
  type MiddleCloseReason,
  MiddleConnection,
} from "../lib/telegram/middle.ts";

const PROXY_SECRET = randomBytes(128);

/** A client that keeps what Telegram sends it. */
class Collector implements MiddleClient {
  packets: Uint8Array[] = [];
  closed: MiddleCloseReason | null = null;
  #waiters: (() => void)[] = [];
  onPacket(data: Uint8Array): void {
    this.packets.push(data.slice());
    for (const w of this.#waiters.splice(0)) w();
  }
  onQuickAck(): void {}
  onClose(reason: MiddleCloseReason): void {
    this.closed = reason;
  }
  async waitFor(n: number): Promise<void> {
    while (this.packets.length < n) await new Promise<void>((r) => this.#waiters.push(r));
  }
}

Deno.test("one send of several packets reaches Telegram in order, with each packet's flags", async () => {
  const mp = await startFakeMiddleProxy({ proxySecret: PROXY_SECRET, mode: "mtproto" });
  const conn = await MiddleConnection.open(
    { host: "127.0.0.1", port: mp.port },
    middleConnectOptions(PROXY_SECRET),
  );
  try {
    const client = new Collector();
    const slot = conn.attach(client, {
      tag: "padded",
      clientIp: "127.0.0.1",
      clientPort: 5555,
      adTag: null,
    });
    const encrypted = () => {
      const p = randomBytes(64);
      p[0] = 1; // a non-zero auth_key_id
      return p;
    };
    const unencrypted = new Uint8Array(40); // auth_key_id 0, but not a req_pq: echoed
    unencrypted[20] = 0x33;
    const packets = [
      { payload: encrypted(), quickAck: false },
      { payload: encrypted(), quickAck: true },
      { payload: unencrypted, quickAck: false },
      { payload: encrypted(), quickAck: false },
    ];
    await slot.send(packets);
    await client.waitFor(packets.length);
    assertEquals(client.packets, packets.map((p) => p.payload));
    const reqs = mp.events.filter((e) => e.type === "proxy_req");
    assertEquals(
      reqs.map((r) => r.type === "proxy_req" && [r.quickAck, r.notEncrypted]),
      [[false, false], [true, false], [false, true], [false, false]],
    );
    slot.ack(packets.reduce((n, p) => n + p.payload.length, 0), packets.length);
    assertEquals(client.closed, null);
  } finally {
    conn.close();
    await conn.finished;
    await mp.close();
  }
});

Deno.test("a quiet connection sends its own RPC_PING and stays up", async () => {
  const mp = await startFakeMiddleProxy({ proxySecret: PROXY_SECRET, mode: "mtproto" });
  const conn = await MiddleConnection.open(
    { host: "127.0.0.1", port: mp.port },
    middleConnectOptions(PROXY_SECRET, { keepaliveMs: 200 }),
  );
  try {
    const ping = await mp.waitFor((e) => e.type === "ping", 10_000);
    assert(ping.type === "ping");
    // The fake answers with RPC_PONG, which the connection takes quietly.
    await mp.waitFor((e) => e.type === "ping" && e !== ping, 10_000);
    assert(!conn.closed);
    assertEquals(mp.connections, 1);
  } finally {
    conn.close();
    await conn.finished;
    await mp.close();
  }
});

Deno.test("a middle proxy that stops reading gets its connection closed at the send timeout", async () => {
  const mp = await startFakeMiddleProxy({ proxySecret: PROXY_SECRET, mode: "mtproto" });
  const conn = await MiddleConnection.open(
    { host: "127.0.0.1", port: mp.port },
    middleConnectOptions(PROXY_SECRET, {
      sendTimeoutMs: 300,
    }),
  );
  const dead = new Promise<string | null>((
    resolve,
  ) => (conn.onDead = (_c, error) => resolve(error)));
  try {
    const slot = conn.attach(new Collector(), {
      tag: "intermediate",
      clientIp: "127.0.0.1",
      clientPort: 5556,
      adTag: null,
    });
    mp.stall(true);
    // More than the socket buffers take in: the write cannot finish while nobody reads.
    const packet = randomBytes(65536);
    packet[0] = 1;
    const packets = Array.from({ length: 512 }, () => ({ payload: packet, quickAck: false }));
    const sent = slot.send(packets).then(() => "sent", (e) => `failed: ${e}`);
    const error = await dead;
    assert(error?.includes("did not finish"), String(error));
    assert(conn.closed);
    assert((await sent).startsWith("failed"));
  } finally {
    mp.stall(false);
    conn.close();
    await conn.finished;
    await mp.close();
  }
});
