import { assert, assertEquals, assertThrows } from "./assert.ts";
import { bytesOf, hex, unhex, vector } from "./vectors.ts";
import { randomBytes } from "../lib/crypto.ts";
import type { TransportTag } from "../lib/protocol/obfuscated2.ts";
import {
  decodeRpc,
  encodeCloseConn,
  encodeCloseExt,
  encodePing,
  encodePong,
  encodeProxyAns,
  encodeProxyReq,
  encodeSimpleAck,
  formatIp,
  ipBytes,
  ipv4Reversed,
  ipv6Mapped,
  parseIp,
  PROXY_REQ_FLAGS,
  type ProxyReq,
  proxyReqFlags,
  ProxyReqHeader,
  RPC_PROXY_REQ,
} from "../lib/protocol/rpc.ts";

const TAGS: Record<string, TransportTag> = {
  efefefef: "abridged",
  eeeeeeee: "intermediate",
  dddddddd: "padded",
};

const REQ_VECTORS = [
  "rpc_req_abridged_unenc",
  "rpc_req_intermediate_enc",
  "rpc_req_secure_enc_ipv6client",
  "rpc_req_intermediate_enc_quickack",
  "rpc_req_intermediate_enc_no_ad_tag",
];

function reqOf(id: string): { req: ProxyReq; msg: Uint8Array; expected: string } {
  const v = vector(id);
  const i = v.inputs;
  const adTag = i.ad_tag === "" ? null : bytesOf(v, "ad_tag");
  return {
    req: {
      connId: BigInt(`0x${i.conn_id}`),
      tag: TAGS[i.proto_tag as string]!,
      clientIp: i.client_ip as string,
      clientPort: i.client_port as number,
      proxyIp: i.proxy_ip as string,
      proxyPort: i.proxy_port as number,
      adTag,
      quickAck: i.quickack as boolean,
    },
    msg: bytesOf(v, "msg"),
    expected: v.expected.packet as string,
  };
}

Deno.test("encodeProxyReq matches the rpc_req_* vectors", () => {
  for (const id of REQ_VECTORS) {
    const { req, msg, expected } = reqOf(id);
    assertEquals(hex(encodeProxyReq(req, msg)), expected, id);
  }
});

Deno.test("ProxyReqHeader builds the same bytes as encodeProxyReq, per packet", () => {
  for (const id of REQ_VECTORS) {
    const { req, msg, expected } = reqOf(id);
    const h = new ProxyReqHeader(req);
    const header = h.header(msg, req.quickAck ?? false);
    assertEquals(header.length, h.length);
    assertEquals(hex(header) + hex(msg), expected, id);
    // The template is not changed by building: an encrypted packet gets no NOT_ENCRYPTED.
    const other = h.header(new Uint8Array(16).fill(1));
    assertEquals(other[4]! & PROXY_REQ_FLAGS.NOT_ENCRYPTED, 0);
    assertEquals(other[7]! & 0x80, 0);
  }
});

Deno.test("proxyReqFlags reproduces the §10.5 examples", () => {
  const zero = new Uint8Array(8);
  const enc = new Uint8Array(8).fill(1);
  const tag = new Uint8Array(16);
  assertEquals(proxyReqFlags("abridged", zero, { adTag: tag }), 0x4002100a);
  assertEquals(proxyReqFlags("intermediate", enc, { adTag: tag }), 0x20021008);
  assertEquals(proxyReqFlags("padded", enc, { adTag: tag }), 0x28021008);
  assertEquals(proxyReqFlags("intermediate", enc), 0x20021000);
  assertEquals(proxyReqFlags("intermediate", enc, { adTag: tag, quickAck: true }), 0xa0021008);
  // Fewer than 8 bytes cannot carry a zero auth_key_id.
  assertEquals(proxyReqFlags("intermediate", new Uint8Array(4)), 0x20021000);
});

Deno.test("decodeRpc reads back every rpc_req_* vector", () => {
  for (const id of REQ_VECTORS) {
    const { req, msg, expected } = reqOf(id);
    const m = decodeRpc(unhex(expected));
    assert(m.type === "proxy_req", id);
    assertEquals(m.connId, req.connId);
    assertEquals(m.tag, req.tag);
    assertEquals(m.quickAck, req.quickAck);
    assertEquals(m.notEncrypted, id === "rpc_req_abridged_unenc");
    assertEquals(formatIp(m.clientIp), req.clientIp);
    assertEquals(m.clientPort, req.clientPort);
    assertEquals(formatIp(m.proxyIp), req.proxyIp);
    assertEquals(m.proxyPort, req.proxyPort);
    assertEquals(m.adTag === null ? null : hex(m.adTag), req.adTag ? hex(req.adTag) : null);
    assertEquals(hex(m.payload), hex(msg));
  }
});

Deno.test("decodeRpc reads the rpc_decode_* vectors", () => {
  const ans = vector("rpc_decode_proxy_ans");
  const a = decodeRpc(bytesOf(ans, "packet"));
  assert(a.type === "proxy_ans");
  assertEquals(a.connId, BigInt(`0x${ans.expected.conn_id}`));
  assertEquals(a.flags, 0);
  assertEquals(hex(a.data), ans.expected.data);

  const ack = vector("rpc_decode_simple_ack");
  const k = decodeRpc(bytesOf(ack, "packet"));
  assert(k.type === "simple_ack");
  assertEquals(k.connId, BigInt(`0x${ack.expected.conn_id}`));
  assertEquals(hex(k.confirm), ack.expected.confirm);
});

Deno.test("encoders match rpc_close_conn and rpc_pong, and the MP-side encoders round-trip", () => {
  const close = vector("rpc_close_conn");
  assertEquals(hex(encodeCloseConn(BigInt(`0x${close.inputs.conn_id}`))), close.expected.packet);
  const pong = vector("rpc_pong");
  assertEquals(hex(encodePong(BigInt(`0x${pong.inputs.ping_id}`))), pong.expected.packet);

  const ans = vector("rpc_decode_proxy_ans");
  assertEquals(
    hex(encodeProxyAns(0x0102030405060708n, unhex(ans.expected.data as string))),
    ans.inputs.packet,
  );
  const ack = vector("rpc_decode_simple_ack");
  assertEquals(
    hex(encodeSimpleAck(0x0102030405060708n, unhex(ack.expected.confirm as string))),
    ack.inputs.packet,
  );

  const id = -0x1122334455667788n;
  assertEquals(decodeRpc(encodeCloseConn(id)), { type: "close_conn", connId: id });
  assertEquals(decodeRpc(encodeCloseExt(id)), { type: "close_ext", connId: id });
  assertEquals(decodeRpc(encodePing(id)), { type: "ping", pingId: id });
  assertEquals(decodeRpc(encodePong(id)), { type: "pong", pingId: id });
  const flagged = decodeRpc(encodeProxyAns(id, new Uint8Array(4), { flags: 24 }));
  assert(flagged.type === "proxy_ans");
  assertEquals(flagged.flags, 24);
  assertThrows(() => encodeSimpleAck(1n, new Uint8Array(3)), RangeError, "4 bytes");
});

Deno.test("encodeProxyReq and decodeRpc round-trip random requests", () => {
  const tags: TransportTag[] = ["abridged", "intermediate", "padded"];
  const ips = ["198.51.100.23", "2001:db8::42", "::1", "10.0.0.1", "fe80::1:2:3:4"];
  for (let i = 0; i < 60; i++) {
    const req: ProxyReq = {
      connId: BigInt.asIntN(64, BigInt(`0x${hex(randomBytes(8))}`)),
      tag: tags[i % 3]!,
      clientIp: ips[i % ips.length]!,
      clientPort: (i * 7919) % 65536,
      proxyIp: ips[(i + 2) % ips.length]!,
      proxyPort: 443,
      adTag: i % 4 === 0 ? null : randomBytes(i % 4 === 1 ? 16 : 4 * (i % 7) + 1),
      quickAck: i % 2 === 0,
    };
    const packet = i % 5 === 0 ? new Uint8Array(4 * (i + 2)) : randomBytes(4 * (i + 2));
    const m = decodeRpc(encodeProxyReq(req, packet));
    assert(m.type === "proxy_req");
    assertEquals(m.connId, req.connId);
    assertEquals(m.tag, req.tag);
    assertEquals(m.quickAck, req.quickAck);
    assertEquals(m.notEncrypted, i % 5 === 0);
    assertEquals(formatIp(m.clientIp), formatIp(ipBytes(req.clientIp)));
    assertEquals(formatIp(m.proxyIp), formatIp(ipBytes(req.proxyIp)));
    assertEquals(m.clientPort, req.clientPort);
    assertEquals(m.adTag === null ? null : hex(m.adTag), req.adTag ? hex(req.adTag) : null);
    assertEquals(hex(m.payload), hex(packet));
  }
});

Deno.test("decodeRpc flags short, broken and unknown messages", () => {
  assertEquals(decodeRpc(new Uint8Array(3)), { type: "malformed", code: null });
  assertEquals(decodeRpc(unhex("01020304")), { type: "unknown", code: 0x04030201 });
  for (
    const body of [encodeProxyAns(1n, new Uint8Array(0)), encodeSimpleAck(1n, new Uint8Array(4))]
  ) {
    for (let n = 4; n < body.length; n++) {
      assertEquals(decodeRpc(body.subarray(0, n)).type, "malformed", `${hex(body)} cut at ${n}`);
    }
  }
  for (const body of [encodeCloseExt(1n), encodeCloseConn(1n), encodePing(1n), encodePong(1n)]) {
    assertEquals(decodeRpc(body.subarray(0, 11)).type, "malformed");
  }
  const { req, msg } = reqOf("rpc_req_intermediate_enc");
  const full = encodeProxyReq(req, msg);
  assertEquals(decodeRpc(full.subarray(0, 55)), { type: "malformed", code: RPC_PROXY_REQ });
  assertEquals(decodeRpc(full.subarray(0, 58)).type, "malformed");
  // Extra size not a multiple of 4, or past the end.
  for (const size of [23, 1000]) {
    const bad = full.slice();
    new DataView(bad.buffer).setUint32(56, size, true);
    assertEquals(decodeRpc(bad).type, "malformed");
  }
  // TL string length running past the extra section.
  const longTag = full.slice();
  longTag[64] = 40;
  assertEquals(decodeRpc(longTag).type, "malformed");
  // An extra section without a proxy tag item is skipped.
  const noTag = full.slice();
  noTag[60] = 0;
  const m = decodeRpc(noTag);
  assert(m.type === "proxy_req");
  assertEquals(m.adTag, null);
  assertEquals(hex(m.payload), hex(msg));
});

Deno.test("decodeRpc never throws on random bytes", () => {
  const starts = [
    "eef1ce36",
    "0dda0344",
    "9b40ac3b",
    "a234b65e",
    "5d42cf1f",
    "dfa23057",
    "a7ea3084",
  ];
  for (let i = 0; i < 500; i++) {
    const body = randomBytes(i % 120);
    if (body.length >= 4) body.set(unhex(starts[i % starts.length]!));
    if (i % 2 === 0 && body.length >= 8) body[4] = (body[4]! | 8) & 0xff;
    decodeRpc(body);
  }
});

Deno.test("IP helpers parse, map, reverse and format addresses", () => {
  assertEquals(hex(parseIp("149.154.175.50")!), "959aaf32");
  assertEquals(hex(ipv4Reversed("149.154.175.50")), "32af9a95");
  assertEquals(hex(parseIp("::ffff:149.154.175.50")!), "959aaf32");
  assertEquals(hex(parseIp("[2001:db8::7]")!), "20010db8000000000000000000000007");
  assertEquals(hex(parseIp("fe80::1%eth0")!), "fe800000000000000000000000000001");
  assertEquals(hex(parseIp("::")!), "0".repeat(32));
  assertEquals(hex(parseIp("1:2:3:4:5:6:7:8")!), "00010002000300040005000600070008");
  assertEquals(hex(parseIp("64:ff9b::192.0.2.33")!), "0064ff9b0000000000000000c0000221");
  for (
    const bad of [
      "",
      "1.2.3",
      "1.2.3.256",
      "1.2.3.4.5",
      "a.b.c.d",
      "1::2::3",
      "12345::",
      ":::",
      "1:2:3:4:5:6:7:8:9",
      "1:2:3:4:5:6:7::8",
      "g::1",
      "example.com",
    ]
  ) {
    assertEquals(parseIp(bad), null, bad);
  }
  assertEquals(hex(ipv6Mapped("203.0.113.7")), "00000000000000000000ffffcb007107");
  assertEquals(hex(ipv6Mapped("2001:db8::42")), "20010db8000000000000000000000042");
  assertEquals(hex(ipv6Mapped(unhex("cb007107"))), "00000000000000000000ffffcb007107");
  assertEquals(hex(ipBytes(unhex("00000000000000000000ffffcb007107"))), "cb007107");
  assertThrows(() => ipBytes("nope"), RangeError, '"nope"');
  assertThrows(() => ipBytes(new Uint8Array(5)), RangeError, "4 or 16");
  assertThrows(() => ipv4Reversed("::1"), RangeError, "IPv4");
  for (
    const text of [
      "2001:db8::42",
      "::1",
      "::",
      "1:0:0:2::3",
      "fe80::1:2:3:4",
      "1:2:3:4:5:6:7:8",
      "2001:db8:0:1::",
      "10.0.0.1",
    ]
  ) {
    assertEquals(formatIp(parseIp(text)!), text);
  }
  assertEquals(formatIp(parseIp("1:0:0:2:0:0:0:3")!), "1:0:0:2::3");
  assertEquals(formatIp(parseIp("1:0:2:3:4:5:6:7")!), "1:0:2:3:4:5:6:7");
});
