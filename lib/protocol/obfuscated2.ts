/**
 * obfuscated2: the 64-byte init that starts every client connection (and every connection the
 * proxy opens to a DC), its key derivation and the AES-CTR stream ciphers it sets up.
 * Pure: callers pass in random bytes; no sockets, no clocks.
 *
 * @module
 */
import { type AesOptions, createAesCtr, sha256, type StreamCipher } from "../crypto.ts";

/** Length of the obfuscated2 init. */
export const INIT_LEN = 64;

/** The transport a client runs inside obfuscated2, named by its 4-byte tag. */
export type TransportTag = "abridged" | "intermediate" | "padded";

const TAG_BYTE: Record<TransportTag, number> = {
  abridged: 0xef,
  intermediate: 0xee,
  padded: 0xdd,
};

/** The 4 tag bytes written at init offset 56 for `tag`. */
export function tagBytes(tag: TransportTag): Uint8Array {
  return new Uint8Array(4).fill(TAG_BYTE[tag]);
}

/** The transport named by 4 tag bytes, or null when they are not a known tag. */
export function tagFromBytes(b: Uint8Array): TransportTag | null {
  const x = b[0];
  if (b.length < 4 || b[1] !== x || b[2] !== x || b[3] !== x) return null;
  if (x === 0xef) return "abridged";
  if (x === 0xee) return "intermediate";
  if (x === 0xdd) return "padded";
  return null;
}

/** The four keys of one obfuscated2 connection, as seen from the side that parsed the init. */
export interface ObfuscatedKeys {
  /** Key and IV for bytes this side receives. */
  readonly decryptKey: Uint8Array;
  readonly decryptIv: Uint8Array;
  /** Key and IV for bytes this side sends. */
  readonly encryptKey: Uint8Array;
  readonly encryptIv: Uint8Array;
}

/** An opened obfuscated2 stream: what the peer asked for and the ciphers to talk with it. */
export interface ObfuscatedStream {
  readonly tag: TransportTag;
  /** Signed DC id from the init (negative = media DC). */
  readonly dcId: number;
  /** Decrypts bytes from the peer; already advanced past the 64 init bytes. */
  readonly decryptor: StreamCipher;
  /** Encrypts bytes to the peer, starting at keystream offset 0. */
  readonly encryptor: StreamCipher;
  /** The keys behind both ciphers. */
  readonly keys: ObfuscatedKeys;
}

/**
 * Derive the server-side keys from a client init. With a secret the keys are
 * `SHA256(material || secret)`; without one (proxy -> DC) they are used as they are.
 */
export function deriveServerKeys(init: Uint8Array, secret: Uint8Array | null): ObfuscatedKeys {
  const fwd = init.subarray(8, 56);
  const bwd = fwd.slice().reverse();
  const key = (m: Uint8Array) => secret ? sha256(m.subarray(0, 32), secret) : m.slice(0, 32);
  return {
    decryptKey: key(fwd),
    decryptIv: fwd.slice(32, 48),
    encryptKey: key(bwd),
    encryptIv: bwd.slice(32, 48),
  };
}

/**
 * Server side: open a client's 64-byte init with `secret`. Returns null when the decrypted tag
 * is not a known transport (wrong secret or not obfuscated2 at all).
 *
 * @example Usage
 * ```ts ignore
 * const stream = openClientInit(init, secret);
 * if (stream) console.log(stream.tag, stream.dcId);
 * ```
 */
export function openClientInit(
  init: Uint8Array,
  secret: Uint8Array | null,
  options: AesOptions = {},
): ObfuscatedStream | null {
  if (init.length !== INIT_LEN) throw new RangeError(`Init must be 64 bytes: got ${init.length}`);
  const keys = deriveServerKeys(init, secret);
  const decryptor = createAesCtr(keys.decryptKey, keys.decryptIv, options);
  const plain = init.slice();
  decryptor.update(plain);
  const tag = tagFromBytes(plain.subarray(56, 60));
  if (tag === null) {
    decryptor.close();
    return null;
  }
  const dcId = new DataView(plain.buffer).getInt16(60, true);
  const encryptor = createAesCtr(keys.encryptKey, keys.encryptIv, options);
  return { tag, dcId, decryptor, encryptor, keys };
}

const FORBIDDEN_FIRST_WORDS = new Set([
  0x44414548, // "HEAD"
  0x54534f50, // "POST"
  0x20544547, // "GET "
  0x4954504f, // "OPTI"
  0x02010316, // 16 03 01 02: a TLS hello
  0xdddddddd,
  0xeeeeeeee,
]);

/**
 * Whether 64 random bytes may start an init: the peer must not mistake it for abridged without
 * obfuscation, HTTP, TLS or an unobfuscated intermediate tag.
 */
export function isValidInitRandom(random: Uint8Array): boolean {
  if (random[0] === 0xef) return false;
  const view = new DataView(random.buffer, random.byteOffset, random.byteLength);
  if (FORBIDDEN_FIRST_WORDS.has(view.getUint32(0, true))) return false;
  return view.getUint32(4, true) !== 0;
}

/** Options for {@linkcode createInit}. */
export interface CreateInitOptions extends AesOptions {
  /** Secret for a client talking to a proxy; null or absent for the proxy talking to a DC. */
  secret?: Uint8Array | null;
  /** 48 bytes to place at init offset 8 instead of the random ones (see `replyKeyMaterial`). */
  keyMaterial?: Uint8Array;
}

/**
 * Init key material that makes the peer (a DC, which uses no secret) encrypt its replies with
 * exactly the keystream `key`/`iv` produce from offset 0. The proxy then forwards the DC's
 * bytes to its client without decrypting and re-encrypting them (alexbers' "fast mode").
 */
export function replyKeyMaterial(key: Uint8Array, iv: Uint8Array): Uint8Array {
  const out = new Uint8Array(48);
  out.set(key);
  out.set(iv, 32);
  return out.reverse();
}

/**
 * Client side (the proxy dialing a DC, or a test client dialing the proxy): build the init
 * from 64 random bytes (see {@linkcode isValidInitRandom}), writing `tag` and `dcId` into it.
 * Returns the bytes to send and the ciphers: the encryptor continues at keystream offset 64.
 */
export function createInit(
  random: Uint8Array,
  tag: TransportTag,
  dcId: number,
  options: CreateInitOptions = {},
): { wire: Uint8Array; encryptor: StreamCipher; decryptor: StreamCipher } {
  if (random.length !== INIT_LEN) {
    throw new RangeError(`Init random must be 64 bytes: got ${random.length}`);
  }
  const init = random.slice();
  if (options.keyMaterial) {
    if (options.keyMaterial.length !== 48) {
      throw new RangeError(`Key material must be 48 bytes: got ${options.keyMaterial.length}`);
    }
    init.set(options.keyMaterial, 8);
  }
  init.set(tagBytes(tag), 56);
  new DataView(init.buffer).setInt16(60, dcId, true);
  // The client's encrypt direction is the server's decrypt direction, and vice versa.
  const keys = deriveServerKeys(init, options.secret ?? null);
  const encryptor = createAesCtr(keys.decryptKey, keys.decryptIv, options);
  const decryptor = createAesCtr(keys.encryptKey, keys.encryptIv, options);
  const cipher = init.slice();
  encryptor.update(cipher);
  init.set(cipher.subarray(56, 64), 56);
  return { wire: init, encryptor, decryptor };
}
