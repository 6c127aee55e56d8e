/**
 * A stand-in for core.telegram.org on 127.0.0.1: a real HTTP server (Deno.serve) answering
 * `/getProxySecret` (binary), `/getProxyConfig` and `/getProxyConfigV6` (text) with content the
 * test can change at any time, plus failure modes per path: HTTP 500, a hang (no answer until
 * the client gives up or the server closes), an HTML error page, an empty body, and bodies over
 * 1 MiB (streamed without a length, or with a declared Content-Length). It counts requests and
 * records User-Agent headers per path. Anything else gets a 404.
 *
 * @module
 */
import type { ProxyFileUrls } from "../../lib/telegram/proxy_config.ts";

/** How the fake answers a request. */
export type FakeCoreMode =
  | "ok"
  | "status500"
  | "hang"
  | "html"
  | "empty"
  | "huge-stream"
  | "huge-declared";

/** The three files the fake serves. */
export type FakeCoreFile = "proxySecret" | "configV4" | "configV6";

const _PATHS: Record<FakeCoreFile, string> = {
  proxySecret: "/getProxySecret",
  configV4: "/getProxyConfig",
  configV6: "/getProxyConfigV6",
};

/** Bodies of the "huge" modes: 2 MiB, twice the client's cap. */
export const FAKE_CORE_HUGE_BYTES = 2 << 20;

/** An HTML error page, as a misbehaving CDN would serve. */
export const FAKE_CORE_HTML =
  "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n" +
  "<body><h1>502 Bad Gateway</h1><p>proxy_for is not available</p></body></html>\n";

/** Initial content of {@linkcode startFakeCoreApi}. */
export interface FakeCoreApiOptions {
  proxySecret?: Uint8Array;
  configV4?: string;
  configV6?: string;
}

/** A running fake core API. */
export interface FakeCoreApi {
  /** `http://127.0.0.1:<port>` */
  readonly origin: string;
  /** The three URLs, ready for fetchProxyFiles / TelegramConfigStore. */
  readonly urls: Required<ProxyFileUrls>;
  /** Served by `/getProxySecret` in "ok" mode; assign to change. */
  proxySecret: Uint8Array;
  /** Served by `/getProxyConfig` in "ok" mode; assign to change. */
  configV4: string;
  /** Served by `/getProxyConfigV6` in "ok" mode; assign to change. */
  configV6: string;
  /** Answer every later request for `file` (every file when left out) this way. */
  setMode(mode: FakeCoreMode, file?: FakeCoreFile): void;
  /** Answer the next requests for `file` with `modes`, one each, then the standing mode again. */
  queue(file: FakeCoreFile, ...modes: FakeCoreMode[]): void;
  /** Requests received for `file` (every file when left out). */
  requests(file?: FakeCoreFile): number;
  /** User-Agent header of every request for `file`, in arrival order. */
  userAgents(file: FakeCoreFile): readonly string[];
  /** Release hanging requests, stop listening and wait for every handler to finish. */
  close(): Promise<void>;
}

const _FILES: readonly FakeCoreFile[] = ["proxySecret", "configV4", "configV6"];

function _hugeStream(): ReadableStream<Uint8Array> {
  const chunk = new Uint8Array(64 * 1024).fill(0x61);
  let sent = 0;
  return new ReadableStream({
    pull(controller) {
      if (sent >= FAKE_CORE_HUGE_BYTES) {
        controller.close();
        return;
      }
      controller.enqueue(chunk.slice());
      sent += chunk.length;
    },
  });
}

/**
 * Start the fake on 127.0.0.1 with a free port.
 *
 * @example Usage
 * ```ts ignore
 * const api = startFakeCoreApi({ configV4: "proxy_for 2 10.0.0.2:8888;\n" });
 * const files = await fetchProxyFiles(api.urls, { timeoutMs: 200, retries: 0, userAgent: "t" });
 * api.setMode("status500");
 * await api.close();
 * ```
 */
export function startFakeCoreApi(options: FakeCoreApiOptions = {}): FakeCoreApi {
  const modes: Record<FakeCoreFile, FakeCoreMode> = {
    proxySecret: "ok",
    configV4: "ok",
    configV6: "ok",
  };
  const queued: Record<FakeCoreFile, FakeCoreMode[]> = {
    proxySecret: [],
    configV4: [],
    configV6: [],
  };
  const counts: Record<FakeCoreFile, number> = { proxySecret: 0, configV4: 0, configV6: 0 };
  const agents: Record<FakeCoreFile, string[]> = { proxySecret: [], configV4: [], configV6: [] };
  const hanging = new Set<() => void>();
  let closing = false;

  const api = {
    proxySecret: options.proxySecret ?? new Uint8Array(128).fill(0xc4),
    configV4: options.configV4 ?? "proxy_for 2 127.0.0.1:8888;\n",
    configV6: options.configV6 ?? "proxy_for 2 [::1]:8888;\n",
  };

  async function handle(request: Request): Promise<Response> {
    const path = new URL(request.url).pathname;
    const file = _FILES.find((f) => _PATHS[f] === path);
    if (file === undefined) return new Response("not found\n", { status: 404 });
    counts[file]++;
    agents[file].push(request.headers.get("user-agent") ?? "");
    const mode = queued[file].shift() ?? modes[file];
    switch (mode) {
      case "ok": {
        const body = file === "proxySecret" ? api.proxySecret.slice() : api[file];
        const type = file === "proxySecret" ? "application/octet-stream" : "text/plain";
        return new Response(body, { headers: { "content-type": type } });
      }
      case "status500":
        return new Response("Internal Server Error\n", { status: 500 });
      case "html":
        return new Response(FAKE_CORE_HTML, { headers: { "content-type": "text/html" } });
      case "empty":
        return new Response(new Uint8Array(0));
      case "huge-stream":
        return new Response(_hugeStream());
      case "huge-declared":
        return new Response(new Uint8Array(FAKE_CORE_HUGE_BYTES).fill(0x61));
      case "hang": {
        if (!closing) {
          // Held until close(): a client that gave up leaves it pending until then.
          await new Promise<void>((resolve) => hanging.add(resolve));
        }
        return new Response("too late\n", { status: 503 });
      }
    }
  }

  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, handle);
  const origin = `http://127.0.0.1:${server.addr.port}`;

  return {
    origin,
    urls: Object.freeze({
      secretUrl: origin + _PATHS.proxySecret,
      configUrl: origin + _PATHS.configV4,
      configV6Url: origin + _PATHS.configV6,
    }),
    get proxySecret() {
      return api.proxySecret;
    },
    set proxySecret(value: Uint8Array) {
      api.proxySecret = value;
    },
    get configV4() {
      return api.configV4;
    },
    set configV4(value: string) {
      api.configV4 = value;
    },
    get configV6() {
      return api.configV6;
    },
    set configV6(value: string) {
      api.configV6 = value;
    },
    setMode(mode, file) {
      for (const f of file === undefined ? _FILES : [file]) modes[f] = mode;
    },
    queue(file, ...next) {
      queued[file].push(...next);
    },
    requests(file) {
      return file === undefined
        ? counts.proxySecret + counts.configV4 + counts.configV6
        : counts[file];
    },
    userAgents(file) {
      return [...agents[file]];
    },
    async close() {
      closing = true;
      for (const release of hanging) release();
      hanging.clear();
      await server.shutdown();
    },
  };
}
