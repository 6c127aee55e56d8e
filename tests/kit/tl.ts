/**
 * Minimal MTProto TL for the unencrypted messages that start every key exchange:
 * `req_pq_multi` / `req_pq`, `resPQ` and `req_DH_params`. Enough for a fake DC to answer real
 * clients and for test clients to ping it; nothing here knows about encryption.
 *
 * Unencrypted message layout: `auth_key_id = 0 (8) | msg_id i64 LE | length u32 LE | body`.
 *
 * @module
 */
import { randomBytes } from "../../lib/crypto.ts";

/** `req_pq_multi#be7e8ef1 nonce:int128 = ResPQ`. */
export const REQ_PQ_MULTI = 0xbe7e8ef1;
/** `req_pq#60469778 nonce:int128 = ResPQ` (old clients). */
export const REQ_PQ = 0x60469778;
/** `resPQ#05162463 nonce:int128 server_nonce:int128 pq:string fingerprints:Vector<long>`. */
export const RES_PQ = 0x05162463;
/** `req_DH_params#d712e4be nonce server_nonce p q public_key_fingerprint encrypted_data`. */
export const REQ_DH_PARAMS = 0xd712e4be;
/** The boxed `vector` constructor. */
export const VECTOR = 0x1cb5c415;

/** A product of two 32-bit primes (1229739323 * 1402015859), as clients expect in `pq`. */
export const DEFAULT_PQ = 0x17ed48941a08f981n;

/**
 * RSA key fingerprints the pinned clients know: `d09d1d85de64fd85` (TDLib, gramjs, mtcute) and
 * `0bc35f3509f7b7a5` (Telethon 1.25). Written on the wire as i64 LE, so the first is the signed
 * value -3414540481677951611 that TDLib compares against.
 */
export const DEFAULT_FINGERPRINTS: readonly bigint[] = [
  0xd09d1d85de64fd85n,
  0x0bc35f3509f7b7a5n,
];

/** Header length of an unencrypted message: auth_key_id, msg_id and length. */
export const UNENCRYPTED_HEADER_LEN = 20;

/** A parsed unencrypted message. */
export interface UnencryptedMessage {
  /** The msg_id field (signed i64). */
  readonly msgId: bigint;
  /** The body's first u32 LE (its TL constructor); 0 when the body is shorter than 4 bytes. */
  readonly constructor: number;
  /** The whole body, constructor included (a view into the packet). */
  readonly body: Uint8Array;
}

/** The fields of a `resPQ`. */
export interface ResPq {
  readonly nonce: Uint8Array;
  readonly serverNonce: Uint8Array;
  /** The `pq` string bytes (8 bytes big-endian for a real server). */
  readonly pq: Uint8Array;
  /** Fingerprints as unsigned 64-bit values. */
  readonly fingerprints: bigint[];
}

/** Options for {@linkcode resPq}. */
export interface ResPqOptions {
  /** msg_id of the answer. @default a server-style id from the current time */
  msgId?: bigint;
  /** The `pq` value. @default DEFAULT_PQ */
  pq?: bigint;
  /** Fingerprints to offer. @default DEFAULT_FINGERPRINTS */
  fingerprints?: readonly bigint[];
}

/** Options for {@linkcode reqDhParams}. */
export interface ReqDhParamsOptions {
  /** @default a client-style id from the current time */
  msgId?: bigint;
  /** @default the first of DEFAULT_FINGERPRINTS */
  fingerprint?: bigint;
}

function _view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function _checkNonce(name: string, nonce: Uint8Array): void {
  if (nonce.length !== 16) throw new RangeError(`${name} must be 16 bytes: got ${nonce.length}`);
}

/** A msg_id from the current time: low bits 0 for clients, 1 for server answers. */
export function newMsgId(from: "client" | "server" = "client"): bigint {
  const now = Date.now();
  const seconds = BigInt(Math.floor(now / 1000));
  // Fraction of the second in the low 32 bits, like real clients, kept divisible by 4.
  const fraction = BigInt(Math.floor(((now % 1000) / 1000) * 2 ** 30)) * 4n;
  return (seconds << 32n) | fraction | (from === "server" ? 1n : 0n);
}

/** Encode `data` as a TL `bytes`/`string` (length prefix and zero padding to 4 bytes). */
export function tlBytes(data: Uint8Array): Uint8Array {
  const head = data.length < 254 ? 1 : 4;
  const total = Math.ceil((head + data.length) / 4) * 4;
  const out = new Uint8Array(total);
  if (head === 1) {
    out[0] = data.length;
  } else {
    out[0] = 254;
    out[1] = data.length & 0xff;
    out[2] = (data.length >> 8) & 0xff;
    out[3] = (data.length >> 16) & 0xff;
  }
  out.set(data, head);
  return out;
}

/** Read a TL `bytes` at `off`: its contents and the offset after its padding, or null. */
export function readTlBytes(
  buf: Uint8Array,
  off: number,
): { data: Uint8Array; next: number } | null {
  if (off >= buf.length) return null;
  let len = buf[off]!;
  let head = 1;
  if (len === 254) {
    if (off + 4 > buf.length) return null;
    len = buf[off + 1]! | (buf[off + 2]! << 8) | (buf[off + 3]! << 16);
    head = 4;
  } else if (len === 255) {
    return null;
  }
  const next = off + Math.ceil((head + len) / 4) * 4;
  if (next > buf.length) return null;
  return { data: buf.subarray(off + head, off + head + len), next };
}

/** Wrap `body` in an unencrypted message (auth_key_id 0). */
export function unencryptedMessage(body: Uint8Array, msgId: bigint = newMsgId()): Uint8Array {
  const out = new Uint8Array(UNENCRYPTED_HEADER_LEN + body.length);
  const v = _view(out);
  v.setBigInt64(8, BigInt.asIntN(64, msgId), true);
  v.setUint32(16, body.length, true);
  out.set(body, UNENCRYPTED_HEADER_LEN);
  return out;
}

function _reqPqBody(constructor: number, nonce: Uint8Array): Uint8Array {
  _checkNonce("Nonce", nonce);
  const body = new Uint8Array(20);
  _view(body).setUint32(0, constructor, true);
  body.set(nonce, 4);
  return body;
}

/** The full unencrypted `req_pq_multi` message for `nonce` (16 bytes). */
export function reqPqMulti(nonce: Uint8Array, msgId?: bigint): Uint8Array {
  return unencryptedMessage(_reqPqBody(REQ_PQ_MULTI, nonce), msgId);
}

/** The full unencrypted old-style `req_pq` message for `nonce` (16 bytes). */
export function reqPq(nonce: Uint8Array, msgId?: bigint): Uint8Array {
  return unencryptedMessage(_reqPqBody(REQ_PQ, nonce), msgId);
}

/**
 * Parse an unencrypted message. Returns null when auth_key_id is not 0 or the length field does
 * not fit the packet (extra trailing bytes, such as padded-transport surplus words, are allowed).
 */
export function parseUnencrypted(packet: Uint8Array): UnencryptedMessage | null {
  if (packet.length < UNENCRYPTED_HEADER_LEN) return null;
  const v = _view(packet);
  if (v.getBigUint64(0, true) !== 0n) return null;
  const len = v.getUint32(16, true);
  if (UNENCRYPTED_HEADER_LEN + len > packet.length) return null;
  const body = packet.subarray(UNENCRYPTED_HEADER_LEN, UNENCRYPTED_HEADER_LEN + len);
  return {
    msgId: v.getBigInt64(8, true),
    constructor: len >= 4 ? v.getUint32(UNENCRYPTED_HEADER_LEN, true) : 0,
    body,
  };
}

/** The nonce of a `req_pq_multi` or `req_pq` body, or null for any other body. */
export function parseReqPq(body: Uint8Array): { nonce: Uint8Array; multi: boolean } | null {
  if (body.length < 20) return null;
  const c = _view(body).getUint32(0, true);
  if (c !== REQ_PQ_MULTI && c !== REQ_PQ) return null;
  return { nonce: body.slice(4, 20), multi: c === REQ_PQ_MULTI };
}

/** The full unencrypted `resPQ` answer echoing `nonce`. */
export function resPq(
  nonce: Uint8Array,
  serverNonce: Uint8Array,
  options: ResPqOptions = {},
): Uint8Array {
  _checkNonce("Nonce", nonce);
  _checkNonce("Server nonce", serverNonce);
  const pq = new Uint8Array(8);
  _view(pq).setBigUint64(0, options.pq ?? DEFAULT_PQ, false);
  const pqTl = tlBytes(pq);
  const prints = options.fingerprints ?? DEFAULT_FINGERPRINTS;
  const body = new Uint8Array(4 + 16 + 16 + pqTl.length + 8 + 8 * prints.length);
  const v = _view(body);
  v.setUint32(0, RES_PQ, true);
  body.set(nonce, 4);
  body.set(serverNonce, 20);
  body.set(pqTl, 36);
  let off = 36 + pqTl.length;
  v.setUint32(off, VECTOR, true);
  v.setUint32(off + 4, prints.length, true);
  off += 8;
  for (const p of prints) {
    v.setBigUint64(off, BigInt.asUintN(64, p), true);
    off += 8;
  }
  return unencryptedMessage(body, options.msgId ?? newMsgId("server"));
}

/** Parse a full unencrypted `resPQ` message; null when it is anything else or truncated. */
export function parseResPq(packet: Uint8Array): ResPq | null {
  const msg = parseUnencrypted(packet);
  if (msg === null || msg.constructor !== RES_PQ) return null;
  const body = msg.body;
  if (body.length < 36) return null;
  const pq = readTlBytes(body, 36);
  if (pq === null || pq.next + 8 > body.length) return null;
  const v = _view(body);
  if (v.getUint32(pq.next, true) !== VECTOR) return null;
  const count = v.getUint32(pq.next + 4, true);
  if (pq.next + 8 + count * 8 > body.length) return null;
  const fingerprints: bigint[] = [];
  for (let i = 0; i < count; i++) fingerprints.push(v.getBigUint64(pq.next + 8 + i * 8, true));
  return {
    nonce: body.slice(4, 20),
    serverNonce: body.slice(20, 36),
    pq: pq.data.slice(),
    fingerprints,
  };
}

/**
 * The full unencrypted `req_DH_params` a client sends after `resPQ`: p and q split from
 * `DEFAULT_PQ` and 256 random bytes standing in for the RSA-encrypted inner data.
 */
export function reqDhParams(
  nonce: Uint8Array,
  serverNonce: Uint8Array,
  options: ReqDhParamsOptions = {},
): Uint8Array {
  _checkNonce("Nonce", nonce);
  _checkNonce("Server nonce", serverNonce);
  const p = tlBytes(Uint8Array.of(0x49, 0x4c, 0x55, 0x3b)); // 1229739323
  const q = tlBytes(Uint8Array.of(0x53, 0x91, 0x10, 0x73)); // 1402015859
  const encrypted = tlBytes(randomBytes(256));
  const body = new Uint8Array(36 + p.length + q.length + 8 + encrypted.length);
  const v = _view(body);
  v.setUint32(0, REQ_DH_PARAMS, true);
  body.set(nonce, 4);
  body.set(serverNonce, 20);
  body.set(p, 36);
  body.set(q, 36 + p.length);
  const fpOff = 36 + p.length + q.length;
  const fingerprint = options.fingerprint ?? DEFAULT_FINGERPRINTS[0]!;
  v.setBigUint64(fpOff, BigInt.asUintN(64, fingerprint), true);
  body.set(encrypted, fpOff + 8);
  return unencryptedMessage(body, options.msgId);
}

/** The nonce and server_nonce of a `req_DH_params` body, or null for any other body. */
export function isReqDhParams(
  body: Uint8Array,
): { nonce: Uint8Array; serverNonce: Uint8Array } | null {
  if (body.length < 36 || _view(body).getUint32(0, true) !== REQ_DH_PARAMS) return null;
  return { nonce: body.slice(4, 20), serverNonce: body.slice(20, 36) };
}
