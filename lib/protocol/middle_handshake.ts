/**
 * The handshake that opens a connection to a Telegram middle proxy (protocol.md §10.3):
 * RPC_NONCE both ways in plaintext, AES-256-CBC keys derived from both nonces, the proxy secret
 * and both ends' addresses, then RPC_HANDSHAKE both ways, encrypted. Message codecs, the key
 * derivation, and a state machine for each end: {@linkcode MiddleClientHandshake} (the proxy)
 * and {@linkcode MiddleServerHandshake} (a middle proxy, for the test kit).
 *
 * Pure: nonces and timestamps are passed in; no sockets, no clocks, no randomness.
 *
 * @module
 */
import { bytesEqual, concatBytes, readU32, writeU32 } from "./bytes.ts";
import { type AesOptions, createAes, md5, sha1, type StreamCipher } from "../crypto.ts";
import { FullCodec, type FullRejectReason } from "./full.ts";
import { formatIp, type IpAddress, ipBytes } from "./rpc.ts";

/** Type of the nonce message, both ways. */
export const RPC_NONCE = 0x7acb87aa;
/** Type of the handshake message, both ways. */
export const RPC_HANDSHAKE = 0x7682eef5;
/** Type of a middle proxy's handshake refusal. */
export const RPC_HANDSHAKE_ERROR = 0x6a27beda;
/** Crypto schema 1: AES (the only one used). */
export const CRYPTO_SCHEMA_AES = 1;
/** Length of an RPC_NONCE body. */
export const RPC_NONCE_LEN = 32;
/** Length of an RPC_HANDSHAKE body. */
export const RPC_HANDSHAKE_LEN = 32;
/** The 12-byte process id the reference proxies send (ASCII `IPIPPRPDTIME`). */
export const DEFAULT_PID: Uint8Array = new TextEncoder().encode("IPIPPRPDTIME");

function _checkLength(name: string, b: Uint8Array, n: number): void {
  if (b.length !== n) throw new RangeError(`${name} must be ${n} bytes: got ${b.length}`);
}

// ---------------------------------------------------------------------------------------------
// RPC_NONCE

/** The fields of an RPC_NONCE. */
export interface RpcNonce {
  /** First 4 bytes of the proxy secret. */
  readonly keySelector: Uint8Array;
  /** Crypto schema; 1 = AES. */
  readonly schema: number;
  /** Unix time of the sender (u32). */
  readonly cryptoTs: number;
  /** 16 random bytes. */
  readonly nonce: Uint8Array;
}

/**
 * The key selector of a proxy secret: its first 4 bytes.
 *
 * @example Usage
 * ```ts
 * import { keySelector } from "./middle_handshake.ts";
 * keySelector(new Uint8Array(128).fill(7)); // Uint8Array(4) [7, 7, 7, 7]
 * ```
 */
export function keySelector(proxySecret: Uint8Array): Uint8Array {
  if (proxySecret.length < 4) {
    throw new RangeError(`Proxy secret must be at least 4 bytes: got ${proxySecret.length}`);
  }
  return proxySecret.slice(0, 4);
}

/**
 * Encode an RPC_NONCE body (32 bytes).
 *
 * @example Usage
 * ```ts
 * import { encodeRpcNonce } from "./middle_handshake.ts";
 * const body = encodeRpcNonce({
 *   keySelector: Uint8Array.of(0xc4, 0xf9, 0xfa, 0xca), schema: 1,
 *   cryptoTs: 1700000000, nonce: new Uint8Array(16),
 * });
 * console.log(body.length); // 32
 * ```
 */
export function encodeRpcNonce(nonce: RpcNonce): Uint8Array {
  _checkLength("Key selector", nonce.keySelector, 4);
  _checkLength("Nonce", nonce.nonce, 16);
  const out = new Uint8Array(RPC_NONCE_LEN);
  writeU32(out, 0, RPC_NONCE);
  out.set(nonce.keySelector, 4);
  writeU32(out, 8, nonce.schema);
  writeU32(out, 12, nonce.cryptoTs);
  out.set(nonce.nonce, 16);
  return out;
}

/**
 * Parse an RPC_NONCE body; null when it is not a 32-byte RPC_NONCE. The fields are views.
 *
 * @example Usage
 * ```ts
 * import { encodeRpcNonce, parseRpcNonce } from "./middle_handshake.ts";
 * const body = encodeRpcNonce({
 *   keySelector: new Uint8Array(4), schema: 1, cryptoTs: 5, nonce: new Uint8Array(16),
 * });
 * parseRpcNonce(body)?.cryptoTs; // 5
 * ```
 */
export function parseRpcNonce(body: Uint8Array): RpcNonce | null {
  if (body.length !== RPC_NONCE_LEN || readU32(body, 0) !== RPC_NONCE) return null;
  return {
    keySelector: body.subarray(4, 8),
    schema: readU32(body, 8),
    cryptoTs: readU32(body, 12),
    nonce: body.subarray(16, 32),
  };
}

// ---------------------------------------------------------------------------------------------
// RPC_HANDSHAKE

/** The fields of an RPC_HANDSHAKE. */
export interface RpcHandshake {
  /** 0: plain CRC32. @default 0 */
  readonly flags?: number;
  /** 12-byte id of the sender (`{ip u32, port u16, pid u16, utime u32}`; nobody checks it). */
  readonly senderPid: Uint8Array;
  /** 12-byte id of the peer; a middle proxy echoes our sender pid here. */
  readonly peerPid: Uint8Array;
}

/** A parsed handshake answer: a handshake, or a refusal with its error code. */
export type HandshakeMessage =
  | { kind: "handshake"; flags: number; senderPid: Uint8Array; peerPid: Uint8Array }
  | { kind: "error"; errorCode: number; senderPid: Uint8Array };

/**
 * Encode an RPC_HANDSHAKE body (32 bytes).
 *
 * @example Usage
 * ```ts
 * import { DEFAULT_PID, encodeRpcHandshake } from "./middle_handshake.ts";
 * encodeRpcHandshake({ senderPid: DEFAULT_PID, peerPid: DEFAULT_PID }).length; // 32
 * ```
 */
export function encodeRpcHandshake(handshake: RpcHandshake): Uint8Array {
  _checkLength("Sender pid", handshake.senderPid, 12);
  _checkLength("Peer pid", handshake.peerPid, 12);
  const out = new Uint8Array(RPC_HANDSHAKE_LEN);
  writeU32(out, 0, RPC_HANDSHAKE);
  writeU32(out, 4, handshake.flags ?? 0);
  out.set(handshake.senderPid, 8);
  out.set(handshake.peerPid, 20);
  return out;
}

/**
 * Encode an RPC_HANDSHAKE_ERROR body: `{type, error_code i32, sender_pid(12)}`.
 *
 * @example Usage
 * ```ts
 * import { DEFAULT_PID, encodeRpcHandshakeError } from "./middle_handshake.ts";
 * encodeRpcHandshakeError(-1, DEFAULT_PID).length; // 20
 * ```
 */
export function encodeRpcHandshakeError(errorCode: number, senderPid: Uint8Array): Uint8Array {
  _checkLength("Sender pid", senderPid, 12);
  const out = new Uint8Array(20);
  writeU32(out, 0, RPC_HANDSHAKE_ERROR);
  writeU32(out, 4, errorCode);
  out.set(senderPid, 8);
  return out;
}

/**
 * Parse an RPC_HANDSHAKE or RPC_HANDSHAKE_ERROR body; null for anything else. Fields are views.
 *
 * @example Usage
 * ```ts
 * import { DEFAULT_PID, encodeRpcHandshakeError, parseRpcHandshake } from "./middle_handshake.ts";
 * parseRpcHandshake(encodeRpcHandshakeError(-2, DEFAULT_PID)); // { kind: "error", errorCode: -2, ... }
 * ```
 */
export function parseRpcHandshake(body: Uint8Array): HandshakeMessage | null {
  if (body.length < 4) return null;
  const type = readU32(body, 0);
  if (type === RPC_HANDSHAKE && body.length === RPC_HANDSHAKE_LEN) {
    return {
      kind: "handshake",
      flags: readU32(body, 4),
      senderPid: body.subarray(8, 20),
      peerPid: body.subarray(20, 32),
    };
  }
  if (type === RPC_HANDSHAKE_ERROR && body.length >= 20) {
    return { kind: "error", errorCode: readU32(body, 4) | 0, senderPid: body.subarray(8, 20) };
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Key derivation

/** One end of a TCP connection. */
export interface Endpoint {
  readonly ip: IpAddress;
  readonly port: number;
}

/** What both ends feed into the key derivation. */
export interface MiddleKeyInput {
  /** The whole proxy secret from getProxySecret. */
  readonly proxySecret: Uint8Array;
  /** The middle proxy's nonce. */
  readonly serverNonce: Uint8Array;
  /** The proxy's nonce. */
  readonly clientNonce: Uint8Array;
  /** The `crypto_ts` the proxy sent in its RPC_NONCE. */
  readonly clientTs: number;
  /** The proxy's end: its external IP and the local port of this connection. */
  readonly client: Endpoint;
  /** The middle proxy's end: its IP and port on this connection. */
  readonly server: Endpoint;
}

/** `CLIENT`: what the proxy encrypts with (and the MP decrypts with); `SERVER`: the other way. */
export type KeyPurpose = "CLIENT" | "SERVER";

/** An AES-256-CBC key and IV. */
export interface AesKeyIv {
  readonly key: Uint8Array;
  readonly iv: Uint8Array;
}

/** Keys for both directions of one connection. */
export interface MiddleKeys {
  /** Purpose CLIENT: proxy → middle proxy. */
  readonly client: AesKeyIv;
  /** Purpose SERVER: middle proxy → proxy. */
  readonly server: AesKeyIv;
}

const PURPOSE: Record<KeyPurpose, Uint8Array> = {
  CLIENT: new TextEncoder().encode("CLIENT"),
  SERVER: new TextEncoder().encode("SERVER"),
};

function _u16le(v: number): Uint8Array {
  return Uint8Array.of(v & 0xff, (v >>> 8) & 0xff);
}

function _u32le(v: number): Uint8Array {
  const out = new Uint8Array(4);
  writeU32(out, 0, v);
  return out;
}

/**
 * Derive the AES-256-CBC key and IV for one direction (§10.3):
 * `s = srv_nonce | clt_nonce | clt_ts | srv_ip4 | clt_port | purpose | clt_ip4 | srv_port |
 * secret | srv_nonce | [clt_ip6 | srv_ip6] | clt_nonce`, `key = MD5(s[1:])[0:12] | SHA1(s)`,
 * `iv = MD5(s[2:])`. IPv4 addresses are written reversed; over IPv6 they are zero and the
 * 16-byte addresses are added. Both ends must be of one family (IPv4-mapped counts as IPv4).
 *
 * @example Usage
 * ```ts
 * import { deriveMiddleKey } from "./middle_handshake.ts";
 * const { key, iv } = deriveMiddleKey({
 *   proxySecret: new Uint8Array(128), serverNonce: new Uint8Array(16),
 *   clientNonce: new Uint8Array(16), clientTs: 1700000000,
 *   client: { ip: "203.0.113.7", port: 40001 }, server: { ip: "149.154.175.50", port: 8888 },
 * }, "CLIENT");
 * console.log(key.length, iv.length); // 32 16
 * ```
 */
export function deriveMiddleKey(input: MiddleKeyInput, purpose: KeyPurpose): AesKeyIv {
  _checkLength("Server nonce", input.serverNonce, 16);
  _checkLength("Client nonce", input.clientNonce, 16);
  const clt = ipBytes(input.client.ip);
  const srv = ipBytes(input.server.ip);
  if (clt.length !== srv.length) {
    throw new RangeError(
      `Both ends must be IPv4 or both IPv6: got ${formatIp(clt)} and ${formatIp(srv)}`,
    );
  }
  const v6 = clt.length === 16;
  const zero4 = new Uint8Array(4);
  const rev = (b: Uint8Array) => b.slice().reverse();
  const s = concatBytes([
    input.serverNonce,
    input.clientNonce,
    _u32le(input.clientTs),
    v6 ? zero4 : rev(srv),
    _u16le(input.client.port),
    PURPOSE[purpose],
    v6 ? zero4 : rev(clt),
    _u16le(input.server.port),
    input.proxySecret,
    input.serverNonce,
    ...(v6 ? [clt, srv] : []),
    input.clientNonce,
  ]);
  const key = new Uint8Array(32);
  key.set(md5(s.subarray(1)).subarray(0, 12));
  key.set(sha1(s), 12);
  return { key, iv: md5(s.subarray(2)) };
}

/**
 * Derive both directions' keys of one connection.
 *
 * @example Usage
 * ```ts
 * import { deriveMiddleKeys } from "./middle_handshake.ts";
 * const keys = deriveMiddleKeys({
 *   proxySecret: new Uint8Array(128), serverNonce: new Uint8Array(16),
 *   clientNonce: new Uint8Array(16), clientTs: 0,
 *   client: { ip: "2001:db8::7", port: 40001 }, server: { ip: "2001:67c:4e8:f002::", port: 8888 },
 * });
 * console.log(keys.client.key.length, keys.server.iv.length); // 32 16
 * ```
 */
export function deriveMiddleKeys(input: MiddleKeyInput): MiddleKeys {
  return { client: deriveMiddleKey(input, "CLIENT"), server: deriveMiddleKey(input, "SERVER") };
}

// ---------------------------------------------------------------------------------------------
// State machines

/** Why a handshake failed. */
export type HandshakeRejectReason =
  | FullRejectReason
  /** The peer's first frame is not a 32-byte RPC_NONCE. */
  | "bad_nonce"
  /** Its key selector is not the first 4 bytes of our proxy secret. */
  | "bad_key_selector"
  /** Its crypto schema is not 1 (AES). */
  | "bad_schema"
  /** The second frame is not an RPC_HANDSHAKE. */
  | "bad_handshake"
  /** The middle proxy's RPC_HANDSHAKE does not name our sender pid as its peer. */
  | "bad_peer_pid"
  /** The middle proxy answered RPC_HANDSHAKE_ERROR (or, server side, was told to). */
  | "handshake_error";

/** What one {@linkcode MiddleClientHandshake.receive} (or server `receive`) call produced. */
export type HandshakeStep =
  /** Write `send` (when set) and read more. */
  | { kind: "continue"; send: Uint8Array | null }
  /**
   * Write `send` (when set); the connection is ready. The caller now owns `codec` (and must
   * close it); `frames` are RPC bodies that arrived right after the handshake.
   */
  | {
    kind: "done";
    send: Uint8Array | null;
    codec: FullCodec;
    frames: Uint8Array[];
    /** The peer's sender pid. */
    peerPid: Uint8Array;
  }
  /** Write `send` (when set), then close: the handshake failed and its ciphers are closed. */
  | {
    kind: "reject";
    send: Uint8Array | null;
    reason: HandshakeRejectReason;
    /** The code of an RPC_HANDSHAKE_ERROR. */
    errorCode?: number;
  };

type _State = "new" | "nonce" | "handshake" | "done" | "failed";

/** Shared plumbing of both ends: decode frames, collect output, own the codec until done. */
abstract class _Handshake {
  protected readonly codec: FullCodec;
  protected state: _State = "new";
  #out: Uint8Array[] = [];
  #result: HandshakeStep | null = null;

  constructor(codec: FullCodec) {
    this.codec = codec;
  }

  /** Feed bytes from the peer (the chunk is taken over: it may be decrypted in place). */
  receive(chunk: Uint8Array): HandshakeStep {
    if (this.state !== "nonce" && this.state !== "handshake") {
      throw new Error(`Handshake cannot receive in state "${this.state}"`);
    }
    let r = this.codec.decode(chunk);
    let i = 0;
    for (;;) {
      const body = r.frames[i++];
      if (body === undefined) {
        if (r.reject !== null) return this.reject(r.reject);
        return { kind: "continue", send: this.#takeOut() };
      }
      const wasEncrypted = this.codec.encrypted;
      this.onFrame(body, r.frames.slice(i));
      if (this.#result !== null) {
        // A broken frame right after the handshake answer still fails the handshake.
        if (this.#result.kind === "done" && r.reject !== null) return this.reject(r.reject);
        return this.#result;
      }
      if (!wasEncrypted && this.codec.encrypted) {
        // Plaintext decoding stops after one frame; what follows it is ciphertext.
        r = this.codec.decode(new Uint8Array(0));
        i = 0;
      }
    }
  }

  /** Release the ciphers unless a `done` step handed the codec over. Safe to call twice. */
  close(): void {
    if (this.state === "done") return;
    this.state = "failed";
    this.codec.close();
  }

  /** Handle one frame body; `later` holds the bodies decoded after it. */
  protected abstract onFrame(body: Uint8Array, later: Uint8Array[]): void;

  protected send(bytes: Uint8Array): void {
    this.#out.push(bytes);
  }

  protected finish(peerPid: Uint8Array, later: Uint8Array[]): void {
    this.state = "done";
    this.#result = {
      kind: "done",
      send: this.#takeOut(),
      codec: this.codec,
      frames: later,
      peerPid: peerPid.slice(),
    };
  }

  protected reject(reason: HandshakeRejectReason, errorCode?: number): HandshakeStep {
    this.state = "failed";
    this.codec.close();
    const send = this.#takeOut();
    const step: HandshakeStep = errorCode === undefined
      ? { kind: "reject", send, reason }
      : { kind: "reject", send, reason, errorCode };
    this.#result = step;
    return step;
  }

  #takeOut(): Uint8Array | null {
    const out = this.#out;
    this.#out = [];
    if (out.length === 0) return null;
    return out.length === 1 ? out[0]! : concatBytes(out);
  }
}

/** Options for {@linkcode MiddleClientHandshake}. */
export interface ClientHandshakeOptions extends AesOptions {
  /** The whole proxy secret from getProxySecret. */
  proxySecret: Uint8Array;
  /** Our 16 random nonce bytes. */
  nonce: Uint8Array;
  /** Current unix time (u32). */
  cryptoTs: number;
  /** Our end: our external IP and the local port of this connection. */
  local: Endpoint;
  /** The middle proxy's IP and port. */
  remote: Endpoint;
  /** Our 12-byte sender pid. @default DEFAULT_PID */
  senderPid?: Uint8Array;
  /** The peer pid we send. @default DEFAULT_PID */
  peerPid?: Uint8Array;
  /** Verify CRCs of received frames. @default true */
  checkCrc?: boolean;
}

/**
 * The proxy's side of the handshake. `start()` gives the padded RPC_NONCE frame to write;
 * `receive(chunk)` consumes the middle proxy's bytes and, after its nonce, returns the
 * encrypted RPC_HANDSHAKE to write; after its RPC_HANDSHAKE it returns `done` with the codec
 * for the data phase (seq 0 each way).
 *
 * @example Usage
 * ```ts
 * import { MiddleClientHandshake } from "./middle_handshake.ts";
 * const hs = new MiddleClientHandshake({
 *   proxySecret: new Uint8Array(128), nonce: new Uint8Array(16), cryptoTs: 1700000000,
 *   local: { ip: "203.0.113.7", port: 40001 }, remote: { ip: "149.154.175.50", port: 8888 },
 * });
 * const first = hs.start(); // 48 bytes: RPC_NONCE, seq -2, padded
 * console.log(first.length); // 48
 * hs.close();
 * ```
 */
export class MiddleClientHandshake extends _Handshake {
  #options: ClientHandshakeOptions;
  #senderPid: Uint8Array;

  constructor(options: ClientHandshakeOptions) {
    super(new FullCodec({ checkCrc: options.checkCrc ?? true, padPlaintext: true }));
    _checkLength("Nonce", options.nonce, 16);
    this.#options = options;
    this.#senderPid = options.senderPid ?? DEFAULT_PID;
    _checkLength("Sender pid", this.#senderPid, 12);
  }

  /** The bytes that open the connection: our RPC_NONCE in a padded plaintext frame. */
  start(): Uint8Array {
    if (this.state !== "new") throw new Error("Handshake already started");
    this.state = "nonce";
    const o = this.#options;
    return this.codec.encode(encodeRpcNonce({
      keySelector: keySelector(o.proxySecret),
      schema: CRYPTO_SCHEMA_AES,
      cryptoTs: o.cryptoTs,
      nonce: o.nonce,
    }));
  }

  protected onFrame(body: Uint8Array, later: Uint8Array[]): void {
    const o = this.#options;
    if (this.state === "nonce") {
      const nonce = parseRpcNonce(body);
      if (nonce === null) return void this.reject("bad_nonce");
      if (!bytesEqual(nonce.keySelector, keySelector(o.proxySecret))) {
        return void this.reject("bad_key_selector");
      }
      if (nonce.schema !== CRYPTO_SCHEMA_AES) return void this.reject("bad_schema");
      const keys = deriveMiddleKeys({
        proxySecret: o.proxySecret,
        serverNonce: nonce.nonce,
        clientNonce: o.nonce,
        clientTs: o.cryptoTs,
        client: o.local,
        server: o.remote,
      });
      _startCbc(this.codec, keys.client, keys.server, o);
      this.state = "handshake";
      this.send(this.codec.encode(encodeRpcHandshake({
        senderPid: this.#senderPid,
        peerPid: o.peerPid ?? DEFAULT_PID,
      })));
      return;
    }
    const hs = parseRpcHandshake(body);
    if (hs === null) return void this.reject("bad_handshake");
    if (hs.kind === "error") return void this.reject("handshake_error", hs.errorCode);
    if (!bytesEqual(hs.peerPid, this.#senderPid)) return void this.reject("bad_peer_pid");
    this.finish(hs.senderPid, later);
  }
}

/** Options for {@linkcode MiddleServerHandshake}. */
export interface ServerHandshakeOptions extends AesOptions {
  /** The whole proxy secret; the client's key selector must match it. */
  proxySecret: Uint8Array;
  /** The middle proxy's 16 random nonce bytes. */
  nonce: Uint8Array;
  /** Its unix time (u32). */
  cryptoTs: number;
  /** The middle proxy's own IP and port on this connection. */
  local: Endpoint;
  /** The proxy's IP and port as seen from here. */
  remote: Endpoint;
  /** The middle proxy's 12-byte sender pid. @default DEFAULT_PID */
  senderPid?: Uint8Array;
  /** Pad the plaintext nonce answer to 16 (official middle proxies do not). @default false */
  padNonce?: boolean;
  /** Answer RPC_HANDSHAKE_ERROR with this code instead of RPC_HANDSHAKE. */
  errorCode?: number;
  /** Verify CRCs of received frames. @default true */
  checkCrc?: boolean;
}

/**
 * A middle proxy's side of the handshake (for the test kit's fake middle proxy): waits for the
 * proxy's RPC_NONCE, answers its own, derives the keys with the roles swapped (decrypts with
 * CLIENT, encrypts with SERVER), then answers the proxy's RPC_HANDSHAKE with one naming the
 * proxy's sender pid as peer.
 *
 * @example Usage
 * ```ts
 * import { MiddleClientHandshake, MiddleServerHandshake } from "./middle_handshake.ts";
 * const common = { proxySecret: new Uint8Array(128), cryptoTs: 1700000000 };
 * const proxy = { ip: "127.0.0.1", port: 40001 };
 * const mp = { ip: "127.0.0.1", port: 8888 };
 * const client = new MiddleClientHandshake({
 *   ...common, nonce: new Uint8Array(16).fill(1), local: proxy, remote: mp,
 * });
 * const server = new MiddleServerHandshake({
 *   ...common, nonce: new Uint8Array(16).fill(2), local: mp, remote: proxy,
 * });
 * const s1 = server.receive(client.start()); // continue: our nonce to send back
 * const c1 = client.receive(s1.send!); // continue: the encrypted RPC_HANDSHAKE
 * const s2 = server.receive(c1.send!); // done
 * const c2 = client.receive(s2.send!); // done
 * if (s2.kind === "done") s2.codec.close();
 * if (c2.kind === "done") c2.codec.close();
 * ```
 */
export class MiddleServerHandshake extends _Handshake {
  #options: ServerHandshakeOptions;
  #senderPid: Uint8Array;

  constructor(options: ServerHandshakeOptions) {
    super(
      new FullCodec({
        checkCrc: options.checkCrc ?? true,
        padPlaintext: options.padNonce ?? false,
      }),
    );
    _checkLength("Nonce", options.nonce, 16);
    this.#options = options;
    this.#senderPid = options.senderPid ?? DEFAULT_PID;
    _checkLength("Sender pid", this.#senderPid, 12);
    this.state = "nonce";
  }

  protected onFrame(body: Uint8Array, later: Uint8Array[]): void {
    const o = this.#options;
    if (this.state === "nonce") {
      const nonce = parseRpcNonce(body);
      if (nonce === null) return void this.reject("bad_nonce");
      const selector = keySelector(o.proxySecret);
      if (!bytesEqual(nonce.keySelector, selector)) return void this.reject("bad_key_selector");
      if (nonce.schema !== CRYPTO_SCHEMA_AES) return void this.reject("bad_schema");
      this.send(this.codec.encode(encodeRpcNonce({
        keySelector: selector,
        schema: CRYPTO_SCHEMA_AES,
        cryptoTs: o.cryptoTs,
        nonce: o.nonce,
      })));
      const keys = deriveMiddleKeys({
        proxySecret: o.proxySecret,
        serverNonce: o.nonce,
        clientNonce: nonce.nonce,
        clientTs: nonce.cryptoTs,
        client: o.remote,
        server: o.local,
      });
      _startCbc(this.codec, keys.server, keys.client, o);
      this.state = "handshake";
      return;
    }
    const hs = parseRpcHandshake(body);
    if (hs === null || hs.kind !== "handshake") return void this.reject("bad_handshake");
    if (o.errorCode !== undefined) {
      this.send(this.codec.encode(encodeRpcHandshakeError(o.errorCode, this.#senderPid)));
      return void this.reject("handshake_error", o.errorCode);
    }
    this.send(this.codec.encode(encodeRpcHandshake({
      senderPid: this.#senderPid,
      peerPid: hs.senderPid,
    })));
    this.finish(hs.senderPid, later);
  }
}

function _startCbc(
  codec: FullCodec,
  encrypt: AesKeyIv,
  decrypt: AesKeyIv,
  options: AesOptions,
): void {
  const aes: AesOptions = options.backend ? { backend: options.backend } : {};
  const encryptor: StreamCipher = createAes("cbc-encrypt", encrypt.key, encrypt.iv, aes);
  let decryptor: StreamCipher;
  try {
    decryptor = createAes("cbc-decrypt", decrypt.key, decrypt.iv, aes);
  } catch (e) {
    encryptor.close();
    throw e;
  }
  codec.startEncryption(encryptor, decryptor);
}
