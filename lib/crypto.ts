/**
 * Ciphers and hashes. AES runs through OpenSSL's libcrypto via `Deno.dlopen`, in place, because
 * Deno's `node:crypto` AES is about ten times slower (see perf-facts.md); `node:crypto` is the
 * fallback when the library cannot be loaded. AES-256-GCM (the split-mode link's records) runs
 * the same way. SHA-256, SHA-1, MD5 and HMAC-SHA256 run through OpenSSL too when it loads: at
 * handshake time, but a fake-TLS handshake hashes several kilobytes and Deno's `node:crypto`
 * hashes cost ~10-50 us a call (OpenSSL: ~0.2-2 us). HKDF stays on `node:crypto` (split-mode
 * link setup only); X25519 prefers OpenSSL.
 *
 * @module
 */
import nodeCrypto from "node:crypto";
import { Buffer } from "node:buffer";
import zlib from "node:zlib";

/** A running cipher that transforms bytes in place, keeping its state between calls. */
export interface StreamCipher {
  /** Encrypt or decrypt `data` in place. CBC ciphers need a multiple of 16 bytes. */
  update(data: Uint8Array): void;
  /** Free native state. Safe to call more than once; `update` after `close` throws. */
  close(): void;
}

/** Which implementation backs AES. */
export type CipherBackend = "openssl" | "node";

/** AES-256 modes used by MTProto proxies. */
export type AesMode = "ctr" | "cbc-encrypt" | "cbc-decrypt";

/** Options for {@linkcode createAes}. */
export interface AesOptions {
  /** Force a backend instead of the process default. @default the loaded default */
  backend?: CipherBackend;
}

// ---------------------------------------------------------------------------------------------
// OpenSSL backend

const OPENSSL_SYMBOLS = {
  EVP_CIPHER_CTX_new: { parameters: [], result: "pointer" },
  EVP_CIPHER_CTX_free: { parameters: ["pointer"], result: "void" },
  EVP_CIPHER_CTX_set_padding: { parameters: ["pointer", "i32"], result: "i32" },
  EVP_aes_256_ctr: { parameters: [], result: "pointer" },
  EVP_aes_256_cbc: { parameters: [], result: "pointer" },
  EVP_CipherInit_ex: {
    parameters: ["pointer", "pointer", "pointer", "buffer", "buffer", "i32"],
    result: "i32",
  },
  EVP_CipherUpdate: {
    parameters: ["pointer", "buffer", "buffer", "buffer", "i32"],
    result: "i32",
  },
  EVP_PKEY_new_raw_private_key: {
    parameters: ["i32", "pointer", "buffer", "usize"],
    result: "pointer",
  },
  EVP_PKEY_get_raw_public_key: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  EVP_PKEY_free: { parameters: ["pointer"], result: "void" },
  EVP_aes_256_gcm: { parameters: [], result: "pointer" },
  EVP_CipherFinal_ex: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  EVP_CIPHER_CTX_ctrl: { parameters: ["pointer", "i32", "i32", "buffer"], result: "i32" },
  /** EVP_CipherUpdate with a null output: how GCM takes additional data. */
  EVP_CipherUpdate_aad: {
    name: "EVP_CipherUpdate",
    parameters: ["pointer", "pointer", "buffer", "buffer", "i32"],
    result: "i32",
  },
  /** EVP_CipherInit_ex with a null key: a new nonce for the key already set. */
  EVP_CipherInit_iv: {
    name: "EVP_CipherInit_ex",
    parameters: ["pointer", "pointer", "pointer", "pointer", "buffer", "i32"],
    result: "i32",
  },
  EVP_PKEY_new_raw_public_key: {
    parameters: ["i32", "pointer", "buffer", "usize"],
    result: "pointer",
  },
  EVP_PKEY_CTX_new: { parameters: ["pointer", "pointer"], result: "pointer" },
  EVP_PKEY_CTX_free: { parameters: ["pointer"], result: "void" },
  EVP_PKEY_derive_init: { parameters: ["pointer"], result: "i32" },
  EVP_PKEY_derive_set_peer: { parameters: ["pointer", "pointer"], result: "i32" },
  EVP_PKEY_derive: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  ERR_clear_error: { parameters: [], result: "void" },
  // Digests. EVP_MD_fetch is OpenSSL 3 only (optional: a 1.1 library keeps the legacy getters).
  EVP_MD_fetch: { parameters: ["pointer", "buffer", "pointer"], result: "pointer", optional: true },
  EVP_sha256: { parameters: [], result: "pointer" },
  EVP_sha1: { parameters: [], result: "pointer" },
  EVP_md5: { parameters: [], result: "pointer" },
  EVP_MD_CTX_new: { parameters: [], result: "pointer" },
  EVP_DigestInit_ex: { parameters: ["pointer", "pointer", "pointer"], result: "i32" },
  EVP_DigestUpdate: { parameters: ["pointer", "buffer", "usize"], result: "i32" },
  EVP_DigestFinal_ex: { parameters: ["pointer", "buffer", "pointer"], result: "i32" },
} as const;

/** OpenSSL's NID / EVP_PKEY type of X25519. */
const EVP_PKEY_X25519 = 1034;

type OpenSsl = Deno.DynamicLibrary<typeof OPENSSL_SYMBOLS>["symbols"];

const LIBCRYPTO_NAMES = [
  "libcrypto.so.3",
  "libcrypto.so",
  "/usr/lib/x86_64-linux-gnu/libcrypto.so.3",
  "/usr/lib/aarch64-linux-gnu/libcrypto.so.3",
  "libcrypto.3.dylib",
  "/opt/homebrew/lib/libcrypto.3.dylib",
  "/usr/local/lib/libcrypto.3.dylib",
];

let openssl: OpenSsl | null | undefined;
let opensslError = "";

function _loadOpenSsl(): OpenSsl | null {
  if (openssl !== undefined) return openssl;
  openssl = null;
  if (Deno.env.get("MTP_CRYPTO_BACKEND") === "node") {
    opensslError = "MTP_CRYPTO_BACKEND=node";
    return null;
  }
  const errors: string[] = [];
  for (const name of LIBCRYPTO_NAMES) {
    try {
      openssl = Deno.dlopen(name, OPENSSL_SYMBOLS).symbols;
      return openssl;
    } catch (e) {
      errors.push(`${name}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  opensslError = errors[0] ?? "not found";
  return null;
}

// Load at import time: the library stays loaded for the life of the process.
_loadOpenSsl();

// One shared out-length cell: EVP_CipherUpdate is synchronous, so calls never overlap.
const outLen = new Int32Array(1);
const outLenBytes = new Uint8Array(outLen.buffer);

const contexts = new FinalizationRegistry<{ lib: OpenSsl; ctx: Deno.PointerObject }>((held) => {
  held.lib.EVP_CIPHER_CTX_free(held.ctx);
});

class OpenSslCipher implements StreamCipher {
  #lib: OpenSsl;
  #ctx: Deno.PointerObject | null;
  #block: number;

  constructor(lib: OpenSsl, mode: AesMode, key: Uint8Array, iv: Uint8Array) {
    this.#lib = lib;
    const ctx = lib.EVP_CIPHER_CTX_new();
    if (ctx === null) throw new Error("OpenSSL EVP_CIPHER_CTX_new failed");
    const cipher = mode === "ctr" ? lib.EVP_aes_256_ctr() : lib.EVP_aes_256_cbc();
    const enc = mode === "cbc-decrypt" ? 0 : 1;
    if (lib.EVP_CipherInit_ex(ctx, cipher, null, key, iv, enc) !== 1) {
      lib.EVP_CIPHER_CTX_free(ctx);
      throw new Error("OpenSSL EVP_CipherInit_ex failed");
    }
    lib.EVP_CIPHER_CTX_set_padding(ctx, 0);
    this.#ctx = ctx;
    this.#block = mode === "ctr" ? 1 : 16;
    contexts.register(this, { lib, ctx }, this);
  }

  update(data: Uint8Array): void {
    const ctx = this.#ctx;
    if (ctx === null) throw new Error("Cipher is closed");
    if (data.length === 0) return;
    if (data.length % this.#block !== 0) {
      throw new RangeError(`CBC input must be a multiple of 16 bytes: got ${data.length}`);
    }
    if (this.#lib.EVP_CipherUpdate(ctx, data, outLenBytes, data, data.length) !== 1) {
      throw new Error("OpenSSL EVP_CipherUpdate failed");
    }
  }

  close(): void {
    if (this.#ctx === null) return;
    contexts.unregister(this);
    this.#lib.EVP_CIPHER_CTX_free(this.#ctx);
    this.#ctx = null;
  }
}

/**
 * Slots of 48 bytes (key || counter block) for shared-context CTR streams, carved out of 48 KiB
 * chunks: a separate small ArrayBuffer per stream costs several times its size in V8.
 */
class _CtrSlots {
  static readonly SLOT = 48;
  static readonly PER_CHUNK = 1024;
  #chunks: Uint8Array[] = [];
  #free: number[] = [];

  /** A free slot index. */
  take(): number {
    if (this.#free.length === 0) {
      const base = this.#chunks.length * _CtrSlots.PER_CHUNK;
      this.#chunks.push(new Uint8Array(_CtrSlots.SLOT * _CtrSlots.PER_CHUNK));
      for (let i = _CtrSlots.PER_CHUNK - 1; i >= 0; i--) this.#free.push(base + i);
    }
    return this.#free.pop()!;
  }

  /** The chunk that holds a slot (its bytes start at {@linkcode offset}). */
  chunk(slot: number): Uint8Array {
    return this.#chunks[Math.floor(slot / _CtrSlots.PER_CHUNK)]!;
  }

  /** Where a slot's 48 bytes start in its chunk. */
  offset(slot: number): number {
    return (slot % _CtrSlots.PER_CHUNK) * _CtrSlots.SLOT;
  }

  give(slot: number): void {
    const off = this.offset(slot);
    this.chunk(slot).fill(0, off, off + _CtrSlots.SLOT);
    this.#free.push(slot);
  }
}

/**
 * AES-256-CTR on one OpenSSL context shared by every stream: each stream keeps only its key,
 * next counter block and position in that block, and re-keys the shared context per call
 * (~0.1 us). A context of its own would cost ~1.4 KiB per stream, and the proxy holds two per
 * client.
 */
class OpenSslSharedCtr implements StreamCipher {
  static #ctx: Deno.PointerObject | null = null;
  static #scratch = new Uint8Array(16);
  static #slots = new _CtrSlots();
  /**
   * The running stream's key and counter block, copied here for each call: fixed views, so a
   * call allocates nothing (a subarray per call adds up on the data path).
   */
  static #state = new Uint8Array(_CtrSlots.SLOT);
  static #key = OpenSslSharedCtr.#state.subarray(0, 32);
  static #iv = OpenSslSharedCtr.#state.subarray(32, 48);
  #lib: OpenSsl;
  #slot: number;
  #pos = 0;

  constructor(lib: OpenSsl, key: Uint8Array, iv: Uint8Array) {
    this.#lib = lib;
    if (OpenSslSharedCtr.#ctx === null) {
      const ctx = lib.EVP_CIPHER_CTX_new();
      if (ctx === null) throw new Error("OpenSSL EVP_CIPHER_CTX_new failed");
      if (lib.EVP_CipherInit_ex(ctx, lib.EVP_aes_256_ctr(), null, key, iv, 1) !== 1) {
        throw new Error("OpenSSL EVP_CipherInit_ex failed");
      }
      OpenSslSharedCtr.#ctx = ctx;
    }
    const slots = OpenSslSharedCtr.#slots;
    this.#slot = slots.take();
    const chunk = slots.chunk(this.#slot);
    const off = slots.offset(this.#slot);
    chunk.set(key, off);
    chunk.set(iv, off + 32);
  }

  update(data: Uint8Array): void {
    if (this.#slot < 0) throw new Error("Cipher is closed");
    if (data.length === 0) return;
    const lib = this.#lib;
    const ctx = OpenSslSharedCtr.#ctx!;
    const slots = OpenSslSharedCtr.#slots;
    const chunk = slots.chunk(this.#slot);
    const off = slots.offset(this.#slot);
    const state = OpenSslSharedCtr.#state;
    for (let i = 0; i < 48; i++) state[i] = chunk[off + i]!;
    if (
      lib.EVP_CipherInit_ex(ctx, null, null, OpenSslSharedCtr.#key, OpenSslSharedCtr.#iv, 1) !== 1
    ) {
      throw new Error("OpenSSL EVP_CipherInit_ex failed");
    }
    // Resume mid-block: burn the keystream bytes already used.
    const scratch = OpenSslSharedCtr.#scratch;
    if (this.#pos > 0) lib.EVP_CipherUpdate(ctx, scratch, outLenBytes, scratch, this.#pos);
    if (lib.EVP_CipherUpdate(ctx, data, outLenBytes, data, data.length) !== 1) {
      throw new Error("OpenSSL EVP_CipherUpdate failed");
    }
    const total = this.#pos + data.length;
    this.#pos = total % 16;
    // Add the whole blocks consumed to the 128-bit big-endian counter.
    let carry = Math.floor(total / 16);
    for (let i = off + 47; i >= off + 32 && carry > 0; i--) {
      const v = chunk[i]! + (carry % 256);
      chunk[i] = v & 0xff;
      carry = Math.floor(carry / 256) + (v >> 8);
    }
  }

  close(): void {
    if (this.#slot < 0) return;
    OpenSslSharedCtr.#slots.give(this.#slot);
    this.#slot = -1;
  }
}

// ---------------------------------------------------------------------------------------------
// node:crypto backend

class NodeCipher implements StreamCipher {
  #cipher: nodeCrypto.Cipheriv | nodeCrypto.Decipheriv | null;
  #block: number;

  constructor(mode: AesMode, key: Uint8Array, iv: Uint8Array) {
    if (mode === "cbc-decrypt") {
      this.#cipher = nodeCrypto.createDecipheriv("aes-256-cbc", key, iv).setAutoPadding(false);
    } else {
      const name = mode === "ctr" ? "aes-256-ctr" : "aes-256-cbc";
      this.#cipher = nodeCrypto.createCipheriv(name, key, iv).setAutoPadding(false);
    }
    this.#block = mode === "ctr" ? 1 : 16;
  }

  update(data: Uint8Array): void {
    if (this.#cipher === null) throw new Error("Cipher is closed");
    if (data.length === 0) return;
    if (data.length % this.#block !== 0) {
      throw new RangeError(`CBC input must be a multiple of 16 bytes: got ${data.length}`);
    }
    data.set(this.#cipher.update(data));
  }

  close(): void {
    // final() releases Deno's native resource behind the node:crypto object.
    try {
      this.#cipher?.final();
    } catch {
      // A CBC stream cut mid-block has nothing useful to flush.
    }
    this.#cipher = null;
  }
}

// ---------------------------------------------------------------------------------------------
// Public API

/**
 * The backend new ciphers use: OpenSSL when `libcrypto` loads (and `MTP_CRYPTO_BACKEND` is not
 * `node`), else `node:crypto`.
 *
 * @example Usage
 * ```ts
 * import { defaultCipherBackend } from "./crypto.ts";
 * console.log(defaultCipherBackend()); // "openssl" on a typical Linux host
 * ```
 */
export function defaultCipherBackend(): CipherBackend {
  return _loadOpenSsl() ? "openssl" : "node";
}

/** Why OpenSSL could not be loaded, or "" when it was. */
export function openSslLoadError(): string {
  _loadOpenSsl();
  return opensslError;
}

/**
 * Create an AES-256 cipher that works in place.
 *
 * @example Usage
 * ```ts
 * import { createAes } from "./crypto.ts";
 * const c = createAes("ctr", new Uint8Array(32), new Uint8Array(16));
 * const data = new Uint8Array(8);
 * c.update(data); // data now holds 8 bytes of keystream
 * c.close();
 * ```
 */
export function createAes(
  mode: AesMode,
  key: Uint8Array,
  iv: Uint8Array,
  options: AesOptions = {},
): StreamCipher {
  if (key.length !== 32) throw new RangeError(`AES-256 key must be 32 bytes: got ${key.length}`);
  if (iv.length !== 16) throw new RangeError(`AES IV must be 16 bytes: got ${iv.length}`);
  const backend = options.backend ?? defaultCipherBackend();
  if (backend === "openssl") {
    const lib = _loadOpenSsl();
    if (!lib) throw new Error(`OpenSSL is not available: ${opensslError}`);
    return mode === "ctr"
      ? new OpenSslSharedCtr(lib, key, iv)
      : new OpenSslCipher(lib, mode, key, iv);
  }
  return new NodeCipher(mode, key, iv);
}

/** Shorthand for an AES-256-CTR cipher (the obfuscated2 stream cipher). */
export function createAesCtr(
  key: Uint8Array,
  iv: Uint8Array,
  options: AesOptions = {},
): StreamCipher {
  return createAes("ctr", key, iv, options);
}

/** Hash functions the proxy uses. */
export type DigestAlgorithm = "sha256" | "sha1" | "md5";

const DIGEST_LEN: Readonly<Record<DigestAlgorithm, number>> = { sha256: 32, sha1: 20, md5: 16 };
/** SHA-256's block size: HMAC pads its key to this. */
const SHA256_BLOCK = 64;

/**
 * OpenSSL digests: each EVP_MD looked up once (OpenSSL 3 fetches an algorithm by name on every
 * init through a legacy EVP_sha256() handle; a fetched one skips that), one EVP_MD_CTX reused by
 * every call (calls are synchronous, so they never overlap; each worker thread has its own).
 */
class _OpenSslDigests {
  readonly #lib: OpenSsl;
  readonly #ctx: Deno.PointerObject;
  readonly #mds = new Map<DigestAlgorithm, Deno.PointerObject | null>();
  readonly #pad = new Uint8Array(SHA256_BLOCK);
  readonly #inner = new Uint8Array(32);

  constructor(lib: OpenSsl, ctx: Deno.PointerObject) {
    this.#lib = lib;
    this.#ctx = ctx;
  }

  /** The EVP_MD of `algorithm`, or null when this OpenSSL lacks it (MD5 under FIPS). */
  md(algorithm: DigestAlgorithm): Deno.PointerObject | null {
    let md = this.#mds.get(algorithm);
    if (md !== undefined) return md;
    const lib = this.#lib;
    const name = { sha256: "SHA256", sha1: "SHA1", md5: "MD5" }[algorithm];
    md = lib.EVP_MD_fetch
      ? lib.EVP_MD_fetch(null, new TextEncoder().encode(`${name}\0`), null)
      : null;
    if (md === null) {
      lib.ERR_clear_error();
      md = algorithm === "sha256"
        ? lib.EVP_sha256()
        : algorithm === "sha1"
        ? lib.EVP_sha1()
        : lib.EVP_md5();
    }
    this.#mds.set(algorithm, md);
    return md;
  }

  /** Hash `parts` into `out` (its length is the digest's). */
  digestInto(md: Deno.PointerObject, parts: readonly Uint8Array[], out: Uint8Array): void {
    this.#init(md);
    for (let i = 0; i < parts.length; i++) this.#update(parts[i]!);
    this.#final(out);
  }

  /** HMAC-SHA256 (RFC 2104) of the concatenation of `parts`. */
  hmacSha256(md: Deno.PointerObject, key: Uint8Array, parts: readonly Uint8Array[]): Uint8Array {
    let k = key;
    if (k.length > SHA256_BLOCK) {
      k = new Uint8Array(32);
      this.digestInto(md, [key], k);
    }
    const pad = this.#pad;
    const inner = this.#inner;
    pad.fill(0x36);
    for (let i = 0; i < k.length; i++) pad[i]! ^= k[i]!;
    this.#init(md);
    this.#update(pad);
    for (let i = 0; i < parts.length; i++) this.#update(parts[i]!);
    this.#final(inner);
    pad.fill(0x5c);
    for (let i = 0; i < k.length; i++) pad[i]! ^= k[i]!;
    const out = new Uint8Array(32);
    this.#init(md);
    this.#update(pad);
    this.#update(inner);
    this.#final(out);
    pad.fill(0);
    inner.fill(0);
    return out;
  }

  #init(md: Deno.PointerObject): void {
    if (this.#lib.EVP_DigestInit_ex(this.#ctx, md, null) !== 1) {
      throw new Error("OpenSSL EVP_DigestInit_ex failed");
    }
  }

  #update(p: Uint8Array): void {
    if (p.length > 0 && this.#lib.EVP_DigestUpdate(this.#ctx, p, BigInt(p.length)) !== 1) {
      throw new Error("OpenSSL EVP_DigestUpdate failed");
    }
  }

  #final(out: Uint8Array): void {
    if (this.#lib.EVP_DigestFinal_ex(this.#ctx, out, null) !== 1) {
      throw new Error("OpenSSL EVP_DigestFinal_ex failed");
    }
  }
}

let digests: _OpenSslDigests | null | undefined;

function _openSslDigests(): _OpenSslDigests | null {
  if (digests !== undefined) return digests;
  digests = null;
  const lib = _loadOpenSsl();
  if (!lib) return null;
  const ctx = lib.EVP_MD_CTX_new();
  if (ctx !== null) digests = new _OpenSslDigests(lib, ctx);
  return digests;
}

/**
 * Hash the concatenation of `parts` with `algorithm`: through OpenSSL when it loads, else
 * `node:crypto` (or as `options.backend` says).
 *
 * @example Usage
 * ```ts
 * import { digestParts } from "./crypto.ts";
 * const enc = new TextEncoder();
 * const d = digestParts("sha256", [enc.encode("a"), enc.encode("bc")]); // SHA-256 of "abc"
 * console.log(d.length); // 32
 * ```
 */
export function digestParts(
  algorithm: DigestAlgorithm,
  parts: readonly Uint8Array[],
  options: AesOptions = {},
): Uint8Array {
  const d = (options.backend ?? defaultCipherBackend()) === "openssl" ? _openSslDigests() : null;
  const md = d?.md(algorithm) ?? null;
  if (d && md) {
    const out = new Uint8Array(DIGEST_LEN[algorithm]);
    d.digestInto(md, parts, out);
    return out;
  }
  const h = nodeCrypto.createHash(algorithm);
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
}

/**
 * HMAC-SHA256 with `key` of the concatenation of `parts`: through OpenSSL when it loads, else
 * `node:crypto` (or as `options.backend` says).
 *
 * @example Usage
 * ```ts
 * import { hmacSha256Parts } from "./crypto.ts";
 * const mac = hmacSha256Parts(new Uint8Array(16), [new Uint8Array(32), new Uint8Array(8)]);
 * console.log(mac.length); // 32
 * ```
 */
export function hmacSha256Parts(
  key: Uint8Array,
  parts: readonly Uint8Array[],
  options: AesOptions = {},
): Uint8Array {
  const d = (options.backend ?? defaultCipherBackend()) === "openssl" ? _openSslDigests() : null;
  const md = d?.md("sha256") ?? null;
  if (d && md) return d.hmacSha256(md, key, parts);
  const h = nodeCrypto.createHmac("sha256", key);
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
}

/** SHA-256 over the concatenation of `parts`. */
export function sha256(...parts: Uint8Array[]): Uint8Array {
  return digestParts("sha256", parts);
}

/** SHA-1 over the concatenation of `parts`. */
export function sha1(...parts: Uint8Array[]): Uint8Array {
  return digestParts("sha1", parts);
}

/** MD5 over the concatenation of `parts`. */
export function md5(...parts: Uint8Array[]): Uint8Array {
  return digestParts("md5", parts);
}

/** HMAC-SHA256 of the concatenation of `parts`. */
export function hmacSha256(key: Uint8Array, ...parts: Uint8Array[]): Uint8Array {
  return hmacSha256Parts(key, parts);
}

/** Cryptographically random bytes. */
export function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  // getRandomValues fills at most 64 KiB a call; a smaller array needs no view of itself.
  if (n <= 65536) return crypto.getRandomValues(out);
  for (let off = 0; off < n; off += 65536) {
    crypto.getRandomValues(out.subarray(off, Math.min(n, off + 65536)));
  }
  return out;
}

/** A random integer in [min, max] inclusive. */
export function randomInt(min: number, max: number): number {
  return nodeCrypto.randomInt(min, max + 1);
}

/** Constant-time equality of two byte strings of the same length. */
export function timingSafeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

/** PKCS#8 DER prefix of a raw X25519 private key (RFC 8410). */
const X25519_PKCS8_PREFIX = Uint8Array.from([
  0x30,
  0x2e,
  0x02,
  0x01,
  0x00,
  0x30,
  0x05,
  0x06,
  0x03,
  0x2b,
  0x65,
  0x6e,
  0x04,
  0x22,
  0x04,
  0x20,
]);

/** Where the 32-byte key starts in the SPKI DER of an X25519 public key. */
const X25519_SPKI_KEY_OFF = 12;

/**
 * X25519 public key of `privateKey` (random when absent): the fake-TLS ServerHello carries a
 * real curve point, so a censor that validates the key share sees nothing odd. Through OpenSSL
 * when loaded (nothing left for the GC to finalise), else `node:crypto`. A fresh key (no
 * `privateKey`, no `backend`) comes from `node:crypto`'s key generation: Deno runs it in Rust
 * with a precomputed base-point table, about twice as fast as OpenSSL 3.0 (~25 vs ~45 us); the
 * private half is never exposed.
 */
export function x25519PublicKey(
  privateKey?: Uint8Array,
  options: AesOptions = {},
): Uint8Array {
  if (privateKey === undefined && options.backend === undefined) return _freshX25519PublicKey();
  privateKey ??= randomBytes(32);
  const lib = (options.backend ?? defaultCipherBackend()) === "openssl" ? _loadOpenSsl() : null;
  if (lib) {
    const pkey = lib.EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, null, privateKey, 32n);
    if (pkey === null) throw new Error("OpenSSL EVP_PKEY_new_raw_private_key failed");
    try {
      const out = new Uint8Array(32);
      const len = new BigUint64Array([32n]);
      if (lib.EVP_PKEY_get_raw_public_key(pkey, out, new Uint8Array(len.buffer)) !== 1) {
        throw new Error("OpenSSL EVP_PKEY_get_raw_public_key failed");
      }
      return out;
    } finally {
      lib.EVP_PKEY_free(pkey);
    }
  }
  const der = new Uint8Array(X25519_PKCS8_PREFIX.length + 32);
  der.set(X25519_PKCS8_PREFIX);
  der.set(privateKey, X25519_PKCS8_PREFIX.length);
  const key = nodeCrypto.createPrivateKey({ key: Buffer.from(der), format: "der", type: "pkcs8" });
  const spki = new Uint8Array(
    nodeCrypto.createPublicKey(key).export({ type: "spki", format: "der" }),
  );
  return spki.slice(spki.length - 32);
}

/** The public key of a new random X25519 key pair whose private key nobody keeps. */
function _freshX25519PublicKey(): Uint8Array {
  const spki = nodeCrypto.generateKeyPairSync("x25519").publicKey.export({
    type: "spki",
    format: "der",
  });
  if (spki.length !== X25519_SPKI_KEY_OFF + 32) {
    throw new Error(`X25519 public key export has ${spki.length} bytes: expected 44`);
  }
  return new Uint8Array(spki.subarray(X25519_SPKI_KEY_OFF));
}

// ---------------------------------------------------------------------------------------------
// AES-256-GCM, X25519 key agreement and HKDF (the split-mode link)

/** AES-256-GCM with a 16-byte tag, in place. One object per key; safe to reuse for many records. */
export interface Aead {
  /** Encrypt `data` in place with a 12-byte nonce and additional data; writes the 16-byte tag into `tag`. */
  seal(nonce: Uint8Array, aad: Uint8Array, data: Uint8Array, tag: Uint8Array): void;
  /** Decrypt `data` in place; false when the tag does not verify (then `data` is garbage). */
  open(nonce: Uint8Array, aad: Uint8Array, data: Uint8Array, tag: Uint8Array): boolean;
  /**
   * Encrypt `src` into `dst` (the same length; they must not overlap unless they are the same
   * bytes): seal() without copying the plaintext there first.
   */
  sealTo(
    nonce: Uint8Array,
    aad: Uint8Array,
    src: Uint8Array,
    dst: Uint8Array,
    tag: Uint8Array,
  ): void;
  /**
   * Decrypt `src` into `dst` (the same length; no overlap unless the same bytes); false when the
   * tag does not verify (then `dst` is garbage).
   */
  openTo(
    nonce: Uint8Array,
    aad: Uint8Array,
    src: Uint8Array,
    dst: Uint8Array,
    tag: Uint8Array,
  ): boolean;
  /** Free native state. Safe to call more than once; `seal` and `open` after `close` throw. */
  close(): void;
}

/** GCM nonce length. */
const GCM_NONCE_LEN = 12;
/** GCM tag length. */
const GCM_TAG_LEN = 16;
const EVP_CTRL_GCM_GET_TAG = 0x10;
const EVP_CTRL_GCM_SET_TAG = 0x11;
/** EVP_CipherFinal_ex writes no bytes for GCM but wants somewhere to write them. */
const gcmFinalOut = new Uint8Array(16);

function _checkGcmLengths(src: Uint8Array, dst: Uint8Array): void {
  if (dst.length !== src.length) {
    throw new RangeError(`GCM output must be as long as the input: ${dst.length} vs ${src.length}`);
  }
}

function _checkGcmArgs(nonce: Uint8Array, tag: Uint8Array): void {
  if (nonce.length !== GCM_NONCE_LEN) {
    throw new RangeError(`GCM nonce must be 12 bytes: got ${nonce.length}`);
  }
  if (tag.length !== GCM_TAG_LEN) {
    throw new RangeError(`GCM tag must be 16 bytes: got ${tag.length}`);
  }
}

/** GCM on an OpenSSL context of its own: the key is set once, the nonce per call. */
class _OpenSslGcm implements Aead {
  #lib: OpenSsl;
  #ctx: Deno.PointerObject | null;

  constructor(lib: OpenSsl, key: Uint8Array) {
    this.#lib = lib;
    const ctx = lib.EVP_CIPHER_CTX_new();
    if (ctx === null) throw new Error("OpenSSL EVP_CIPHER_CTX_new failed");
    if (lib.EVP_CipherInit_ex(ctx, lib.EVP_aes_256_gcm(), null, key, null, 1) !== 1) {
      lib.EVP_CIPHER_CTX_free(ctx);
      throw new Error("OpenSSL EVP_CipherInit_ex failed");
    }
    this.#ctx = ctx;
    contexts.register(this, { lib, ctx }, this);
  }

  seal(nonce: Uint8Array, aad: Uint8Array, data: Uint8Array, tag: Uint8Array): void {
    if (!this.#run(1, nonce, aad, data, data, tag)) {
      throw new Error("OpenSSL EVP_CipherFinal_ex failed");
    }
  }

  open(nonce: Uint8Array, aad: Uint8Array, data: Uint8Array, tag: Uint8Array): boolean {
    return this.#run(0, nonce, aad, data, data, tag);
  }

  sealTo(
    nonce: Uint8Array,
    aad: Uint8Array,
    src: Uint8Array,
    dst: Uint8Array,
    tag: Uint8Array,
  ): void {
    _checkGcmLengths(src, dst);
    if (!this.#run(1, nonce, aad, src, dst, tag)) {
      throw new Error("OpenSSL EVP_CipherFinal_ex failed");
    }
  }

  openTo(
    nonce: Uint8Array,
    aad: Uint8Array,
    src: Uint8Array,
    dst: Uint8Array,
    tag: Uint8Array,
  ): boolean {
    _checkGcmLengths(src, dst);
    return this.#run(0, nonce, aad, src, dst, tag);
  }

  #run(
    enc: 0 | 1,
    nonce: Uint8Array,
    aad: Uint8Array,
    data: Uint8Array,
    out: Uint8Array,
    tag: Uint8Array,
  ): boolean {
    const ctx = this.#ctx;
    if (ctx === null) throw new Error("Cipher is closed");
    _checkGcmArgs(nonce, tag);
    const lib = this.#lib;
    if (lib.EVP_CipherInit_iv(ctx, null, null, null, nonce, enc) !== 1) {
      throw new Error("OpenSSL EVP_CipherInit_ex failed");
    }
    if (aad.length > 0 && lib.EVP_CipherUpdate_aad(ctx, null, outLenBytes, aad, aad.length) !== 1) {
      throw new Error("OpenSSL EVP_CipherUpdate failed");
    }
    if (data.length > 0 && lib.EVP_CipherUpdate(ctx, out, outLenBytes, data, data.length) !== 1) {
      throw new Error("OpenSSL EVP_CipherUpdate failed");
    }
    if (enc === 0 && lib.EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, GCM_TAG_LEN, tag) !== 1) {
      throw new Error("OpenSSL EVP_CIPHER_CTX_ctrl failed");
    }
    if (lib.EVP_CipherFinal_ex(ctx, gcmFinalOut, outLenBytes) !== 1) {
      lib.ERR_clear_error();
      return false;
    }
    if (enc === 1 && lib.EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, GCM_TAG_LEN, tag) !== 1) {
      throw new Error("OpenSSL EVP_CIPHER_CTX_ctrl failed");
    }
    return true;
  }

  close(): void {
    if (this.#ctx === null) return;
    contexts.unregister(this);
    this.#lib.EVP_CIPHER_CTX_free(this.#ctx);
    this.#ctx = null;
  }
}

/** GCM through `node:crypto`: a cipher object per call (the fallback; slow but correct). */
class _NodeGcm implements Aead {
  #key: Uint8Array | null;

  constructor(key: Uint8Array) {
    this.#key = key.slice();
  }

  seal(nonce: Uint8Array, aad: Uint8Array, data: Uint8Array, tag: Uint8Array): void {
    this.sealTo(nonce, aad, data, data, tag);
  }

  open(nonce: Uint8Array, aad: Uint8Array, data: Uint8Array, tag: Uint8Array): boolean {
    return this.openTo(nonce, aad, data, data, tag);
  }

  sealTo(
    nonce: Uint8Array,
    aad: Uint8Array,
    src: Uint8Array,
    dst: Uint8Array,
    tag: Uint8Array,
  ): void {
    _checkGcmLengths(src, dst);
    const key = this.#key;
    if (key === null) throw new Error("Cipher is closed");
    _checkGcmArgs(nonce, tag);
    const c = nodeCrypto.createCipheriv("aes-256-gcm", key, nonce, { authTagLength: GCM_TAG_LEN });
    c.setAAD(aad);
    dst.set(c.update(src));
    c.final();
    tag.set(c.getAuthTag());
  }

  openTo(
    nonce: Uint8Array,
    aad: Uint8Array,
    src: Uint8Array,
    dst: Uint8Array,
    tag: Uint8Array,
  ): boolean {
    _checkGcmLengths(src, dst);
    const key = this.#key;
    if (key === null) throw new Error("Cipher is closed");
    _checkGcmArgs(nonce, tag);
    const d = nodeCrypto.createDecipheriv("aes-256-gcm", key, nonce, {
      authTagLength: GCM_TAG_LEN,
    });
    d.setAuthTag(tag);
    d.setAAD(aad);
    dst.set(d.update(src));
    try {
      d.final();
      return true;
    } catch {
      return false;
    }
  }

  close(): void {
    this.#key?.fill(0);
    this.#key = null;
  }
}

/**
 * Create an AES-256-GCM AEAD (16-byte tags, 12-byte nonces) that works in place. The caller
 * must never use a nonce twice with the same key.
 *
 * @example Usage
 * ```ts
 * import { createAesGcm } from "./crypto.ts";
 * const aead = createAesGcm(new Uint8Array(32));
 * const nonce = new Uint8Array(12);
 * const aad = Uint8Array.of(1, 2, 3);
 * const data = new TextEncoder().encode("hello");
 * const tag = new Uint8Array(16);
 * aead.seal(nonce, aad, data, tag); // data is now ciphertext
 * if (!aead.open(nonce, aad, data, tag)) throw new Error("tampered");
 * aead.close();
 * ```
 */
export function createAesGcm(key: Uint8Array, options: AesOptions = {}): Aead {
  if (key.length !== 32) throw new RangeError(`AES-256 key must be 32 bytes: got ${key.length}`);
  const backend = options.backend ?? defaultCipherBackend();
  if (backend === "openssl") {
    const lib = _loadOpenSsl();
    if (!lib) throw new Error(`OpenSSL is not available: ${opensslError}`);
    return new _OpenSslGcm(lib, key);
  }
  return new _NodeGcm(key);
}

/** SPKI DER prefix of a raw X25519 public key (RFC 8410). */
const X25519_SPKI_PREFIX = Uint8Array.from([
  0x30,
  0x2a,
  0x30,
  0x05,
  0x06,
  0x03,
  0x2b,
  0x65,
  0x6e,
  0x03,
  0x21,
  0x00,
]);

function _isZero(b: Uint8Array): boolean {
  let acc = 0;
  for (let i = 0; i < b.length; i++) acc |= b[i]!;
  return acc === 0;
}

function _x25519OpenSsl(lib: OpenSsl, privateKey: Uint8Array, peer: Uint8Array): Uint8Array {
  const own = lib.EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, null, privateKey, 32n);
  if (own === null) throw new Error("OpenSSL EVP_PKEY_new_raw_private_key failed");
  const other = lib.EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, null, peer, 32n);
  if (other === null) {
    lib.EVP_PKEY_free(own);
    throw new Error("OpenSSL EVP_PKEY_new_raw_public_key failed");
  }
  const ctx = lib.EVP_PKEY_CTX_new(own, null);
  try {
    if (ctx === null) throw new Error("OpenSSL EVP_PKEY_CTX_new failed");
    if (lib.EVP_PKEY_derive_init(ctx) !== 1 || lib.EVP_PKEY_derive_set_peer(ctx, other) !== 1) {
      throw new Error("OpenSSL EVP_PKEY_derive_init failed");
    }
    const out = new Uint8Array(32);
    const len = new BigUint64Array([32n]);
    if (lib.EVP_PKEY_derive(ctx, out, new Uint8Array(len.buffer)) !== 1 || len[0] !== 32n) {
      // OpenSSL refuses an all-zero result (a low-order peer point) here.
      lib.ERR_clear_error();
      throw new Error("X25519 key agreement failed: the peer key is a low-order point");
    }
    return out;
  } finally {
    if (ctx !== null) lib.EVP_PKEY_CTX_free(ctx);
    lib.EVP_PKEY_free(other);
    lib.EVP_PKEY_free(own);
  }
}

function _x25519Node(privateKey: Uint8Array, peer: Uint8Array): Uint8Array {
  const der = new Uint8Array(X25519_PKCS8_PREFIX.length + 32);
  der.set(X25519_PKCS8_PREFIX);
  der.set(privateKey, X25519_PKCS8_PREFIX.length);
  const spki = new Uint8Array(X25519_SPKI_PREFIX.length + 32);
  spki.set(X25519_SPKI_PREFIX);
  spki.set(peer, X25519_SPKI_PREFIX.length);
  const own = nodeCrypto.createPrivateKey({ key: Buffer.from(der), format: "der", type: "pkcs8" });
  const other = nodeCrypto.createPublicKey({
    key: Buffer.from(spki),
    format: "der",
    type: "spki",
  });
  try {
    return new Uint8Array(nodeCrypto.diffieHellman({ privateKey: own, publicKey: other }));
  } catch {
    throw new Error("X25519 key agreement failed: the peer key is a low-order point");
  }
}

/**
 * X25519 shared secret of our private key and the peer's public key (32 bytes each), RFC 7748.
 * Throws on an all-zero result (a low-order peer point, which would make the secret public).
 * Through OpenSSL when loaded, else `node:crypto`; handshake time only.
 *
 * @example Usage
 * ```ts
 * import { randomBytes, x25519PublicKey, x25519SharedSecret } from "./crypto.ts";
 * const a = randomBytes(32);
 * const b = randomBytes(32);
 * const s1 = x25519SharedSecret(a, x25519PublicKey(b));
 * const s2 = x25519SharedSecret(b, x25519PublicKey(a));
 * if (s1.some((x, i) => x !== s2[i])) throw new Error("mismatch");
 * ```
 */
export function x25519SharedSecret(
  privateKey: Uint8Array,
  peerPublicKey: Uint8Array,
  options: AesOptions = {},
): Uint8Array {
  if (privateKey.length !== 32) {
    throw new RangeError(`X25519 private key must be 32 bytes: got ${privateKey.length}`);
  }
  if (peerPublicKey.length !== 32) {
    throw new RangeError(`X25519 public key must be 32 bytes: got ${peerPublicKey.length}`);
  }
  const lib = (options.backend ?? defaultCipherBackend()) === "openssl" ? _loadOpenSsl() : null;
  const shared = lib
    ? _x25519OpenSsl(lib, privateKey, peerPublicKey)
    : _x25519Node(privateKey, peerPublicKey);
  if (_isZero(shared)) {
    throw new Error("X25519 key agreement failed: the peer key is a low-order point");
  }
  return shared;
}

/**
 * HKDF-SHA256 (RFC 5869): extract with `salt`, expand with `info` to `length` bytes
 * (at most 8160).
 *
 * @example Usage
 * ```ts
 * import { hkdfSha256 } from "./crypto.ts";
 * const okm = hkdfSha256(new Uint8Array(32), new Uint8Array(0), new Uint8Array(0), 42);
 * console.log(okm.length); // 42
 * ```
 */
export function hkdfSha256(
  ikm: Uint8Array,
  salt: Uint8Array,
  info: Uint8Array,
  length: number,
): Uint8Array {
  if (!Number.isInteger(length) || length < 1 || length > 255 * 32) {
    throw new RangeError(`HKDF-SHA256 length must be 1-8160 bytes: got ${length}`);
  }
  return new Uint8Array(nodeCrypto.hkdfSync("sha256", ikm, salt, info, length));
}

/**
 * zlib's CRC-32 (IEEE), continuing from `previous`, when the runtime has it (Deno 2 does);
 * null otherwise.
 */
export const nativeCrc32: ((data: Uint8Array, previous: number) => number) | null =
  typeof (zlib as { crc32?: unknown }).crc32 === "function"
    ? (data, previous) =>
      ((zlib as unknown as { crc32(d: Uint8Array, v: number): number }).crc32(data, previous)) >>>
      0
    : null;
