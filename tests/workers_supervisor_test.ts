/**
 * The supervisor in this process with two real worker threads: a worker that dies is noticed,
 * its connection counts are given back and it is restarted, while the other's clients carry on.
 */
import { assert, assertEquals } from "./assert.ts";
import { TEST_SECRET, testConfig, until } from "./helpers.ts";
import { startFakeDc } from "./kit/fake_dc.ts";
import { connectTestClient, type TestClient } from "./kit/test_client.ts";
import { randomBytes } from "../lib/crypto.ts";
import { startSupervisor } from "../lib/workers/supervisor.ts";
import { familyTotal, parseExposition } from "../lib/ops/metrics_merge.ts";

async function echo(client: TestClient): Promise<void> {
  const payload = randomBytes(128);
  await client.send(payload, { padding: 0 });
  assertEquals((await client.receive(5000)).subarray(0, 128), payload);
}

Deno.test("a worker that dies is restarted, its counts are freed, and the other worker's clients are untouched", async () => {
  const dc = await startFakeDc({ mode: "echo" });
  await using _dc = { [Symbol.asyncDispose]: () => dc.close() };
  const base = testConfig({ dcPorts: { 2: dc.port } });
  const limit = 30;
  const sup = await startSupervisor({
    ...base,
    policy: { ...base.policy, maxConnectionsPerIp: limit },
    metrics: { listen: { host: "127.0.0.1", port: 0 } },
  }, { workers: 2 });
  await using _sup = { [Symbol.asyncDispose]: () => sup.shutdown() };
  const port = sup.addresses[0]!.port;
  const scrape = async () => parseExposition(await sup.metricsText());
  const perWorker = async (id: number) => {
    const f = (await scrape()).families.get("mtproxy_worker_connections_active");
    return f?.samples.get(`{worker="${id}"}`) ?? 0;
  };
  const clients: TestClient[] = [];
  try {
    for (let i = 0; i < limit; i++) {
      clients.push(await connectTestClient({ port, secret: TEST_SECRET, kind: "dd", dcId: 2 }));
    }
    await Promise.all(clients.map(echo));
    const onFirst = await perWorker(1);
    const onSecond = await perWorker(2);
    assertEquals(onFirst + onSecond, limit);
    assert(onFirst > 0 && onSecond > 0, `${onFirst} and ${onSecond}`);

    await sup.crash(1);
    await until(() => !sup.workers()[0]!.up, "the death noticed", 20_000);
    // Its clients lost their sockets with it; the others keep relaying.
    const alive: TestClient[] = [];
    let dropped = 0;
    await Promise.all(clients.map(async (c) => {
      try {
        await echo(c);
        alive.push(c);
      } catch {
        dropped++;
      }
    }));
    assertEquals(dropped, onFirst);
    assertEquals(alive.length, onSecond);
    await until(
      () => sup.workers()[0]!.restarts === 1 && sup.workers()[0]!.up,
      "restarted",
      20_000,
    );
    assertEquals(familyTotal(await scrape(), "mtproxy_worker_restarts_total"), 1);
    assertEquals(familyTotal(await scrape(), "mtproxy_workers"), 2);
    await Promise.all(alive.map(echo));
    // The dead worker's per-IP counts were given back: as many new clients fit as it held.
    for (let i = 0; i < onFirst; i++) {
      const c = await connectTestClient({ port, secret: TEST_SECRET, kind: "tls", dcId: 2 });
      clients.push(c);
      await echo(c);
    }
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
});
