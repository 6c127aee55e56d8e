/**
 * Split mode with the front and the back as separate `mtproxy run` processes, configured by
 * YAML files: the back is killed (SIGKILL, no goodbye on the link) and restarted on its port.
 */
import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import { startFakeDc } from "./kit/fake_dc.ts";
import { connectTestClient, type TestClient } from "./kit/test_client.ts";
import { freePort, ProxyProcess } from "./kit/proxy_process.ts";
import { eventually, scrapeMetric } from "./kit/scrape.ts";
import { randomBytes } from "../lib/crypto.ts";

const CLIENT_SECRET = "0123456789abcdef0123456789abcdef";
const LINK_SECRET = "00112233445566778899aabbccddeeff";
const CLIENT_KEY = Uint8Array.from(CLIENT_SECRET.match(/../g)!, (h) => parseInt(h, 16));

function backYaml(linkPort: number, dcPort: number): string {
  return [
    "role: back",
    "log_level: debug",
    "link_listeners:",
    "  - name: link1",
    "    host: 127.0.0.1",
    `    port: ${linkPort}`,
    "    tls_domain: example.com",
    "fronts:",
    "  - name: home",
    `    secret: "${LINK_SECRET}"`,
    "fronting:",
    "  mode: off # tests never dial outside 127.0.0.1",
    "telegram:",
    "  mode: direct",
    "  dc_addresses:",
    `    "2": "127.0.0.1:${dcPort}"`,
    "link:",
    "  keepalive: 1",
    "  timeout: 3",
    "",
  ].join("\n");
}

function frontYaml(port: number, linkPort: number, metricsPort: number): string {
  return [
    "role: front",
    // One worker: two links in all (each worker keeps its own links to each back).
    "workers: 1",
    "log_level: debug",
    "listeners:",
    "  - name: main",
    "    host: 127.0.0.1",
    `    port: ${port}`,
    `    secret: "${CLIENT_SECRET}"`,
    "    tls_domain: example.com",
    "public_host: proxy.example.net",
    "fronting:",
    "  mode: off",
    "backs:",
    `  - address: "127.0.0.1:${linkPort}"`,
    `    secret: "${LINK_SECRET}"`,
    "    tls_domain: example.com",
    "    links: 2",
    "metrics:",
    `  listen: "127.0.0.1:${metricsPort}"`,
    "link:",
    "  keepalive: 1",
    "  timeout: 3",
    "  wait: 2",
    "",
  ].join("\n");
}

async function echo(client: TestClient, size: number): Promise<void> {
  const payload = randomBytes(size);
  await client.send(payload, { padding: 0 });
  // A padded DC transport may add up to 12 bytes the back cannot tell from the packet.
  assertEquals((await client.receive(5000)).subarray(0, size), payload);
}

Deno.test("front and back as separate processes: killing the back closes the front's clients as link_lost; a restarted back serves again", async () => {
  const dir = await Deno.makeTempDir();
  const dc = await startFakeDc({ mode: "echo" });
  const [linkPort, port, metricsPort] = [freePort(), freePort(), freePort()];
  await Deno.writeTextFile(`${dir}/back.yaml`, backYaml(linkPort, dc.port));
  await Deno.writeTextFile(`${dir}/front.yaml`, frontYaml(port, linkPort, metricsPort));
  let back = new ProxyProcess(["--config", "back.yaml"], { cwd: dir });
  const front = new ProxyProcess(["--config", "front.yaml"], { cwd: dir });
  const clients: TestClient[] = [];
  try {
    await back.waitFor(`127.0.0.1:${linkPort}`);
    await front.waitFor("listening on");
    await eventually(
      async () => await scrapeMetric(metricsPort, "mtproxy_link_up") === 2,
      "links up",
    );
    for (const kind of ["plain", "dd", "tls"] as const) {
      const client = await connectTestClient({ port, secret: CLIENT_KEY, kind, dcId: 2 });
      clients.push(client);
      await echo(client, 1000);
    }

    // No GOAWAY, no FIN from a process that is gone: the kernel resets its sockets.
    assertEquals(await back.stop("SIGKILL"), 137);
    await Promise.all(clients.map((c) => c.closed()));
    await front.waitForLog("clients closed (link_lost)");
    await eventually(
      async () => await scrapeMetric(metricsPort, "mtproxy_link_up") === 0,
      "links down",
    );
    assert(await scrapeMetric(metricsPort, "mtproxy_link_lost_total") >= 2);
    // A client that comes while no back is up waits `link.wait`, then is refused.
    const early = await connectTestClient({ port, secret: CLIENT_KEY, kind: "dd", dcId: 2 });
    clients.push(early);
    await early.closed();

    back = new ProxyProcess(["--config", "back.yaml"], { cwd: dir });
    await back.waitFor(`127.0.0.1:${linkPort}`);
    await eventually(
      async () => await scrapeMetric(metricsPort, "mtproxy_link_up") === 2,
      "links again",
    );
    await front.waitForLog("(the back restarted since the last link)");
    const again = await connectTestClient({ port, secret: CLIENT_KEY, kind: "tls", dcId: 2 });
    clients.push(again);
    await echo(again, 5000);
    await again.close();
    // Nothing is left behind on either side once the clients are gone.
    await eventually(
      async () => await scrapeMetric(metricsPort, "mtproxy_link_streams") === 0,
      "no streams",
    );
    assertEquals(await front.stop(), 0);
    assertEquals(await back.stop(), 0);
    assertStringIncludes(front.stderr, "link_unavailable");
    assert(!/uncaught|panic/i.test(front.stderr + back.stderr), front.stderr + back.stderr);
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await front.stop();
    await back.stop();
    await dc.close();
    await Deno.remove(dir, { recursive: true });
  }
});
