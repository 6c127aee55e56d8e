/**
 * RPC messages exchanged with Telegram middle proxies once the handshake is done
 * (protocol.md §10.4–10.8): one message per full-codec frame. Encoders for both ends (the proxy
 * and, for tests, a fake middle proxy), one decoder returning a discriminated union, and the IP
 * address helpers the messages and the key derivation need.
 *
 * @module
 */
import { readU32, writeU32 } from "./bytes.ts";
import { crc32Register } from "./crc32.ts";
import type { TransportTag } from "./obfuscated2.ts";

/** Proxy → MP: a client's MTProto packet. */
export const RPC_PROXY_REQ = 0x36cef1ee;
/** MP → proxy: a packet for one client. */
export const RPC_PROXY_ANS = 0x4403da0d;
/** MP → proxy: quick-ack confirmation for one client. */
export const RPC_SIMPLE_ACK = 0x3bac409b;
/** MP → proxy: the MP dropped one client. */
export const RPC_CLOSE_EXT = 0x5eb634a2;
/** Proxy → MP: one client left. */
export const RPC_CLOSE_CONN = 0x1fcf425d;
/** Either way: keepalive request. */
export const RPC_PING = 0x5730a2df;
/** Either way: keepalive answer. */
export const RPC_PONG = 0x8430eaa7;
/** Type of the ad-tag item in a PROXY_REQ extra section. */
export const TL_PROXY_TAG = 0xdb1e26ae;

/** RPC_PROXY_REQ flag bits (§10.5). */
export const PROXY_REQ_FLAGS = Object.freeze({
  /** The packet's auth_key_id (first 8 bytes) is zero. */
  NOT_ENCRYPTED: 0x2,
  /** An extra section with the ad tag follows the addresses. */
  HAS_AD_TAG: 0x8,
  /** Always set for client connections. */
  MAGIC: 0x1000,
  /** Always set for obfuscated2 clients. */
  EXTMODE2: 0x20000,
  /** The client uses padded intermediate (`dd`). */
  PAD: 0x08000000,
  /** The client uses intermediate or padded intermediate (`ee`, `dd`). */
  INTERMEDIATE: 0x20000000,
  /** The client uses abridged (`ef`). */
  ABRIDGED: 0x40000000,
  /** The client asked for a quick ack of this packet. */
  QUICKACK: 0x80000000,
});

const F = PROXY_REQ_FLAGS;

// ---------------------------------------------------------------------------------------------
// IP addresses

/** An IP address: text (`"203.0.113.7"`, `"2001:db8::7"`, `"[::1]"`) or 4 / 16 raw bytes. */
export type IpAddress = string | Uint8Array;

function _parseIpv4(text: string): Uint8Array | null {
  const parts = text.split(".");
  if (parts.length !== 4) return null;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const p = parts[i]!;
    if (!/^\d{1,3}$/.test(p)) return null;
    const v = Number(p);
    if (v > 255) return null;
    out[i] = v;
  }
  return out;
}

function _parseGroups(text: string, out: number[]): boolean {
  if (text === "") return true;
  const parts = text.split(":");
  for (let i = 0; i < parts.length; i++) {
    const p = parts[i]!;
    if (i === parts.length - 1 && p.includes(".")) {
      const v4 = _parseIpv4(p);
      if (v4 === null) return false;
      out.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
      continue;
    }
    if (!/^[0-9a-fA-F]{1,4}$/.test(p)) return false;
    out.push(parseInt(p, 16));
  }
  return true;
}

function _parseIpv6(text: string): Uint8Array | null {
  const halves = text.split("::");
  if (halves.length > 2) return null;
  const head: number[] = [];
  const tail: number[] = [];
  if (!_parseGroups(halves[0]!, head)) return null;
  if (halves.length === 2 && !_parseGroups(halves[1]!, tail)) return null;
  if (halves.length === 1 ? head.length !== 8 : head.length + tail.length > 7) return null;
  const groups = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  const out = new Uint8Array(16);
  groups.forEach((g, i) => {
    out[i * 2] = g >>> 8;
    out[i * 2 + 1] = g & 0xff;
  });
  return out;
}

function _isMapped(b: Uint8Array): boolean {
  if (b.length !== 16 || b[10] !== 0xff || b[11] !== 0xff) return false;
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  return true;
}

/**
 * Parse an IP address: 4 bytes for IPv4 (also when written IPv4-mapped, `::ffff:a.b.c.d`),
 * 16 bytes in network order for IPv6. Brackets and a zone (`%eth0`) are dropped. Null when the
 * text is not an address.
 *
 * @example Usage
 * ```ts
 * import { parseIp } from "./rpc.ts";
 * parseIp("149.154.175.50"); // Uint8Array(4) [149, 154, 175, 50]
 * parseIp("::ffff:149.154.175.50"); // the same 4 bytes
 * parseIp("2001:db8::7")?.length; // 16
 * ```
 */
export function parseIp(text: string): Uint8Array | null {
  let t = text.trim();
  if (t.startsWith("[") && t.endsWith("]")) t = t.slice(1, -1);
  const zone = t.indexOf("%");
  if (zone >= 0) t = t.slice(0, zone);
  if (!t.includes(":")) return _parseIpv4(t);
  const v6 = _parseIpv6(t);
  if (v6 === null) return null;
  return _isMapped(v6) ? v6.slice(12) : v6;
}

/**
 * The address as 4 bytes (IPv4, IPv4-mapped included) or 16 bytes (IPv6). Throws a RangeError
 * when it is neither.
 *
 * @example Usage
 * ```ts
 * import { ipBytes } from "./rpc.ts";
 * ipBytes("10.0.0.1"); // Uint8Array(4) [10, 0, 0, 1]
 * ```
 */
export function ipBytes(ip: IpAddress): Uint8Array {
  if (typeof ip === "string") {
    const b = parseIp(ip);
    if (b === null) throw new RangeError(`Invalid IP address: "${ip}"`);
    return b;
  }
  if (ip.length === 4) return ip;
  if (ip.length === 16) return _isMapped(ip) ? ip.subarray(12) : ip;
  throw new RangeError(`IP address must be 4 or 16 bytes: got ${ip.length}`);
}

/**
 * The 16 bytes RPC_PROXY_REQ carries: IPv6 as is, IPv4 as IPv4-mapped (`00×10 ff ff a b c d`).
 *
 * @example Usage
 * ```ts
 * import { ipv6Mapped } from "./rpc.ts";
 * ipv6Mapped("203.0.113.7"); // 00000000000000000000ffffcb007107
 * ```
 */
export function ipv6Mapped(ip: IpAddress): Uint8Array {
  const b = ipBytes(ip);
  if (b.length === 16) return b.slice();
  const out = new Uint8Array(16);
  out[10] = 0xff;
  out[11] = 0xff;
  out.set(b, 12);
  return out;
}

/**
 * An IPv4 address as the middle-proxy key derivation writes it: the 4 bytes reversed
 * (149.154.175.50 → `32 af 9a 95`). Throws a RangeError for IPv6.
 *
 * @example Usage
 * ```ts
 * import { ipv4Reversed } from "./rpc.ts";
 * ipv4Reversed("149.154.175.50"); // Uint8Array(4) [50, 175, 154, 149]
 * ```
 */
export function ipv4Reversed(ip: IpAddress): Uint8Array {
  const b = ipBytes(ip);
  if (b.length !== 4) throw new RangeError(`Expected an IPv4 address: got ${formatIp(b)}`);
  return Uint8Array.of(b[3]!, b[2]!, b[1]!, b[0]!);
}

/**
 * Text form of a 4- or 16-byte address; IPv4-mapped addresses come out dotted.
 *
 * @example Usage
 * ```ts
 * import { formatIp, ipv6Mapped } from "./rpc.ts";
 * formatIp(ipv6Mapped("198.51.100.23")); // "198.51.100.23"
 * ```
 */
export function formatIp(bytes: Uint8Array): string {
  const b = bytes.length === 16 && _isMapped(bytes) ? bytes.subarray(12) : bytes;
  if (b.length === 4) return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
  if (b.length !== 16) throw new RangeError(`IP address must be 4 or 16 bytes: got ${b.length}`);
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((b[i]! << 8) | b[i + 1]!);
  // Shorten the longest run of two or more zero groups to "::" (RFC 5952).
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (gs: number[]) => gs.map((g) => g.toString(16)).join(":");
  if (best < 0) return hex(groups);
  return `${hex(groups.slice(0, best))}::${hex(groups.slice(best + bestLen))}`;
}

// ---------------------------------------------------------------------------------------------
// Byte helpers

/** Scratch for reading i64s: a DataView per read would be garbage on every message. */
const _I64 = new Uint8Array(8);
const _I64_VIEW = new DataView(_I64.buffer);

function _i64(buf: Uint8Array, off: number): bigint {
  const s = _I64;
  for (let i = 0; i < 8; i++) s[i] = buf[off + i]!;
  return _I64_VIEW.getBigInt64(0, true);
}

function _setI64(buf: Uint8Array, off: number, v: bigint): void {
  new DataView(buf.buffer, buf.byteOffset + off, 8).setBigInt64(0, v, true);
}

function _typeAnd64(type: number, value: bigint): Uint8Array {
  const out = new Uint8Array(12);
  writeU32(out, 0, type);
  _setI64(out, 4, value);
  return out;
}

// ---------------------------------------------------------------------------------------------
// RPC_PROXY_REQ

/** The parts of an RPC_PROXY_REQ that stay the same for every packet of one client. */
export interface ProxyReqTarget {
  /** This client's id on the MP connection (an i64; written little-endian). */
  readonly connId: bigint;
  /** The client's transport. */
  readonly tag: TransportTag;
  /** The client's address and port. */
  readonly clientIp: IpAddress;
  readonly clientPort: number;
  /** Our address and port as we put them in the message (§10.5 `our_addr`). */
  readonly proxyIp: IpAddress;
  readonly proxyPort: number;
  /** The 16-byte ad tag; absent or null for the MTProxy layout without an extra section. */
  readonly adTag?: Uint8Array | null;
}

/** A whole RPC_PROXY_REQ description. */
export interface ProxyReq extends ProxyReqTarget {
  /** The client set the quick-ack bit on this packet. @default false */
  readonly quickAck?: boolean;
}

/** Offset of the extra section (or of the packet when there is none). */
const PROXY_REQ_FIXED = 56;

/**
 * The flags of an RPC_PROXY_REQ for this client and packet.
 *
 * @example Usage
 * ```ts
 * import { proxyReqFlags } from "./rpc.ts";
 * const packet = new Uint8Array(20); // auth_key_id 0: not encrypted
 * proxyReqFlags("abridged", packet, { adTag: new Uint8Array(16) }).toString(16); // "4002100a"
 * ```
 */
export function proxyReqFlags(
  tag: TransportTag,
  packet: Uint8Array,
  options: { adTag?: Uint8Array | null; quickAck?: boolean } = {},
): number {
  let flags = F.MAGIC | F.EXTMODE2;
  if (tag === "abridged") flags |= F.ABRIDGED;
  else if (tag === "intermediate") flags |= F.INTERMEDIATE;
  else flags |= F.INTERMEDIATE | F.PAD;
  if (options.adTag) flags |= F.HAS_AD_TAG;
  if (options.quickAck) flags |= F.QUICKACK;
  if (_authKeyIdIsZero(packet)) flags |= F.NOT_ENCRYPTED;
  return flags >>> 0;
}

function _authKeyIdIsZero(packet: Uint8Array): boolean {
  if (packet.length < 8) return false;
  for (let i = 0; i < 8; i++) if (packet[i] !== 0) return false;
  return true;
}

/**
 * The RPC_PROXY_REQ header of one client, built once: `header(packet)` returns the bytes that go
 * in front of each packet, so a sender can frame `[header, packet]` without first joining them.
 *
 * @example Usage
 * ```ts
 * import { ProxyReqHeader } from "./rpc.ts";
 * const h = new ProxyReqHeader({
 *   connId: 1n, tag: "intermediate", clientIp: "198.51.100.23", clientPort: 51234,
 *   proxyIp: "203.0.113.7", proxyPort: 40001, adTag: new Uint8Array(16),
 * });
 * const packet = new Uint8Array(32).fill(1);
 * console.log(h.length, h.header(packet).length); // 80 80
 * ```
 */
export class ProxyReqHeader {
  /** The header of an encrypted packet without quick ack. */
  #template: Uint8Array;

  constructor(target: ProxyReqTarget) {
    const tag = target.adTag ?? null;
    if (tag !== null && (tag.length === 0 || tag.length > 253)) {
      throw new RangeError(`Ad tag must be 1-253 bytes: got ${tag.length}`);
    }
    // Extra: TL_PROXY_TAG, then a TL short string (length byte, bytes, zero pad to 4).
    const extra = tag === null ? 0 : 4 + ((1 + tag.length + 3) & ~3);
    const out = new Uint8Array(PROXY_REQ_FIXED + (tag === null ? 0 : 4 + extra));
    writeU32(out, 0, RPC_PROXY_REQ);
    writeU32(out, 4, proxyReqFlags(target.tag, new Uint8Array(0), { adTag: tag }));
    _setI64(out, 8, target.connId);
    out.set(ipv6Mapped(target.clientIp), 16);
    writeU32(out, 32, target.clientPort);
    out.set(ipv6Mapped(target.proxyIp), 36);
    writeU32(out, 52, target.proxyPort);
    if (tag !== null) {
      writeU32(out, 56, extra);
      writeU32(out, 60, TL_PROXY_TAG);
      out[64] = tag.length;
      out.set(tag, 65);
    }
    this.#template = out;
    // Sent in front of every packet of this client: its CRC is worked out once.
    crc32Register(out);
  }

  /** Header bytes (56 without an ad tag, 80 with a 16-byte one). */
  get length(): number {
    return this.#template.length;
  }

  /**
   * The header for `packet`: the flags depend on its auth_key_id and the quick-ack bit. The
   * common case (an encrypted packet, no quick ack) shares one buffer, not one per packet, and
   * a client keeps nothing more: do not modify what this returns.
   */
  header(packet: Uint8Array, quickAck = false): Uint8Array {
    const notEncrypted = _authKeyIdIsZero(packet);
    if (!quickAck && !notEncrypted) return this.#template;
    const out = this.#template.slice();
    let flags = readU32(out, 4);
    if (quickAck) flags |= F.QUICKACK;
    if (notEncrypted) flags |= F.NOT_ENCRYPTED;
    writeU32(out, 4, flags >>> 0);
    return out;
  }
}

/**
 * Encode a whole RPC_PROXY_REQ body (header and packet joined).
 *
 * @example Usage
 * ```ts
 * import { encodeProxyReq } from "./rpc.ts";
 * const body = encodeProxyReq({
 *   connId: 0x0102030405060708n, tag: "intermediate", clientIp: "198.51.100.23",
 *   clientPort: 51234, proxyIp: "203.0.113.7", proxyPort: 40001,
 * }, new Uint8Array(32).fill(1));
 * console.log(body.length); // 88
 * ```
 */
export function encodeProxyReq(req: ProxyReq, packet: Uint8Array): Uint8Array {
  const header = new ProxyReqHeader(req).header(packet, req.quickAck ?? false);
  const out = new Uint8Array(header.length + packet.length);
  out.set(header);
  out.set(packet, header.length);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Other messages

/**
 * RPC_PROXY_ANS (what a middle proxy sends; `flags` as MTProxy: +8 flush, +16 small error).
 *
 * @example Usage
 * ```ts
 * import { encodeProxyAns } from "./rpc.ts";
 * encodeProxyAns(1n, new Uint8Array(16)).length; // 32
 * ```
 */
export function encodeProxyAns(
  connId: bigint,
  data: Uint8Array,
  options: { flags?: number } = {},
): Uint8Array {
  const out = new Uint8Array(16 + data.length);
  writeU32(out, 0, RPC_PROXY_ANS);
  writeU32(out, 4, options.flags ?? 0);
  _setI64(out, 8, connId);
  out.set(data, 16);
  return out;
}

/**
 * RPC_SIMPLE_ACK: the quick-ack confirmation for one client.
 *
 * @example Usage
 * ```ts
 * import { encodeSimpleAck } from "./rpc.ts";
 * encodeSimpleAck(1n, Uint8Array.of(1, 2, 3, 4)).length; // 16
 * ```
 */
export function encodeSimpleAck(connId: bigint, confirm: Uint8Array): Uint8Array {
  if (confirm.length !== 4) throw new RangeError(`Confirm must be 4 bytes: got ${confirm.length}`);
  const out = new Uint8Array(16);
  out.set(_typeAnd64(RPC_SIMPLE_ACK, connId));
  out.set(confirm, 12);
  return out;
}

/**
 * RPC_CLOSE_EXT: the middle proxy dropped a client.
 *
 * @example Usage
 * ```ts
 * import { encodeCloseExt } from "./rpc.ts";
 * encodeCloseExt(1n).length; // 12
 * ```
 */
export function encodeCloseExt(connId: bigint): Uint8Array {
  return _typeAnd64(RPC_CLOSE_EXT, connId);
}

/**
 * RPC_CLOSE_CONN: a client left; sent by the proxy.
 *
 * @example Usage
 * ```ts
 * import { encodeCloseConn } from "./rpc.ts";
 * encodeCloseConn(0x0102030405060708n); // 5d42cf1f 0807060504030201
 * ```
 */
export function encodeCloseConn(connId: bigint): Uint8Array {
  return _typeAnd64(RPC_CLOSE_CONN, connId);
}

/**
 * RPC_PING with an 8-byte id.
 *
 * @example Usage
 * ```ts
 * import { encodePing } from "./rpc.ts";
 * encodePing(7n).length; // 12
 * ```
 */
export function encodePing(pingId: bigint): Uint8Array {
  return _typeAnd64(RPC_PING, pingId);
}

/**
 * RPC_PONG answering the RPC_PING with this id.
 *
 * @example Usage
 * ```ts
 * import { encodePong } from "./rpc.ts";
 * encodePong(0x1122334455667788n); // a7ea3084 8877665544332211
 * ```
 */
export function encodePong(pingId: bigint): Uint8Array {
  return _typeAnd64(RPC_PONG, pingId);
}

// ---------------------------------------------------------------------------------------------
// Decoding

/** A decoded RPC_PROXY_REQ (what a middle proxy receives). Byte fields are views. */
export interface ProxyReqMessage {
  readonly type: "proxy_req";
  readonly flags: number;
  readonly connId: bigint;
  /** The client transport named by the flags; null when none of its bits is set. */
  readonly tag: TransportTag | null;
  readonly quickAck: boolean;
  readonly notEncrypted: boolean;
  /** 16 bytes each (IPv4-mapped for IPv4); see {@linkcode formatIp}. */
  readonly clientIp: Uint8Array;
  readonly clientPort: number;
  readonly proxyIp: Uint8Array;
  readonly proxyPort: number;
  /** The ad tag from the extra section, or null. */
  readonly adTag: Uint8Array | null;
  /** The client's MTProto packet. */
  readonly payload: Uint8Array;
}

/** Any message {@linkcode decodeRpc} can return. Byte fields are views into the body. */
export type RpcMessage =
  | ProxyReqMessage
  | {
    readonly type: "proxy_ans";
    readonly flags: number;
    readonly connId: bigint;
    readonly data: Uint8Array;
  }
  | { readonly type: "simple_ack"; readonly connId: bigint; readonly confirm: Uint8Array }
  | { readonly type: "close_ext"; readonly connId: bigint }
  | { readonly type: "close_conn"; readonly connId: bigint }
  | { readonly type: "ping"; readonly pingId: bigint }
  | { readonly type: "pong"; readonly pingId: bigint }
  /** A type code this module does not know. */
  | { readonly type: "unknown"; readonly code: number }
  /** Too short for its type, or a broken PROXY_REQ extra section (`code` null: under 4 bytes). */
  | { readonly type: "malformed"; readonly code: number | null };

function _tagOf(flags: number): TransportTag | null {
  if (flags & F.ABRIDGED) return "abridged";
  if (flags & F.PAD) return "padded";
  if (flags & F.INTERMEDIATE) return "intermediate";
  return null;
}

const _MALFORMED_PROXY_REQ = Object.freeze({ type: "malformed", code: RPC_PROXY_REQ } as const);

/**
 * A decoded RPC_PROXY_REQ. The two addresses are views made when first read: a middle proxy
 * reads them once per client, not once per packet.
 */
class _ProxyReq implements ProxyReqMessage {
  readonly type = "proxy_req";
  readonly flags: number;
  readonly connId: bigint;
  readonly tag: TransportTag | null;
  readonly quickAck: boolean;
  readonly notEncrypted: boolean;
  readonly clientPort: number;
  readonly proxyPort: number;
  readonly adTag: Uint8Array | null;
  readonly payload: Uint8Array;
  readonly #body: Uint8Array;

  constructor(body: Uint8Array, flags: number, adTag: Uint8Array | null, payloadAt: number) {
    this.#body = body;
    this.flags = flags;
    this.connId = _i64(body, 8);
    this.tag = _tagOf(flags);
    this.quickAck = (flags & F.QUICKACK) !== 0;
    this.notEncrypted = (flags & F.NOT_ENCRYPTED) !== 0;
    this.clientPort = readU32(body, 32);
    this.proxyPort = readU32(body, 52);
    this.adTag = adTag;
    this.payload = body.subarray(payloadAt);
  }

  get clientIp(): Uint8Array {
    return this.#body.subarray(16, 32);
  }

  get proxyIp(): Uint8Array {
    return this.#body.subarray(36, 52);
  }
}

function _decodeProxyReq(body: Uint8Array): RpcMessage {
  if (body.length < PROXY_REQ_FIXED) return _MALFORMED_PROXY_REQ;
  const flags = readU32(body, 4);
  let off = PROXY_REQ_FIXED;
  let adTag: Uint8Array | null = null;
  if (flags & F.HAS_AD_TAG) {
    if (body.length < off + 4) return _MALFORMED_PROXY_REQ;
    const size = readU32(body, off);
    off += 4;
    if (size % 4 !== 0 || body.length - off < size) return _MALFORMED_PROXY_REQ;
    // The extra section is body[off, off + size): a TL_PROXY_TAG item holds the ad tag.
    if (size >= 5 && readU32(body, off) === TL_PROXY_TAG) {
      const n = body[off + 4]!;
      if (n >= 254 || 5 + n > size) return _MALFORMED_PROXY_REQ;
      adTag = body.subarray(off + 5, off + 5 + n);
    }
    off += size;
  }
  return new _ProxyReq(body, flags, adTag, off);
}

/**
 * Decode one RPC message (the body of one full-codec frame after the handshake).
 *
 * @example Usage
 * ```ts
 * import { decodeRpc, encodeProxyAns } from "./rpc.ts";
 * const m = decodeRpc(encodeProxyAns(5n, new Uint8Array(8)));
 * if (m.type === "proxy_ans") console.log(m.connId, m.data.length); // 5n 8
 * ```
 */
export function decodeRpc(body: Uint8Array): RpcMessage {
  if (body.length < 4) return { type: "malformed", code: null };
  const code = readU32(body, 0);
  switch (code) {
    case RPC_PROXY_ANS:
      if (body.length < 16) break;
      return {
        type: "proxy_ans",
        flags: readU32(body, 4),
        connId: _i64(body, 8),
        data: body.subarray(16),
      };
    case RPC_SIMPLE_ACK:
      if (body.length < 16) break;
      return { type: "simple_ack", connId: _i64(body, 4), confirm: body.subarray(12, 16) };
    case RPC_CLOSE_EXT:
      if (body.length < 12) break;
      return { type: "close_ext", connId: _i64(body, 4) };
    case RPC_CLOSE_CONN:
      if (body.length < 12) break;
      return { type: "close_conn", connId: _i64(body, 4) };
    case RPC_PING:
      if (body.length < 12) break;
      return { type: "ping", pingId: _i64(body, 4) };
    case RPC_PONG:
      if (body.length < 12) break;
      return { type: "pong", pingId: _i64(body, 4) };
    case RPC_PROXY_REQ:
      return _decodeProxyReq(body);
    default:
      return { type: "unknown", code };
  }
  return { type: "malformed", code };
}
