import { assert, assertEquals, assertNotEquals, assertRejects } from "./assert.ts";
import { randomBytes } from "../lib/crypto.ts";
import type { FullBody, FullCodec } from "../lib/protocol/full.ts";
import { MiddleClientHandshake } from "../lib/protocol/middle_handshake.ts";
import {
  decodeRpc,
  encodeCloseConn,
  encodePing,
  encodePong,
  encodeProxyReq,
  PROXY_REQ_FLAGS,
  ProxyReqHeader,
  type RpcMessage,
} from "../lib/protocol/rpc.ts";
import {
  type FakeMiddleEvent,
  type FakeMiddleProxy,
  type FakeMiddleProxyOptions,
  startFakeMiddleProxy,
} from "./kit/fake_middle_proxy.ts";
import { DEFAULT_FINGERPRINTS, parseResPq, reqDhParams, reqPq, reqPqMulti } from "./kit/tl.ts";
import { closeQuietly, isClosedError, writeAll } from "./kit/_io.ts";

const SECRET = randomBytes(128);
const AD_TAG = randomBytes(16);
const CLIENT_IP = "198.51.100.23";

/** The proxy's side of one RPC connection to the fake, driven by lib/protocol. */
class RpcClient {
  readonly messages: RpcMessage[] = [];
  ended = false;
  readonly localPort: number;
  readonly #conn: Deno.TcpConn;
  readonly #codec: FullCodec;
  readonly #reader: Promise<void>;
  readonly #waiters = new Set<() => void>();

  constructor(conn: Deno.TcpConn, codec: FullCodec, early: Uint8Array[]) {
    this.#conn = conn;
    this.#codec = codec;
    this.localPort = (conn.localAddr as Deno.NetAddr).port;
    for (const body of early) this.messages.push(decodeRpc(body.slice()));
    this.#reader = this.#read();
  }

  /** A PROXY_REQ body for `connId` from the test client address. */
  req(
    connId: bigint,
    packet: Uint8Array,
    options: { adTag?: Uint8Array | null; quickAck?: boolean } = {},
  ): Uint8Array {
    return encodeProxyReq({
      connId,
      tag: "intermediate",
      clientIp: CLIENT_IP,
      clientPort: 51234,
      proxyIp: "127.0.0.1",
      proxyPort: this.localPort,
      adTag: options.adTag === undefined ? AD_TAG : options.adTag,
      quickAck: options.quickAck ?? false,
    }, packet);
  }

  /** Encode and write RPC bodies as one batch. */
  send(...bodies: FullBody[]): Promise<void> {
    return writeAll(this.#conn, this.#codec.encodeMany(bodies));
  }

  /** Write without waiting: resolves with true once everything is written. */
  write(bytes: Uint8Array): Promise<boolean> {
    return writeAll(this.#conn, bytes).then(() => true, () => false);
  }

  encodeMany(bodies: FullBody[]): Uint8Array {
    return this.#codec.encodeMany(bodies);
  }

  /** The first message (in arrival order) matching `pred`, waiting up to `timeoutMs`. */
  async next<T extends RpcMessage>(
    pred: (m: RpcMessage) => m is T,
    timeoutMs = 5000,
  ): Promise<T> {
    let found: T | undefined;
    await this.until(() => {
      const i = this.messages.findIndex(pred);
      if (i < 0) return false;
      found = this.messages.splice(i, 1)[0] as T;
      return true;
    }, timeoutMs);
    return found!;
  }

  until(cond: () => boolean, timeoutMs = 5000): Promise<void> {
    if (cond()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (cond()) {
          done();
          resolve();
        } else if (this.ended) {
          done();
          reject(new Error("RPC connection ended"));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`Timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      this.#waiters.add(check);
    });
  }

  /** Resolves once the fake closed the connection. */
  closedByPeer(timeoutMs = 5000): Promise<void> {
    if (this.ended) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.ended) {
          done();
          resolve();
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`Connection still open after ${timeoutMs} ms`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      this.#waiters.add(check);
    });
  }

  async close(): Promise<void> {
    closeQuietly(this.#conn);
    await this.#reader;
  }

  async #read(): Promise<void> {
    const buf = new Uint8Array(65536);
    try {
      while (true) {
        const n = await this.#conn.read(buf);
        if (n === null) break;
        const r = this.#codec.decode(buf.subarray(0, n));
        for (const body of r.frames) this.messages.push(decodeRpc(body.slice()));
        if (r.reject !== null) throw new Error(`bad frame from the fake: ${r.reject}`);
        this.#notify();
      }
    } catch (e) {
      if (!isClosedError(e)) throw e;
    } finally {
      this.ended = true;
      this.#codec.close();
      closeQuietly(this.#conn);
      this.#notify();
    }
  }

  #notify(): void {
    for (const w of [...this.#waiters]) w();
  }
}

/** Connect to the fake and run the handshake as the proxy does (external IP 127.0.0.1). */
async function connectRpc(
  mp: FakeMiddleProxy,
  secret = SECRET,
  externalIp = "127.0.0.1",
): Promise<RpcClient> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: mp.port });
  const local = conn.localAddr as Deno.NetAddr;
  const hs = new MiddleClientHandshake({
    proxySecret: secret,
    nonce: randomBytes(16),
    cryptoTs: Math.floor(Date.now() / 1000),
    local: { ip: externalIp, port: local.port },
    remote: { ip: "127.0.0.1", port: mp.port },
  });
  try {
    await writeAll(conn, hs.start());
    const buf = new Uint8Array(4096);
    while (true) {
      const n = await conn.read(buf);
      if (n === null) throw new Error("closed during the handshake");
      const step = hs.receive(buf.slice(0, n));
      if (step.send !== null) await writeAll(conn, step.send);
      if (step.kind === "reject") throw new Error(`handshake failed: ${step.reason}`);
      if (step.kind === "done") return new RpcClient(conn, step.codec, step.frames);
    }
  } catch (e) {
    hs.close();
    closeQuietly(conn);
    if (isClosedError(e)) throw new Error("closed during the handshake");
    throw e;
  }
}

async function withFake(
  options: Partial<FakeMiddleProxyOptions>,
  fn: (mp: FakeMiddleProxy) => Promise<void>,
): Promise<void> {
  const mp = await startFakeMiddleProxy({ proxySecret: SECRET, ...options });
  try {
    await fn(mp);
  } finally {
    await mp.close();
  }
}

const isType = <K extends RpcMessage["type"]>(type: K) =>
(m: RpcMessage): m is Extract<
  RpcMessage,
  { type: K }
> => m.type === type;

const ansFor =
  (connId: bigint) => (m: RpcMessage): m is Extract<RpcMessage, { type: "proxy_ans" }> =>
    m.type === "proxy_ans" && m.connId === connId;

function event<K extends FakeMiddleEvent["type"]>(
  type: K,
  extra: (e: Extract<FakeMiddleEvent, { type: K }>) => boolean = () => true,
) {
  return (e: FakeMiddleEvent): e is Extract<FakeMiddleEvent, { type: K }> =>
    e.type === type && extra(e as Extract<FakeMiddleEvent, { type: K }>);
}

/** A fake encrypted MTProto packet (non-zero auth_key_id), `n` bytes. */
function encryptedPacket(n: number, fill?: number): Uint8Array {
  const p = fill === undefined ? randomBytes(n) : new Uint8Array(n).fill(fill);
  p[0] = 1;
  return p;
}

// ---------------------------------------------------------------------------------------------

Deno.test("fake middle proxy: handshake with the right secret, recorded with the peer address", async () => {
  await withFake({}, async (mp) => {
    const client = await connectRpc(mp);
    const ok = await mp.waitFor(event("handshake_ok"));
    assertEquals(ok.peerIp, "127.0.0.1");
    assertEquals(ok.peerPort, client.localPort);
    assertEquals(new TextDecoder().decode(ok.peerPid), "IPIPPRPDTIME");
    assertEquals(mp.handshakes, 1);
    assertEquals(mp.connections, 1);
    assertEquals(mp.liveConnections()[0]?.peerPort, client.localPort);
    await client.close();
    const closed = await mp.waitFor(event("closed"));
    assertEquals(closed.by, "peer");
    assertEquals(closed.handshakeOk, true);
    assertEquals(mp.connections, 0);
  });
});

Deno.test("fake middle proxy: a wrong secret fails the handshake (key selector or keys)", async () => {
  await withFake({}, async (mp) => {
    // Another secret altogether: the key selector differs.
    const other = randomBytes(128);
    await assertRejects(() => connectRpc(mp, other), Error, "closed during the handshake");
    const first = await mp.waitFor(event("handshake_failed"));
    assertEquals(first.reason, "bad_key_selector");

    // Same first 4 bytes, different rest: the keys differ, so the RPC_HANDSHAKE decrypts to junk.
    const sameSelector = SECRET.slice();
    sameSelector[100]! ^= 0xff;
    await assertRejects(() => connectRpc(mp, sameSelector), Error, "closed during the handshake");
    const second = await mp.waitFor(event("handshake_failed", (e) => e.conn === 2));
    assert(
      second.reason === "bad_crc" || second.reason === "bad_length",
      `unexpected reason ${second.reason}`,
    );
    assertEquals(mp.handshakes, 0);
    assertEquals(mp.stats.handshakeFailures, 2);
    await mp.waitUntil(() => mp.sockets === 0);
  });
});

Deno.test("fake middle proxy: the proxy's external IP enters the keys (proxyIp option)", async () => {
  await withFake({}, async (mp) => {
    await assertRejects(() => connectRpc(mp, SECRET, "203.0.113.7"), Error, "closed during");
    const failed = await mp.waitFor(event("handshake_failed"));
    assert(failed.reason === "bad_crc" || failed.reason === "bad_length");
  });
  await withFake({ proxyIp: "203.0.113.7" }, async (mp) => {
    const client = await connectRpc(mp, SECRET, "203.0.113.7");
    assertEquals(mp.handshakes, 1);
    await client.close();
  });
});

Deno.test("fake middle proxy: RPC_HANDSHAKE_ERROR and refusing connections", async () => {
  await withFake({ handshakeErrorCode: -7 }, async (mp) => {
    await assertRejects(() => connectRpc(mp), Error, "handshake failed: handshake_error");
    assertEquals((await mp.waitFor(event("handshake_failed"))).reason, "handshake_error");
    mp.setHandshakeError(null);
    const ok = await connectRpc(mp);
    mp.setRefuse(true);
    await assertRejects(() => connectRpc(mp), Error, "closed during the handshake");
    await mp.waitFor(event("refused"));
    assertEquals(mp.stats.refused, 1);
    assertEquals(mp.connections, 1); // The existing connection is untouched.
    mp.setRefuse(false);
    const again = await connectRpc(mp);
    assertEquals(mp.connections, 2);
    await ok.close();
    await again.close();
  });
});

Deno.test("fake middle proxy: req_pq_multi in PROXY_REQ gets resPQ for the same conn_id, req_DH_params CLOSE_EXT", async () => {
  await withFake({ expectedAdTag: AD_TAG }, async (mp) => {
    const client = await connectRpc(mp);
    const nonce = randomBytes(16);
    await client.send(client.req(77n, reqPqMulti(nonce)));
    const ans = await client.next(ansFor(77n));
    const res = parseResPq(ans.data);
    assert(res, "PROXY_ANS carries a resPQ");
    assertEquals(res.nonce, nonce);
    assertEquals(res.fingerprints, [...DEFAULT_FINGERPRINTS]);

    const req = await mp.waitFor(event("proxy_req"));
    assertEquals(req.connId, 77n);
    assertEquals(req.adTagOk, true);
    assertEquals(req.adTag, AD_TAG);
    assertEquals(req.notEncrypted, true);
    assertEquals(req.tag, "intermediate");
    assertEquals(req.flags, 0x2002100a);
    assertEquals(req.clientIp, CLIENT_IP);
    assertEquals(req.clientPort, 51234);
    assertEquals(req.proxyIp, "127.0.0.1");
    assertEquals(req.proxyPort, client.localPort);
    assertEquals(req.size, 40);
    assertEquals(req.newClient, true);
    assertEquals((await mp.waitFor(event("req_pq"))).multi, true);

    // Old req_pq on the same conn_id: the same server nonce; another conn_id: another one.
    const nonce2 = randomBytes(16);
    await client.send(client.req(77n, reqPq(nonce2)), client.req(78n, reqPqMulti(nonce)));
    const again = parseResPq((await client.next(ansFor(77n))).data)!;
    const other = parseResPq((await client.next(ansFor(78n))).data)!;
    assertEquals(again.nonce, nonce2);
    assertEquals(again.serverNonce, res.serverNonce);
    assertNotEquals(other.serverNonce, res.serverNonce);
    assertEquals(mp.activeConnIds().sort(), [77n, 78n]);

    await client.send(client.req(77n, reqDhParams(nonce, res.serverNonce)));
    const closeExt = await client.next(isType("close_ext"));
    assertEquals(closeExt.connId, 77n);
    const dh = await mp.waitFor(event("req_dh_params"));
    assertEquals([dh.connId, dh.nonceOk, dh.serverNonceOk], [77n, true, true]);
    assertEquals(mp.activeConnIds(), [78n]);

    // A wrong server nonce is recorded as such.
    await client.send(client.req(78n, reqDhParams(nonce, res.serverNonce)));
    await client.next(isType("close_ext"));
    const dh2 = await mp.waitFor(event("req_dh_params", (e) => e.connId === 78n));
    assertEquals([dh2.nonceOk, dh2.serverNonceOk], [true, false]);
    assertEquals(mp.activeConnIds(), []);
    await client.close();
  });
});

Deno.test("fake middle proxy: ad tag checks and echo of encrypted packets in mtproto mode", async () => {
  await withFake({ expectedAdTag: AD_TAG }, async (mp) => {
    const client = await connectRpc(mp);
    const packet = encryptedPacket(64);
    await client.send(client.req(5n, packet, { adTag: null }), client.req(6n, packet));
    assertEquals((await client.next(ansFor(5n))).data, packet);
    assertEquals((await client.next(ansFor(6n))).data, packet);
    const noTag = await mp.waitFor(event("proxy_req", (e) => e.connId === 5n));
    assertEquals([noTag.adTag, noTag.adTagOk, noTag.notEncrypted], [null, false, false]);
    assertEquals((await mp.waitFor(event("proxy_req", (e) => e.connId === 6n))).adTagOk, true);
    assertEquals(mp.stats.adTagMismatches, 1);
    await client.close();
  });
});

Deno.test("fake middle proxy: quick ack produces SIMPLE_ACK before the answer", async () => {
  await withFake({}, async (mp) => {
    const client = await connectRpc(mp);
    const packet = encryptedPacket(32);
    await client.send(client.req(9n, packet, { quickAck: true }));
    await client.until(() => client.messages.length >= 2);
    const [ack, ans] = client.messages;
    assert(ack?.type === "simple_ack" && ans?.type === "proxy_ans");
    assertEquals(ack.connId, 9n);
    assertEquals(ack.confirm.length, 4);
    assert((ack.confirm[3]! & 0x80) !== 0, "confirm has the high bit set (u32 LE)");
    assertEquals(ans.data, packet);
    const sent = await mp.waitFor(event("simple_ack"));
    assertEquals(sent.confirm, ack.confirm);
    const req = await mp.waitFor(event("proxy_req"));
    assertEquals(req.quickAck, true);
    assert((req.flags & PROXY_REQ_FLAGS.QUICKACK) !== 0);
    await client.close();
  });
});

Deno.test("fake middle proxy: CLOSE_CONN is recorded and forgets the conn_id", async () => {
  await withFake({}, async (mp) => {
    const client = await connectRpc(mp);
    await client.send(client.req(11n, encryptedPacket(16)), client.req(12n, encryptedPacket(16)));
    await mp.waitUntil(() => mp.activeConnIds().length === 2);
    await client.send(encodeCloseConn(11n), encodeCloseConn(99n));
    const known = await mp.waitFor(event("close_conn", (e) => e.connId === 11n));
    const unknown = await mp.waitFor(event("close_conn", (e) => e.connId === 99n));
    assertEquals([known.known, unknown.known], [true, false]);
    assertEquals(mp.activeConnIds(), [12n]);
    assertEquals(mp.stats.closeConns, 2);
    await client.close();
  });
});

Deno.test("fake middle proxy: closeConnection drops one socket, the others keep working", async () => {
  await withFake({}, async (mp) => {
    const a = await connectRpc(mp);
    const b = await connectRpc(mp);
    await a.send(a.req(1n, encryptedPacket(16)));
    await b.send(b.req(2n, encryptedPacket(16)));
    await a.next(ansFor(1n));
    await b.next(ansFor(2n));
    assertEquals(mp.connections, 2);
    assertEquals(mp.liveConnections().map((c) => c.peerPort), [a.localPort, b.localPort]);

    const dropped = await mp.closeConnection();
    assertEquals(dropped, 1);
    await a.closedByPeer();
    const closed = await mp.waitFor(event("closed", (e) => e.conn === 1));
    assertEquals(closed.by, "test");
    assertEquals(mp.connections, 1);
    assertEquals(mp.activeConnIds(), [2n]);

    const packet = encryptedPacket(48);
    await b.send(b.req(2n, packet));
    assertEquals((await b.next(ansFor(2n))).data, packet);
    assertEquals(await mp.closeConnection(5), null);
    assertEquals(await mp.closeAll(), 1);
    await b.closedByPeer();
    assertEquals(mp.connections, 0);
    await a.close();
    await b.close();
  });
});

Deno.test("fake middle proxy: ping/pong both ways", async () => {
  await withFake({}, async (mp) => {
    const client = await connectRpc(mp);
    const [id] = await mp.ping();
    const ping = await client.next(isType("ping"));
    assertEquals(ping.pingId, id);
    await client.send(encodePong(ping.pingId), encodePong(12345n));
    const pong = await mp.waitFor(event("pong", (e) => e.pingId === id));
    assertEquals(pong.expected, true);
    assertEquals((await mp.waitFor(event("pong", (e) => e.pingId === 12345n))).expected, false);

    await client.send(encodePing(-42n));
    assertEquals((await client.next(isType("pong"))).pingId, -42n);
    assertEquals((await mp.waitFor(event("ping"))).pingId, -42n);
    await client.close();
  });
});

Deno.test("fake middle proxy: sendToClient and sendCloseExt", async () => {
  await withFake({}, async (mp) => {
    const client = await connectRpc(mp);
    await client.send(client.req(21n, encryptedPacket(16)));
    await client.next(ansFor(21n));
    const push = randomBytes(40);
    await mp.sendToClient(21n, push);
    assertEquals((await client.next(ansFor(21n))).data, push);
    await assertRejects(() => mp.sendToClient(22n, push), Error, "knows conn_id 22");
    // An explicit connection sends even for a conn_id it does not know.
    await mp.sendToClient(22n, push, { conn: 1, flags: 8 });
    assertEquals((await client.next(ansFor(22n))).flags, 8);
    await mp.sendCloseExt(21n);
    assertEquals((await client.next(isType("close_ext"))).connId, 21n);
    assertEquals(mp.activeConnIds(), []);
    await client.close();
  });
});

Deno.test("fake middle proxy: stall holds reading until resumed", async () => {
  await withFake({ mode: "echo" }, async (mp) => {
    const client = await connectRpc(mp);
    await client.send(client.req(1n, encryptedPacket(16)));
    await client.next(ansFor(1n));
    mp.stall(true);
    assert(mp.stalled);
    await client.send(client.req(1n, encryptedPacket(16)));
    // The fake read the request (its read loop was waiting on the socket) and holds it.
    await mp.waitUntil(() => mp.heldReads === 1);
    assertEquals(mp.stats.proxyReqs, 1, "nothing handled while stalled");
    assertEquals(client.messages.length, 0);

    // Plenty of data while stalled: none of it is handled until the stall ends.
    const packet = encryptedPacket(60 * 1024, 7);
    const bodies: FullBody[] = [];
    const header = new ProxyReqHeader({
      connId: 2n,
      tag: "intermediate",
      clientIp: CLIENT_IP,
      clientPort: 1,
      proxyIp: "127.0.0.1",
      proxyPort: client.localPort,
    });
    const count = 512; // 30 MiB
    for (let i = 0; i < count; i++) bodies.push([header.header(packet), packet]);
    const writing = client.write(client.encodeMany(bodies));
    // Its read loop stays parked on the one read it holds: nothing more is read or handled.
    assertEquals([mp.heldReads, mp.stats.proxyReqs], [1, 1], "still nothing handled while stalled");
    assertEquals(client.messages.length, 0);

    mp.stall(false);
    assert(await writing);
    await client.until(
      () => client.messages.filter((m) => m.type === "proxy_ans").length === count + 1,
      20_000,
    );
    assertEquals(mp.stats.proxyReqs, count + 2);
    await client.close();
  });
});

Deno.test("fake middle proxy: echo mode multiplexes 1,000 clients and only counts packets", async () => {
  await withFake({ mode: "echo", expectedAdTag: AD_TAG }, async (mp) => {
    const clients = [await connectRpc(mp), await connectRpc(mp)];
    const perClient = 1000;
    const rounds = 3;
    for (let round = 0; round < rounds; round++) {
      await Promise.all(clients.map((c, ci) => {
        const bodies: Uint8Array[] = [];
        for (let i = 0; i < perClient / 2; i++) {
          const id = BigInt(ci * 100_000 + i);
          const packet = new Uint8Array(64);
          const v = new DataView(packet.buffer);
          v.setBigInt64(0, id + 1n, true);
          v.setUint32(8, round, true);
          bodies.push(c.req(id, packet, { quickAck: i % 100 === 0 }));
        }
        return c.send(...bodies);
      }));
    }
    const total = perClient * rounds;
    await mp.waitUntil(() => mp.stats.proxyReqs === total);
    for (const [ci, c] of clients.entries()) {
      await c.until(() => c.messages.length >= (perClient / 2) * rounds + 5 * rounds);
      const answers = c.messages.filter(isType("proxy_ans"));
      assertEquals(answers.length, (perClient / 2) * rounds);
      for (const a of answers) {
        const v = new DataView(a.data.buffer, a.data.byteOffset);
        assertEquals(v.getBigInt64(0, true), a.connId + 1n);
        assert(a.connId >= BigInt(ci * 100_000) && a.connId < BigInt(ci * 100_000 + perClient));
      }
      assertEquals(c.messages.filter(isType("simple_ack")).length, 5 * rounds);
    }
    assertEquals(mp.stats.clients, perClient);
    assertEquals(mp.stats.answers, total);
    assertEquals(mp.stats.answerBytes, total * 64);
    assertEquals(mp.stats.adTagMismatches, 0);
    assertEquals(mp.activeConnIds().length, perClient);
    assertEquals(mp.events.filter((e) => e.type === "proxy_req").length, 0);
    assertEquals(mp.events.length, 2); // The two handshakes.
    for (const c of clients) await c.close();
  });
});

Deno.test("fake middle proxy: close() ends live connections and handshaking sockets", async () => {
  const mp = await startFakeMiddleProxy({ proxySecret: SECRET });
  const client = await connectRpc(mp);
  const idle = await Deno.connect({ hostname: "127.0.0.1", port: mp.port });
  await mp.waitUntil(() => mp.sockets === 2);
  mp.stall(true);
  await mp.close();
  await client.closedByPeer();
  assertEquals(
    mp.events.filter((e) => e.type === "closed").map((e) => e.type === "closed" && e.by),
    ["server", "server"],
  );
  assertEquals((await mp.waitFor(event("handshake_failed"))).reason, "eof");
  closeQuietly(idle);
  await client.close();
});
