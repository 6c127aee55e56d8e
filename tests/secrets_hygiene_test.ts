/**
 * Secrets stay secret: proxies run as processes at log_level debug with known secrets, good and
 * bad clients go through them, configuration errors are provoked next to secrets, and every line
 * they print (stdout, stderr, /metrics) is searched for every form of every secret: hex, `dd`,
 * `ee` hex and base64url (with each domain), any 16 characters in a row of them (a near-miss or a
 * cut-off secret is still mostly the secret), the Redis password, the admin API's token
 * (configured, or made into the state file), and proxy links. Only output that asked for links
 * (`link`, `run --print-links`, the admin API's `/api/users/:name/links`) may hold them, and a
 * positive control shows the search finds them there. Users of the users file and users added
 * or changed through the admin API are searched for too, in the log and in every other answer
 * of the API.
 */
import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import { startFakeDc } from "./kit/fake_dc.ts";
import {
  buildObfuscatedInit,
  buildSignedHello,
  connectTestClient,
  openRawConnection,
  type TestClient,
} from "./kit/test_client.ts";
import { freePort, ProxyProcess } from "./kit/proxy_process.ts";
import { eventually, scrapeMetric } from "./kit/scrape.ts";
import { fileURLToPath as fromFileUrl } from "node:url";
import { randomBytes } from "../lib/crypto.ts";
import { formatDdSecret, formatTlsSecret, perSniSecret, toHex } from "../lib/secret.ts";

const MAIN = fromFileUrl(new URL("../main.ts", import.meta.url));

/** The first listener's secret (given in the config in its `ee` form). */
const MAIN_HEX = "3a9c5e71b0d24f86a1e3c57b9d0f2468";
/** The second listener's secret (given in its `dd` form). */
const OTHER_HEX = "7d1e4b8a2c6f0e935b7a1d4c8e2f6a09";
/** A split pair's link secret. */
const LINK_HEX = "e4a7c1f05b9d3e6a8c2f7b1d5e9a3c60";
/** The client secret of the split pair's front. */
const FRONT_CLIENT_HEX = "96b2d8f41a3c5e7092b4d6f81a3c5e70";
/** The Redis password in shared_state.redis_url. */
const REDIS_PASSWORD = "Pw-9f3k2LqZ81xVt";
const DOMAIN = "example.com";
const USER_SNI = "alice.example";

const MAIN_KEY = _key(MAIN_HEX);
const OTHER_KEY = _key(OTHER_HEX);
const USER_KEY = perSniSecret(MAIN_KEY, USER_SNI);
const FRONT_CLIENT_KEY = _key(FRONT_CLIENT_HEX);

function _key(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g)!, (h) => parseInt(h, 16));
}

/** Every form a secret is written in, for each of `domains`. */
function forms(key: Uint8Array, domains: readonly string[] = [DOMAIN, USER_SNI]): string[] {
  return [
    toHex(key),
    formatDdSecret(key),
    ...domains.flatMap((d) => [
      formatTlsSecret(key, d, { encoding: "hex" }),
      formatTlsSecret(key, d, { encoding: "base64url" }),
    ]),
  ];
}

/** What must never be printed: each form, and every 16 characters in a row of its key part. */
function needles(secrets: readonly string[]): string[] {
  const out = new Set<string>();
  for (const s of secrets) {
    out.add(s.toLowerCase());
    // The key part: all of a hex or dd form; the first 24 characters of a base64url ee form,
    // the first 34 hex digits of an ee hex form (past that comes the domain).
    const keyPart = /^ee[0-9a-f]+$/i.test(s)
      ? s.slice(0, 34)
      : /^[0-9a-f]+$/i.test(s)
      ? s
      : s.slice(0, 24);
    for (let i = 0; i + 16 <= keyPart.length; i++) out.add(keyPart.slice(i, i + 16).toLowerCase());
  }
  return [...out];
}

const ALL_SECRETS = needles([
  ...forms(MAIN_KEY),
  ...forms(OTHER_KEY),
  ...forms(USER_KEY),
  ...forms(_key(LINK_HEX)),
  ...forms(FRONT_CLIENT_KEY),
  REDIS_PASSWORD,
]);

/** Fail when `text` holds a secret or (unless `links`) a proxy link; `what` names the output. */
function assertNoSecret(
  text: string,
  what: string,
  secrets = ALL_SECRETS,
  options: { links?: boolean } = {},
): void {
  const lower = text.toLowerCase();
  for (const n of secrets) {
    const at = lower.indexOf(n);
    if (at >= 0) {
      const line = text.slice(text.lastIndexOf("\n", at) + 1, text.indexOf("\n", at) >>> 0);
      throw new Error(`${what} holds a secret (${JSON.stringify(n)}) in: ${line}`);
    }
  }
  if (options.links) return;
  for (const link of ["tg://proxy", "t.me/proxy"]) {
    assert(!text.includes(link), `${what} holds a link:\n${text}`);
  }
}

/** Fail unless `text` holds `form` (the positive control: the search can find it). */
function assertHolds(text: string, form: string, what: string): void {
  assert(needles([form]).every((n) => text.toLowerCase().includes(n)), `${what} lacks ${form}`);
}

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run mtproxy once, every MTP_* variable blank unless `env` sets it. */
async function mtproxy(
  args: string[],
  cwd: string,
  env: Record<string, string> = {},
): Promise<Result> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    cwd,
    env: { NO_COLOR: "1", ..._blankEnv(), ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    // A case that unexpectedly starts a proxy must not hang the suite.
    signal: AbortSignal.timeout(30_000),
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

function _blankEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of Object.keys(Deno.env.toObject())) if (name.startsWith("MTP_")) env[name] = "";
  for (
    const name of ["MTP_CONFIG", "MTP_STATE_FILE", "MTP_SECRET", "MTP_LINKS", "MTP_LOG_LEVEL"]
  ) env[name] = "";
  return env;
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "mtproxy_secrets_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The standalone proxy's configuration: two listeners, per-SNI secrets, a Redis URL. */
function standaloneYaml(
  ports: { main: number; other: number; metrics: number; dc: number; redis: number },
  extra = "",
): string {
  return [
    "log_level: debug",
    "per_sni_secrets: true",
    "listeners:",
    "  - name: main",
    "    host: 127.0.0.1",
    `    port: ${ports.main}`,
    `    secret: "${formatTlsSecret(MAIN_KEY, DOMAIN)}"`,
    "  - name: other",
    "    host: 127.0.0.1",
    `    port: ${ports.other}`,
    `    secret: "${formatDdSecret(OTHER_KEY)}"`,
    "    allowed_protocols: [dd, plain]",
    "public_host: proxy.example.net",
    "fronting:",
    "  mode: off # tests never dial outside 127.0.0.1",
    "telegram:",
    "  mode: direct",
    "  dc_addresses:",
    `    "2": "127.0.0.1:${ports.dc}"`,
    "metrics:",
    `  listen: "127.0.0.1:${ports.metrics}"`,
    "shared_state:",
    "  # Nothing listens there: the fleet decides alone and says so in the log.",
    `  redis_url: "redis://:${REDIS_PASSWORD}@127.0.0.1:${ports.redis}/0"`,
    "  timeout: 0.2",
    extra,
    "",
  ].join("\n");
}

/** Clients the proxy must serve, and clients it must refuse, on both listeners. */
async function driveClients(main: number, other: number): Promise<void> {
  const open: TestClient[] = [];
  try {
    // Served: dd and plain with the base secret, fake-TLS with the user's own.
    for (const kind of ["dd", "plain"] as const) {
      const c = await connectTestClient({ port: main, secret: MAIN_KEY, kind, dcId: 2 });
      open.push(c);
      await c.reqPq();
    }
    const user = await connectTestClient({
      port: main,
      secret: USER_KEY,
      kind: "tls",
      dcId: 2,
      sni: USER_SNI,
    });
    open.push(user);
    await user.reqPq();
    const second = await connectTestClient({ port: other, secret: OTHER_KEY, kind: "dd", dcId: 2 });
    open.push(second);
    await second.reqPq();

    // Refused, each for another reason: the log says why at debug level.
    const refused: Promise<void>[] = [];
    const raw = async (port: number, bytes: Uint8Array) => {
      const conn = await openRawConnection(port);
      await conn.write(bytes).catch(() => {});
      refused.push(conn.closed().finally(() => conn.close()));
    };
    // A wrong secret (dd and plain), the base secret for fake-TLS (per-SNI refuses it), a
    // user's secret under another SNI, a stale clock, a replayed hello, garbage, HTTP, and
    // fake-TLS on a listener without it.
    await raw(main, buildObfuscatedInit(randomBytes(16), "padded", 2).wire);
    await raw(other, buildObfuscatedInit(MAIN_KEY, "intermediate", 2).wire);
    await raw(main, buildSignedHello(MAIN_KEY, { sni: DOMAIN }));
    await raw(main, buildSignedHello(USER_KEY, { sni: "bob.example" }));
    await raw(
      main,
      buildSignedHello(USER_KEY, { sni: USER_SNI, clockSec: Math.floor(Date.now() / 1000) - 3600 }),
    );
    const hello = buildSignedHello(USER_KEY, { sni: USER_SNI });
    const first = await openRawConnection(main);
    await first.write(hello);
    await first.read(1, 5000); // the answer: the hello is now in the replay cache
    await first.close();
    await raw(main, hello);
    await raw(main, randomBytes(200));
    await raw(main, new TextEncoder().encode("GET / HTTP/1.1\r\nHost: proxy.example.net\r\n\r\n"));
    await raw(other, buildSignedHello(OTHER_KEY, { sni: DOMAIN }));
    await Promise.all(refused);
  } finally {
    await Promise.all(open.map((c) => c.close()));
  }
}

Deno.test("a proxy at log_level debug never logs a secret, a link or the Redis password, whatever its clients do", async () => {
  await withTempDir(async (dir) => {
    const dc = await startFakeDc();
    const ports = {
      main: freePort(),
      other: freePort(),
      metrics: freePort(),
      dc: dc.port,
      redis: freePort(),
    };
    await Deno.writeTextFile(`${dir}/config.yaml`, standaloneYaml(ports));
    const proxy = new ProxyProcess(["--config", "config.yaml"], { cwd: dir });
    try {
      await proxy.waitFor("(other)");
      // stdout is a pipe: the links are not printed, and the line says how to get them.
      assertStringIncludes(proxy.stdout, "Links not printed (stdout is not a terminal;");
      await driveClients(ports.main, ports.other);
      await eventually(
        async () => await scrapeMetric(ports.metrics, "mtproxy_connections_rejected_total") >= 9,
        "the refusals counted",
      );
      const metrics = await (await fetch(`http://127.0.0.1:${ports.metrics}/metrics`)).text();
      assertStringIncludes(metrics, "mtproxy_connections_rejected_total");
      assertNoSecret(metrics, "/metrics");
      const other = await fetch(`http://127.0.0.1:${ports.metrics}/links`);
      assertEquals(other.status, 404);
      assertNoSecret(await other.text(), "/links");

      // A reload whose file is broken next to a secret: the log names the problem only.
      await Deno.writeTextFile(
        `${dir}/config.yaml`,
        standaloneYaml(ports, "policy: { deny_sni: [bad domain] }").replace(
          formatTlsSecret(MAIN_KEY, DOMAIN),
          `ee${MAIN_HEX.slice(0, 31)}`,
        ),
      );
      proxy.signal("SIGHUP");
      await proxy.waitForLog("Configuration not reloaded");
      assertEquals(await proxy.stop(), 0);
    } finally {
      await proxy.stop();
      await dc.close();
    }
    // The run really was at debug level and saw every kind of client.
    for (const text of ["accepted", "refused", "replay", "tls_bad_digest", "Shared state"]) {
      assertStringIncludes(proxy.stderr, text);
    }
    assertStringIncludes(proxy.stderr, "listeners[0].secret: must be 32 hex digits");
    assertNoSecret(proxy.stdout, "run's stdout");
    assertNoSecret(proxy.stderr, "run's log");

    // The positive control: `link` asked for links, and the search finds the secrets there.
    const links = await mtproxy(["link", "--config", "config.yaml", "--sni", USER_SNI], dir);
    assertEquals(links.code, 1, "the broken file is still in place");
    await Deno.writeTextFile(`${dir}/config.yaml`, standaloneYaml(ports));
    const good = await mtproxy(["link", "--config", "config.yaml", "--sni", USER_SNI], dir);
    assertEquals(good.code, 0, good.stderr);
    assertHolds(
      good.stdout,
      formatTlsSecret(USER_KEY, USER_SNI, { encoding: "base64url" }),
      "link",
    );
    assertHolds(good.stdout, formatDdSecret(MAIN_KEY), "link");
    assertHolds(good.stdout, toHex(OTHER_KEY), "link");
    assertNoSecret(good.stderr, "link's stderr");
  });
});

Deno.test("mtproxy run prints the links only to a terminal, with --print-links or MTP_LINKS=print", async () => {
  await withTempDir(async (dir) => {
    const port = freePort();
    const base = ["--host", "127.0.0.1", "-p", String(port), "-s", MAIN_HEX, "-d", DOMAIN];
    const env = { MTP_STATE_FILE: "", MTP_CONFIG: "" };
    await Deno.writeTextFile(`${dir}/config.yaml`, "fronting: { mode: off }\nlog_level: debug\n");
    const start = async (args: string[], extraEnv: Record<string, string> = {}) => {
      const p = new ProxyProcess(["--config", "config.yaml", ...base, ...args], {
        cwd: dir,
        env: { ...env, ...extraEnv },
      });
      try {
        await p.waitFor("listening on");
      } finally {
        assertEquals(await p.stop(), 0);
      }
      assertNoSecret(p.stderr, "run's log");
      return p.stdout;
    };
    const asked = await start(["--print-links"]);
    assertHolds(asked, formatTlsSecret(MAIN_KEY, DOMAIN), "run --print-links");
    assertStringIncludes(asked, "tg://proxy?server=127.0.0.1");
    assertHolds(await start([], { MTP_LINKS: "print" }), formatDdSecret(MAIN_KEY), "MTP_LINKS");

    const quiet = await start(["--quiet-links"]);
    assertNoSecret(quiet, "run --quiet-links");
    assertStringIncludes(quiet, 'Links not printed (--quiet-links): "mtproxy link"');
    // A flag wins over the environment.
    assertNoSecret(await start(["--quiet-links"], { MTP_LINKS: "print" }), "the flag");
    assertNoSecret(await start([], { MTP_LINKS: "quiet" }), "MTP_LINKS=quiet");

    const both = await mtproxy(["run", "--print-links", "--quiet-links"], dir);
    assertEquals(both.code, 2);
    assertStringIncludes(both.stderr, "--print-links and --quiet-links cannot be used together");
    const bad = await mtproxy(["run", ...base], dir, { MTP_LINKS: "loud" });
    assertEquals(bad.code, 2);
    assertStringIncludes(bad.stderr, 'MTP_LINKS must be print, quiet or auto: got "loud"');

    if (_hasScript()) {
      // In a terminal the links are printed without being asked for, unless --quiet-links.
      const inTerminal = (args: string[]) =>
        runInTerminal(["--config", "config.yaml", ...base, ...args], dir);
      const shown = await inTerminal([]);
      assertHolds(shown, formatTlsSecret(MAIN_KEY, DOMAIN), "run in a terminal");
      assertNoSecret(await inTerminal(["--quiet-links"]), "run --quiet-links in a terminal");
    }
  });
});

/**
 * `mtproxy run ARGS` with a terminal as stdout (util-linux `script`), stopped with SIGTERM once
 * it listens; everything it printed.
 */
async function runInTerminal(args: string[], cwd: string): Promise<string> {
  const quoted = [Deno.execPath(), "run", "-A", MAIN, ...args].map((a) => `'${a}'`).join(" ");
  const child = new Deno.Command("script", {
    // The shell prints its pid, then becomes mtproxy: the pid to send SIGTERM to.
    args: ["-q", "-e", "-c", `echo "PID=$$"; exec ${quoted}`, "/dev/null"],
    cwd,
    env: { NO_COLOR: "1", ..._blankEnv() },
    stdin: "piped",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  let out = "";
  const dec = new TextDecoder();
  const reading = (async () => {
    for await (const chunk of child.stdout) out += dec.decode(chunk, { stream: true });
  })();
  try {
    await eventually(() => Promise.resolve(out.includes("listening on")), "listening", 20_000);
    const pid = Number(/PID=(\d+)/.exec(out)?.[1]);
    assert(pid > 0, out);
    Deno.kill(pid, "SIGTERM");
    assertEquals((await child.status).code, 0, out);
  } finally {
    try {
      child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
    await child.stdin.close().catch(() => {});
    await reading;
    await child.status;
  }
  return out.replaceAll("\r\n", "\n");
}

Deno.test("a split pair at log_level debug never logs its link secret or its client secret", async () => {
  await withTempDir(async (dir) => {
    const dc = await startFakeDc({ mode: "echo" });
    const [linkPort, port, metricsPort] = [freePort(), freePort(), freePort()];
    const common = [
      "log_level: debug",
      "fronting: { mode: off }",
      "link: { keepalive: 1, timeout: 3, wait: 2 }",
    ];
    await Deno.writeTextFile(
      `${dir}/back.yaml`,
      [
        "role: back",
        ...common,
        `link_listeners: [{ name: link1, host: 127.0.0.1, port: ${linkPort}, tls_domain: ${DOMAIN} }]`,
        `fronts: [{ name: home, secret: "${LINK_HEX}" }]`,
        `telegram: { mode: direct, dc_addresses: { "2": "127.0.0.1:${dc.port}" } }`,
        "",
      ].join("\n"),
    );
    await Deno.writeTextFile(
      `${dir}/front.yaml`,
      [
        "role: front",
        "workers: 1",
        ...common,
        `listeners: [{ name: main, host: 127.0.0.1, port: ${port}, secret: "${FRONT_CLIENT_HEX}", tls_domain: ${DOMAIN} }]`,
        `backs: [{ address: "127.0.0.1:${linkPort}", secret: "${LINK_HEX}", tls_domain: ${DOMAIN}, links: 1 }]`,
        `metrics: { listen: "127.0.0.1:${metricsPort}" }`,
        "",
      ].join("\n"),
    );
    const back = new ProxyProcess(["--config", "back.yaml"], { cwd: dir });
    const front = new ProxyProcess(["--config", "front.yaml", "--print-links"], { cwd: dir });
    const clients: TestClient[] = [];
    try {
      await back.waitFor("listening on");
      await front.waitFor("listening on");
      await eventually(
        async () => await scrapeMetric(metricsPort, "mtproxy_link_up") === 1,
        "the link up",
      );
      for (const kind of ["plain", "dd", "tls"] as const) {
        const c = await connectTestClient({ port, secret: FRONT_CLIENT_KEY, kind, dcId: 2 });
        clients.push(c);
        const payload = randomBytes(64);
        await c.send(payload, { padding: 0 });
        assertEquals((await c.receive(5000)).subarray(0, 64), payload);
      }
      // Link hellos the back must refuse: another secret, a wrong SNI, garbage.
      for (
        const bytes of [
          buildSignedHello(randomBytes(16), { sni: DOMAIN }),
          buildSignedHello(_key(LINK_HEX), { sni: "other.example" }),
          randomBytes(300),
        ]
      ) {
        const conn = await openRawConnection(linkPort);
        await conn.write(bytes).catch(() => {});
        await conn.closed();
        await conn.close();
      }
      // A front client with a wrong secret.
      const wrong = await openRawConnection(port);
      await wrong.write(buildObfuscatedInit(randomBytes(16), "padded", 2).wire);
      await wrong.closed();
      await wrong.close();
      await Promise.all(clients.map((c) => c.close()));
      assertEquals(await front.stop(), 0, front.stdout + front.stderr);
      assertEquals(await back.stop(), 0, back.stdout + back.stderr);
    } finally {
      await Promise.all(clients.map((c) => c.close()));
      await front.stop();
      await back.stop();
      await dc.close();
    }
    assertStringIncludes(back.stderr, "link");
    assertNoSecret(back.stdout, "the back's stdout");
    assertNoSecret(back.stderr, "the back's log");
    assertNoSecret(front.stderr, "the front's log");
    // The front was asked for its links: they hold its client secret, never the link secret.
    assertHolds(front.stdout, formatDdSecret(FRONT_CLIENT_KEY), "the front's links");
    assertNoSecret(front.stdout, "the front's stdout", needles(forms(_key(LINK_HEX))), {
      links: true,
    });
  });
});

/** A users-file user's secret (written into the file before start). */
const DORA_HEX = "c4e81a5f2b7d9036e1a4c7f02b5d8e39";
/** The secret the admin API is given for a new user, and the one it changes it to. */
const ERIN_HEX = "5f9b3d71e2a4c6081f3b5d7e9a2c4e60";
const ERIN_NEW_HEX = "a0c2e4f6183a5c7e90b2d4f6183a5c7e";
/** The admin token when it is configured (another one is made into the state file). */
const ADMIN_TOKEN = "Adm1n-t0ken.for-the-hygiene_test-Qx7";

/** Every 16 characters in a row of a token (any cut of it is still mostly the token). */
function tokenNeedles(token: string): string[] {
  const out: string[] = [];
  for (let i = 0; i + 16 <= token.length; i++) out.push(token.slice(i, i + 16).toLowerCase());
  return out;
}

for (const tokenKind of ["configured", "made into the state file"] as const) {
  Deno.test(`a proxy with the admin API (token ${tokenKind}) never logs the token or a users-file user's secret, and only a user's links answer holds a secret`, async () => {
    await withTempDir(async (dir) => {
      const dc = await startFakeDc();
      const [port, adminPort] = [freePort(), freePort()];
      await Deno.writeTextFile(
        `${dir}/config.yaml`,
        [
          "log_level: debug",
          "listeners:",
          `  - { name: main, host: 127.0.0.1, port: ${port}, secret: "${MAIN_HEX}", tls_domain: ${DOMAIN} }`,
          "public_host: proxy.example.net",
          "fronting: { mode: off }",
          `telegram: { mode: direct, dc_addresses: { "2": "127.0.0.1:${dc.port}" } }`,
          `admin: { listen: "127.0.0.1:${adminPort}"${
            tokenKind === "configured" ? `, token: "${ADMIN_TOKEN}"` : ""
          } }`,
          "",
        ].join("\n"),
      );
      const usersPath = `${dir}/mtproxy-users.yaml`;
      const usersText = `users:\n  dora: { secret: "${DORA_HEX}", max_connections: 5 }\n`;
      await Deno.writeTextFile(usersPath, usersText);
      const proxy = new ProxyProcess(["--config", "config.yaml"], { cwd: dir });
      const answers: { what: string; text: string }[] = [];
      let token = ADMIN_TOKEN;
      try {
        await proxy.waitFor("listening on");
        if (tokenKind !== "configured") {
          token = JSON.parse(await Deno.readTextFile(`${dir}/mtproxy-state.json`)).admin_token;
          assert(typeof token === "string" && token.length >= 16, "a token was made");
        }
        const call = async (
          method: string,
          path: string,
          options: { json?: unknown; token?: string | null } = {},
        ) => {
          const headers: Record<string, string> = {};
          const t = options.token === undefined ? token : options.token;
          if (t !== null) headers.authorization = `Bearer ${t}`;
          if (options.json !== undefined) headers["content-type"] = "application/json";
          const res = await fetch(`http://127.0.0.1:${adminPort}${path}`, {
            method,
            headers,
            ...(options.json !== undefined && { body: JSON.stringify(options.json) }),
          });
          const text = await res.text();
          answers.push({ what: `${method} ${path} (${res.status})`, text });
          return { status: res.status, text };
        };

        // The users file's user gets in; clients with wrong secrets do not.
        const dora = _key(DORA_HEX);
        for (const kind of ["dd", "tls", "plain"] as const) {
          const c = await connectTestClient({ port, secret: dora, kind, dcId: 2, sni: DOMAIN });
          await c.reqPq();
          await c.close();
        }
        const wrong = await openRawConnection(port);
        await wrong.write(buildObfuscatedInit(_key(DORA_HEX.slice(1) + "0"), "padded", 2).wire);
        await wrong.closed();
        await wrong.close();

        // Every endpoint but the links, with good and bad requests.
        for (const path of ["/", "/admin.js", "/api/openapi.json"]) await call("GET", path);
        for (
          const path of ["/api/health", "/api/listeners", "/api/history", "/api/users"]
        ) assertEquals((await call("GET", path)).status, 200, path);
        assertEquals((await call("GET", "/api/users/dora")).status, 200);
        assertEquals((await call("GET", "/api/users/nobody")).status, 404);
        const near = ERIN_HEX.slice(0, 31);
        assertEquals(
          (await call("POST", "/api/users", { json: { name: "erin", secret: near } })).status,
          400,
        );
        assertEquals(
          (await call("POST", "/api/users", {
            json: {
              name: "erin",
              secret: `ee${ERIN_HEX}${toHex(new TextEncoder().encode("x y"))}`,
            },
          })).status,
          400,
        );
        // Dora's secret is taken: refused by the whole configuration's check.
        assertEquals(
          (await call("POST", "/api/users", { json: { name: "erin", secret: DORA_HEX } })).status,
          400,
        );
        assertEquals(
          (await call("POST", "/api/users", { json: { name: "erin", secret: ERIN_HEX } })).status,
          201,
        );
        const erin = await connectTestClient({ port, secret: _key(ERIN_HEX), kind: "dd", dcId: 2 });
        await erin.reqPq();
        await erin.close();
        assertEquals(
          (await call("PATCH", "/api/users/erin", {
            json: { secret: `dd${ERIN_NEW_HEX.slice(1)}` },
          }))
            .status,
          400,
        );
        assertEquals(
          (await call("PATCH", "/api/users/erin", { json: { secret: ERIN_NEW_HEX } })).status,
          200,
        );
        assertEquals((await call("POST", "/api/reload")).status, 200);

        // A hand edit that breaks a secret: the reload and the API say what is wrong, not what.
        const written = await Deno.readTextFile(usersPath);
        assertStringIncludes(written, ERIN_NEW_HEX);
        await Deno.writeTextFile(usersPath, written.replace(DORA_HEX, DORA_HEX.slice(0, 31)));
        proxy.signal("SIGHUP");
        await proxy.waitForLog("Configuration not reloaded");
        assertStringIncludes(proxy.stderr, "users.dora.secret (from users file");
        assertEquals((await call("DELETE", "/api/users/erin")).status, 409);
        assertEquals((await call("POST", "/api/reload")).status, 422);
        const health = await call("GET", "/api/health");
        assertStringIncludes(health.text, "users.dora.secret");
        await Deno.writeTextFile(usersPath, written);
        assertEquals((await call("DELETE", "/api/users/erin")).status, 200);

        // The positive control: the links answer holds dora's secret, and the search finds it.
        const links = await fetch(`http://127.0.0.1:${adminPort}/api/users/dora/links`, {
          headers: { authorization: `Bearer ${token}` },
        });
        assertEquals(links.status, 200);
        assertHolds(await links.text(), formatDdSecret(dora), "the links answer");

        // Refused tokens: none, a near-miss of the token, wrong ones; then the limit (429).
        await call("GET", "/api/users", { token: null });
        await call("GET", "/api/users", { token: token.slice(1) });
        for (let i = 0; i < 4; i++) await call("GET", "/api/users", { token: `${token}x${i}` });
        assertEquals((await call("GET", "/api/health", { token })).status, 429);
        await proxy.waitForLog("Admin API: refused", 5);

        assertEquals(await proxy.stop(), 0);
      } finally {
        await proxy.stop();
        await dc.close();
      }
      assertStringIncludes(proxy.stderr, "accepted");
      assertStringIncludes(proxy.stderr, "wrong token");
      const secrets = [
        ...needles([
          ...forms(MAIN_KEY, [DOMAIN]),
          ...forms(_key(DORA_HEX), [DOMAIN]),
          ...forms(_key(ERIN_HEX), [DOMAIN]),
          ...forms(_key(ERIN_NEW_HEX), [DOMAIN]),
        ]),
        ...tokenNeedles(token),
      ];
      assertNoSecret(proxy.stdout, "run's stdout", secrets);
      assertNoSecret(proxy.stderr, "run's log", secrets);
      for (const a of answers) assertNoSecret(a.text, `the answer to ${a.what}`, secrets);
    });
  });
}

/** Broken configuration files, each with a secret (or a near-miss of one) beside the fault. */
const BROKEN_FILES: readonly { name: string; yaml: string; key: string; secrets?: string[] }[] = [
  {
    name: 'an "ee" secret whose only fault is its domain',
    yaml: `listeners: [{ secret: "ee${MAIN_HEX}${
      toHex(new TextEncoder().encode("bad domain!"))
    }" }]`,
    key: "listeners[0].secret",
  },
  {
    name: 'a base64url "ee" secret with a bad domain',
    yaml: `listeners: [{ secret: "${
      formatTlsSecret(MAIN_KEY, "x.example", { encoding: "base64url" }).slice(0, -4)
    }IQ" }]`,
    key: "listeners[0].secret",
  },
  {
    name: "a secret one hex digit short",
    yaml: `listeners: [{ secret: "${MAIN_HEX.slice(0, 31)}" }]`,
    key: "listeners[0].secret",
  },
  {
    name: 'a "dd" secret one digit long',
    yaml: `listeners: [{ secret: "dd${MAIN_HEX}0" }]`,
    key: "listeners[0].secret",
  },
  {
    name: "a secret with a typo",
    yaml: `listeners: [{ secret: "${MAIN_HEX.slice(0, 20)}x${MAIN_HEX.slice(21)}" }]`,
    key: "listeners[0].secret",
  },
  {
    name: "a good secret beside a bad port",
    yaml: `listeners: [{ secret: "${MAIN_HEX}", port: 0 }]`,
    key: "listeners[0].port",
  },
  {
    name: "a link pasted as the tls_domain",
    yaml: `listeners: [{ tls_domain: "https://t.me/proxy?server=p.example&port=443&secret=${
      formatTlsSecret(MAIN_KEY, DOMAIN)
    }" }]`,
    key: "listeners[0].tls_domain[0]",
  },
  {
    name: 'a base64url "ee" secret pasted as the log level',
    yaml: `log_level: "${formatTlsSecret(MAIN_KEY, DOMAIN, { encoding: "base64url" })}"`,
    key: "log_level",
  },
  {
    name: "a secret pasted as the tag",
    yaml: `listeners: [{ tag: "${formatDdSecret(MAIN_KEY)}" }]`,
    key: "listeners[0].tag",
  },
  {
    name: "a secret as a listener",
    yaml: `listeners: ["${MAIN_HEX}"]`,
    key: "listeners[0]",
  },
  {
    name: "a misspelt key holding a secret",
    yaml: `listeners: [{ sekret: "${MAIN_HEX}" }]`,
    key: "listeners[0].sekret",
  },
  {
    name: "a secret at the top level",
    yaml: `secret: "${MAIN_HEX}"`,
    key: "secret",
  },
  {
    name: "an unterminated quote around a secret",
    yaml: `listeners:\n  - secret: "${MAIN_HEX}\n    port: 443\n`,
    key: "YAML syntax error",
  },
  {
    name: "a link secret one digit long (front)",
    yaml: `role: front\nbacks: [{ address: "b.example:443", secret: "${LINK_HEX}0" }]`,
    key: "backs[0].secret",
  },
  {
    name: "a link secret with a typo (back)",
    yaml: `role: back\nlink_listeners: [{}]\nfronts: [{ name: home, secret: "x${
      LINK_HEX.slice(1)
    }" }]`,
    key: "fronts[0].secret",
  },
  {
    name: "a Redis URL with a password and the wrong scheme",
    yaml: `shared_state: { redis_url: "http://:${REDIS_PASSWORD}@127.0.0.1:6379/0" }`,
    key: "shared_state.redis_url",
  },
  {
    name: "a Redis URL with a password beside a bad timeout",
    yaml:
      `shared_state: { redis_url: "redis://u:${REDIS_PASSWORD}@127.0.0.1:6379/0", timeout: -1 }`,
    key: "shared_state.timeout",
  },
];

Deno.test("check-config names the key and the fault of a broken file, never a secret in it", async () => {
  await withTempDir(async (dir) => {
    for (const [i, f] of BROKEN_FILES.entries()) {
      const path = `${dir}/broken${i}.yaml`;
      await Deno.writeTextFile(path, f.yaml + "\n");
      const r = await mtproxy(["check-config", path], dir);
      assertEquals(r.code, 1, `${f.name}: ${r.stdout}${r.stderr}`);
      assertStringIncludes(r.stderr, f.key, f.name);
      assertNoSecret(r.stdout + r.stderr, `check-config on ${f.name}`);
      // run and link read the same file the same way.
      const run = await mtproxy(["run", "--config", path, "--print-links"], dir);
      assertEquals(run.code, 1, `${f.name}: ${run.stdout}${run.stderr}`);
      assertNoSecret(run.stdout + run.stderr, `run on ${f.name}`);
    }
  });
});

Deno.test("a bad --secret, MTP_SECRET or state file is reported without its value", async () => {
  await withTempDir(async (dir) => {
    const cases: { args: string[]; env?: Record<string, string>; want: string }[] = [
      {
        args: ["-s", `ee${MAIN_HEX}2e2e`],
        want: 'listeners[0].secret (from --secret): has an invalid "ee" domain',
      },
      {
        args: [],
        env: { MTP_SECRET: MAIN_HEX.slice(1) },
        want: "(from MTP_SECRET): must be 32 hex digits",
      },
      {
        args: ["-t", MAIN_HEX.slice(2)],
        env: { MTP_SECRET: MAIN_HEX },
        want: "listeners[0].tag (from --tag)",
      },
    ];
    const states: { text: string; want: string }[] = [
      { text: `{"version": 1, "secret": "${MAIN_HEX.slice(0, 31)}"}`, want: "got 31 hex digits" },
      { text: `{"version": 1, "secret": "dd${MAIN_HEX}"}`, want: "got 34 hex digits" },
      { text: `{"version": 1, "secret": "${MAIN_HEX}" x}`, want: "not JSON at line 1 column" },
      { text: `secret: ${MAIN_HEX}`, want: "is not valid: not JSON;" },
      {
        text: `{"version": "${MAIN_HEX}", "secret": "${MAIN_HEX}"}`,
        want: "unsupported version: got a string",
      },
    ];
    for (const [i, s] of states.entries()) {
      await Deno.writeTextFile(`${dir}/state${i}.json`, s.text);
      cases.push({ args: [], env: { MTP_STATE_FILE: `state${i}.json` }, want: s.want });
    }
    for (const c of cases) {
      for (const command of ["link", "run"]) {
        const r = await mtproxy([command, "--host", "127.0.0.1", "-p", "1", ...c.args], dir, c.env);
        assertEquals(r.code, 1, `${command} ${c.want}: ${r.stdout}${r.stderr}`);
        assertStringIncludes(r.stderr, c.want);
        assertNoSecret(r.stdout + r.stderr, `${command} with ${c.want}`);
      }
    }
  });
});

function _hasScript(): boolean {
  try {
    return new Deno.Command("script", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}
