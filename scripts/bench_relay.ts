/**
 * The bench's reference relay: forwards each accepted connection to a fixed upstream port, with
 * no handshake and no crypto, using the proxy's own I/O idiom (lib/client/relay.ts): one
 * `read(buf)` / `write` loop per direction with reused buffers that start at 1 KiB for idle
 * connections, step up to 16 KiB and then 64 KiB while reads come back full, and drop back when
 * traffic gets sparse; `setNoDelay` on both sockets. Whatever separates the proxy from this
 * relay is the proxy's own cost: handshakes, ciphers, TLS records, session bookkeeping.
 *
 * Usage: `deno run -A scripts/bench_relay.ts --upstream <port> [--port 0]`; prints
 * `listening <port>`, exits when stdin closes.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { closeQuietly, exitWhenStdinCloses, parsePort, writeAll } from "./_bench_common.ts";

/** Buffer sizes by level, as in the proxy: idle, one TLS record, bulk. */
const LEVEL_SIZES = [1024, 16384 + 5, 65536] as const;
const POOL_CAPS = [4096, 256, 64] as const;
const free: Uint8Array[][] = LEVEL_SIZES.map(() => []);

function _get(level: number): Uint8Array {
  return free[level]!.pop() ?? new Uint8Array(LEVEL_SIZES[level]!);
}

function _put(level: number, buf: Uint8Array): void {
  if (free[level]!.length < POOL_CAPS[level]!) free[level]!.push(buf);
}

async function _pump(src: Deno.TcpConn, dst: Deno.TcpConn): Promise<void> {
  let level = 0;
  let buf = _get(level);
  try {
    while (true) {
      const n = await src.read(buf);
      if (n === null) return;
      await writeAll(dst, buf.subarray(0, n));
      if (n === buf.length && level < LEVEL_SIZES.length - 1) {
        _put(level, buf);
        buf = _get(++level);
      } else if (n < LEVEL_SIZES[0] / 2 && level > 0) {
        _put(level, buf);
        level = 0;
        buf = _get(level);
      }
    }
  } catch {
    // A reset, or the other direction closed the sockets.
  } finally {
    _put(level, buf);
  }
}

async function _serve(client: Deno.TcpConn, upstreamPort: number): Promise<void> {
  let upstream: Deno.TcpConn | null = null;
  try {
    client.setNoDelay(true);
    upstream = await Deno.connect({ hostname: "127.0.0.1", port: upstreamPort });
    upstream.setNoDelay(true);
    const both = [_pump(client, upstream), _pump(upstream, client)];
    await Promise.race(both);
    closeQuietly(client);
    closeQuietly(upstream);
    await Promise.all(both);
  } catch {
    // Upstream refused the connection.
  } finally {
    closeQuietly(client);
    if (upstream) closeQuietly(upstream);
  }
}

async function _main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: { port: { type: "string" }, upstream: { type: "string" } },
  });
  const upstreamPort = parsePort(values.upstream, "upstream");
  const listener = Deno.listen({
    hostname: "127.0.0.1",
    port: parsePort(values.port ?? "0", "port"),
  });
  exitWhenStdinCloses();
  console.log(`listening ${(listener.addr as Deno.NetAddr).port}`);
  for await (const conn of listener) _serve(conn, upstreamPort);
}

if (import.meta.main) await _main();
