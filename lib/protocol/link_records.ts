/**
 * Split-mode link records and handshake. A front opens a link the way an `ee` client opens a
 * fake-TLS connection: a Chrome-like ClientHello signed with the front's secret, whose X25519
 * key share is the front's real ephemeral key. The back answers with a fake-TLS ServerHello,
 * signed the same way, whose key share is its own ephemeral key. Both ends then derive AES-GCM
 * keys from the X25519 secret and the link secret, and the link carries TLS-1.3-shaped
 * ApplicationData records (`17 03 03 <u16 length>`, AES-256-GCM with the header as additional
 * data and the TLS 1.3 per-record nonce) that hold the frames of link.ts.
 *
 * Key schedule: okm = HKDF-SHA256(ikm = X25519 secret, salt = link secret, info = "mtproxy
 * link v1" || client random || server random, 88 bytes) = key front→back (32) | key back→front
 * (32) | iv front→back (12) | iv back→front (12). The randoms are the hello randoms as sent
 * (both are HMACs over the whole hello, so they bind the transcript).
 *
 * Pure: the caller passes the clock and may pass the random source.
 *
 * @module
 */
import {
  type Aead,
  type AesOptions,
  createAesGcm,
  hkdfSha256,
  randomBytes as cryptoRandomBytes,
  x25519PublicKey,
  x25519SharedSecret,
} from "../crypto.ts";
import { buildClientHello } from "./client_hello.ts";
import {
  buildServerHello,
  type ClientHello,
  GROUP_X25519,
  GROUP_X25519_MLKEM768,
  parseServerHello,
  serverHelloKeyShare,
  signClientHello,
} from "./fake_tls.ts";

/** Largest plaintext in one link record (the TLS limit). */
export const LINK_RECORD_MAX_PLAINTEXT = 16384;
/** AES-GCM tag length at the end of each record. */
export const LINK_RECORD_TAG = 16;
/** Record header length. */
const HEADER = 5;
/** Largest record length field: a full plaintext and its tag. */
const MAX_RECORD_LENGTH = LINK_RECORD_MAX_PLAINTEXT + LINK_RECORD_TAG;
/** Sequence numbers are kept exact in a number; 2^53 records is far beyond any link's life. */
const SEQUENCE_LIMIT = Number.MAX_SAFE_INTEGER;
/**
 * Records per key and direction before both ends move to the next key: RFC 8446 (5.5) keeps
 * AES-GCM under 2^24.5 full records per key; a busy link passes 2^24 records (256 GiB) in days.
 */
export const LINK_KEY_UPDATE_RECORDS = 2 ** 24;
/** The HKDF info label of a key update. */
const KEY_UPDATE_LABEL = new TextEncoder().encode("mtproxy link key update");
/** The HKDF info label; the two hello randoms follow it. */
const KDF_LABEL = new TextEncoder().encode("mtproxy link v1");
/** Bytes of key material: two keys and two IVs. */
const KDF_LEN = 32 + 32 + 12 + 12;
/** ML-KEM-768 ciphertext length in an X25519MLKEM768 server share. */
const MLKEM768_CIPHERTEXT_LEN = 1088;
const RANDOM_OFF = 11;
const RANDOM_LEN = 32;
const EMPTY = new Uint8Array(0);

/** One end's record keys: 32-byte AES-256 keys and 12-byte IVs. */
export interface LinkKeys {
  sendKey: Uint8Array;
  sendIv: Uint8Array;
  recvKey: Uint8Array;
  recvIv: Uint8Array;
}

/** Options for {@linkcode createLinkHello}. */
export interface LinkHelloOptions {
  /** The link secret the back knows this front by. */
  secret: Uint8Array;
  /** The server name in the hello (the site the back imitates). */
  domain: string;
  /** Current time in seconds (signed into the hello). */
  nowSec: number;
  /**
   * Random source for the ephemeral key and every random part of the hello.
   * @default the system CSPRNG
   */
  randomBytes?: (n: number) => Uint8Array;
}

/** Front: the signed hello to send and what is needed to check the answer. */
export interface LinkHelloState {
  /** The ClientHello record to send. */
  readonly record: Uint8Array;
  /** Its random field as sent (the HMAC), which the answer's HMAC covers. */
  readonly clientRandom: Uint8Array;
  /** The front's ephemeral X25519 private key. */
  readonly privateKey: Uint8Array;
}

/** How the back's answer should look (the imitated site's shape, see session.ts). */
export interface LinkAnswerShape {
  /** Length of the fake encrypted-handshake ApplicationData record. */
  appDataLength: number;
  extensionOrder: "key_share_first" | "versions_first";
  /** The group the site picks when offered X25519MLKEM768 and X25519. */
  keyShareGroup: number;
  /** The site's cipher suite, if measured. @default the client's first TLS 1.3 suite */
  cipherSuite?: number;
}

/** Outcome of {@linkcode answerLinkHello}. */
export type LinkAnswer =
  | { answer: Uint8Array; keys: LinkKeys }
  | { reject: "no_key_share" };

/** Outcome of {@linkcode finishLinkHello}. */
export type LinkHelloStep =
  | { kind: "need"; atLeast: number }
  | { kind: "ok"; length: number; keys: LinkKeys }
  | { kind: "reject"; reason: "tls_malformed" | "bad_digest" | "no_key_share" };

function _deriveKeys(
  shared: Uint8Array,
  secret: Uint8Array,
  clientRandom: Uint8Array,
  serverRandom: Uint8Array,
  role: "front" | "back",
): LinkKeys {
  const info = new Uint8Array(KDF_LABEL.length + 2 * RANDOM_LEN);
  info.set(KDF_LABEL);
  info.set(clientRandom, KDF_LABEL.length);
  info.set(serverRandom, KDF_LABEL.length + RANDOM_LEN);
  const okm = hkdfSha256(shared, secret, info, KDF_LEN);
  const up = { key: okm.slice(0, 32), iv: okm.slice(64, 76) };
  const down = { key: okm.slice(32, 64), iv: okm.slice(76, 88) };
  okm.fill(0);
  const [send, recv] = role === "front" ? [up, down] : [down, up];
  return { sendKey: send.key, sendIv: send.iv, recvKey: recv.key, recvIv: recv.iv };
}

/** The X25519 secret, or null when the peer key is a low-order point. */
function _agree(privateKey: Uint8Array, peer: Uint8Array): Uint8Array | null {
  try {
    return x25519SharedSecret(privateKey, peer);
  } catch {
    return null;
  }
}

/**
 * Front: a fresh ephemeral key and a signed Chrome-like ClientHello that carries it.
 *
 * @example Usage
 * ```ts
 * import { createLinkHello } from "./link_records.ts";
 *
 * const secret = new Uint8Array(16).fill(7);
 * const state = createLinkHello({ secret, domain: "example.com", nowSec: 1_700_000_000 });
 * // Send state.record, then feed the answer to finishLinkHello(buf, state, secret).
 * if (state.record[0] !== 0x16) throw new Error("not a handshake record");
 * ```
 */
export function createLinkHello(options: LinkHelloOptions): LinkHelloState {
  const rand = options.randomBytes ?? cryptoRandomBytes;
  const privateKey = rand(32).slice();
  const unsigned = buildClientHello({
    sni: options.domain,
    x25519PrivateKey: privateKey,
    randomBytes: rand,
  });
  const record = signClientHello(unsigned, options.secret, options.nowSec);
  return {
    record,
    clientRandom: record.slice(RANDOM_OFF, RANDOM_OFF + RANDOM_LEN),
    privateKey,
  };
}

/**
 * Back: the answer to a hello that `verifyClientHello` accepted with `secret`, shaped like the
 * imitated site's answer, and the back's keys. Refuses a hello without a usable X25519 share.
 *
 * @example Usage
 * ```ts ignore
 * const answered = answerLinkHello(hello, secret, guard.answerShape(sni));
 * if ("reject" in answered) throw new Error(answered.reject);
 * await writeAll(conn, answered.answer);
 * ```
 */
export function answerLinkHello(
  hello: ClientHello,
  secret: Uint8Array,
  shape: LinkAnswerShape,
  randomBytes: (n: number) => Uint8Array = cryptoRandomBytes,
): LinkAnswer {
  const peer = hello.x25519Share;
  if (peer === null) return { reject: "no_key_share" };
  const privateKey = randomBytes(32).slice();
  const shared = _agree(privateKey, peer);
  if (shared === null) return { reject: "no_key_share" };
  const ownPublic = x25519PublicKey(privateKey);
  privateKey.fill(0);
  // Answer a post-quantum offer like the site does (see session.ts): random bytes stand in for
  // the ML-KEM ciphertext, the X25519 half is real.
  const mlkem = shape.keyShareGroup === GROUP_X25519_MLKEM768 &&
    hello.keyShareGroups.includes(GROUP_X25519_MLKEM768);
  let keyShare = ownPublic;
  if (mlkem) {
    keyShare = new Uint8Array(MLKEM768_CIPHERTEXT_LEN + 32);
    keyShare.set(randomBytes(MLKEM768_CIPHERTEXT_LEN));
    keyShare.set(ownPublic, MLKEM768_CIPHERTEXT_LEN);
  }
  const answer = buildServerHello(hello, secret, {
    keyShare,
    keyShareGroup: mlkem ? GROUP_X25519_MLKEM768 : GROUP_X25519,
    appData: shape.appDataLength,
    fillAppData: (payload) => payload.set(randomBytes(payload.length)),
    extensionOrder: shape.extensionOrder,
    ...(shape.cipherSuite !== undefined ? { cipherSuite: shape.cipherSuite } : {}),
  });
  const serverRandom = answer.subarray(RANDOM_OFF, RANDOM_OFF + RANDOM_LEN);
  const keys = _deriveKeys(shared, secret, hello.random, serverRandom, "back");
  shared.fill(0);
  return { answer, keys };
}

/**
 * Front: check the back's answer at the start of `buf` (which may hold more bytes after it):
 * its HMAC proves the back knows `secret`; its key share gives the keys. `length` is how many
 * bytes of `buf` the answer took.
 *
 * @example Usage
 * ```ts ignore
 * const step = finishLinkHello(buf.subarray(0, len), state, secret);
 * if (step.kind === "ok") startLink(step.keys, buf.subarray(step.length, len));
 * ```
 */
export function finishLinkHello(
  buf: Uint8Array,
  state: LinkHelloState,
  secret: Uint8Array,
): LinkHelloStep {
  const step = parseServerHello(buf, state.clientRandom, secret);
  if (step.kind !== "ok") return step;
  const answer = buf.subarray(0, step.length);
  const share = serverHelloKeyShare(answer);
  if (share === null || share.x25519 === null) return { kind: "reject", reason: "no_key_share" };
  const shared = _agree(state.privateKey, share.x25519);
  if (shared === null) return { kind: "reject", reason: "no_key_share" };
  const serverRandom = answer.subarray(RANDOM_OFF, RANDOM_OFF + RANDOM_LEN);
  const keys = _deriveKeys(shared, secret, state.clientRandom, serverRandom, "front");
  shared.fill(0);
  return { kind: "ok", length: step.length, keys };
}

/** Write the TLS 1.3 nonce of record `seq` (iv XOR the 64-bit big-endian sequence) to `out`. */
function _nonce(iv: Uint8Array, seq: number, out: Uint8Array): void {
  out.set(iv);
  const hi = Math.floor(seq / 0x1_0000_0000);
  const lo = seq >>> 0;
  out[4]! ^= hi >>> 24;
  out[5]! ^= (hi >>> 16) & 0xff;
  out[6]! ^= (hi >>> 8) & 0xff;
  out[7]! ^= hi & 0xff;
  out[8]! ^= lo >>> 24;
  out[9]! ^= (lo >>> 16) & 0xff;
  out[10]! ^= (lo >>> 8) & 0xff;
  out[11]! ^= lo & 0xff;
}

/** Options of {@linkcode RecordSealer} and {@linkcode RecordOpener}. */
export interface RecordOptions extends AesOptions {
  /** Records per key before the next key (both ends must agree). @default LINK_KEY_UPDATE_RECORDS */
  keyUpdateRecords?: number;
}

/**
 * One direction's key and IV, and the next ones every `keyUpdateRecords` records: both ends
 * derive them the same way at the same record, so a key update needs no message on the wire.
 */
class _DirectionKeys {
  aead: Aead;
  readonly iv: Uint8Array;
  #key: Uint8Array;
  readonly #every: number;
  readonly #options: AesOptions | undefined;

  constructor(key: Uint8Array, iv: Uint8Array, options: RecordOptions | undefined) {
    _checkKey(key, iv);
    const every = options?.keyUpdateRecords ?? LINK_KEY_UPDATE_RECORDS;
    if (!Number.isInteger(every) || every < 1) {
      throw new RangeError(`keyUpdateRecords must be a positive integer: got ${every}`);
    }
    this.#every = every;
    this.#options = options;
    this.#key = key.slice();
    this.iv = iv.slice();
    this.aead = createAesGcm(this.#key, options);
  }

  /** Before using sequence number `seq`: move to the next key when its time has come. */
  at(seq: number): void {
    if (seq === 0 || seq % this.#every !== 0) return;
    const okm = hkdfSha256(this.#key, this.iv, KEY_UPDATE_LABEL, 44);
    this.#key.fill(0);
    this.#key = okm.slice(0, 32);
    this.iv.set(okm.subarray(32, 44));
    okm.fill(0);
    this.aead.close();
    this.aead = createAesGcm(this.#key, this.#options);
  }

  close(): void {
    this.#key.fill(0);
    this.aead.close();
  }
}

function _checkKey(key: Uint8Array, iv: Uint8Array): void {
  if (key.length !== 32) throw new RangeError(`Record key must be 32 bytes: got ${key.length}`);
  if (iv.length !== 12) throw new RangeError(`Record IV must be 12 bytes: got ${iv.length}`);
}

/**
 * Seals plaintext into link records for one direction. Sequence numbers start at 0 and are
 * never reused; the output buffer is reused between calls.
 *
 * @example Usage
 * ```ts
 * import { RecordOpener, RecordSealer } from "./link_records.ts";
 *
 * const key = new Uint8Array(32).fill(1);
 * const iv = new Uint8Array(12).fill(2);
 * const wire = new RecordSealer(key, iv).seal(new TextEncoder().encode("hi"));
 * let got = "";
 * new RecordOpener(key, iv).push(wire, (p) => got += new TextDecoder().decode(p));
 * if (got !== "hi") throw new Error("round trip failed");
 * ```
 */
export class RecordSealer {
  readonly #keys: _DirectionKeys;
  readonly #nonce = new Uint8Array(12);
  #seq = 0;
  #out = new Uint8Array(HEADER + MAX_RECORD_LENGTH);

  constructor(key: Uint8Array, iv: Uint8Array, options?: RecordOptions) {
    this.#keys = new _DirectionKeys(key, iv, options);
  }

  /** Records sealed so far (the next record's sequence number). */
  get sequence(): number {
    return this.#seq;
  }

  /**
   * Seal `plain` into records of at most 16 KiB plaintext; returns the wire bytes, a view into
   * a reused buffer valid until the next seal(). Empty input gives no records.
   */
  seal(plain: Uint8Array): Uint8Array {
    const n = plain.length;
    if (n === 0) return EMPTY;
    const records = Math.ceil(n / LINK_RECORD_MAX_PLAINTEXT);
    if (this.#seq + records > SEQUENCE_LIMIT) {
      throw new RangeError("Record sequence exhausted: the link must be replaced");
    }
    const size = n + records * (HEADER + LINK_RECORD_TAG);
    if (size > this.#out.length) {
      this.#out = new Uint8Array(Math.max(size, 2 * this.#out.length));
    } else if (this.#out.length > 1 << 22 && size < this.#out.length / 8) {
      // Let one large burst's buffer go.
      this.#out = new Uint8Array(Math.max(size, HEADER + MAX_RECORD_LENGTH));
    }
    const out = this.#out;
    const nonce = this.#nonce;
    let w = 0;
    for (let r = 0; r < n; r += LINK_RECORD_MAX_PLAINTEXT) {
      const k = Math.min(LINK_RECORD_MAX_PLAINTEXT, n - r);
      const len = k + LINK_RECORD_TAG;
      out[w] = 0x17;
      out[w + 1] = 0x03;
      out[w + 2] = 0x03;
      out[w + 3] = len >> 8;
      out[w + 4] = len & 0xff;
      const body = w + HEADER;
      const keys = this.#keys;
      keys.at(this.#seq);
      _nonce(keys.iv, this.#seq++, nonce);
      // Encrypted straight from `plain` into the record: no copy of the plaintext first.
      keys.aead.sealTo(
        nonce,
        out.subarray(w, body),
        plain.subarray(r, r + k),
        out.subarray(body, body + k),
        out.subarray(body + k, body + len),
      );
      w = body + len;
    }
    return out.subarray(0, size);
  }

  /** Free the cipher. */
  close(): void {
    this.#keys.close();
  }
}

/** Why a link's record stream must close. */
export type RecordError = "integrity" | "bad_record" | "record_too_large" | "sequence_exhausted";

/**
 * Opens link records for one direction, from raw socket bytes in any chunking. A record that
 * lies whole in one push is decrypted in place in the pushed bytes (they are overwritten); only
 * a record split across pushes is copied. After an error the opener stays refused.
 *
 * @example Usage
 * ```ts
 * import { RecordOpener, RecordSealer } from "./link_records.ts";
 *
 * const key = new Uint8Array(32);
 * const iv = new Uint8Array(12);
 * const wire = new RecordSealer(key, iv).seal(Uint8Array.of(1, 2, 3)).slice();
 * const opener = new RecordOpener(key, iv);
 * let total = 0;
 * for (const b of wire) opener.push(Uint8Array.of(b), (p) => total += p.length); // byte by byte
 * if (total !== 3) throw new Error("lost bytes");
 * ```
 */
export class RecordOpener {
  readonly #keys: _DirectionKeys;
  readonly #nonce = new Uint8Array(12);
  #seq = 0;
  /** A record split across pushes. */
  readonly #buf = new Uint8Array(HEADER + MAX_RECORD_LENGTH);
  #have = 0;
  /** The split record's total length, header included, once its header is whole. */
  #need = 0;
  #ccsSeen = false;
  #failed: RecordError | null = null;
  /** pushJoined(): the plaintext of this push's records, end to end, and how much of it there is. */
  #plain: Uint8Array = EMPTY;
  #plainLen = 0;
  /** Set during pushJoined(): records are decrypted into #plain instead of in place. */
  #joining = false;

  constructor(key: Uint8Array, iv: Uint8Array, options?: RecordOptions) {
    this.#keys = new _DirectionKeys(key, iv, options);
  }

  /** Records opened so far (the next record's sequence number). */
  get sequence(): number {
    return this.#seq;
  }

  /**
   * Like {@linkcode RecordOpener.push}, but every record is decrypted into one buffer of the
   * opener's, end to end, and `onPlain` is called once with all the plaintext of this push (a
   * view valid until the next push): data that spans records (a 16 KiB packet and its frame
   * header do) comes out whole, and `bytes` is left as it was. When a record fails, the
   * plaintext of the records before it is handed over first.
   */
  pushJoined(bytes: Uint8Array, onPlain: (plain: Uint8Array) => void): RecordError | null {
    if (this.#failed !== null) return this.#failed;
    // The most plaintext this push can give: a split record's rest and every byte here.
    const most = this.#have + bytes.length;
    if (this.#plain.length < most) {
      let size = Math.max(HEADER + MAX_RECORD_LENGTH, this.#plain.length);
      while (size < most) size *= 2;
      this.#plain = new Uint8Array(size);
    }
    this.#plainLen = 0;
    this.#joining = true;
    let e: RecordError | null;
    try {
      e = this.push(bytes, onPlain);
    } finally {
      this.#joining = false;
    }
    if (this.#plainLen > 0) onPlain(this.#plain.subarray(0, this.#plainLen));
    return e;
  }

  /**
   * Feed raw bytes read from the socket (any chunking; whole records in them are decrypted in
   * place). Calls `onPlain` for each decrypted record payload (a view valid during the call),
   * in order; returns null or why the link must close. One ChangeCipherSpec record
   * (`14 03 03 00 01 01`) is skipped wherever it comes (a real TLS client sends one after the
   * ServerHello); any other non-17 record is "bad_record".
   */
  push(bytes: Uint8Array, onPlain: (plain: Uint8Array) => void): RecordError | null {
    if (this.#failed !== null) return this.#failed;
    const n = bytes.length;
    const buf = this.#buf;
    let p = 0;
    while (p < n) {
      if (this.#have > 0) {
        if (this.#have < HEADER) {
          while (p < n && this.#have < HEADER) buf[this.#have++] = bytes[p++]!;
          if (this.#have < HEADER) break;
          const len = this.#header(buf, 0);
          if (typeof len === "string") return this.#fail(len);
          this.#need = HEADER + len;
        }
        const k = Math.min(this.#need - this.#have, n - p);
        buf.set(bytes.subarray(p, p + k), this.#have);
        this.#have += k;
        p += k;
        if (this.#have < this.#need) break;
        this.#have = 0;
        const e = this.#record(buf, 0, this.#need, onPlain);
        if (e !== null) return this.#fail(e);
        continue;
      }
      if (n - p < HEADER) {
        buf.set(bytes.subarray(p, n));
        this.#have = n - p;
        break;
      }
      const len = this.#header(bytes, p);
      if (typeof len === "string") return this.#fail(len);
      const total = HEADER + len;
      if (n - p >= total) {
        const e = this.#record(bytes, p, total, onPlain);
        if (e !== null) return this.#fail(e);
        p += total;
      } else {
        buf.set(bytes.subarray(p, n));
        this.#have = n - p;
        this.#need = total;
        p = n;
      }
    }
    return null;
  }

  /** Free the cipher. */
  close(): void {
    this.#keys.close();
  }

  #fail(e: RecordError): RecordError {
    this.#failed = e;
    return e;
  }

  /** The record length from a header at `b[o..o+5)`, or why it is refused. */
  #header(b: Uint8Array, o: number): number | RecordError {
    if (b[o + 1] !== 0x03 || b[o + 2] !== 0x03) return "bad_record";
    const len = (b[o + 3]! << 8) | b[o + 4]!;
    switch (b[o]) {
      case 0x17:
        if (len > MAX_RECORD_LENGTH) return "record_too_large";
        return len < LINK_RECORD_TAG ? "bad_record" : len;
      case 0x14:
        return this.#ccsSeen || len !== 1 ? "bad_record" : len;
      default:
        return "bad_record";
    }
  }

  /** Open the whole record at `b[o..o+total)`, whose header was accepted. */
  #record(
    b: Uint8Array,
    o: number,
    total: number,
    onPlain: (plain: Uint8Array) => void,
  ): RecordError | null {
    if (b[o] === 0x14) {
      if (b[o + HEADER] !== 0x01) return "bad_record";
      this.#ccsSeen = true;
      return null;
    }
    if (this.#seq >= SEQUENCE_LIMIT) return "sequence_exhausted";
    const keys = this.#keys;
    keys.at(this.#seq);
    _nonce(keys.iv, this.#seq, this.#nonce);
    const tagAt = o + total - LINK_RECORD_TAG;
    const data = b.subarray(o + HEADER, tagAt);
    const aad = b.subarray(o, o + HEADER);
    const tag = b.subarray(tagAt, o + total);
    if (this.#joining) {
      const at = this.#plainLen;
      const into = this.#plain.subarray(at, at + data.length);
      if (!keys.aead.openTo(this.#nonce, aad, data, into, tag)) return "integrity";
      this.#seq++;
      this.#plainLen = at + data.length;
      return null;
    }
    if (!keys.aead.open(this.#nonce, aad, data, tag)) return "integrity";
    this.#seq++;
    if (data.length > 0) onPlain(data);
    return null;
  }
}
