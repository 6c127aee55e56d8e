/**
 * Bench of `users.NAME.rate_limit`: clients of one user push data both ways as fast as they can
 * through a proxy (in this process) to an echo DC. The bytes the clients got back in a bounded
 * window, twice (the echo moves each byte up and down, and the limit counts both ways), are
 * divided by the window and by the configured rate. A ratio near 1.00 is the limit working;
 * below it, the machine could not go that fast (see the unlimited baseline, which is run first
 * in the same sitting). The proxy's own count for the user (its usage ledger) is shown beside.
 *
 *   deno run -A scripts/bench_rate_limit.ts [--seconds 5] [--warmup 1]
 *     [--rates 1000000,4000000,16000000] [--clients 1,4] [--json]
 *
 * Prints one line per rate and client count, `achieved / configured` as a ratio, and with
 * `--json` one `BENCH_JSON {...}` line at the end.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { startServer } from "../lib/server.ts";
import type { Config } from "../lib/config/types.ts";
import { randomBytes } from "../lib/crypto.ts";
import { startFakeDc } from "../tests/kit/fake_dc.ts";
import { connectTestClient, type TestClient } from "../tests/kit/test_client.ts";
import { testConfig, testUser } from "../tests/helpers.ts";

interface Result {
  rate: number | null;
  clients: number;
  seconds: number;
  /** Bytes both ways by the clients' count (twice what came back), and per second. */
  bytes: number;
  achieved: number;
  ratio: number | null;
  /** Bytes the proxy counted for the user in the same window (both ways). */
  ledger_bytes: number;
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    seconds: { type: "string", default: "5" },
    warmup: { type: "string", default: "1" },
    rates: { type: "string", default: "1000000,4000000,16000000" },
    clients: { type: "string", default: "1,4" },
    json: { type: "boolean", default: false },
  },
});
const seconds = Number(values.seconds);
const warmup = Number(values.warmup);
const rates = values.rates.split(",").map(Number);
const clientCounts = values.clients.split(",").map(Number);

/** Bytes moved for the user in `seconds` after `warmup`, with `clients` clients pushing. */
async function measure(rate: number | null, clients: number): Promise<Result> {
  const dc = await startFakeDc({ mode: "echo" });
  const u = testUser("bench", { rateLimitBytesPerSec: rate });
  const base = testConfig({ dcPorts: { 2: dc.port } });
  const config: Config = {
    ...base,
    users: [u],
    listeners: base.listeners.map((l) => ({ ...l, users: null })),
  };
  const server = await startServer(config);
  const port = server.addresses[0]!.port;
  let stop = false;
  let received = 0;
  const conns: TestClient[] = [];
  try {
    for (let i = 0; i < clients; i++) {
      conns.push(
        await connectTestClient({
          port,
          secret: u.secret,
          kind: i % 2 ? "tls" : "dd",
          dcId: 2,
        }),
      );
    }
    const frame = randomBytes(16_000);
    const loops = conns.flatMap((c) => [
      (async () => {
        while (!stop) await c.send(frame, { padding: 0 });
      })().catch(() => {}),
      (async () => {
        while (!stop) {
          // Not `received += await ...`: that reads `received` before the await.
          const frame = await c.receive(30_000);
          received += frame.length;
        }
      })().catch(() => {}),
    ]);
    const used = () => server.userUsage()[0]!.bytesUsed;
    await new Promise((r) => setTimeout(r, warmup * 1000));
    const b0 = used(), r0 = received, t0 = performance.now();
    await new Promise((r) => setTimeout(r, seconds * 1000));
    const b1 = used(), r1 = received, t1 = performance.now();
    stop = true;
    for (const c of conns) await c.close();
    await Promise.all(loops);
    const bytes = 2 * (r1 - r0);
    const achieved = bytes / ((t1 - t0) / 1000);
    return {
      rate,
      clients,
      seconds: (t1 - t0) / 1000,
      bytes,
      achieved,
      ratio: rate === null ? null : achieved / rate,
      ledger_bytes: b1 - b0,
    };
  } finally {
    stop = true;
    for (const c of conns) await c.close();
    await server.shutdown();
    await dc.close();
  }
}

const results: Result[] = [];
const mb = (n: number) => `${(n / 1e6).toFixed(2)} MB/s`;
for (const clients of clientCounts) {
  const free = await measure(null, clients);
  results.push(free);
  console.log(`no limit, ${clients} client(s): ${mb(free.achieved)} (both ways, the baseline)`);
  for (const rate of rates) {
    const r = await measure(rate, clients);
    results.push(r);
    const note = rate > free.achieved * 0.8 ? " (near the baseline: not a limit test)" : "";
    console.log(
      `rate_limit ${mb(rate)}, ${clients} client(s): ${mb(r.achieved)} over ${
        r.seconds.toFixed(1)
      } s, ratio ${r.ratio!.toFixed(3)} (the proxy counted ${
        mb(r.ledger_bytes / r.seconds)
      })${note}`,
    );
  }
}
if (values.json) console.log(`BENCH_JSON ${JSON.stringify({ rate_limit: results })}`);
