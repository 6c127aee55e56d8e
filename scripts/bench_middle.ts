/**
 * The bench's stand-in for Telegram in middle-proxy mode, run as its own process: a fake middle
 * proxy in echo mode (tests/kit/fake_middle_proxy.ts: the real RPC handshake and full codec, every
 * RPC_PROXY_REQ payload echoed back as RPC_PROXY_ANS and only counted) and a fake core API
 * (tests/kit/fake_core_api.ts: `getProxySecret` and `getProxyConfig` over HTTP) whose
 * middle-proxy list sends every DC to that fake middle proxy.
 *
 * Prints `listening <core origin> <middle proxy port>`. Each `stats` line on stdin is answered
 * with `stats <json>`: the fake middle proxy's live RPC connections and sockets, and its counters
 * (handshakes, clients, PROXY_REQs, ad-tag mismatches, unexpected messages). Exits when stdin
 * closes.
 *
 * Usage: `deno run -A scripts/bench_middle.ts [--tag <32 hex>]` (with a tag, every PROXY_REQ is
 * checked for it and mismatches are counted).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { randomBytes } from "../lib/crypto.ts";
import { startFakeCoreApi } from "../tests/kit/fake_core_api.ts";
import { startFakeMiddleProxy } from "../tests/kit/fake_middle_proxy.ts";
import { parseHex } from "./_bench_common.ts";

async function _main(): Promise<void> {
  const { values } = parseArgs({ args: Deno.args, options: { tag: { type: "string" } } });
  const proxySecret = randomBytes(128);
  const mp = await startFakeMiddleProxy({
    proxySecret,
    mode: "echo",
    ...(values.tag ? { expectedAdTag: parseHex(values.tag) } : {}),
  });
  const core = startFakeCoreApi({
    proxySecret,
    configV4: `default 2;\nproxy_for 2 127.0.0.1:${mp.port};\n`,
  });
  const stats = () =>
    JSON.stringify({
      connections: mp.connections,
      sockets: mp.sockets,
      clients_per_connection: mp.liveConnections().map((c) => c.clients),
      ...mp.stats,
    });
  console.log(`listening ${core.origin} ${mp.port}`);
  // Commands on stdin; EOF (the bench is done, or gone) ends the process.
  let pending = "";
  try {
    for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
      pending += chunk;
      let nl: number;
      while ((nl = pending.indexOf("\n")) >= 0) {
        const command = pending.slice(0, nl).trim();
        pending = pending.slice(nl + 1);
        if (command === "stats") console.log(`stats ${stats()}`);
      }
    }
  } catch {
    // A broken stdin counts as EOF.
  }
  Deno.exit(0);
}

if (import.meta.main) await _main();
