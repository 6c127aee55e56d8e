/**
 * The seam between a client session and Telegram: "a place that carries a client's packets to
 * Telegram". A session opens a {@linkcode TelegramStream} for its client and from then on only
 * sends packets, acknowledges answers it delivered, and releases the stream; answers come back
 * through the {@linkcode TelegramClient} it passed in. The local implementations are today's
 * middle-proxy pool and a direct DC connection; the remote one is a stream on a split-mode link
 * to a back, which serves it with the same local implementations.
 *
 * Standalone direct mode keeps its obfuscated2 byte relay (no unframing, fast mode) because it
 * is several times cheaper than any packet path: {@linkcode TelegramSide.carries} tells the
 * session which of the two a listener's clients take.
 *
 * @module
 */
import type { Packet } from "../protocol/framing.ts";
import type { TransportTag } from "../protocol/obfuscated2.ts";

/** How a client's stream to Telegram ended, as the session learns it. */
export type TelegramCloseReason =
  /** Telegram closed this client (RPC_CLOSE_EXT, or the DC closed its connection). */
  | "close_ext"
  /** The connection that carried it is gone (middle-proxy rotation mid-send, DC reset). */
  | "connection_lost"
  /** The client fell too far behind reading Telegram's answers. */
  | "backpressure"
  /** Split mode: the link to the back is gone. */
  | "link_lost"
  /** A handler of this client threw (a bug): the shared connection dropped this client alone. */
  | "internal_error";

/** Receives what Telegram sends to one client. */
export interface TelegramClient {
  /** A packet from Telegram (a view: use it before returning). Acknowledge it with `ack`. */
  onPacket(data: Uint8Array): void;
  /** Telegram confirmed a packet the client asked a quick ack for (4 bytes, as sent by Telegram). */
  onQuickAck(confirm: Uint8Array): void;
  /** Telegram is no longer reachable for this client. Called at most once. */
  onClose(reason: TelegramCloseReason): void;
}

/** Who the client is and where it wants to go. */
export interface TelegramTarget {
  /** The DC id the client asked for (signed: negative = media). */
  readonly dcId: number;
  /** The client's transport (middle proxies and direct DCs are told it). */
  readonly tag: TransportTag;
  /** The client's address as Telegram must be told it (from a PROXY header when there is one). */
  readonly clientIp: string;
  readonly clientPort: number;
  /** The ad tag of the listener the client came through; null: none. */
  readonly adTag: Uint8Array | null;
}

/** A client's open stream to Telegram. */
export interface TelegramStream {
  /**
   * Send client packets, in order (views that stay untouched until this settles). Resolves once
   * the packets have been taken (backpressure: the caller waits before reading more); rejects
   * when the stream is gone.
   */
  send(packets: readonly Packet[]): Promise<void>;
  /** The client was written `packets` answers (`bytes` of payload in all): lets more come. */
  ack(bytes: number, packets: number): void;
  /** The client left: tell Telegram and free everything. Safe to call more than once. */
  release(): void;
}

/** A stream and where it leads, for logs. */
export interface OpenedStream {
  readonly stream: TelegramStream;
  /** The DC id used (differs from the requested one when that was unknown). */
  readonly dcId: number;
  /** Where it goes, for logs ("middle proxy pool of DC 2", "149.154.167.51:443", a back). */
  readonly where: string;
}

/** Why a stream could not be opened. */
export class TelegramOpenError extends Error {
  /**
   * `timeout`: nothing answered in time; `unreachable`: refused or no route; `no_link`: split
   * mode, no link to a back came up in time.
   */
  constructor(readonly kind: "timeout" | "unreachable" | "no_link", message: string) {
    super(message);
    this.name = "TelegramOpenError";
  }
}

/** The Telegram side of a proxy, local or remote. */
export interface TelegramSide {
  /**
   * "bytes": the listener's clients are relayed as obfuscated2 bytes straight to a DC (local
   * direct mode, handled by the session itself); "packets": through {@linkcode open}.
   */
  carries(listener: { readonly tag: Uint8Array | null }): "bytes" | "packets";
  /**
   * Open a stream for `client`; rejects with {@linkcode TelegramOpenError}. `signal` aborts a
   * wait (the session timed out or the server shuts down).
   */
  open(client: TelegramClient, target: TelegramTarget, signal?: AbortSignal): Promise<OpenedStream>;
}
