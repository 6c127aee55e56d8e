/**
 * A fleet: two `mtproxy run` processes sharing one real redis-server (shared_state) refuse each
 * other's replays and enforce a per-IP limit together; with Redis killed, handshakes go on.
 */
import { assert, assertEquals } from "./assert.ts";
import { startFakeDc } from "./kit/fake_dc.ts";
import {
  buildObfuscatedInit,
  connectTestClient,
  openRawConnection,
  type TestClient,
} from "./kit/test_client.ts";
import { freePort, ProxyProcess } from "./kit/proxy_process.ts";
import { eventually, scrapeMetric } from "./kit/scrape.ts";
import { startRedisServer } from "./kit/redis_server.ts";
import { randomBytes } from "../lib/crypto.ts";
import { TEST_SECRET } from "./helpers.ts";

const SECRET_HEX = [...TEST_SECRET].map((b) => b.toString(16).padStart(2, "0")).join("");

function yaml(port: number, dcPort: number, metricsPort: number, redisUrl: string): string {
  return [
    "log_level: info",
    "workers: 1",
    "listeners:",
    "  - name: main",
    "    host: 127.0.0.1",
    `    port: ${port}`,
    `    secret: "${SECRET_HEX}"`,
    "    tls_domain: example.com",
    "fronting:",
    "  mode: off # tests never dial outside 127.0.0.1",
    "telegram:",
    "  dc_addresses:",
    `    "2": "127.0.0.1:${dcPort}"`,
    "metrics:",
    `  listen: "127.0.0.1:${metricsPort}"`,
    "policy:",
    "  max_connections_per_ip: 4",
    "shared_state:",
    `  redis_url: "${redisUrl}"`,
    "  timeout: 0.2",
    "  lease: 3",
    "",
  ].join("\n");
}

async function echo(client: TestClient): Promise<void> {
  const payload = randomBytes(128);
  await client.send(payload, { padding: 0 });
  assertEquals((await client.receive(5000)).subarray(0, 128), payload);
}

Deno.test("a fleet on one Redis refuses each other's replays, shares a per-IP limit, and goes on without Redis", async () => {
  await using redis = await startRedisServer();
  const dir = await Deno.makeTempDir();
  const dc = await startFakeDc({ mode: "echo" });
  const ports = [freePort(), freePort()];
  const metrics = [freePort(), freePort()];
  const proxies = ports.map((port, i) => {
    Deno.writeTextFileSync(`${dir}/p${i}.yaml`, yaml(port, dc.port, metrics[i]!, redis.url));
    return new ProxyProcess(["--config", `p${i}.yaml`], { cwd: dir });
  });
  const clients: TestClient[] = [];
  try {
    for (const p of proxies) await p.waitForLog("Shared state (Redis) answering");
    for (const m of metrics) assertEquals(await scrapeMetric(m, "mtproxy_shared_state_up"), 1);

    // A handshake accepted by proxy 0 is a replay to proxy 1.
    const init = buildObfuscatedInit(TEST_SECRET, "padded", 2);
    init.encryptor.close();
    init.decryptor.close();
    const first = await openRawConnection(ports[0]!);
    await first.write(init.wire);
    await eventually(
      async () => await scrapeMetric(metrics[0]!, "mtproxy_connections_established_total") === 1,
      "established at proxy 0",
    );
    await first.close();
    const again = await openRawConnection(ports[1]!);
    await again.write(init.wire);
    await again.closed();
    await again.close();
    assertEquals(
      await scrapeMetric(metrics[1]!, "mtproxy_connections_rejected_total", "replay"),
      1,
    );
    assertEquals(await scrapeMetric(metrics[1]!, "mtproxy_connections_established_total"), 0);

    // Four connections per IP in the whole fleet: two here, two there, then no more anywhere.
    for (const port of [ports[0]!, ports[0]!, ports[1]!, ports[1]!]) {
      clients.push(await connectTestClient({ port, secret: TEST_SECRET, kind: "dd", dcId: 2 }));
    }
    await Promise.all(clients.map(echo));
    for (const port of ports) {
      await assertRefused(port);
    }
    assertEquals(
      (await scrapeMetric(metrics[0]!, "mtproxy_connections_rejected_total", "ip_limit")) +
        (await scrapeMetric(metrics[1]!, "mtproxy_connections_rejected_total", "ip_limit")),
      2,
    );
    // One leaves proxy 1: a place is free in the fleet, at proxy 0 too.
    await clients.pop()!.close();
    await eventually(async () => {
      try {
        const c = await connectTestClient({
          port: ports[0]!,
          secret: TEST_SECRET,
          kind: "tls",
          dcId: 2,
        });
        await echo(c);
        clients.push(c);
        return true;
      } catch {
        return false;
      }
    }, "a place freed in the fleet");

    // Redis dies: every proxy decides alone within its bounded wait, and keeps serving.
    await redis.kill();
    for (const p of proxies) await p.waitForLog("Shared state (Redis) not answering");
    await Promise.all(clients.splice(0).map((c) => c.close()));
    for (const port of ports) {
      const c = await connectTestClient({ port, secret: TEST_SECRET, kind: "tls", dcId: 2 });
      clients.push(c);
      await echo(c);
    }
    assertEquals(await scrapeMetric(metrics[0]!, "mtproxy_shared_state_up"), 0);
    assert(await scrapeMetric(metrics[0]!, "mtproxy_shared_state_local_decisions_total") >= 1);

    // Back again: shared once more.
    await redis.restart();
    for (const p of proxies) await p.waitForLog("Shared state (Redis) answering", 2);
    for (const p of proxies) assertEquals(await p.stop(), 0, p.stderr);
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    for (const p of proxies) await p.stop();
    await dc.close();
    await Deno.remove(dir, { recursive: true });
  }
});

/** A dd client from 127.0.0.1 is refused (closed before any answer). */
async function assertRefused(port: number): Promise<void> {
  let refused = false;
  try {
    const c = await connectTestClient({ port, secret: TEST_SECRET, kind: "dd", dcId: 2 });
    try {
      await echo(c);
    } catch {
      refused = true;
    } finally {
      await c.close();
    }
  } catch {
    refused = true;
  }
  assert(refused, `port ${port} let a fifth client in`);
}
