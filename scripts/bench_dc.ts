/**
 * The bench's fake Telegram DC: reads an obfuscated2 init with no secret (as a DC gets from the
 * proxy, or from the bench client through the plain relay), then echoes every byte back,
 * decrypted and re-encrypted, so it does the same crypto work whoever is in the middle.
 *
 * A trimmed twin of `tests/kit/fake_dc.ts --mode echo` that keeps no event log, so it stays
 * flat through hundreds of thousands of connections. Buffers start small and grow while reads
 * come back full, so thousands of idle connections stay cheap.
 *
 * Usage: `deno run -A scripts/bench_dc.ts [--port 0]`; prints `listening <port>`, exits when
 * stdin closes.
 *
 * @module
 */
import { parseArgs } from "node:util";
import type { StreamCipher } from "../lib/crypto.ts";
import { INIT_LEN, openClientInit } from "../lib/protocol/obfuscated2.ts";
import { closeQuietly, exitWhenStdinCloses, parsePort, writeAll } from "./_bench_common.ts";

const SMALL_BUF = 2048;
const BIG_BUF = 65536;

async function _readExactly(conn: Deno.Conn, n: number): Promise<Uint8Array | null> {
  const out = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const r = await conn.read(out.subarray(got));
    if (r === null) return null;
    got += r;
  }
  return out;
}

async function _serve(conn: Deno.TcpConn): Promise<void> {
  let ciphers: StreamCipher[] = [];
  try {
    conn.setNoDelay(true);
    const init = await _readExactly(conn, INIT_LEN);
    if (init === null) return;
    const stream = openClientInit(init, null);
    if (stream === null) return;
    const { decryptor, encryptor } = stream;
    ciphers = [decryptor, encryptor];
    let buf = new Uint8Array(SMALL_BUF);
    while (true) {
      const n = await conn.read(buf);
      if (n === null) return;
      const chunk = buf.subarray(0, n);
      decryptor.update(chunk);
      encryptor.update(chunk);
      await writeAll(conn, chunk);
      if (n === buf.length && buf.length < BIG_BUF) buf = new Uint8Array(BIG_BUF);
    }
  } catch {
    // Reset by the peer: just drop the connection.
  } finally {
    closeQuietly(conn);
    for (const c of ciphers) c.close();
  }
}

async function _main(): Promise<void> {
  const { values } = parseArgs({ args: Deno.args, options: { port: { type: "string" } } });
  const listener = Deno.listen({
    hostname: "127.0.0.1",
    port: parsePort(values.port ?? "0", "port"),
  });
  exitWhenStdinCloses();
  console.log(`listening ${(listener.addr as Deno.NetAddr).port}`);
  for await (const conn of listener) _serve(conn);
}

if (import.meta.main) await _main();
