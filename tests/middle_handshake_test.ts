import { concatBytes } from "../lib/protocol/bytes.ts";
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { bytesOf, hex, unhex, vector } from "./vectors.ts";
import { createAes, randomBytes } from "../lib/crypto.ts";
import { encodeFull, type FullCodec } from "../lib/protocol/full.ts";
import {
  type ClientHandshakeOptions,
  DEFAULT_PID,
  deriveMiddleKey,
  deriveMiddleKeys,
  encodeRpcHandshake,
  encodeRpcHandshakeError,
  encodeRpcNonce,
  type HandshakeStep,
  keySelector,
  MiddleClientHandshake,
  MiddleServerHandshake,
  parseRpcHandshake,
  parseRpcNonce,
  RPC_HANDSHAKE_ERROR,
  type ServerHandshakeOptions,
} from "../lib/protocol/middle_handshake.ts";
import {
  decodeRpc,
  encodeCloseExt,
  encodePing,
  encodePong,
  encodeProxyAns,
  encodeSimpleAck,
  formatIp,
  ProxyReqHeader,
} from "../lib/protocol/rpc.ts";

const ascii = (s: string) => new TextEncoder().encode(s);

function splitAddr(text: string): { ip: string; port: number } {
  const i = text.lastIndexOf(":");
  return { ip: text.slice(0, i), port: Number(text.slice(i + 1)) };
}

function closeStep(step: HandshakeStep): void {
  if (step.kind === "done") step.codec.close();
}

// ---------------------------------------------------------------------------------------------
// Vectors

/** The secret, nonces and time of a key-derivation vector. */
function nonceInputs(v: ReturnType<typeof vector>) {
  return {
    proxySecret: bytesOf(v, "proxy_secret"),
    serverNonce: bytesOf(v, "srv_nonce"),
    clientNonce: bytesOf(v, "clt_nonce"),
    clientTs: v.inputs.clt_ts as number,
  };
}

Deno.test("deriveMiddleKeys matches middle_key_derivation_ipv4 both ways", () => {
  const v = vector("middle_key_derivation_ipv4");
  const keys = deriveMiddleKeys({
    ...nonceInputs(v),
    client: { ip: v.inputs.our_ip as string, port: v.inputs.our_port as number },
    server: { ip: v.inputs.middle_proxy_ip as string, port: v.inputs.middle_proxy_port as number },
  });
  assertEquals(hex(keys.client.key), v.expected.client_key);
  assertEquals(hex(keys.client.iv), v.expected.client_iv);
  assertEquals(hex(keys.server.key), v.expected.server_key);
  assertEquals(hex(keys.server.iv), v.expected.server_iv);
});

Deno.test("deriveMiddleKey matches the Erlang unit-test vector", () => {
  const v = vector("middle_key_derivation_erlang_unit");
  const k = deriveMiddleKey({
    ...nonceInputs(v),
    client: { ip: v.inputs.our_ip as string, port: v.inputs.our_port as number },
    server: { ip: v.inputs.middle_proxy_ip as string, port: v.inputs.middle_proxy_port as number },
  }, "CLIENT");
  assertEquals(hex(k.key), v.expected.client_key);
  assertEquals(hex(k.iv), v.expected.client_iv);
});

Deno.test("deriveMiddleKey matches the IPv6 vector, from bytes or from text", () => {
  const v = vector("middle_key_derivation_ipv6");
  const base = nonceInputs(v);
  const fromBytes = deriveMiddleKey({
    ...base,
    client: { ip: bytesOf(v, "our_ipv6"), port: v.inputs.our_port as number },
    server: { ip: bytesOf(v, "middle_proxy_ipv6"), port: v.inputs.middle_proxy_port as number },
  }, "CLIENT");
  assertEquals(hex(fromBytes.key), v.expected.client_key);
  assertEquals(hex(fromBytes.iv), v.expected.client_iv);
  const fromText = deriveMiddleKey({
    ...base,
    client: { ip: "2001:db8::7", port: v.inputs.our_port as number },
    server: { ip: "[2001:67c:4e8:f002::]", port: v.inputs.middle_proxy_port as number },
  }, "CLIENT");
  assertEquals(hex(fromText.key), v.expected.client_key);
});

Deno.test("deriveMiddleKey treats IPv4-mapped addresses as IPv4 and refuses mixed families", () => {
  const v = vector("middle_key_derivation_ipv4");
  const base = nonceInputs(v);
  const k = deriveMiddleKey({
    ...base,
    client: { ip: "::ffff:203.0.113.7", port: 40001 },
    server: { ip: "::ffff:149.154.175.50", port: 8888 },
  }, "CLIENT");
  assertEquals(hex(k.key), v.expected.client_key);
  assertThrows(
    () =>
      deriveMiddleKey({
        ...base,
        client: { ip: "203.0.113.7", port: 1 },
        server: { ip: "2001:db8::1", port: 2 },
      }, "CLIENT"),
    RangeError,
    "Both ends",
  );
  assertThrows(
    () =>
      deriveMiddleKey({
        ...base,
        serverNonce: new Uint8Array(15),
        client: { ip: "203.0.113.7", port: 1 },
        server: { ip: "149.154.175.50", port: 2 },
      }, "SERVER"),
    RangeError,
    "16 bytes",
  );
});

Deno.test("encodeRpcNonce matches rpc_nonce and parses back", () => {
  const v = vector("rpc_nonce");
  const secret = bytesOf(vector("middle_key_derivation_ipv4"), "proxy_secret");
  const body = encodeRpcNonce({
    keySelector: keySelector(secret),
    schema: 1,
    cryptoTs: 1700000000,
    nonce: bytesOf(v, "clt_nonce"),
  });
  assertEquals(hex(body), v.expected.packet);
  const n = parseRpcNonce(body);
  assert(n !== null);
  assertEquals(hex(n.keySelector), "c4f9faca");
  assertEquals(n.schema, 1);
  assertEquals(n.cryptoTs, 1700000000);
  assertEquals(hex(n.nonce), v.inputs.clt_nonce);
  assertEquals(parseRpcNonce(body.subarray(0, 31)), null);
  assertEquals(parseRpcNonce(concatBytes([body, new Uint8Array(4)])), null);
  assertEquals(
    parseRpcNonce(encodeRpcHandshake({ senderPid: DEFAULT_PID, peerPid: DEFAULT_PID })),
    null,
  );
});

Deno.test("RPC_HANDSHAKE frame and CBC match middle_handshake_frame_cbc", () => {
  const v = vector("middle_handshake_frame_cbc");
  const body = encodeRpcHandshake({ senderPid: DEFAULT_PID, peerPid: DEFAULT_PID });
  const frame = encodeFull(body, -1, true);
  assertEquals(hex(frame), v.inputs.frame_plain);
  const enc = createAes("cbc-encrypt", bytesOf(v, "key"), bytesOf(v, "iv"));
  enc.update(frame);
  enc.close();
  assertEquals(hex(frame), v.expected.cipher);
});

Deno.test("RPC_HANDSHAKE and RPC_HANDSHAKE_ERROR parse", () => {
  const hs = parseRpcHandshake(
    encodeRpcHandshake({ senderPid: ascii("SRVPIDSRVPID"), peerPid: DEFAULT_PID, flags: 0 }),
  );
  assert(hs?.kind === "handshake");
  assertEquals(hs.flags, 0);
  assertEquals(hs.senderPid, ascii("SRVPIDSRVPID"));
  assertEquals(hs.peerPid, DEFAULT_PID);
  const err = encodeRpcHandshakeError(-5, DEFAULT_PID);
  assertEquals(hex(err.subarray(0, 4)), "dabe276a");
  assertEquals(parseRpcHandshake(err), { kind: "error", errorCode: -5, senderPid: DEFAULT_PID });
  assertEquals(RPC_HANDSHAKE_ERROR, 0x6a27beda);
  assertEquals(parseRpcHandshake(err.subarray(0, 19)), null);
  assertEquals(parseRpcHandshake(new Uint8Array(32)), null);
  assertThrows(() => encodeRpcHandshake({ senderPid: new Uint8Array(11), peerPid: DEFAULT_PID }));
});

// ---------------------------------------------------------------------------------------------
// middle_handshake_wire: both ends reproduce the recorded bytes

const WIRE = vector("middle_handshake_wire");
const SECRET = bytesOf(WIRE, "proxy_secret");
const OURS = splitAddr(WIRE.inputs.our_addr as string);
const MP = splitAddr(WIRE.inputs.middle_proxy_addr as string);
const SERVER_WIRE = bytesOf(WIRE, "server_wire");
const CLIENT_WIRE = bytesOf(WIRE, "client_wire", "expected");

function wireClient(overrides: Partial<ClientHandshakeOptions> = {}): MiddleClientHandshake {
  return new MiddleClientHandshake({
    proxySecret: SECRET,
    nonce: bytesOf(WIRE, "clt_nonce"),
    cryptoTs: WIRE.inputs.crypto_ts as number,
    local: OURS,
    remote: MP,
    ...overrides,
  });
}

/** The middle proxy behind server_wire: its nonce and ts are in the wire, its pid in the answer. */
function wireServer(overrides: Partial<ServerHandshakeOptions> = {}): MiddleServerHandshake {
  const nonce = parseRpcNonce(SERVER_WIRE.subarray(8, 40))!;
  return new MiddleServerHandshake({
    proxySecret: SECRET,
    nonce: nonce.nonce.slice(),
    cryptoTs: nonce.cryptoTs,
    local: MP,
    remote: OURS,
    senderPid: ascii("SRVPIDSRVPID"),
    ...overrides,
  });
}

/** Feed `chunks` to a handshake; return everything it wanted sent and its last step. */
function drive(
  hs: MiddleClientHandshake | MiddleServerHandshake,
  chunks: Uint8Array[],
): { sent: Uint8Array; last: HandshakeStep } {
  const sent: Uint8Array[] = [];
  let last: HandshakeStep = { kind: "continue", send: null };
  for (const c of chunks) {
    last = hs.receive(c);
    if (last.send) sent.push(last.send);
    if (last.kind !== "continue") break;
  }
  return { sent: concatBytes(sent), last };
}

function* chunkings(wire: Uint8Array): Generator<Uint8Array[]> {
  yield [wire.slice()];
  for (let i = 1; i < wire.length; i++) yield [wire.slice(0, i), wire.slice(i)];
  yield Array.from(wire, (b) => Uint8Array.of(b));
  for (let k = 3; k < 40; k += 6) {
    const out: Uint8Array[] = [];
    for (let off = 0; off < wire.length; off += k) out.push(wire.slice(off, off + k));
    yield out;
  }
}

Deno.test("MiddleClientHandshake reproduces middle_handshake_wire for any chunking", () => {
  for (const chunks of chunkings(SERVER_WIRE)) {
    const hs = wireClient();
    const first = hs.start();
    const { sent, last } = drive(hs, chunks);
    assertEquals(hex(first) + hex(sent), WIRE.expected.client_wire);
    assert(last.kind === "done", last.kind);
    assertEquals(last.peerPid, ascii("SRVPIDSRVPID"));
    assertEquals(last.frames, []);
    assertEquals(last.codec.nextSendSeq, 0);
    assertEquals(last.codec.nextReceiveSeq, 0);
    last.codec.close();
    hs.close(); // no-op after done: the codec is the caller's
  }
});

Deno.test("MiddleServerHandshake reproduces the server side of middle_handshake_wire", () => {
  for (const chunks of chunkings(CLIENT_WIRE)) {
    const hs = wireServer();
    const { sent, last } = drive(hs, chunks);
    assertEquals(hex(sent), WIRE.inputs.server_wire);
    assert(last.kind === "done", last.kind);
    assertEquals(last.peerPid, DEFAULT_PID);
    last.codec.close();
  }
});

Deno.test("MiddleServerHandshake pads its nonce when asked and the client still agrees", () => {
  const server = wireServer({ padNonce: true });
  const client = wireClient();
  const s1 = server.receive(client.start());
  assert(s1.kind === "continue" && s1.send !== null);
  assertEquals(s1.send.length, 48);
  const c1 = client.receive(s1.send);
  const s2 = server.receive(c1.send!);
  const c2 = client.receive(s2.send!);
  assertEquals([s2.kind, c2.kind], ["done", "done"]);
  closeStep(s2);
  closeStep(c2);
});

// ---------------------------------------------------------------------------------------------
// Refusals

Deno.test("MiddleClientHandshake rejects a wrong key selector, schema or message", () => {
  const nonceFrame = (body: Uint8Array) => encodeFull(body, -2);
  const nonce = (selector: Uint8Array, schema: number) =>
    nonceFrame(
      encodeRpcNonce({ keySelector: selector, schema, cryptoTs: 1, nonce: new Uint8Array(16) }),
    );
  const cases: [Uint8Array, string][] = [
    [nonce(unhex("00000000"), 1), "bad_key_selector"],
    [nonce(keySelector(SECRET), 2), "bad_schema"],
    [nonceFrame(new Uint8Array(32)), "bad_nonce"],
    [nonceFrame(new Uint8Array(16)), "bad_nonce"],
    [encodeFull(new Uint8Array(32), -1), "bad_seq"],
    [unhex("2c000000feffffff" + "00".repeat(36)), "bad_crc"],
    [unhex("08000000"), "bad_length"],
  ];
  for (const [wire, reason] of cases) {
    const hs = wireClient();
    hs.start();
    const step = hs.receive(wire);
    assert(step.kind === "reject");
    assertEquals(step.reason, reason);
    assertThrows(() => hs.receive(new Uint8Array(4)), Error, "failed");
    hs.close();
  }
});

Deno.test("MiddleClientHandshake rejects a foreign peer pid and a handshake error", () => {
  const foreign = wireClient({ senderPid: ascii("OTHERPIDXXXX") });
  foreign.start();
  const r = foreign.receive(SERVER_WIRE.slice());
  assert(r.kind === "reject");
  assertEquals(r.reason, "bad_peer_pid");
  assert(r.send !== null, "the RPC_HANDSHAKE was still produced");

  const server = wireServer({ errorCode: -17 });
  const client = wireClient();
  const s1 = server.receive(client.start());
  const c1 = client.receive(s1.send!);
  const s2 = server.receive(c1.send!);
  assert(s2.kind === "reject");
  assertEquals([s2.reason, s2.errorCode], ["handshake_error", -17]);
  const c2 = client.receive(s2.send!);
  assert(c2.kind === "reject");
  assertEquals([c2.reason, c2.errorCode], ["handshake_error", -17]);
});

Deno.test("MiddleServerHandshake rejects a client with another proxy secret", () => {
  const server = wireServer({ proxySecret: randomBytes(128) });
  const client = wireClient();
  const s1 = server.receive(client.start());
  assert(s1.kind === "reject");
  assertEquals(s1.reason, "bad_key_selector");
  assertEquals(s1.send, null);
  client.close();
});

Deno.test("MiddleServerHandshake rejects a second frame that is not RPC_HANDSHAKE", () => {
  const server = wireServer();
  const client = wireClient();
  const s1 = server.receive(client.start());
  assert(s1.kind === "continue");
  // Encrypt garbage with the right key: a valid frame of the wrong kind.
  const keys = deriveMiddleKeys({
    proxySecret: SECRET,
    serverNonce: parseRpcNonce(s1.send!.subarray(8, 40))!.nonce,
    clientNonce: bytesOf(WIRE, "clt_nonce"),
    clientTs: WIRE.inputs.crypto_ts as number,
    client: OURS,
    server: MP,
  });
  const frame = encodeFull(encodePing(1n), -1, true);
  const enc = createAes("cbc-encrypt", keys.client.key, keys.client.iv);
  enc.update(frame);
  enc.close();
  const s2 = server.receive(frame);
  assert(s2.kind === "reject");
  assertEquals(s2.reason, "bad_handshake");
  client.close();
  server.close();
});

Deno.test("handshake objects check their call order and free their ciphers on close", () => {
  const hs = wireClient();
  assertThrows(() => hs.receive(new Uint8Array(1)), Error, '"new"');
  hs.start();
  assertThrows(() => hs.start(), Error, "already started");
  const step = hs.receive(SERVER_WIRE.slice(0, 50)); // nonce + the start of the answer
  assert(step.kind === "continue" && step.send !== null);
  hs.close();
  hs.close();
  assertThrows(() => hs.receive(new Uint8Array(1)), Error, "failed");
  assertThrows(
    () => new MiddleClientHandshake({ ...optionsOf(), nonce: new Uint8Array(8) }),
    RangeError,
    "Nonce",
  );
});

function optionsOf(): ClientHandshakeOptions {
  return {
    proxySecret: SECRET,
    nonce: new Uint8Array(16),
    cryptoTs: 0,
    local: OURS,
    remote: MP,
  };
}

// ---------------------------------------------------------------------------------------------
// A whole session: handshake, then RPC traffic both ways

/** Deliver `wire` in pseudo-random pieces; return the bodies that came out. */
function deliver(codec: FullCodec, wire: Uint8Array, seed: number): Uint8Array[] {
  const frames: Uint8Array[] = [];
  let s = seed;
  for (let off = 0; off < wire.length;) {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    const n = 1 + (s % 70);
    const r = codec.decode(wire.slice(off, off + n));
    assertEquals(r.reject, null);
    frames.push(...r.frames);
    off += n;
  }
  return frames;
}

for (
  const [name, proxy, mp] of [
    ["IPv4", { ip: "203.0.113.7", port: 40001 }, { ip: "149.154.175.50", port: 8888 }],
    ["IPv6", { ip: "2001:db8::7", port: 40001 }, { ip: "2001:67c:4e8:f002::d", port: 8888 }],
  ] as const
) {
  Deno.test(`client and server handshakes agree and carry RPC traffic over ${name}`, () => {
    const secret = randomBytes(128);
    const client = new MiddleClientHandshake({
      proxySecret: secret,
      nonce: randomBytes(16),
      cryptoTs: 1700000000,
      local: proxy,
      remote: mp,
      senderPid: ascii("PROXYPID0001"),
    });
    const server = new MiddleServerHandshake({
      proxySecret: secret,
      nonce: randomBytes(16),
      cryptoTs: 1700000002,
      local: mp,
      remote: proxy,
    });
    // Handshake with the bytes cut into small pieces both ways.
    const hello = client.start();
    const { sent: toClient1, last: s1 } = drive(server, [hello.subarray(0, 7), hello.subarray(7)]);
    assert(s1.kind === "continue");
    const c1 = drive(client, [toClient1.subarray(0, 10), toClient1.subarray(10)]);
    assert(c1.last.kind === "continue");
    const s2 = drive(server, Array.from(c1.sent, (b) => Uint8Array.of(b)));
    assert(s2.last.kind === "done");
    const c2 = drive(client, [s2.sent]);
    assert(c2.last.kind === "done");
    assertEquals(c2.last.peerPid, DEFAULT_PID);
    assertEquals(s2.last.peerPid, ascii("PROXYPID0001"));
    const proxyCodec = c2.last.codec;
    const mpCodec = s2.last.codec;
    try {
      // Proxy -> MP: PROXY_REQs for two clients, header and packet framed without joining.
      const headers = [1n, -2n].map((connId, i) =>
        new ProxyReqHeader({
          connId,
          tag: i === 0 ? "padded" : "abridged",
          clientIp: i === 0 ? "198.51.100.23" : "2001:db8::42",
          clientPort: 50000 + i,
          proxyIp: proxy.ip,
          proxyPort: proxy.port,
          adTag: unhex("dcbe8f1493fa4cd9ab300891c0b5b326"),
        })
      );
      const packets = [new Uint8Array(40), randomBytes(1024), randomBytes(4), randomBytes(16)];
      const up = concatBytes(packets.map((p, i) => {
        const h = headers[i % 2]!;
        return proxyCodec.encode([h.header(p, i === 3), p]);
      }));
      const got = deliver(mpCodec, up, 11).map(decodeRpc);
      assertEquals(got.length, packets.length);
      got.forEach((m, i) => {
        assert(m.type === "proxy_req");
        assertEquals(m.connId, i % 2 === 0 ? 1n : -2n);
        assertEquals(m.tag, i % 2 === 0 ? "padded" : "abridged");
        assertEquals(m.notEncrypted, i === 0);
        assertEquals(m.quickAck, i === 3);
        assertEquals(formatIp(m.clientIp), i % 2 === 0 ? "198.51.100.23" : "2001:db8::42");
        assertEquals(hex(m.payload), hex(packets[i]!));
        assertEquals(hex(m.adTag!), "dcbe8f1493fa4cd9ab300891c0b5b326");
      });

      // MP -> proxy: answers, an ack, a ping and a close.
      const data = randomBytes(3000);
      const down = concatBytes([
        mpCodec.encode(encodeProxyAns(1n, data)),
        mpCodec.encode(encodeSimpleAck(-2n, unhex("01020304"))),
        mpCodec.encode(encodePing(77n)),
        mpCodec.encode(encodeProxyAns(-2n, new Uint8Array(0))),
        mpCodec.encode(encodeCloseExt(1n)),
      ]);
      const msgs = deliver(proxyCodec, down, 5).map(decodeRpc);
      assertEquals(msgs.map((m) => m.type), [
        "proxy_ans",
        "simple_ack",
        "ping",
        "proxy_ans",
        "close_ext",
      ]);
      const ans = msgs[0]!;
      assert(ans.type === "proxy_ans");
      assertEquals(hex(ans.data), hex(data));
      const ping = msgs[2]!;
      assert(ping.type === "ping");
      // The proxy answers the ping; the MP reads the pong.
      const pong = deliver(mpCodec, proxyCodec.encode(encodePong(ping.pingId)), 3).map(decodeRpc);
      assertEquals(pong, [{ type: "pong", pingId: 77n }]);
      assertEquals(proxyCodec.nextSendSeq, packets.length + 1);
      assertEquals(proxyCodec.nextReceiveSeq, 5);
    } finally {
      proxyCodec.close();
      mpCodec.close();
    }
  });
}

Deno.test("data frames right behind the handshake answer come back with done", () => {
  const server = wireServer();
  const client = wireClient();
  const s1 = server.receive(client.start());
  const c1 = client.receive(s1.send!);
  const s2 = server.receive(c1.send!);
  assert(s2.kind === "done");
  const extra = s2.codec.encode(encodeProxyAns(9n, new Uint8Array(8)));
  const c2 = client.receive(concatBytes([s2.send!, extra]));
  assert(c2.kind === "done");
  assertEquals(c2.frames.map(decodeRpc), [{
    type: "proxy_ans",
    flags: 0,
    connId: 9n,
    data: new Uint8Array(8),
  }]);
  s2.codec.close();
  c2.codec.close();
});
