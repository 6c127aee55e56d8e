/**
 * A real `redis-server` for tests: a child process on 127.0.0.1 and a free port, without
 * persistence (`--save '' --appendonly no`, working directory in a temporary folder), that can be
 * killed, paused and started again on the same port. Plus {@linkcode redisCommand}, a minimal
 * RESP client for looking at the server's keys without the client under test.
 *
 * `redis-server` must be on PATH: a missing one fails the test with a message saying how to
 * install it (.ci/run installs it from Debian).
 *
 * @module
 */

/** Options for {@linkcode startRedisServer}. */
export interface RedisServerOptions {
  /** Port to listen on. @default a free port picked on 127.0.0.1 */
  port?: number;
  /** How long to wait for the first PONG, in milliseconds. @default 10_000 */
  readyTimeoutMs?: number;
}

/** A running redis-server; see {@linkcode startRedisServer}. */
export interface RedisServer {
  /** Always 127.0.0.1. */
  readonly hostname: string;
  readonly port: number;
  /** `redis://127.0.0.1:<port>/0`. */
  readonly url: string;
  /** Whether a server process is running now (stopped by {@linkcode RedisServer.kill}). */
  readonly running: boolean;
  /** SIGKILL the server and wait until it exited (its data is gone). No-op when not running. */
  kill(): Promise<void>;
  /** Start a new, empty server on the same port and wait until it answers PING. */
  restart(): Promise<void>;
  /** SIGSTOP the server: connections stay open but nothing is answered (a hung server). */
  pause(): void;
  /** SIGCONT a paused server. */
  resume(): void;
  /** What the server printed so far (its log goes to stdout). */
  output(): string;
  /** Kill the server and remove its working directory. */
  stop(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Start `redis-server` on 127.0.0.1 and wait until it answers PING.
 *
 * @example Usage
 * ```ts ignore
 * import { redisCommand, startRedisServer } from "./redis_server.ts";
 * await using redis = await startRedisServer();
 * await redisCommand(redis.port, ["PING"]); // "PONG"
 * ```
 */
export async function startRedisServer(options: RedisServerOptions = {}): Promise<RedisServer> {
  const port = options.port ?? _freePort();
  const readyTimeoutMs = options.readyTimeoutMs ?? 10_000;
  const dir = await Deno.makeTempDir({ prefix: "redis_server_test_" });
  let child: Deno.ChildProcess | null = null;
  let pumped: Promise<void> = Promise.resolve();
  let log = "";

  const spawn = async (): Promise<void> => {
    let proc: Deno.ChildProcess;
    try {
      proc = new Deno.Command("redis-server", {
        args: [
          "--port",
          String(port),
          "--bind",
          "127.0.0.1",
          "--save",
          "",
          "--appendonly",
          "no",
          "--dir",
          dir,
          "--daemonize",
          "no",
          "--loglevel",
          "warning",
        ],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new Error(
          "Redis server not found: `redis-server` is not on PATH; install it with " +
            "`apt-get install -y redis-server` (.ci/run does this)",
        );
      }
      throw e;
    }
    child = proc;
    const decoder = new TextDecoder();
    const pump = async (stream: ReadableStream<Uint8Array>) => {
      for await (const chunk of stream) log += decoder.decode(chunk, { stream: true });
    };
    pumped = Promise.all([pump(proc.stdout), pump(proc.stderr)]).then(() => {});
    const exited = proc.status.then((s) => s);
    const deadline = Date.now() + readyTimeoutMs;
    for (;;) {
      const early = await Promise.race([exited, _delay(0).then(() => null)]);
      if (early) {
        await pumped;
        child = null;
        throw new Error(`Redis server exited early: code ${early.code}; output: ${log.trim()}`);
      }
      if (await _pings(port)) return;
      if (Date.now() > deadline) {
        throw new Error(`Redis server did not answer PING within ${readyTimeoutMs} ms: ${log}`);
      }
      await _delay(25);
    }
  };

  const kill = async (): Promise<void> => {
    const proc = child;
    if (!proc) return;
    child = null;
    try {
      proc.kill("SIGKILL");
    } catch {
      // Already exited.
    }
    await proc.status;
    await pumped;
  };

  try {
    await spawn();
  } catch (e) {
    await kill();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw e;
  }

  const server: RedisServer = {
    hostname: "127.0.0.1",
    port,
    url: `redis://127.0.0.1:${port}/0`,
    get running() {
      return child !== null;
    },
    kill,
    async restart() {
      await kill();
      await spawn();
    },
    pause() {
      child?.kill("SIGSTOP");
    },
    resume() {
      child?.kill("SIGCONT");
    },
    output: () => log,
    async stop() {
      if (child) {
        try {
          child.kill("SIGCONT");
        } catch {
          // Exited meanwhile.
        }
      }
      await kill();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
    [Symbol.asyncDispose]() {
      return server.stop();
    },
  };
  return server;
}

/** A RESP reply as {@linkcode redisCommand} decodes it. */
export type RespValue = string | number | null | RespValue[] | { error: string };

/**
 * Send one command to the Redis server on 127.0.0.1:`port` over a fresh connection and return
 * its decoded reply (errors come back as `{ error }`, not thrown).
 *
 * @example Usage
 * ```ts ignore
 * import { redisCommand } from "./redis_server.ts";
 * await redisCommand(6379, ["SET", "k", "v"]); // "OK"
 * await redisCommand(6379, ["KEYS", "*"]); // ["k"]
 * ```
 */
export async function redisCommand(port: number, args: string[]): Promise<RespValue> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const enc = new TextEncoder();
    const parts = [`*${args.length}\r\n`];
    for (const a of args) parts.push(`$${enc.encode(a).length}\r\n${a}\r\n`);
    const out = enc.encode(parts.join(""));
    for (let n = 0; n < out.length;) n += await conn.write(out.subarray(n));
    let buf = new Uint8Array(0);
    const chunk = new Uint8Array(64 * 1024);
    for (;;) {
      const parsed = _parseResp(buf, 0);
      if (parsed) return parsed.value;
      const n = await conn.read(chunk);
      if (n === null) throw new Error(`Redis closed the connection before replying to ${args[0]}`);
      const next = new Uint8Array(buf.length + n);
      next.set(buf);
      next.set(chunk.subarray(0, n), buf.length);
      buf = next;
    }
  } finally {
    conn.close();
  }
}

function _parseResp(buf: Uint8Array, at: number): { value: RespValue; end: number } | null {
  const eol = buf.indexOf(0x0d, at);
  if (eol < 0 || eol + 1 >= buf.length) return null;
  const line = new TextDecoder().decode(buf.subarray(at + 1, eol));
  const next = eol + 2;
  switch (buf[at]) {
    case 0x2b: // +
      return { value: line, end: next };
    case 0x2d: // -
      return { value: { error: line }, end: next };
    case 0x3a: // :
      return { value: Number(line), end: next };
    case 0x24: { // $
      const len = Number(line);
      if (len < 0) return { value: null, end: next };
      if (buf.length < next + len + 2) return null;
      return {
        value: new TextDecoder().decode(buf.subarray(next, next + len)),
        end: next + len + 2,
      };
    }
    case 0x2a: { // *
      const count = Number(line);
      if (count < 0) return { value: null, end: next };
      const items: RespValue[] = [];
      let pos = next;
      for (let i = 0; i < count; i++) {
        const item = _parseResp(buf, pos);
        if (!item) return null;
        items.push(item.value);
        pos = item.end;
      }
      return { value: items, end: pos };
    }
    default:
      throw new Error(`Unexpected RESP type byte ${buf[at]}`);
  }
}

async function _pings(port: number): Promise<boolean> {
  try {
    return (await redisCommand(port, ["PING"])) === "PONG";
  } catch {
    return false;
  }
}

function _freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

function _delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
