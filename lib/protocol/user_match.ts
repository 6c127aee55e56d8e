/**
 * Checking many users' secrets against one handshake cheaply. A handshake from a client address
 * the proxy has not seen before must try the users one by one until a secret fits (see
 * lib/guard/users.ts for the order); these probes make each try a fraction of the full check,
 * which then runs once, for the user that fits.
 *
 * - obfuscated2 ({@linkcode InitProbe}): only the 4 tag bytes at 56..59 tell whether a secret
 *   fits, so per secret the probe computes SHA-256(init[8..40] || secret) (one compression
 *   block; its first 8 rounds read only init bytes and are done once per handshake) and
 *   encrypts the one AES-256 counter block that covers bytes 48..63, in pure JS with no
 *   allocation. The full {@linkcode openClientInit} derives both directions' keys and sets up
 *   two ciphers through OpenSSL, about ten FFI calls and several allocations per secret.
 * - fake-TLS ({@linkcode HelloProbe}): HMAC-SHA256(secret, hello with its random zeroed).
 *   The key comes first, so nothing of the hello's hashing can be shared between secrets: a
 *   full HMAC per secret stays, and its SHA-256 work is most of its cost. The probe zeroes the
 *   random once per handshake (one contiguous buffer instead of three parts, two FFI calls
 *   fewer) and per secret runs one HMAC over it through lib/crypto.ts (OpenSSL, with SHA-NI
 *   where the CPU has it). Measured per secret tried on a 1,721-byte Chrome-like hello (Deno
 *   2.9.6, 2 cores with SHA-NI): this probe ~1.8-2.2 us, `verifyClientHello` ~2-2.5 us,
 *   `node:crypto` `createHmac` ~9 us, and a pure-JS SHA-256 starting from each secret's
 *   precomputed ipad/opad midstates (saving 2 of 29 blocks) ~15 us.
 *   For obfuscated2 the pure-JS probe costs ~0.55 us per secret against ~5.3 us for
 *   `openClientInit`.
 *
 * Every probe is exact: it answers for a secret exactly what the full check would.
 * Pure: no sockets, no clocks.
 *
 * @module
 */
import { hmacSha256Parts } from "../crypto.ts";
import type { ClientHello, HelloCheck } from "./fake_tls.ts";
import { INIT_LEN } from "./obfuscated2.ts";

// ---------------------------------------------------------------------------------------------
// SHA-256, one block at a time, on 32-bit words

const K = Int32Array.from([
  0x428a2f98,
  0x71374491,
  0xb5c0fbcf,
  0xe9b5dba5,
  0x3956c25b,
  0x59f111f1,
  0x923f82a4,
  0xab1c5ed5,
  0xd807aa98,
  0x12835b01,
  0x243185be,
  0x550c7dc3,
  0x72be5d74,
  0x80deb1fe,
  0x9bdc06a7,
  0xc19bf174,
  0xe49b69c1,
  0xefbe4786,
  0x0fc19dc6,
  0x240ca1cc,
  0x2de92c6f,
  0x4a7484aa,
  0x5cb0a9dc,
  0x76f988da,
  0x983e5152,
  0xa831c66d,
  0xb00327c8,
  0xbf597fc7,
  0xc6e00bf3,
  0xd5a79147,
  0x06ca6351,
  0x14292967,
  0x27b70a85,
  0x2e1b2138,
  0x4d2c6dfc,
  0x53380d13,
  0x650a7354,
  0x766a0abb,
  0x81c2c92e,
  0x92722c85,
  0xa2bfe8a1,
  0xa81a664b,
  0xc24b8b70,
  0xc76c51a3,
  0xd192e819,
  0xd6990624,
  0xf40e3585,
  0x106aa070,
  0x19a4c116,
  0x1e376c08,
  0x2748774c,
  0x34b0bcb5,
  0x391c0cb3,
  0x4ed8aa4a,
  0x5b9cca4f,
  0x682e6ff3,
  0x748f82ee,
  0x78a5636f,
  0x84c87814,
  0x8cc70208,
  0x90befffa,
  0xa4506ceb,
  0xbef9a3f7,
  0xc67178f2,
]);

const SHA256_IV = Int32Array.from([
  0x6a09e667,
  0xbb67ae85,
  0x3c6ef372,
  0xa54ff53a,
  0x510e527f,
  0x9b05688c,
  0x1f83d9ab,
  0x5be0cd19,
]);

/**
 * Run rounds `from`..63 of one SHA-256 compression: `s` (8 words) holds the working variables
 * after round `from - 1` (the chaining value when `from` is 0) and receives them after round 63;
 * `w` (64 words) holds the block's first 16 words and gets the rest of the schedule.
 */
function _rounds(s: Int32Array, w: Int32Array, from: number): void {
  for (let i = 16; i < 64; i++) {
    const x = w[i - 15]!;
    const y = w[i - 2]!;
    const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
    const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
    w[i] = (w[i - 16]! + s0 + w[i - 7]! + s1) | 0;
  }
  let a = s[0]!, b = s[1]!, c = s[2]!, d = s[3]!, e = s[4]!, f = s[5]!, g = s[6]!, h = s[7]!;
  for (let i = from; i < 64; i++) {
    const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
    const t1 = (h + S1 + ((e & f) ^ (~e & g)) + K[i]! + w[i]!) | 0;
    const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
    const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
    h = g;
    g = f;
    f = e;
    e = (d + t1) | 0;
    d = c;
    c = b;
    b = a;
    a = (t1 + t2) | 0;
  }
  s[0] = a, s[1] = b, s[2] = c, s[3] = d, s[4] = e, s[5] = f, s[6] = g, s[7] = h;
}

function _be32(b: Uint8Array, off: number): number {
  return (b[off]! << 24) | (b[off + 1]! << 16) | (b[off + 2]! << 8) | b[off + 3]!;
}

// ---------------------------------------------------------------------------------------------
// AES-256, one block, with the key schedule computed per call

const SBOX = new Uint8Array(256);
const TE0 = new Int32Array(256);
const TE1 = new Int32Array(256);
const TE2 = new Int32Array(256);
const TE3 = new Int32Array(256);
const RCON = Int32Array.from([0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40].map((r) => r << 24));

(function _tables() {
  // The S-box from GF(2^8) inverses (generator 3) and the affine map.
  const exp = new Uint8Array(256);
  const log = new Uint8Array(256);
  for (let i = 0, x = 1; i < 255; i++) {
    exp[i] = x;
    log[x] = i;
    x ^= (x << 1) ^ (x & 0x80 ? 0x1b : 0);
    x &= 0xff;
  }
  for (let i = 0; i < 256; i++) {
    const inv = i === 0 ? 0 : exp[(255 - log[i]!) % 255]!;
    let s = inv;
    for (let r = 1; r < 5; r++) s ^= ((inv << r) | (inv >>> (8 - r))) & 0xff;
    SBOX[i] = s ^ 0x63;
  }
  for (let i = 0; i < 256; i++) {
    const s = SBOX[i]!;
    const s2 = ((s << 1) ^ (s & 0x80 ? 0x1b : 0)) & 0xff;
    const t = (s2 << 24) | (s << 16) | (s << 8) | (s2 ^ s);
    TE0[i] = t;
    TE1[i] = (t >>> 8) | (t << 24);
    TE2[i] = (t >>> 16) | (t << 16);
    TE3[i] = (t >>> 24) | (t << 8);
  }
})();

function _subWord(x: number): number {
  return (SBOX[x >>> 24]! << 24) | (SBOX[(x >>> 16) & 255]! << 16) |
    (SBOX[(x >>> 8) & 255]! << 8) | SBOX[x & 255]!;
}

/**
 * Word 2 (bytes 8..11, big-endian) of AES-256 of the block `p0..p3` under the key in `rk[0..8)`;
 * `rk` (60 words) receives the key schedule.
 */
function _aes256Word2(rk: Int32Array, p0: number, p1: number, p2: number, p3: number): number {
  for (let i = 8; i < 60; i++) {
    let t = rk[i - 1]!;
    if ((i & 7) === 0) t = _subWord((t << 8) | (t >>> 24)) ^ RCON[(i >>> 3) - 1]!;
    else if ((i & 7) === 4) t = _subWord(t);
    rk[i] = rk[i - 8]! ^ t;
  }
  let s0 = p0 ^ rk[0]!, s1 = p1 ^ rk[1]!, s2 = p2 ^ rk[2]!, s3 = p3 ^ rk[3]!;
  for (let r = 4; r < 56; r += 4) {
    const t0 = TE0[s0 >>> 24]! ^ TE1[(s1 >>> 16) & 255]! ^ TE2[(s2 >>> 8) & 255]! ^
      TE3[s3 & 255]! ^ rk[r]!;
    const t1 = TE0[s1 >>> 24]! ^ TE1[(s2 >>> 16) & 255]! ^ TE2[(s3 >>> 8) & 255]! ^
      TE3[s0 & 255]! ^ rk[r + 1]!;
    const t2 = TE0[s2 >>> 24]! ^ TE1[(s3 >>> 16) & 255]! ^ TE2[(s0 >>> 8) & 255]! ^
      TE3[s1 & 255]! ^ rk[r + 2]!;
    const t3 = TE0[s3 >>> 24]! ^ TE1[(s0 >>> 16) & 255]! ^ TE2[(s1 >>> 8) & 255]! ^
      TE3[s2 & 255]! ^ rk[r + 3]!;
    s0 = t0, s1 = t1, s2 = t2, s3 = t3;
  }
  // The last round (no MixColumns), for column 2 only.
  return ((SBOX[s2 >>> 24]! << 24) | (SBOX[(s3 >>> 16) & 255]! << 16) |
    (SBOX[(s0 >>> 8) & 255]! << 8) | SBOX[s1 & 255]!) ^ rk[58]!;
}

/** Tests only: AES-256 word 2 of `block` under `key` (both as bytes). */
export function _aes256Word2ForTest(key: Uint8Array, block: Uint8Array): number {
  const rk = new Int32Array(60);
  for (let i = 0; i < 8; i++) rk[i] = _be32(key, 4 * i);
  return _aes256Word2(rk, _be32(block, 0), _be32(block, 4), _be32(block, 8), _be32(block, 12)) >>>
    0;
}

// ---------------------------------------------------------------------------------------------
// obfuscated2

const TAG_ABRIDGED = 0xefefefef | 0;
const TAG_INTERMEDIATE = 0xeeeeeeee | 0;
const TAG_PADDED = 0xdddddddd | 0;

/** Scratch shared by every probe: calls are synchronous, so they never overlap. */
const _w = new Int32Array(64);
const _s = new Int32Array(8);
const _rk = new Int32Array(60);

/**
 * One obfuscated2 init, ready to be tried against many secrets: {@linkcode InitProbe.opens}
 * says whether {@linkcode openClientInit} would open it with a secret, at a fraction of the
 * cost.
 *
 * @example Usage
 * ```ts
 * import { InitProbe } from "./user_match.ts";
 * import { createInit } from "./obfuscated2.ts";
 * const secret = new Uint8Array(16).fill(7);
 * const random = new Uint8Array(64).fill(1);
 * const { wire, encryptor, decryptor } = createInit(random, "padded", 2, { secret });
 * encryptor.close();
 * decryptor.close();
 * const probe = new InitProbe(wire);
 * console.log(probe.opens(secret), probe.opens(new Uint8Array(16))); // true false
 * ```
 */
export class InitProbe {
  /** SHA-256 working variables after rounds 0..7 (which read only the init's key bytes). */
  readonly #after8 = new Int32Array(8);
  /** The block's words 0..7 (the init's key bytes). */
  readonly #prekey = new Int32Array(8);
  /** The counter block that covers init bytes 48..63: the IV (init[40..56]) plus 3. */
  readonly #ctr = new Int32Array(4);
  /** The encrypted tag bytes (init[56..60]) as a big-endian word. */
  readonly #tag: number;

  constructor(init: Uint8Array) {
    if (init.length !== INIT_LEN) {
      throw new RangeError(`Init must be 64 bytes: got ${init.length}`);
    }
    for (let i = 0; i < 8; i++) this.#prekey[i] = _be32(init, 8 + 4 * i);
    // Rounds 0..7 of SHA-256(init[8..40] || secret): they see only words 0..7.
    const w = _w;
    w.set(this.#prekey);
    const s = this.#after8;
    s.set(SHA256_IV);
    let a = s[0]!, b = s[1]!, c = s[2]!, d = s[3]!, e = s[4]!, f = s[5]!, g = s[6]!, h = s[7]!;
    for (let i = 0; i < 8; i++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const t1 = (h + S1 + ((e & f) ^ (~e & g)) + K[i]! + w[i]!) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      h = g, g = f, f = e, e = (d + t1) | 0, d = c, c = b, b = a, a = (t1 + t2) | 0;
    }
    s[0] = a, s[1] = b, s[2] = c, s[3] = d, s[4] = e, s[5] = f, s[6] = g, s[7] = h;
    // IV + 3 as a 128-bit big-endian counter.
    let carry = 3;
    for (let i = 3; i >= 0; i--) {
      const v = (_be32(init, 40 + 4 * i) >>> 0) + carry;
      this.#ctr[i] = v | 0;
      carry = v > 0xffffffff ? 1 : 0;
    }
    this.#tag = _be32(init, 56);
  }

  /**
   * Whether `secret` opens the init with a known transport tag (exactly when
   * `openClientInit(init, secret)` would not return null).
   */
  opens(secret: Uint8Array): boolean {
    // The message is 32 + secret.length bytes: one block only while that leaves room for the
    // padding. Proxy secrets are 16 bytes; anything else is the full check's to judge.
    if (secret.length !== 16) return true;
    const w = _w;
    w.set(this.#prekey);
    w[8] = _be32(secret, 0);
    w[9] = _be32(secret, 4);
    w[10] = _be32(secret, 8);
    w[11] = _be32(secret, 12);
    w[12] = 0x80000000 | 0;
    w[13] = 0;
    w[14] = 0;
    w[15] = 48 * 8;
    const s = _s;
    s.set(this.#after8);
    _rounds(s, w, 8);
    const rk = _rk;
    for (let i = 0; i < 8; i++) rk[i] = (SHA256_IV[i]! + s[i]!) | 0;
    const ctr = this.#ctr;
    const tag = this.#tag ^ _aes256Word2(rk, ctr[0]!, ctr[1]!, ctr[2]!, ctr[3]!);
    return tag === TAG_ABRIDGED || tag === TAG_INTERMEDIATE || tag === TAG_PADDED;
  }
}

// ---------------------------------------------------------------------------------------------
// fake-TLS

/** Where the random sits in a ClientHello record, and its length. */
const RANDOM_OFF = 11;
const RANDOM_LEN = 32;

/**
 * One ClientHello, ready to be checked against many secrets: {@linkcode HelloProbe.check}
 * answers exactly what `verifyClientHello(hello, secret, ...)` answers, over one copy of the
 * record with its random zeroed, made once.
 *
 * @example Usage
 * ```ts ignore
 * const probe = new HelloProbe(hello);
 * const user = users.find((u) => probe.check(u.secret, nowSec, 600).kind !== "bad_digest");
 * ```
 */
export class HelloProbe {
  /** The record with its random zeroed: what the digest covers. */
  readonly #zeroed: Uint8Array[];
  readonly #random: Uint8Array;

  constructor(hello: Pick<ClientHello, "record" | "random">) {
    const zeroed = hello.record.slice();
    zeroed.fill(0, RANDOM_OFF, RANDOM_OFF + RANDOM_LEN);
    this.#zeroed = [zeroed];
    this.#random = hello.random;
  }

  /** The hello checked with `secret` at `nowSec`, as `verifyClientHello` checks it. */
  check(secret: Uint8Array, nowSec: number, maxSkewSec: number): HelloCheck {
    const mac = hmacSha256Parts(secret, this.#zeroed);
    const random = this.#random;
    // Constant time: OR every byte of the 28 that must be zero.
    let diff = 0;
    for (let i = 0; i < 28; i++) diff |= mac[i]! ^ random[i]!;
    if (diff !== 0) return { kind: "bad_digest" };
    for (let i = 28; i < 32; i++) mac[i]! ^= random[i]!;
    const timestamp = new DataView(mac.buffer).getUint32(28, true);
    if (Math.abs(nowSec - timestamp) > maxSkewSec) return { kind: "bad_timestamp", timestamp };
    return { kind: "ok", timestamp };
  }
}
