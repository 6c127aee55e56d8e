/**
 * Direct mode: one obfuscated2 connection to a Telegram DC per client. The proxy is the client
 * here, with no secret, and uses the client's own transport tag so frames pass through as they
 * are.
 *
 * @module
 */
import { randomBytes, type StreamCipher } from "../crypto.ts";
import { closeQuietly, type Conn, dialTcp, writeAll } from "../net.ts";
import {
  createInit,
  isValidInitRandom,
  replyKeyMaterial,
  type TransportTag,
} from "../protocol/obfuscated2.ts";
import type { DcRoute } from "./dc.ts";

/** An open obfuscated2 connection to a DC. */
export interface DcConnection {
  readonly conn: Conn;
  /** Encrypts what the proxy sends to the DC (already past the init). */
  readonly encryptor: StreamCipher;
  /**
   * Decrypts what the DC sends; null in fast mode, where the DC's bytes are already encrypted
   * for the client.
   */
  readonly decryptor: StreamCipher | null;
}

/** Options for {@linkcode openDirect}. */
export interface OpenDirectOptions {
  timeoutMs: number;
  signal?: AbortSignal;
  /** Plaintext client bytes that arrived with the handshake, sent together with the init. */
  firstData?: Uint8Array;
  /**
   * Fast mode: the key and IV the proxy encrypts toward its client with. The DC is asked to
   * use them, so its replies pass to the client untouched.
   */
  replyKey?: { key: Uint8Array; iv: Uint8Array };
}

/** 64 random bytes that make a valid init start. */
export function initRandom(): Uint8Array {
  let random = randomBytes(64);
  while (!isValidInitRandom(random)) random = randomBytes(64);
  return random;
}

/** Dial the DC of `route`, send the proxy's init for `tag`, and return the ready connection. */
export async function openDirect(
  route: DcRoute,
  tag: TransportTag,
  options: OpenDirectOptions,
): Promise<DcConnection> {
  const dialOptions = options.signal
    ? { timeoutMs: options.timeoutMs, signal: options.signal }
    : { timeoutMs: options.timeoutMs };
  const conn = await dialTcp(route.address.host, route.address.port, dialOptions);
  const reply = options.replyKey;
  const { wire, encryptor, decryptor } = createInit(
    initRandom(),
    tag,
    route.dcId,
    reply ? { keyMaterial: replyKeyMaterial(reply.key, reply.iv) } : {},
  );
  if (reply) decryptor.close();
  try {
    const first = options.firstData ?? new Uint8Array(0);
    const out = new Uint8Array(wire.length + first.length);
    out.set(wire);
    out.set(first, wire.length);
    encryptor.update(out.subarray(wire.length));
    await writeAll(conn, out);
    return { conn, encryptor, decryptor: reply ? null : decryptor };
  } catch (e) {
    closeQuietly(conn);
    encryptor.close();
    decryptor.close();
    throw e;
  }
}
