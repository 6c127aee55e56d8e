/**
 * `mtproxy run` as a user runs it: a separate process started from main.ts, configured by file,
 * environment or nothing at all, serving real clients until SIGTERM.
 */
import { assert, assertEquals, assertRejects, assertStringIncludes } from "./assert.ts";
import { startFakeDc } from "./kit/fake_dc.ts";
import { connectTestClient } from "./kit/test_client.ts";
import { parseSecret } from "../lib/secret.ts";
import { freePort, ProxyProcess } from "./kit/proxy_process.ts";

Deno.test("mtproxy run serves plain, dd and fake-TLS clients from a config file and stops on SIGTERM", async () => {
  const dir = await Deno.makeTempDir();
  const dc = await startFakeDc();
  const port = freePort();
  await Deno.writeTextFile(
    `${dir}/config.yaml`,
    [
      "listeners:",
      "  - name: main",
      "    host: 127.0.0.1",
      `    port: ${port}`,
      "    tls_domain: example.com",
      "public_host: proxy.example.net",
      "fronting:",
      "  mode: off # tests never dial outside 127.0.0.1",
      "telegram:",
      "  dc_addresses:",
      `    "2": "127.0.0.1:${dc.port}"`,
      "",
    ].join("\n"),
  );
  // stdout is a pipe here, so the links are printed only when asked for.
  const proxy = new ProxyProcess(["--config", "config.yaml", "--print-links"], { cwd: dir });
  try {
    await proxy.waitFor("listening on");
    assertEquals(proxy.port(), port);
    assertStringIncludes(proxy.stdout, `State file: ${dir}/mtproxy-state.json (created now`);
    // The links printed at start carry the secret the proxy uses.
    const link = proxy.stdout.match(
      /tg:\/\/proxy\?server=proxy\.example\.net&port=\d+&secret=(ee[0-9a-f]+)/,
    );
    assert(link, proxy.stdout);
    const secret = parseSecret(link[1]!);
    assertEquals(secret.domain, "example.com");
    for (const kind of ["plain", "dd", "tls"] as const) {
      const client = await connectTestClient({ port, secret: secret.key, kind, dcId: 2 });
      await client.reqPq();
      await client.close();
    }
    assertEquals(await proxy.stop(), 0);
    assertStringIncludes(proxy.stderr, "SIGTERM");
  } finally {
    await proxy.stop();
    await dc.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("mtproxy run keeps its generated secret across restarts", async () => {
  const dir = await Deno.makeTempDir();
  const env = { MTP_PORT: String(freePort()), MTP_HOST: "127.0.0.1" };
  try {
    // The only setting: no fronting, so nothing is dialed outside 127.0.0.1.
    await Deno.writeTextFile(`${dir}/mtproxy.yaml`, "fronting:\n  mode: off\n");
    const args = ["--config", "mtproxy.yaml", "--print-links"];
    const first = new ProxyProcess(args, { cwd: dir, env });
    await first.waitFor("listening on");
    assertEquals(await first.stop(), 0);
    const second = new ProxyProcess(args, { cwd: dir, env });
    await second.waitFor("listening on");
    assertEquals(await second.stop("SIGINT"), 0);
    const links = (out: string) => out.match(/secret=[0-9a-f]{32}\b/g);
    assert(links(first.stdout));
    assertEquals(links(second.stdout), links(first.stdout));
    assertStringIncludes(second.stdout, `State file: ${dir}/mtproxy-state.json`);
    assert(!second.stdout.includes("created now"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("mtproxy run falls back to node:crypto with a warning when OpenSSL is unavailable", async () => {
  const dir = await Deno.makeTempDir();
  const dc = await startFakeDc();
  const port = freePort();
  const secret = "00112233445566778899aabbccddeeff";
  await Deno.writeTextFile(
    `${dir}/config.yaml`,
    `fronting:\n  mode: off\ntelegram:\n  dc_addresses:\n    "2": "127.0.0.1:${dc.port}"\n`,
  );
  const proxy = new ProxyProcess(
    ["--config", "config.yaml", "--host", "127.0.0.1", "-p", String(port), "-s", secret],
    { cwd: dir, env: { MTP_CRYPTO_BACKEND: "node" } },
  );
  try {
    await proxy.waitFor("listening on");
    for (const kind of ["dd", "tls"] as const) {
      const client = await connectTestClient({
        port,
        secret: parseSecret(secret).key,
        kind,
        dcId: 2,
        sni: "www.cloudflare.com",
      });
      await client.reqPq();
      await client.close();
    }
    assertEquals(await proxy.stop(), 0);
    assertStringIncludes(proxy.stderr, "AES backend: node:crypto");
  } finally {
    await proxy.stop();
    await dc.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("SIGHUP reloads the policy: a denied SNI's clients are closed, a broken file changes nothing", async () => {
  const dir = await Deno.makeTempDir();
  const dc = await startFakeDc();
  const port = freePort();
  const secret = "0123456789abcdef0123456789abcdef";
  const config = (policy: string) =>
    Deno.writeTextFile(
      `${dir}/config.yaml`,
      [
        "listeners:",
        `  - { host: 127.0.0.1, port: ${port}, secret: "${secret}", tls_domain: [a.example, b.example] }`,
        "fronting: { mode: off }",
        `telegram: { dc_addresses: { "2": "127.0.0.1:${dc.port}" } }`,
        policy,
        "",
      ].join("\n"),
    );
  await config("");
  const proxy = new ProxyProcess(["--config", "config.yaml"], { cwd: dir });
  const key = parseSecret(secret).key;
  const connect = (sni: string) =>
    connectTestClient({ port, secret: key, kind: "tls", dcId: 2, sni });
  const open = [];
  try {
    await proxy.waitFor("listening on");
    const alice = await connect("a.example");
    const bob = await connect("b.example");
    open.push(alice, bob);
    await alice.reqPq();
    await bob.reqPq();

    await config("policy: { deny_sni: [a.example] }");
    proxy.signal("SIGHUP");
    await proxy.waitForLog("Policy reloaded from the configuration; 1 clients closed by it");
    await alice.closed();
    await bob.reqPq(); // untouched
    await assertRejects(() => connect("a.example"));

    await config("policy: { deny_ips: [not-a-network] }");
    proxy.signal("SIGHUP");
    await proxy.waitForLog("Configuration not reloaded, the previous one stays");
    await proxy.waitForLog("policy.deny_ips[0]"); // the reason, on the same line
    await bob.reqPq();
    await assertRejects(() => connect("a.example")); // the previous policy is still in force
    for (const c of open) await c.close(); // (no shutdown grace to wait for)
    assertEquals(await proxy.stop(), 0);
  } finally {
    for (const c of open) await c.close();
    await proxy.stop();
    await dc.close();
    await Deno.remove(dir, { recursive: true });
  }
});
