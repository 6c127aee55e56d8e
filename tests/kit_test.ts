import { assert, assertEquals, assertNotEquals, assertRejects } from "./assert.ts";
import { hex } from "./vectors.ts";
import { randomBytes, sha256, type StreamCipher, x25519PublicKey } from "../lib/crypto.ts";
import { openClientInit, type TransportTag } from "../lib/protocol/obfuscated2.ts";
import { decodeFrame, encodeFrame } from "../lib/protocol/framing.ts";
import {
  buildServerHello,
  encodeAppData,
  parseClientHello,
  signClientHello,
  TlsRecordReader,
  verifyClientHello,
} from "../lib/protocol/fake_tls.ts";
import { type FakeDcEvent, startFakeDc } from "./kit/fake_dc.ts";
import { buildClientHello, PADDED_HELLO_LEN } from "./kit/client_hello.ts";
import { connectTestClient, openRawConnection, type SecretKind } from "./kit/test_client.ts";
import {
  DEFAULT_FINGERPRINTS,
  isReqDhParams,
  parseResPq,
  parseUnencrypted,
  REQ_PQ_MULTI,
  reqDhParams,
  reqPqMulti,
  resPq,
} from "./kit/tl.ts";

// ---------------------------------------------------------------------------------------------
// TL

Deno.test("reqPqMulti builds an unencrypted message that parseUnencrypted reads back", () => {
  const nonce = randomBytes(16);
  const msg = reqPqMulti(nonce, 0x1234n);
  assertEquals(msg.length, 40);
  assertEquals(hex(msg.subarray(0, 8)), "0000000000000000");
  const parsed = parseUnencrypted(msg);
  assert(parsed);
  assertEquals(parsed.msgId, 0x1234n);
  assertEquals(parsed.constructor, REQ_PQ_MULTI);
  assertEquals(hex(parsed.body.subarray(0, 4)), "f18e7ebe");
  assertEquals(parsed.body.subarray(4), nonce);
  assertEquals(parseUnencrypted(msg.subarray(0, 39)), null);
});

Deno.test("resPq writes pq and the fingerprints the clients compare as i64 LE", () => {
  const nonce = randomBytes(16);
  const serverNonce = randomBytes(16);
  const msg = resPq(nonce, serverNonce);
  const body = parseUnencrypted(msg)!.body;
  assertEquals(hex(body.subarray(0, 4)), "63241605");
  assertEquals(hex(body.subarray(36, 48)), "0817ed48941a08f981000000");
  assertEquals(hex(body.subarray(48, 56)), "15c4b51c02000000");
  assertEquals(hex(body.subarray(56, 64)), "85fd64de851d9dd0");
  const view = new DataView(body.buffer, body.byteOffset);
  assertEquals(view.getBigInt64(56, true), -3414540481677951611n);
  assertEquals(view.getBigUint64(64, true), 0x0bc35f3509f7b7a5n);
  const parsed = parseResPq(msg);
  assert(parsed);
  assertEquals(parsed.nonce, nonce);
  assertEquals(parsed.serverNonce, serverNonce);
  assertEquals(hex(parsed.pq), "17ed48941a08f981");
  assertEquals(parsed.fingerprints, [...DEFAULT_FINGERPRINTS]);
  assertEquals(parseResPq(reqPqMulti(nonce)), null);
});

Deno.test("isReqDhParams extracts both nonces from a req_DH_params body", () => {
  const nonce = randomBytes(16);
  const serverNonce = randomBytes(16);
  const body = parseUnencrypted(reqDhParams(nonce, serverNonce))!.body;
  assertEquals(isReqDhParams(body), { nonce, serverNonce });
  assertEquals(isReqDhParams(parseUnencrypted(reqPqMulti(nonce))!.body), null);
});

// ---------------------------------------------------------------------------------------------
// ClientHello

Deno.test("buildClientHello hellos parse, carry the SNI and verify once signed", () => {
  const secret = randomBytes(16);
  for (const mlkem of [true, false]) {
    for (const grease of [true, false]) {
      for (const shuffle of [true, false]) {
        const record = buildClientHello({ sni: "cdn.example.org", mlkem, grease, shuffle });
        assertEquals(hex(record.subarray(0, 3)), "160301");
        assertEquals((record[3]! << 8 | record[4]!) + 5, record.length);
        if (mlkem) assert(record.length > 1700, `ML-KEM hello is ${record.length} bytes`);
        else assert(record.length >= PADDED_HELLO_LEN, `hello is ${record.length} bytes`);
        const signed = signClientHello(record, secret, 1_700_000_000);
        const step = parseClientHello(signed);
        assert(step.kind === "hello");
        assertEquals(step.hello.sni, "cdn.example.org");
        assertEquals(step.hello.sessionId.length, 32);
        assertEquals(step.rest.length, 0);
        assertEquals(step.hello.cipherSuites.includes(0x1301), true);
        const g = step.hello.cipherSuites[0]!;
        assertEquals((g & 0x0f0f) === 0x0a0a, grease);
        assertEquals(verifyClientHello(step.hello, secret, 1_700_000_000, 600), {
          kind: "ok",
          timestamp: 1_700_000_000,
        });
        assertEquals(verifyClientHello(step.hello, randomBytes(16), 1_700_000_000, 600), {
          kind: "bad_digest",
        });
      }
    }
  }
});

function _extensionTypes(record: Uint8Array): number[] {
  let p = 43;
  p += 1 + record[p]!;
  p += 2 + ((record[p]! << 8) | record[p + 1]!);
  p += 1 + record[p]!;
  const end = p + 2 + ((record[p]! << 8) | record[p + 1]!);
  p += 2;
  const types: number[] = [];
  while (p < end) {
    types.push((record[p]! << 8) | record[p + 1]!);
    p += 4 + ((record[p + 2]! << 8) | record[p + 3]!);
  }
  assertEquals(p, end);
  return types;
}

Deno.test("buildClientHello shuffles extensions between GREASE bookends and pads only short hellos", () => {
  const orders = new Set<string>();
  for (let i = 0; i < 8; i++) {
    const types = _extensionTypes(buildClientHello({ sni: "a.example" }));
    assertEquals((types[0]! & 0x0f0f) === 0x0a0a, true);
    assertEquals((types.at(-1)! & 0x0f0f) === 0x0a0a, true);
    assertEquals(types.includes(0x0015), false);
    for (const t of [0x0000, 0x0033, 0x002b, 0x44cd, 0xfe0d, 0x0010, 0x001b]) {
      assert(types.includes(t), `missing extension ${t.toString(16)}`);
    }
    orders.add(types.slice(1, -1).join(","));
  }
  assert(orders.size > 1, "extension order never changed");
  const fixed = _extensionTypes(buildClientHello({ sni: "a.example", shuffle: false }));
  assertEquals(fixed.slice(1, 4), [0x0000, 0x0017, 0xff01]);
  const shortHello = buildClientHello({ sni: "a.example", mlkem: false, ech: false });
  assertEquals(shortHello.length, PADDED_HELLO_LEN);
  assertEquals(_extensionTypes(shortHello).at(-1), 0x0015);
  assertEquals(
    _extensionTypes(buildClientHello({ sni: "a.example", ech: false })).at(-1)! & 0x0f0f,
    0x0a0a,
  );
});

// ---------------------------------------------------------------------------------------------
// Fake DC with test clients

const DIRECT_KINDS: { kind: SecretKind; transport: TransportTag }[] = [
  { kind: "plain", transport: "intermediate" },
  { kind: "plain", transport: "abridged" },
  { kind: "dd", transport: "padded" },
];

for (const { kind, transport } of DIRECT_KINDS) {
  Deno.test(`fake DC answers resPQ twice and echoes packets for a ${kind} ${transport} client`, async () => {
    const dc = await startFakeDc();
    const client = await connectTestClient({
      port: dc.port,
      secret: null,
      kind,
      transport,
      dcId: -4,
    });
    try {
      const first = await client.reqPq();
      const second = await client.reqPq();
      assertEquals(first.serverNonce, second.serverNonce);
      assertEquals(first.fingerprints, [...DEFAULT_FINGERPRINTS]);
      const old = await client.reqPq({ old: true });
      assertEquals(old.serverNonce, first.serverNonce);

      const payload = randomBytes(1024);
      await client.send(payload, { padding: 3 });
      assertEquals(await client.receive(), payload);
      const big = randomBytes(200_000);
      await client.send(big);
      const echoed = await client.receive();
      // Padded: up to 12 bytes of the client's padding stay attached as whole words.
      assertEquals(echoed.subarray(0, big.length), big);
      assert(echoed.length - big.length <= 12);

      await client.send(randomBytes(16), { quickAck: true });
      await client.receive();

      const init = await dc.waitFor((e) => e.type === "init");
      assertEquals(init, { type: "init", conn: 1, tag: transport, dcId: -4 });
      assertEquals(dc.events.filter((e) => e.type === "req_pq").length, 3);
      const packets = dc.events.filter((e) => e.type === "packet");
      assertEquals(packets.length, 6);
      assertEquals(packets.map((p) => p.type === "packet" && p.quickAck), [
        false,
        false,
        false,
        false,
        false,
        true,
      ]);
      assertEquals(dc.connections, 1);
      assertEquals(dc.accepted, 1);
    } finally {
      await client.close();
      await dc.close();
    }
  });
}

Deno.test("fake DC records req_DH_params with matching nonces and then closes", async () => {
  const dc = await startFakeDc();
  const client = await connectTestClient({ port: dc.port, secret: null, kind: "dd", dcId: 2 });
  try {
    const res = await client.reqPq();
    await client.send(reqDhParams(res.nonce, res.serverNonce));
    const e = await dc.waitFor((e) => e.type === "req_dh_params");
    assertEquals(e, { type: "req_dh_params", conn: 1, nonceOk: true, serverNonceOk: true });
    await client.closed();
    await assertRejects(() => client.receive(1000), Error, "Connection closed before a frame");
    await dc.waitUntil(() => dc.connections === 0);
  } finally {
    await client.close();
    await dc.close();
  }

  const dc2 = await startFakeDc();
  const c2 = await connectTestClient({ port: dc2.port, secret: null, kind: "plain", dcId: 1 });
  try {
    const res = await c2.reqPq();
    await c2.send(reqDhParams(res.nonce, randomBytes(16)));
    const e = await dc2.waitFor((e) => e.type === "req_dh_params");
    assertEquals(e, { type: "req_dh_params", conn: 1, nonceOk: true, serverNonceOk: false });
  } finally {
    await c2.close();
    await dc2.close();
  }
});

Deno.test("fake DC closes only the connection that sends a malformed frame", async () => {
  const dc = await startFakeDc();
  const good = await connectTestClient({ port: dc.port, secret: null, kind: "plain", dcId: 2 });
  const bad = await connectTestClient({ port: dc.port, secret: null, kind: "plain", dcId: 2 });
  try {
    await good.reqPq();
    // Intermediate length 0x00200000 is over the 1 MiB frame cap.
    await bad.sendRaw(Uint8Array.of(0x00, 0x00, 0x20, 0x00));
    await bad.closed();
    const malformed = await dc.waitFor((e) => e.type === "malformed");
    assertEquals(malformed.conn, 2);
    await good.reqPq();
    assertEquals(dc.connections, 1);
  } finally {
    await good.close();
    await bad.close();
    await dc.close();
  }
});

Deno.test("test client writes its handshake one byte at a time", async () => {
  const dc = await startFakeDc();
  const client = await connectTestClient({
    port: dc.port,
    secret: null,
    kind: "plain",
    transport: "abridged",
    dcId: 3,
    chunkSize: 1,
  });
  try {
    await client.reqPq();
    assertEquals((await dc.waitFor((e) => e.type === "init")).type, "init");
  } finally {
    await client.close();
    await dc.close();
  }
});

async function _sha256Stream(
  read: () => Promise<Uint8Array>,
  total: number,
): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let got = 0;
  while (got < total) {
    const part = await read();
    parts.push(part);
    got += part.length;
  }
  assertEquals(got, total);
  return sha256(...parts);
}

Deno.test("fake DC in echo mode moves 20 MB each way intact", async () => {
  const dc = await startFakeDc({ mode: "echo" });
  const client = await connectTestClient({ port: dc.port, secret: null, kind: "dd", dcId: 2 });
  try {
    const total = 20 * 1024 * 1024;
    const chunk = 1024 * 1024;
    const sent: Uint8Array[] = [];
    const writer = (async () => {
      for (let off = 0; off < total; off += chunk) {
        const part = randomBytes(chunk);
        sent.push(part);
        await client.sendRaw(part);
      }
    })();
    const received = await _sha256Stream(() => client.readRaw(undefined, 10_000), total);
    await writer;
    assertEquals(hex(received), hex(sha256(...sent)));
    assertEquals((await dc.waitFor((e) => e.type === "init")).type, "init");
  } finally {
    await client.close();
    await dc.close();
  }
});

Deno.test("fake DC close() ends silent connections and releases everything", async () => {
  const dc = await startFakeDc({ mode: "silent" });
  const clients = await Promise.all(
    [1, 2, 3].map((dcId) =>
      connectTestClient({ port: dc.port, secret: null, kind: "plain", dcId })
    ),
  );
  try {
    await clients[0]!.send(randomBytes(8));
    await dc.waitUntil(() => dc.events.filter((e) => e.type === "init").length === 3);
    assertEquals(dc.connections, 3);
    await assertRejects(() => clients[0]!.receive(100), Error, "Timed out after 100 ms");
    await dc.close();
    assertEquals(dc.connections, 0);
    await Promise.all(clients.map((c) => c.closed()));
    assertEquals(dc.events.filter((e) => e.type === "closed").length, 3);
  } finally {
    for (const c of clients) await c.close();
    await dc.close();
  }
});

Deno.test("fake DC in close mode drops each connection right after accept", async () => {
  const dc = await startFakeDc({ mode: "close" });
  const raw = await openRawConnection(dc.port);
  try {
    await raw.write(new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n"));
    assertEquals((await raw.readAll(2000)).length, 0);
    await dc.waitFor((e: FakeDcEvent) => e.type === "closed");
    assertEquals(dc.accepted, 1);
  } finally {
    await raw.close();
    await dc.close();
  }
});

Deno.test("openRawConnection readAll times out while the peer stays open", async () => {
  const dc = await startFakeDc({ mode: "silent" });
  const raw = await openRawConnection(dc.port);
  try {
    await raw.write(randomBytes(10));
    await assertRejects(() => raw.readAll(100), Error, "Timed out after 100 ms");
  } finally {
    await raw.close();
    await dc.close();
  }
});

// ---------------------------------------------------------------------------------------------
// Fake-TLS client against a tiny fake-TLS echo server built from lib/protocol/fake_tls.ts

interface MiniTlsServer {
  port: number;
  hellos: number;
  /** Raw bytes each connection sent after its hello, in order. */
  afterHello: Uint8Array[][];
  close(): Promise<void>;
}

function _startMiniTlsServer(secret: Uint8Array): MiniTlsServer {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const handlers = new Set<Promise<void>>();
  const server: MiniTlsServer = {
    port: (listener.addr as Deno.NetAddr).port,
    hellos: 0,
    afterHello: [],
    async close() {
      listener.close();
      await accepting;
      for (const c of conns) c.close();
      await Promise.all([...handlers]);
    },
  };

  async function serve(conn: Deno.Conn): Promise<void> {
    const buf = new Uint8Array(65536);
    let pending = new Uint8Array(0);
    const append = (b: Uint8Array) => {
      const next = new Uint8Array(pending.length + b.length);
      next.set(pending);
      next.set(b, pending.length);
      pending = next;
    };
    const write = async (b: Uint8Array) => {
      for (let off = 0; off < b.length;) off += await conn.write(b.subarray(off));
    };
    let ciphers: { dec: StreamCipher; enc: StreamCipher } | null = null;
    try {
      let rest: Uint8Array;
      while (true) {
        const step = parseClientHello(pending);
        if (step.kind === "reject") return;
        if (step.kind === "hello") {
          const check = verifyClientHello(step.hello, secret, Date.now() / 1000, 600);
          if (check.kind !== "ok") return;
          server.hellos++;
          await write(buildServerHello(step.hello, secret, {
            keyShare: x25519PublicKey(),
            appData: randomBytes(2500 + Math.floor(Math.random() * 2200)),
          }));
          rest = step.rest.slice();
          break;
        }
        const n = await conn.read(buf);
        if (n === null) return;
        append(buf.subarray(0, n));
      }
      const reader = new TlsRecordReader();
      const raw: Uint8Array[] = [];
      server.afterHello.push(raw);
      pending = new Uint8Array(0);
      let input: Uint8Array | null = rest;
      while (true) {
        if (input === null) {
          const n = await conn.read(buf);
          if (n === null) return;
          input = buf.subarray(0, n);
        }
        raw.push(input.slice());
        const got = reader.unwrap(input);
        if (typeof got === "string") return;
        const data = input.subarray(0, got);
        input = null;
        if (ciphers === null) {
          append(data);
          if (pending.length < 64) continue;
          const stream = openClientInit(pending.slice(0, 64), secret);
          if (stream === null || stream.tag !== "padded") return;
          ciphers = { dec: stream.decryptor, enc: stream.encryptor };
          const after = pending.slice(64);
          ciphers.dec.update(after);
          pending = after;
        } else {
          ciphers.dec.update(data);
          append(data);
        }
        while (true) {
          const step = decodeFrame("padded", pending);
          if (step.kind !== "frame") break;
          const frame = encodeFrame("padded", step.frame.payload, randomBytes(2));
          pending = step.rest.slice();
          ciphers.enc.update(frame);
          await write(encodeAppData(frame));
        }
      }
    } catch {
      // Closed under us.
    } finally {
      ciphers?.dec.close();
      ciphers?.enc.close();
      conns.delete(conn);
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    }
  }

  const accepting = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      const h: Promise<void> = serve(conn).finally(() => handlers.delete(h));
      handlers.add(h);
    }
  })().catch(() => {});
  return server;
}

function _recordSizes(parts: Uint8Array[]): string[] {
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    all.set(p, off);
    off += p.length;
  }
  const out: string[] = [];
  for (let p = 0; p + 5 <= all.length; p += 5 + ((all[p + 3]! << 8) | all[p + 4]!)) {
    out.push(`${all[p]!.toString(16)}:${(all[p + 3]! << 8) | all[p + 4]!}`);
  }
  return out;
}

Deno.test("tls test client completes the fake-TLS handshake and exchanges frames", async () => {
  const secret = randomBytes(16);
  const server = _startMiniTlsServer(secret);
  try {
    for (const chunkSize of [undefined, 1, 7]) {
      const client = await connectTestClient({
        port: server.port,
        secret,
        kind: "tls",
        dcId: 2,
        sni: "www.example.com",
        ...(chunkSize === undefined ? {} : { chunkSize }),
      });
      try {
        assert(client.serverHello !== null && client.serverHello.length > 2500);
        const payload = randomBytes(10_000);
        await client.send(payload, { padding: 0 });
        assertEquals(await client.receive(), payload);
        const small = randomBytes(40);
        await client.send(small);
        assertEquals((await client.receive()).subarray(0, 40), small);
      } finally {
        await client.close();
      }
    }
    assertEquals(server.hellos, 3);
    // Like TDLib: one CCS, then records of at most 2878 bytes, the init in the first one.
    assertEquals(_recordSizes(server.afterHello[0]!).slice(0, 5), [
      "14:1",
      "17:2878",
      "17:2878",
      "17:2878",
      `17:${64 + 4 + 10_000 - 3 * 2878}`,
    ]);
  } finally {
    await server.close();
  }
});

Deno.test("tls test client rejects clearly when the server does not answer the hello", async () => {
  const server = _startMiniTlsServer(randomBytes(16));
  try {
    const err = await assertRejects(
      () => connectTestClient({ port: server.port, secret: randomBytes(16), kind: "tls", dcId: 2 }),
      Error,
      "Fake-TLS handshake failed",
    );
    assertNotEquals(err.message.indexOf("Connection closed"), -1);
    assertEquals(server.hellos, 0);
  } finally {
    await server.close();
  }
});

Deno.test("tls test client reports a bad server answer", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = (async () => {
    const conn = await listener.accept();
    await conn.read(new Uint8Array(4096));
    await conn.write(new TextEncoder().encode("HTTP/1.1 400 Bad Request\r\n\r\n"));
    await conn.read(new Uint8Array(16));
    conn.close();
  })();
  try {
    await assertRejects(
      () =>
        connectTestClient({
          port: (listener.addr as Deno.NetAddr).port,
          secret: randomBytes(16),
          kind: "tls",
          dcId: 2,
        }),
      Error,
      "bad server answer (tls_malformed)",
    );
  } finally {
    await serving;
    listener.close();
  }
});

Deno.test("connectTestClient refuses impossible option combinations", async () => {
  await assertRejects(
    () => connectTestClient({ port: 1, secret: null, kind: "tls", dcId: 2 }),
    RangeError,
    "A tls client needs a secret",
  );
  await assertRejects(
    () => connectTestClient({ port: 1, secret: null, kind: "dd", transport: "abridged", dcId: 2 }),
    RangeError,
    "padded",
  );
});

Deno.test("fake_dc.ts runs standalone, prints its port and stops on SIGTERM", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("./kit/fake_dc.ts", import.meta.url).pathname, "--mode", "echo"],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.getReader();
  try {
    let text = "";
    while (!text.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    const match = /^listening (\d+)\n/.exec(text);
    assert(match, `unexpected output: ${JSON.stringify(text)}`);
    const client = await connectTestClient({
      port: Number(match[1]),
      secret: null,
      kind: "plain",
      dcId: 2,
    });
    try {
      const data = randomBytes(1000);
      await client.sendRaw(data);
      assertEquals(await client.readRaw(1000), data);
    } finally {
      await client.close();
    }
  } finally {
    child.kill("SIGTERM");
    await reader.cancel();
    const status = await child.status;
    assertEquals(status.code, 0);
  }
});
