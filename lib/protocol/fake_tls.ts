/**
 * Fake-TLS (`ee` secrets): the ClientHello whose random field carries an HMAC of the secret,
 * the server's answer (ServerHello + ChangeCipherSpec + one ApplicationData record, signed the
 * same way), and the ApplicationData record framing that carries obfuscated2 afterwards.
 * Pure: the caller passes the clock and random bytes in.
 *
 * @module
 */
import { hmacSha256, hmacSha256Parts, timingSafeEqual } from "../crypto.ts";

/** TLS record header length. */
export const RECORD_HEADER_LEN = 5;
/** Largest ApplicationData payload the proxy sends (TLS plaintext limit). */
export const MAX_RECORD_PAYLOAD = 16384;
/** Largest record accepted from a client (the Erlang proxy's limit; clients send <= 16384). */
export const MAX_INCOMING_RECORD = 65535;

const RANDOM_OFF = 11;
const RANDOM_LEN = 32;

/** Fatal decode_error alert, sent when a ClientHello cannot be parsed or names no server. */
export const ALERT_DECODE_ERROR: Uint8Array = Uint8Array.of(
  0x15,
  0x03,
  0x03,
  0x00,
  0x02,
  0x02,
  0x32,
);

/** A fatal TLS 1.2-style alert record with the given description code. */
export function tlsAlert(description: number): Uint8Array {
  return Uint8Array.of(0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description);
}

/** Why a TLS byte stream was refused. */
export type TlsRejectReason =
  | "tls_malformed"
  | "tls_too_large"
  | "tls_unexpected_record"
  | "tls_bad_version";

/** A parsed ClientHello. Views point into the received bytes. */
export interface ClientHello {
  /** The whole record, header included, exactly as received. */
  readonly record: Uint8Array;
  /** Bytes 11..42: HMAC digest XOR timestamp. */
  readonly random: Uint8Array;
  readonly sessionId: Uint8Array;
  readonly cipherSuites: readonly number[];
  /** First host_name in the server_name extension; null when absent. */
  readonly sni: string | null;
  /** Groups of the key_share extension, in order (GREASE included). */
  readonly keyShareGroups: readonly number[];
  /**
   * The client's X25519 public key: the X25519 key share, else the X25519 half (the last 32
   * bytes) of an X25519MLKEM768 share; null when there is neither.
   */
  readonly x25519Share: Uint8Array | null;
}

/** Outcome of {@linkcode parseClientHello}. */
export type HelloStep =
  | { kind: "hello"; hello: ClientHello; rest: Uint8Array }
  | { kind: "need"; atLeast: number }
  | { kind: "reject"; reason: TlsRejectReason };

/** Whether the first bytes of a connection look like a TLS handshake record (`16 03 01`). */
export function looksLikeTls(prefix: Uint8Array): boolean {
  return prefix[0] === 0x16 && (prefix.length < 2 || prefix[1] === 0x03) &&
    (prefix.length < 3 || prefix[2] === 0x01);
}

class _Cursor {
  pos: number;
  constructor(readonly buf: Uint8Array, pos: number, readonly end: number) {
    this.pos = pos;
  }
  u8(): number {
    if (this.pos + 1 > this.end) throw new RangeError("short");
    return this.buf[this.pos++]!;
  }
  u16(): number {
    return (this.u8() << 8) | this.u8();
  }
  bytes(n: number): Uint8Array {
    if (this.pos + n > this.end) throw new RangeError("short");
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  /** Step over `n` bytes without making a view of them. */
  skip(n: number): void {
    if (this.pos + n > this.end) throw new RangeError("short");
    this.pos += n;
  }
}

/** Host names are ASCII; latin1 maps every byte to one character. One decoder for all calls. */
const _LATIN1 = new TextDecoder("latin1");

function _parseSni(data: Uint8Array): string | null {
  const c = new _Cursor(data, 0, data.length);
  const listEnd = 2 + c.u16();
  if (listEnd > data.length) throw new RangeError("short");
  while (c.pos < listEnd) {
    const type = c.u8();
    const name = c.bytes(c.u16());
    if (type === 0) {
      if (name.length === 0 || name.includes(0)) throw new RangeError("bad name");
      return _LATIN1.decode(name);
    }
  }
  return null;
}

/** The hybrid post-quantum group modern clients offer first. */
export const GROUP_X25519_MLKEM768 = 0x11ec;
/** Plain X25519. */
export const GROUP_X25519 = 0x001d;
/** X25519MLKEM768 client share: an ML-KEM-768 encapsulation key, then an X25519 key. */
const MLKEM768_CLIENT_SHARE_LEN = 1184 + 32;
/** X25519MLKEM768 server share: an ML-KEM-768 ciphertext, then an X25519 key. */
const MLKEM768_SERVER_SHARE_LEN = 1088 + 32;

/** The X25519 key inside a key share of `group`, or null when the group or length is wrong. */
function _x25519Of(group: number, share: Uint8Array, hybridLen: number): Uint8Array | null {
  if (group === GROUP_X25519 && share.length === 32) return share;
  if (group === GROUP_X25519_MLKEM768 && share.length === hybridLen) {
    return share.subarray(share.length - 32);
  }
  return null;
}

/** Record the groups of a key_share extension in `out`; returns the X25519 key, if any. */
function _keyShares(data: Uint8Array, out: number[]): Uint8Array | null {
  const c = new _Cursor(data, 0, data.length);
  const end = 2 + c.u16();
  if (end > data.length) throw new RangeError("short");
  let plain: Uint8Array | null = null;
  let hybrid: Uint8Array | null = null;
  while (c.pos < end) {
    const group = c.u16();
    out.push(group);
    const key = _x25519Of(group, c.bytes(c.u16()), MLKEM768_CLIENT_SHARE_LEN);
    if (key === null) continue;
    if (group === GROUP_X25519) plain ??= key;
    else hybrid ??= key;
  }
  return plain ?? hybrid;
}

/**
 * Parse one ClientHello record from the start of `buf`. Depends only on the fields every client
 * sends (see protocol.md §5.3): never on extension order, GREASE, padding or key shares.
 */
export function parseClientHello(buf: Uint8Array): HelloStep {
  if (buf.length < RECORD_HEADER_LEN) return { kind: "need", atLeast: RECORD_HEADER_LEN };
  if (!looksLikeTls(buf)) return { kind: "reject", reason: "tls_malformed" };
  const len = (buf[3]! << 8) | buf[4]!;
  if (len > MAX_RECORD_PAYLOAD) return { kind: "reject", reason: "tls_too_large" };
  const end = RECORD_HEADER_LEN + len;
  if (buf.length < end) return { kind: "need", atLeast: end };
  try {
    const c = new _Cursor(buf, RECORD_HEADER_LEN, end);
    if (c.u8() !== 0x01) return { kind: "reject", reason: "tls_malformed" };
    const hsLen = (c.u8() << 16) | c.u16();
    if (hsLen + 4 > len) return { kind: "reject", reason: "tls_malformed" };
    const hsEnd = RECORD_HEADER_LEN + 4 + hsLen;
    const h = new _Cursor(buf, c.pos, hsEnd);
    h.u16(); // legacy_version
    const random = h.bytes(RANDOM_LEN);
    const sessionId = h.bytes(h.u8());
    if (sessionId.length > 32) return { kind: "reject", reason: "tls_malformed" };
    const suites = h.bytes(h.u16());
    if (suites.length % 2 !== 0) return { kind: "reject", reason: "tls_malformed" };
    const cipherSuites: number[] = [];
    for (let i = 0; i < suites.length; i += 2) {
      cipherSuites.push((suites[i]! << 8) | suites[i + 1]!);
    }
    h.skip(h.u8()); // compression methods
    let sni: string | null = null;
    const keyShareGroups: number[] = [];
    let x25519Share: Uint8Array | null = null;
    if (h.pos < hsEnd) {
      const extEnd = h.pos + 2 + h.u16();
      if (extEnd > hsEnd) return { kind: "reject", reason: "tls_malformed" };
      while (h.pos < extEnd) {
        const type = h.u16();
        const len = h.u16();
        // Only two extensions matter: no view of the other dozen or so.
        if (type === 0x0000 && sni === null) sni = _parseSni(h.bytes(len));
        else if (type === 0x0033) {
          const key = _keyShares(h.bytes(len), keyShareGroups);
          x25519Share ??= key;
        } else h.skip(len);
      }
    }
    const record = buf.subarray(0, end);
    return {
      kind: "hello",
      hello: { record, random, sessionId, cipherSuites, sni, keyShareGroups, x25519Share },
      rest: buf.subarray(end),
    };
  } catch {
    return { kind: "reject", reason: "tls_malformed" };
  }
}

/** Outcome of checking a ClientHello's digest against one secret. */
export type HelloCheck =
  | { kind: "ok"; timestamp: number }
  | { kind: "bad_digest" }
  | { kind: "bad_timestamp"; timestamp: number };

/** What the random field holds while its digest is computed. */
const _ZERO_RANDOM = new Uint8Array(RANDOM_LEN);

function _zeroedRecord(record: Uint8Array): Uint8Array {
  const zeroed = record.slice();
  zeroed.fill(0, RANDOM_OFF, RANDOM_OFF + RANDOM_LEN);
  return zeroed;
}

/**
 * Check the hello's HMAC digest with `secret` and its timestamp against `nowSec` +- `maxSkewSec`.
 *
 * @example Usage
 * ```ts ignore
 * const check = verifyClientHello(hello, secret, Date.now() / 1000, 600);
 * if (check.kind === "ok") console.log("client clock", check.timestamp);
 * ```
 */
export function verifyClientHello(
  hello: ClientHello,
  secret: Uint8Array,
  nowSec: number,
  maxSkewSec: number,
): HelloCheck {
  // The digest covers the record with its random field zeroed: hash around it, no copy.
  const record = hello.record;
  const mac = hmacSha256Parts(secret, [
    record.subarray(0, RANDOM_OFF),
    _ZERO_RANDOM,
    record.subarray(RANDOM_OFF + RANDOM_LEN),
  ]);
  for (let i = 0; i < RANDOM_LEN; i++) mac[i]! ^= hello.random[i]!;
  // Constant time: OR every byte of the 28 that must be zero.
  let diff = 0;
  for (let i = 0; i < 28; i++) diff |= mac[i]!;
  if (diff !== 0) return { kind: "bad_digest" };
  const timestamp = new DataView(mac.buffer).getUint32(28, true);
  if (Math.abs(nowSec - timestamp) > maxSkewSec) return { kind: "bad_timestamp", timestamp };
  return { kind: "ok", timestamp };
}

/** Options for {@linkcode buildServerHello}. */
export interface ServerHelloOptions {
  /**
   * The server's key share: an X25519 public key (32 bytes), or for X25519MLKEM768 an ML-KEM
   * ciphertext (1088 bytes) followed by an X25519 public key.
   */
  keyShare: Uint8Array;
  /**
   * Bytes written in front of `keyShare` in the key exchange field by `fillKeySharePrefix`, in
   * place: for X25519MLKEM768, the ML-KEM ciphertext (1088 bytes; any bytes of that length are a
   * well-formed one) before an X25519 `keyShare`, with no buffer of its own. @default 0
   */
  keySharePrefix?: number;
  /** Fills the key share prefix (e.g. with random bytes); required when it is not empty. */
  fillKeySharePrefix?: (prefix: Uint8Array) => void;
  /** The key share's group. @default GROUP_X25519 */
  keyShareGroup?: number;
  /** Cipher suite to answer with when the client offers it. @default the client's first TLS 1.3 suite */
  cipherSuite?: number;
  /**
   * Payload of the fake encrypted-handshake ApplicationData record, or its length: then
   * `fillAppData` writes the payload in place (no separate buffer).
   */
  appData: Uint8Array | number;
  /** Fills the payload when `appData` is a length (e.g. with random bytes). */
  fillAppData?: (payload: Uint8Array) => void;
  /** Extension order in the ServerHello. @default "key_share_first" */
  extensionOrder?: "key_share_first" | "versions_first";
}

function _isGrease(suite: number): boolean {
  return (suite & 0x0f0f) === 0x0a0a && (suite >> 8) === (suite & 0xff);
}

/** The TLS 1.3 suite to answer with: the client's first non-GREASE `13 0x`, else `13 01`. */
export function chooseCipherSuite(suites: readonly number[]): number {
  return suites.find((s) => !_isGrease(s) && (s >> 8) === 0x13) ?? 0x1301;
}

/**
 * Build the server's answer to a verified hello: ServerHello, ChangeCipherSpec and one
 * ApplicationData record, with the HMAC of `secret` over the client random and the whole
 * answer written into the ServerHello random.
 */
export function buildServerHello(
  hello: ClientHello,
  secret: Uint8Array,
  options: ServerHelloOptions,
): Uint8Array {
  const group = options.keyShareGroup ?? GROUP_X25519;
  const key = options.keyShare;
  const prefix = options.keySharePrefix ?? 0;
  const fillPrefix = options.fillKeySharePrefix;
  if (!Number.isInteger(prefix) || prefix < 0) {
    throw new RangeError(`Key share prefix must be a length: got ${prefix}`);
  }
  if (prefix > 0 && fillPrefix === undefined) {
    throw new TypeError("A key share prefix needs fillKeySharePrefix");
  }
  const keyLen = prefix + key.length;
  const preferred = options.cipherSuite;
  const suite = preferred !== undefined && hello.cipherSuites.includes(preferred)
    ? preferred
    : chooseCipherSuite(hello.cipherSuites);
  const sid = hello.sessionId;
  const keyShareLen = 8 + keyLen;
  const extsLen = keyShareLen + 6;
  const bodyLen = 2 + RANDOM_LEN + 1 + sid.length + 3 + 2 + extsLen;
  const hsLen = 4 + bodyLen;
  const appData = options.appData;
  const appLen = typeof appData === "number" ? appData : appData.length;
  // Written straight into one buffer: the ML-KEM key share makes a spread-array version
  // allocate tens of kilobytes of garbage per handshake.
  const out = new Uint8Array(5 + hsLen + 6 + 5 + appLen);
  let o = 0;
  const u8 = (v: number) => {
    out[o++] = v & 0xff;
  };
  const u16 = (v: number) => {
    u8(v >> 8);
    u8(v);
  };
  u8(0x16);
  u16(0x0303);
  u16(hsLen);
  u8(0x02);
  u8(bodyLen >> 16);
  u16(bodyLen);
  u16(0x0303);
  o += RANDOM_LEN; // filled with the HMAC last
  u8(sid.length);
  out.set(sid, o);
  o += sid.length;
  u16(suite);
  u8(0x00);
  u16(extsLen);
  const writeKeyShare = () => {
    u16(0x0033);
    u16(keyLen + 4);
    u16(group);
    u16(keyLen);
    if (prefix > 0) {
      fillPrefix!(out.subarray(o, o + prefix));
      o += prefix;
    }
    out.set(key, o);
    o += key.length;
  };
  const writeVersions = () => {
    u16(0x002b);
    u16(2);
    u16(0x0304);
  };
  if (options.extensionOrder === "versions_first") {
    writeVersions();
    writeKeyShare();
  } else {
    writeKeyShare();
    writeVersions();
  }
  out.set([0x14, 0x03, 0x03, 0x00, 0x01, 0x01], o);
  o += 6;
  u8(0x17);
  u16(0x0303);
  u16(appLen);
  if (typeof appData === "number") options.fillAppData?.(out.subarray(o, o + appLen));
  else out.set(appData, o);
  out.set(hmacSha256(secret, hello.random, out), RANDOM_OFF);
  return out;
}

/**
 * Client side: sign an unsigned hello record for `secret` at time `nowSec` (writes the random
 * field of a copy and returns it).
 */
export function signClientHello(
  record: Uint8Array,
  secret: Uint8Array,
  nowSec: number,
): Uint8Array {
  const out = _zeroedRecord(record);
  const mac = hmacSha256(secret, out);
  const ts = new Uint8Array(4);
  new DataView(ts.buffer).setUint32(0, nowSec >>> 0, true);
  for (let i = 0; i < 4; i++) mac[28 + i]! ^= ts[i]!;
  out.set(mac, RANDOM_OFF);
  return out;
}

/** Outcome of {@linkcode parseServerHello}. */
export type ServerHelloStep =
  | { kind: "ok"; length: number }
  | { kind: "need"; atLeast: number }
  | { kind: "reject"; reason: "tls_malformed" | "bad_digest" };

/**
 * Client side: check a server answer the way TDLib does (a `16 03 03` record, then
 * `14 03 03 00 01 01`, then one `17 03 03` record, HMAC over all of it equal to the random).
 */
export function parseServerHello(
  buf: Uint8Array,
  clientRandom: Uint8Array,
  secret: Uint8Array,
): ServerHelloStep {
  if (buf.length < 5) return { kind: "need", atLeast: 5 };
  if (buf[0] !== 0x16 || buf[1] !== 0x03 || buf[2] !== 0x03) {
    return { kind: "reject", reason: "tls_malformed" };
  }
  const first = 5 + ((buf[3]! << 8) | buf[4]!);
  const ccsEnd = first + 6;
  if (buf.length < ccsEnd + 5) return { kind: "need", atLeast: ccsEnd + 5 };
  const ccs = buf.subarray(first, ccsEnd);
  const app = buf.subarray(ccsEnd, ccsEnd + 3);
  if (
    !timingSafeEqual(ccs, Uint8Array.of(0x14, 0x03, 0x03, 0x00, 0x01, 0x01)) ||
    !timingSafeEqual(app, Uint8Array.of(0x17, 0x03, 0x03))
  ) {
    return { kind: "reject", reason: "tls_malformed" };
  }
  const end = ccsEnd + 5 + ((buf[ccsEnd + 3]! << 8) | buf[ccsEnd + 4]!);
  if (buf.length < end) return { kind: "need", atLeast: end };
  const answer = buf.slice(0, end);
  const random = answer.slice(RANDOM_OFF, RANDOM_OFF + RANDOM_LEN);
  answer.fill(0, RANDOM_OFF, RANDOM_OFF + RANDOM_LEN);
  const mac = hmacSha256(secret, clientRandom, answer);
  return timingSafeEqual(mac, random)
    ? { kind: "ok", length: end }
    : { kind: "reject", reason: "bad_digest" };
}

/** The key share of a ServerHello. Views point into the answer. */
export interface ServerKeyShare {
  readonly group: number;
  /** The whole key exchange field. */
  readonly keyExchange: Uint8Array;
  /** The server's X25519 key in it (X25519, or the last 32 bytes of X25519MLKEM768); else null. */
  readonly x25519: Uint8Array | null;
}

/**
 * Client side: the key share of the ServerHello that starts `answer` (an answer that
 * {@linkcode parseServerHello} accepted), or null when the hello is malformed or has none.
 *
 * @example Usage
 * ```ts ignore
 * const step = parseServerHello(buf, clientRandom, secret);
 * if (step.kind === "ok") console.log(serverHelloKeyShare(buf.subarray(0, step.length))?.group);
 * ```
 */
export function serverHelloKeyShare(answer: Uint8Array): ServerKeyShare | null {
  if (answer.length < RECORD_HEADER_LEN || answer[0] !== 0x16) return null;
  const end = RECORD_HEADER_LEN + ((answer[3]! << 8) | answer[4]!);
  if (end > answer.length) return null;
  try {
    const c = new _Cursor(answer, RECORD_HEADER_LEN, end);
    if (c.u8() !== 0x02) return null;
    const hsLen = (c.u8() << 16) | c.u16();
    const hsEnd = c.pos + hsLen;
    if (hsEnd > end) return null;
    const h = new _Cursor(answer, c.pos, hsEnd);
    h.u16(); // legacy_version
    h.bytes(RANDOM_LEN);
    h.bytes(h.u8()); // legacy_session_id_echo
    h.u16(); // cipher_suite
    h.u8(); // legacy_compression_method
    const extEnd = h.pos + 2 + h.u16();
    if (extEnd > hsEnd) return null;
    while (h.pos < extEnd) {
      const type = h.u16();
      const data = h.bytes(h.u16());
      if (type !== 0x0033) continue;
      const k = new _Cursor(data, 0, data.length);
      const group = k.u16();
      const keyExchange = k.bytes(k.u16());
      if (k.pos !== data.length) return null;
      return {
        group,
        keyExchange,
        x25519: _x25519Of(group, keyExchange, MLKEM768_SERVER_SHARE_LEN),
      };
    }
    return null;
  } catch {
    return null;
  }
}

/** Write an ApplicationData record header for a payload of `len` bytes at `buf[off..off+5)`. */
export function writeAppDataHeader(buf: Uint8Array, off: number, len: number): void {
  buf[off] = 0x17;
  buf[off + 1] = 0x03;
  buf[off + 2] = 0x03;
  buf[off + 3] = len >> 8;
  buf[off + 4] = len & 0xff;
}

/** Wrap `payload` in ApplicationData records of at most `maxRecord` payload bytes each. */
export function encodeAppData(payload: Uint8Array, maxRecord = MAX_RECORD_PAYLOAD): Uint8Array {
  const records = Math.max(1, Math.ceil(payload.length / maxRecord));
  const out = new Uint8Array(payload.length + records * RECORD_HEADER_LEN);
  let w = 0;
  for (let r = 0; r < payload.length || w === 0; r += maxRecord) {
    const n = Math.min(maxRecord, payload.length - r);
    writeAppDataHeader(out, w, n);
    out.set(payload.subarray(r, r + n), w + RECORD_HEADER_LEN);
    w += RECORD_HEADER_LEN + n;
  }
  return out;
}

/**
 * Incremental, in-place reader of the records a client sends after its hello: drops
 * ChangeCipherSpec records and ApplicationData headers, keeps ApplicationData payloads.
 * Records may be split or coalesced arbitrarily across reads.
 */
export class TlsRecordReader {
  // Header parsing state in plain numbers: an ArrayBuffer per client costs more than it holds.
  #have = 0;
  #type = 0;
  #size = 0;
  #left = 0;
  #keep = false;

  /**
   * Replace the record framing in `buf` by the payload bytes, moved to the front in place.
   * Returns how many payload bytes now start `buf`, or why the stream was refused.
   */
  unwrap(buf: Uint8Array): number | TlsRejectReason {
    let r = 0;
    let w = 0;
    const len = buf.length;
    while (r < len) {
      if (this.#left === 0) {
        const b = buf[r++]!;
        switch (this.#have++) {
          case 0:
            this.#type = b;
            break;
          case 1:
          case 2:
            if (b !== 0x03) return "tls_bad_version";
            break;
          case 3:
            this.#size = b << 8;
            break;
          default: {
            this.#size |= b;
            this.#have = 0;
            if (this.#type === 0x17) {
              this.#keep = true;
            } else if (this.#type === 0x14 && this.#size === 1) {
              this.#keep = false;
            } else {
              return "tls_unexpected_record";
            }
            this.#left = this.#size;
          }
        }
        continue;
      }
      const n = Math.min(this.#left, len - r);
      if (this.#keep) {
        if (w !== r) buf.copyWithin(w, r, r + n);
        w += n;
      }
      r += n;
      this.#left -= n;
    }
    return w;
  }
}
