/**
 * Realistic TLS 1.3 ClientHello records shaped like the ones TDLib and Telegram Desktop send
 * since 2024 (Chrome-like: GREASE, X25519MLKEM768, ECH outer, ALPS, shuffled extensions;
 * protocol.md §5.3). Used by the TLS profile prober (a real hello to the fronting site) and by
 * the test clients (an unsigned hello that `signClientHello` in fake_tls.ts then signs).
 *
 * Pure: every random choice comes from the `randomBytes` option (default: the system CSPRNG).
 *
 * @module
 */
import { randomBytes as cryptoRandomBytes, x25519PublicKey } from "../crypto.ts";

/** Options for {@linkcode buildClientHello}. */
export interface ClientHelloOptions {
  /** Server name sent in the server_name extension. */
  sni: string;
  /** Add GREASE values (cipher suite, extensions, groups, versions, key share). @default true */
  grease?: boolean;
  /** Offer X25519MLKEM768 (a 1216-byte key share). @default true */
  mlkem?: boolean;
  /** Send an outer Encrypted Client Hello extension with a random payload. @default true */
  ech?: boolean;
  /** Randomly permute the extension order, as TDLib does off Apple platforms. @default true */
  shuffle?: boolean;
  /**
   * ALPN protocols in preference order; empty drops ALPN. ALPS (h2) is sent only with "h2".
   * @default ["h2", "http/1.1"]
   */
  alpn?: readonly string[];
  /**
   * The 32-byte random field. A hello for a real server needs random bytes here; a fake-TLS
   * hello leaves it zero for `signClientHello` to fill.
   * @default 32 zero bytes
   */
  random?: Uint8Array;
  /**
   * The X25519 private key whose public key goes in the plain X25519 key share (a split-mode
   * front's real ephemeral key; a server reads that share first). The X25519 half of the
   * X25519MLKEM768 share always gets its own key, as Chrome's does. Without it each share gets a
   * public key of a fresh random private key that nobody keeps.
   * @default a random key per share
   */
  x25519PrivateKey?: Uint8Array;
  /**
   * Source of every other random choice: session id, key shares, GREASE values, ECH payload,
   * extension order.
   * @default the system CSPRNG (lib/crypto.ts randomBytes)
   */
  randomBytes?: (n: number) => Uint8Array;
}

/** Size a Chrome hello is padded to when it would be shorter (the legacy 517-byte hello). */
export const PADDED_HELLO_LEN = 517;

const CIPHER_SUITES = [
  0x1301,
  0x1302,
  0x1303,
  0xc02b,
  0xc02f,
  0xc02c,
  0xc030,
  0xcca9,
  0xcca8,
  0xc013,
  0xc014,
  0x009c,
  0x009d,
  0x002f,
  0x0035,
];

const SIGNATURE_ALGORITHMS = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601];

const ECH_PAYLOAD_SIZES = [144, 176, 208, 240];

/** ML-KEM-768: k = 3 polynomials of 256 coefficients modulo q = 3329, 12 bits each, + rho. */
const MLKEM_Q = 3329;
const MLKEM_COEFFS = 768;
const MLKEM_EK_LEN = (MLKEM_COEFFS * 12) / 8 + 32;

const DEFAULT_ALPN: readonly string[] = ["h2", "http/1.1"];

function _u16(v: number): number[] {
  return [(v >> 8) & 0xff, v & 0xff];
}

function _ext(type: number, data: ArrayLike<number>): number[] {
  return [..._u16(type), ..._u16(data.length), ...Array.from(data)];
}

function _vec16(data: ArrayLike<number>): number[] {
  return [..._u16(data.length), ...Array.from(data)];
}

/** A uniform integer in [0, n) from `rand` (rejection sampling on 32-bit draws). */
function _index(rand: (n: number) => Uint8Array, n: number): number {
  const limit = Math.floor(0x1_0000_0000 / n) * n;
  for (;;) {
    const b = rand(4);
    const v = ((b[0]! << 24) | (b[1]! << 16) | (b[2]! << 8) | b[3]!) >>> 0;
    if (v < limit) return v % n;
  }
}

function _shuffle<T>(items: T[], rand: (n: number) => Uint8Array): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = _index(rand, i + 1);
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
  return items;
}

/** Distinct random GREASE values (`0x?a?a`). */
function _greaseValues(n: number, rand: (n: number) => Uint8Array): number[] {
  const nibbles = _shuffle(Array.from({ length: 16 }, (_, i) => i), rand);
  return nibbles.slice(0, n).map((x) => ((x << 4) | 0x0a) * 0x0101);
}

/**
 * A well-formed ML-KEM-768 encapsulation key (every coefficient below q, then a 32-byte seed),
 * so a server that checks the key (FIPS 203 modulus check) answers instead of failing. Nobody
 * holds its decapsulation key: the prober never finishes a handshake.
 */
function _mlkemEncapsulationKey(rand: (n: number) => Uint8Array): Uint8Array {
  const out = new Uint8Array(MLKEM_EK_LEN);
  const coeffs: number[] = [];
  while (coeffs.length < MLKEM_COEFFS) {
    // 1024 candidates, about 832 below q (acceptance 3329/4096); a shortfall draws again.
    const b = rand(1536);
    for (let i = 0; i + 2 < b.length && coeffs.length < MLKEM_COEFFS; i += 3) {
      const d1 = b[i]! | ((b[i + 1]! & 0x0f) << 8);
      const d2 = (b[i + 1]! >> 4) | (b[i + 2]! << 4);
      if (d1 < MLKEM_Q) coeffs.push(d1);
      if (d2 < MLKEM_Q && coeffs.length < MLKEM_COEFFS) coeffs.push(d2);
    }
  }
  for (let i = 0, o = 0; i < MLKEM_COEFFS; i += 2, o += 3) {
    const a = coeffs[i]!;
    const c = coeffs[i + 1]!;
    out[o] = a & 0xff;
    out[o + 1] = (a >> 8) | ((c & 0x0f) << 4);
    out[o + 2] = c >> 4;
  }
  out.set(rand(32), MLKEM_EK_LEN - 32);
  return out;
}

/**
 * Build a ClientHello record: Chrome-like extensions, a random 32-byte session id and the
 * given random field (zero by default). Hellos shorter than 517 bytes (possible only without
 * ML-KEM) get a padding extension up to 517 bytes.
 *
 * @example Usage
 * ```ts
 * import { buildClientHello } from "./client_hello.ts";
 * import { parseClientHello } from "./fake_tls.ts";
 *
 * const record = buildClientHello({ sni: "example.com", mlkem: false });
 * const step = parseClientHello(record);
 * if (step.kind !== "hello" || step.hello.sni !== "example.com") throw new Error("bad hello");
 * ```
 */
export function buildClientHello(options: ClientHelloOptions): Uint8Array {
  const rand = options.randomBytes ?? cryptoRandomBytes;
  const grease = options.grease ?? true;
  const mlkem = options.mlkem ?? true;
  const shuffle = options.shuffle ?? true;
  const ech = options.ech ?? true;
  const alpn = options.alpn ?? DEFAULT_ALPN;
  const sni = new TextEncoder().encode(options.sni);
  if (sni.length === 0 || sni.length > 255) {
    throw new RangeError(`SNI must be 1-255 bytes: got ${sni.length}`);
  }
  if (options.random !== undefined && options.random.length !== 32) {
    throw new RangeError(`ClientHello random must be 32 bytes: got ${options.random.length}`);
  }
  const ownKey = options.x25519PrivateKey;
  if (ownKey !== undefined && ownKey.length !== 32) {
    throw new RangeError(`X25519 private key must be 32 bytes: got ${ownKey.length}`);
  }
  const ownPublic = ownKey === undefined ? null : x25519PublicKey(ownKey);
  // Chrome (BoringSSL) makes a separate X25519 key for each share: the hybrid's X25519 half
  // differs from the plain share. `ownKey` goes in the plain share, which a server reads first.
  const x25519Share = () => ownPublic ?? x25519PublicKey(rand(32));
  const hybridX25519 = () => x25519PublicKey(rand(32));
  // Suite, first extension, group (also its key share), versions, last extension.
  const [gSuite, gFirst, gGroup, gVersion, gLast] = _greaseValues(5, rand) as [
    number,
    number,
    number,
    number,
    number,
  ];

  const groups = [...(grease ? [gGroup] : []), ...(mlkem ? [0x11ec] : []), 0x001d, 0x0017, 0x0018];
  const shares: number[] = [];
  if (grease) shares.push(..._u16(gGroup), ..._u16(1), 0x00);
  if (mlkem) {
    shares.push(
      ..._u16(0x11ec),
      ..._u16(MLKEM_EK_LEN + 32),
      ..._mlkemEncapsulationKey(rand),
      ...hybridX25519(),
    );
  }
  shares.push(..._u16(0x001d), ..._u16(32), ...x25519Share());
  const versions = [...(grease ? [gVersion] : []), 0x0304, 0x0303];
  const echPayload = ECH_PAYLOAD_SIZES[_index(rand, ECH_PAYLOAD_SIZES.length)]!;
  const alpnList = alpn.flatMap((p) => {
    const name = new TextEncoder().encode(p);
    if (name.length === 0 || name.length > 255) {
      throw new RangeError(`ALPN protocol must be 1-255 bytes: got "${p}"`);
    }
    return [name.length, ...name];
  });

  const middle: number[][] = [
    _ext(0x0000, _vec16([0x00, ..._u16(sni.length), ...sni])), // server_name
    _ext(0x0017, []), // extended_master_secret
    _ext(0xff01, [0x00]), // renegotiation_info
    _ext(0x000a, _vec16(groups.flatMap(_u16))), // supported_groups
    _ext(0x000b, [0x01, 0x00]), // ec_point_formats
    _ext(0x0023, []), // session_ticket
    ...(alpn.length > 0 ? [_ext(0x0010, _vec16(alpnList))] : []), // ALPN
    _ext(0x0005, [0x01, 0x00, 0x00, 0x00, 0x00]), // status_request
    _ext(0x000d, _vec16(SIGNATURE_ALGORITHMS.flatMap(_u16))), // signature_algorithms
    _ext(0x0012, []), // signed_certificate_timestamp
    _ext(0x0033, _vec16(shares)), // key_share
    _ext(0x002d, [0x01, 0x01]), // psk_key_exchange_modes
    _ext(0x002b, [versions.length * 2, ...versions.flatMap(_u16)]), // supported_versions
    _ext(0x001b, [0x02, 0x00, 0x02]), // compress_certificate (brotli)
    // application_settings (ALPS): h2
    ...(alpn.includes("h2") ? [_ext(0x44cd, _vec16([0x02, 0x68, 0x32]))] : []),
  ];
  if (ech) {
    middle.push(_ext(0xfe0d, [
      0x00, // outer
      0x00,
      0x01, // KDF HKDF-SHA256
      0x00,
      0x01, // AEAD AES-128-GCM
      ...rand(1), // config id
      ..._vec16(rand(32)), // enc
      ..._vec16(rand(echPayload)), // payload
    ]));
  }
  if (shuffle) _shuffle(middle, rand);
  const exts = [
    ...(grease ? _ext(gFirst, []) : []),
    ...middle.flat(),
    ...(grease ? _ext(gLast, [0x00]) : []),
  ];

  const sessionId = rand(32);
  const suites = [...(grease ? [gSuite] : []), ...CIPHER_SUITES];
  const bodyHead = [
    0x03,
    0x03,
    ...(options.random ?? new Uint8Array(32)),
    sessionId.length,
    ...sessionId,
    ..._vec16(suites.flatMap(_u16)),
    0x01,
    0x00, // compression: null only
  ];
  // Record = 5 (record header) + 4 (handshake header) + body head + 2 (extensions length) + exts.
  const unpadded = 5 + 4 + bodyHead.length + 2 + exts.length;
  if (unpadded < PADDED_HELLO_LEN) {
    exts.push(..._ext(0x0015, new Uint8Array(Math.max(0, PADDED_HELLO_LEN - unpadded - 4))));
  }
  const body = [...bodyHead, ..._vec16(exts)];
  const hs = [0x01, (body.length >> 16) & 0xff, ..._u16(body.length), ...body];
  const record = Uint8Array.from([0x16, 0x03, 0x01, ..._u16(hs.length), ...hs]);
  if (record.length - 5 > 16384) {
    throw new RangeError(`ClientHello does not fit one record: got ${record.length - 5} bytes`);
  }
  return record;
}
