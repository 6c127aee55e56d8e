/**
 * Spotting Telegram's transport errors in the byte stream a DC sends toward a client. A probe
 * that replays a captured session gets Telegram's `-404` (a lone 4-byte packet) back, which
 * would tell it that this is a proxy; the session closes instead of forwarding it.
 *
 * @module
 */
import type { StreamCipher } from "../crypto.ts";
import type { TransportTag } from "../protocol/obfuscated2.ts";

/** What a scan concluded so far. */
export type ScanResult = "error" | "undecided" | "clean";

/**
 * Incremental frame walker over the DC-to-client plaintext, in the client's transport (the
 * direct mode relays frames unchanged). Quick-ack tokens (a length word with its top bit set)
 * are skipped. With `firstOnly`, the scan ends after the first frame.
 */
export class ServerErrorScanner {
  readonly #tag: TransportTag;
  readonly #firstOnly: boolean;
  /** Header bytes of the frame being read. */
  #header = 0;
  #headerHave = 0;
  #headerNeed: number;
  /** Payload bytes still to skip in the current frame, and its payload so far (<= 4 bytes). */
  #left = -1;
  #small = 0;
  #smallHave = 0;
  #size = 0;
  #done = false;

  constructor(tag: TransportTag, options: { firstOnly: boolean }) {
    this.#tag = tag;
    this.#firstOnly = options.firstOnly;
    this.#headerNeed = tag === "abridged" ? 1 : 4;
  }

  /** Feed the next plaintext bytes; "error" means a transport error packet is among them. */
  scan(plain: Uint8Array): ScanResult {
    if (this.#done) return "clean";
    let i = 0;
    while (i < plain.length) {
      if (this.#left < 0) {
        // Reading a header (little-endian length word, or abridged 1 or 4 bytes).
        this.#header |= plain[i]! << (8 * this.#headerHave);
        this.#headerHave++;
        i++;
        if (this.#headerHave === 1 && this.#tag === "abridged") {
          const first = this.#header & 0xff;
          if (first & 0x80) this.#headerNeed = 4; // quick-ack token: 4 bytes, no payload
          else if (first === 0x7f) this.#headerNeed = 4;
        }
        if (this.#headerHave < this.#headerNeed) continue;
        const h = this.#header >>> 0;
        this.#header = 0;
        this.#headerHave = 0;
        this.#headerNeed = this.#tag === "abridged" ? 1 : 4;
        let size: number;
        if (this.#tag === "abridged") {
          if (h & 0x80) continue; // quick ack
          size = (h & 0xff) === 0x7f ? (h >>> 8) * 4 : (h & 0x7f) * 4;
        } else {
          if (h & 0x80000000) continue; // quick ack
          size = h;
        }
        this.#size = size;
        // Only a 4-byte payload can be an error code: a first frame of any other size settles
        // "first" mode at once, without reading (and, in fast mode, decrypting) its payload.
        const payload = this.#tag === "padded" ? size & ~3 : size;
        if (this.#firstOnly && payload !== 4) {
          this.#done = true;
          return "clean";
        }
        this.#left = size;
        this.#small = 0;
        this.#smallHave = 0;
        if (size === 0) this.#left = -1;
        continue;
      }
      const n = Math.min(this.#left, plain.length - i);
      for (let k = 0; k < n && this.#smallHave < 4; k++) {
        this.#small |= plain[i + k]! << (8 * this.#smallHave++);
      }
      i += n;
      this.#left -= n;
      if (this.#left > 0) continue;
      this.#left = -1;
      // A padded frame may carry up to 3 padding bytes after the 4-byte error code.
      const payload = this.#tag === "padded" ? this.#size & ~3 : this.#size;
      if (payload === 4 && this.#small < 0) return "error";
      if (this.#firstOnly) {
        this.#done = true;
        return "clean";
      }
    }
    return this.#done ? "clean" : "undecided";
  }
}

/**
 * The server error filter as a relay inspector for the DC-to-client direction. In fast mode the
 * DC's bytes are still encrypted for the client: `shadow` (the client's keystream from offset 0)
 * decrypts a copy of them; otherwise the inspector runs after the DC decryptor (`at` = 1).
 */
export class ServerErrorFilter {
  readonly at: number;
  readonly #scanner: ServerErrorScanner;
  readonly #shadow: StreamCipher | null;
  #closed = false;

  constructor(
    tag: TransportTag,
    options: { firstOnly: boolean; shadow: StreamCipher | null },
  ) {
    this.#scanner = new ServerErrorScanner(tag, { firstOnly: options.firstOnly });
    this.#shadow = options.shadow;
    this.at = options.shadow ? 0 : 1;
  }

  check(data: Uint8Array): "ok" | "stop" | "done" {
    if (this.#closed) return "done";
    let plain = data;
    if (this.#shadow) {
      plain = data.slice();
      this.#shadow.update(plain);
    }
    const result = this.#scanner.scan(plain);
    if (result === "error") return "stop";
    if (result === "clean") {
      this.close();
      return "done";
    }
    return "ok";
  }

  /** Release the shadow cipher. */
  close(): void {
    this.#closed = true;
    this.#shadow?.close();
  }
}
