/**
 * `mtproxy run` as a separate process (main.ts under `deno run -A`), with its output collected:
 * for tests that need the real command line, real signals or a process that can be killed.
 *
 * @module
 */
import { fileURLToPath as fromFileUrl } from "node:url";
import { assert } from "../assert.ts";

const MAIN = fromFileUrl(new URL("../../main.ts", import.meta.url));

/** A running `mtproxy run` process with its output collected. */
export class ProxyProcess {
  #child: Deno.ChildProcess;
  stdout = "";
  stderr = "";
  #done: Promise<Deno.CommandStatus>;
  #pumps: Promise<void>[];

  constructor(args: string[], options: { cwd: string; env?: Record<string, string> }) {
    this.#child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", MAIN, ...args],
      cwd: options.cwd,
      env: { NO_COLOR: "1", MTP_STATE_FILE: "", MTP_CONFIG: "", ...options.env },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const collect = async (stream: ReadableStream<Uint8Array>, into: "stdout" | "stderr") => {
      const dec = new TextDecoder();
      for await (const chunk of stream) this[into] += dec.decode(chunk, { stream: true });
    };
    this.#pumps = [collect(this.#child.stdout, "stdout"), collect(this.#child.stderr, "stderr")];
    this.#done = this.#child.status;
  }

  /** Wait until stdout contains `text` (or the process exits, or 20 s pass). */
  async waitFor(text: string): Promise<void> {
    const deadline = Date.now() + 20_000;
    let exited = false;
    this.#done.then(() => (exited = true));
    while (!this.stdout.includes(text)) {
      if (exited || Date.now() > deadline) {
        throw new Error(`No ${JSON.stringify(text)} in output:\n${this.stdout}\n${this.stderr}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** The port of the "listening on HOST:PORT (name)" line. */
  port(): number {
    const m = this.stdout.match(/listening on [^\s]+:(\d+) \(/);
    assert(m, this.stdout);
    return Number(m[1]);
  }

  /** Send `signal` and return at once. */
  signal(signal: Deno.Signal): void {
    this.#child.kill(signal);
  }

  /** Wait until stderr contains `text` `times` times (or 20 s pass). */
  async waitForLog(text: string, times = 1): Promise<void> {
    const deadline = Date.now() + 20_000;
    while (this.stderr.split(text).length - 1 < times) {
      if (Date.now() > deadline) throw new Error(`No ${JSON.stringify(text)} in:\n${this.stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Wait for the process to exit by itself (killed after 30 s); its exit code. */
  async wait(): Promise<number> {
    const timer = setTimeout(() => this.signal("SIGKILL"), 30_000);
    try {
      const status = await this.#done;
      await Promise.all(this.#pumps);
      return status.code;
    } finally {
      clearTimeout(timer);
    }
  }

  async stop(signal: Deno.Signal = "SIGTERM"): Promise<number> {
    try {
      this.#child.kill(signal);
    } catch {
      // Already gone.
    }
    const status = await this.#done;
    await Promise.all(this.#pumps);
    return status.code;
  }
}

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}
