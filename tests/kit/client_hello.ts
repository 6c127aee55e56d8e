/**
 * Realistic, unsigned TLS 1.3 ClientHello records shaped like the ones TDLib and Telegram
 * Desktop send since 2024 (Chrome-like: GREASE, X25519MLKEM768, ECH outer, ALPS, shuffled
 * extensions; protocol.md §5.3). Sign them with `signClientHello` from lib/protocol/fake_tls.ts.
 *
 * @module
 */
import { randomBytes, x25519PublicKey } from "../../lib/crypto.ts";

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

function _u16(v: number): number[] {
  return [(v >> 8) & 0xff, v & 0xff];
}

function _ext(type: number, data: ArrayLike<number>): number[] {
  return [..._u16(type), ..._u16(data.length), ...Array.from(data)];
}

function _vec16(data: number[]): number[] {
  return [..._u16(data.length), ...data];
}

/** Distinct random GREASE values (`0x?a?a`). */
function _greaseValues(n: number): number[] {
  const nibbles = Array.from({ length: 16 }, (_, i) => i);
  for (let i = nibbles.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [nibbles[i], nibbles[j]] = [nibbles[j]!, nibbles[i]!];
  }
  return nibbles.slice(0, n).map((x) => ((x << 4) | 0x0a) * 0x0101);
}

function _shuffle<T>(items: T[]): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
  return items;
}

/**
 * Build an unsigned ClientHello record (random field zero, random 32-byte session id).
 * Hellos shorter than 517 bytes (possible only without ML-KEM) get a padding extension up to
 * 517 bytes.
 *
 * @example Usage
 * ```ts ignore
 * const record = signClientHello(buildClientHello({ sni: "example.com" }), secret, now);
 * ```
 */
export function buildClientHello(options: ClientHelloOptions): Uint8Array {
  const grease = options.grease ?? true;
  const mlkem = options.mlkem ?? true;
  const shuffle = options.shuffle ?? true;
  const ech = options.ech ?? true;
  const sni = new TextEncoder().encode(options.sni);
  if (sni.length === 0 || sni.length > 255) {
    throw new RangeError(`SNI must be 1-255 bytes: got ${sni.length}`);
  }
  // Suite, first extension, group (also its key share), versions, last extension.
  const [gSuite, gFirst, gGroup, gVersion, gLast] = _greaseValues(5) as [
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
    shares.push(..._u16(0x11ec), ..._u16(1216), ...randomBytes(1184), ...x25519PublicKey());
  }
  shares.push(..._u16(0x001d), ..._u16(32), ...x25519PublicKey());
  const versions = [...(grease ? [gVersion] : []), 0x0304, 0x0303];
  const echPayload = ECH_PAYLOAD_SIZES[Math.floor(Math.random() * ECH_PAYLOAD_SIZES.length)]!;

  const middle: number[][] = [
    _ext(0x0000, _vec16([0x00, ..._u16(sni.length), ...sni])), // server_name
    _ext(0x0017, []), // extended_master_secret
    _ext(0xff01, [0x00]), // renegotiation_info
    _ext(0x000a, _vec16(groups.flatMap(_u16))), // supported_groups
    _ext(0x000b, [0x01, 0x00]), // ec_point_formats
    _ext(0x0023, []), // session_ticket
    _ext(0x0010, _vec16([0x02, 0x68, 0x32, 0x08, ...new TextEncoder().encode("http/1.1")])), // ALPN
    _ext(0x0005, [0x01, 0x00, 0x00, 0x00, 0x00]), // status_request
    _ext(0x000d, _vec16(SIGNATURE_ALGORITHMS.flatMap(_u16))), // signature_algorithms
    _ext(0x0012, []), // signed_certificate_timestamp
    _ext(0x0033, _vec16(shares)), // key_share
    _ext(0x002d, [0x01, 0x01]), // psk_key_exchange_modes
    _ext(0x002b, [versions.length * 2, ...versions.flatMap(_u16)]), // supported_versions
    _ext(0x001b, [0x02, 0x00, 0x02]), // compress_certificate (brotli)
    _ext(0x44cd, _vec16([0x02, 0x68, 0x32])), // application_settings (ALPS): h2
  ];
  if (ech) {
    middle.push(_ext(0xfe0d, [
      0x00, // outer
      0x00,
      0x01, // KDF HKDF-SHA256
      0x00,
      0x01, // AEAD AES-128-GCM
      ...randomBytes(1), // config id
      ..._vec16([...randomBytes(32)]), // enc
      ..._vec16([...randomBytes(echPayload)]), // payload
    ]));
  }
  if (shuffle) _shuffle(middle);
  const exts = [
    ...(grease ? _ext(gFirst, []) : []),
    ...middle.flat(),
    ...(grease ? _ext(gLast, [0x00]) : []),
  ];

  const sessionId = randomBytes(32);
  const suites = [...(grease ? [gSuite] : []), ...CIPHER_SUITES];
  const bodyHead = [
    0x03,
    0x03,
    ...new Uint8Array(32), // random: filled in by signClientHello
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
  return Uint8Array.from([0x16, 0x03, 0x01, ..._u16(hs.length), ...hs]);
}
