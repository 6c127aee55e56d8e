/**
 * The admin API as an operator uses it: a real `mtproxy run` process with `admin.listen`, driven
 * with fetch over 127.0.0.1, and real clients (the test client kit through a fake DC) that a user
 * added, disabled or deleted through the API can or cannot connect with.
 */
import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import { startFakeDc } from "./kit/fake_dc.ts";
import { connectTestClient, type SecretKind, type TestClient } from "./kit/test_client.ts";
import { freePort, ProxyProcess } from "./kit/proxy_process.ts";
import { parseYaml } from "../lib/config/load.ts";
import { parseSecret } from "../lib/secret.ts";

/** A user of the config file itself (the API may not change it). */
const CAROL_SECRET = "5c1e9a7b3d2f4e6a8b0c1d2e3f4a5b6c";

interface AdminProxy {
  readonly proxy: ProxyProcess;
  readonly dir: string;
  readonly port: number;
  readonly base: string;
  readonly token: string;
}

interface Answer {
  readonly status: number;
  readonly headers: Headers;
  readonly text: string;
  // deno-lint-ignore no-explicit-any
  readonly body: any;
}

/** Write the config (once) and start `mtproxy run` in `dir`, with the admin API on. */
async function startAdminProxy(
  dir: string,
  dcPort: number,
  ports: { port: number; admin: number } = { port: freePort(), admin: freePort() },
  workers: number | "auto" = "auto",
): Promise<AdminProxy> {
  const path = `${dir}/config.yaml`;
  try {
    await Deno.lstat(path);
  } catch {
    await Deno.writeTextFile(
      path,
      [
        `workers: ${workers}`,
        "listeners:",
        "  - name: main",
        "    host: 127.0.0.1",
        `    port: ${ports.port}`,
        "    tls_domain: example.com",
        "public_host: proxy.example.net",
        "fronting:",
        "  mode: off # tests never dial outside 127.0.0.1",
        "telegram:",
        "  dc_addresses:",
        `    "2": "127.0.0.1:${dcPort}"`,
        "users:",
        "  carol:",
        `    secret: "${CAROL_SECRET}"`,
        "admin:",
        `  listen: "127.0.0.1:${ports.admin}"`,
        "",
      ].join("\n"),
    );
  }
  const proxy = new ProxyProcess(["--config", "config.yaml"], { cwd: dir });
  await proxy.waitFor("listening on");
  const state = JSON.parse(await Deno.readTextFile(`${dir}/mtproxy-state.json`));
  assert(typeof state.admin_token === "string", "the state file holds the admin token");
  return {
    proxy,
    dir,
    port: ports.port,
    base: `http://127.0.0.1:${ports.admin}`,
    token: state.admin_token,
  };
}

/** One request; the body is always read (nothing left open). */
async function call(
  p: AdminProxy,
  method: string,
  path: string,
  options: { token?: string | null; json?: unknown; raw?: string } = {},
): Promise<Answer> {
  const token = options.token === undefined ? p.token : options.token;
  const headers: Record<string, string> = {};
  if (token !== null) headers.authorization = `Bearer ${token}`;
  let body: string | undefined;
  if (options.json !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(options.json);
  } else if (options.raw !== undefined) body = options.raw;
  const res = await fetch(`${p.base}${path}`, { method, headers, ...(body && { body }) });
  const text = await res.text();
  let parsed: unknown = null;
  try {
    parsed = JSON.parse(text);
  } catch {
    // Not JSON (the page).
  }
  return { status: res.status, headers: res.headers, text, body: parsed };
}

/** A user's 16-byte key from the links endpoint. */
async function userKey(p: AdminProxy, name: string): Promise<Uint8Array> {
  const a = await call(p, "GET", `/api/users/${name}/links`);
  assertEquals(a.status, 200, a.text);
  return parseSecret(a.body.secret).key;
}

async function connect(p: AdminProxy, key: Uint8Array, kind: SecretKind = "dd") {
  return await connectTestClient({ port: p.port, secret: key, kind, dcId: 2, sni: "example.com" });
}

/** The proxy answers through the client: the user got in. */
async function served(client: TestClient): Promise<void> {
  await client.reqPq();
}

/** The proxy closes the client without an answer: refused. */
async function refused(p: AdminProxy, key: Uint8Array): Promise<void> {
  const client = await connect(p, key);
  try {
    let answered = false;
    try {
      await client.reqPq({ timeoutMs: 5000 });
      answered = true;
    } catch {
      // Closed without an answer.
    }
    assert(!answered, "a refused user's client got an answer");
    await client.closed();
  } finally {
    await client.close();
  }
}

function usersFile(p: AdminProxy): Promise<Record<string, Record<string, unknown>>> {
  return Deno.readTextFile(`${p.dir}/mtproxy-users.yaml`).then((t) =>
    (parseYaml(t, "users file") as { users: Record<string, Record<string, unknown>> }).users
  );
}

Deno.test("admin API refuses a missing or wrong token, takes the right one, and rate-limits an address that keeps guessing", async () => {
  const dir = await Deno.makeTempDir();
  const dc = await startFakeDc();
  const p = await startAdminProxy(dir, dc.port);
  const wrong = "not-the-token-but-long-enough";
  try {
    // The token is a secret: stdout is no terminal here, so it is not printed.
    assertStringIncludes(p.proxy.stdout, `Admin API and status page: ${p.base}/`);
    assertStringIncludes(p.proxy.stdout, "Admin token not printed (stdout is not a terminal");
    assert(!p.proxy.stdout.includes(p.token));

    const none = await call(p, "GET", "/api/health", { token: null });
    assertEquals(none.status, 401);
    assertEquals(none.headers.get("www-authenticate"), 'Bearer realm="mtproxy admin"');
    assertEquals((await call(p, "GET", "/api/users", { token: wrong })).status, 401);
    // Not a bearer token at all.
    const basic = await fetch(`${p.base}/api/health`, { headers: { authorization: "Basic eDp5" } });
    assertEquals(basic.status, 401);
    await basic.body?.cancel();
    const ok = await call(p, "GET", "/api/health");
    assertEquals(ok.status, 200);
    assertEquals(ok.body.status, "ok");
    // The page itself holds nothing secret: served without a token.
    const page = await call(p, "GET", "/", { token: null });
    assertEquals(page.status, 200);
    assertStringIncludes(page.text, "<title>mtproxy</title>");

    // Three failures so far; two more fill the allowance, and then even the right token waits.
    await p.proxy.waitForLog("Admin API: refused", 3);
    assertEquals((await call(p, "GET", "/api/health", { token: wrong + "1" })).status, 401);
    assertEquals((await call(p, "GET", "/api/health", { token: wrong + "2" })).status, 401);
    const limited = await call(p, "GET", "/api/health");
    assertEquals(limited.status, 429);
    const retry = Number(limited.headers.get("retry-after"));
    assert(retry >= 1 && retry <= 60, `Retry-After ${retry}`);
    assertEquals((await call(p, "GET", "/api/users", { token: wrong })).status, 429);

    await p.proxy.waitForLog("Admin API: refused", 5);
    assertStringIncludes(p.proxy.stderr, "from 127.0.0.1: no Authorization header");
    assertStringIncludes(p.proxy.stderr, "from 127.0.0.1: wrong token");
    for (const secret of [p.token, wrong, "eDp5"]) {
      assert(!p.proxy.stderr.includes(secret), "no token in the log");
    }
    assertEquals(await p.proxy.stop(), 0);
  } finally {
    await p.proxy.stop();
    await dc.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("admin API: every endpoint; a user added through it connects with its secret, a disabled or deleted one is refused", async () => {
  const dir = await Deno.makeTempDir();
  const dc = await startFakeDc();
  // Two workers: usage summed by the supervisor, the same as one server's.
  const p = await startAdminProxy(dir, dc.port, undefined, 2);
  try {
    const health = await call(p, "GET", "/api/health");
    assertEquals(health.status, 200);
    assertEquals(health.body.role, "standalone");
    assertEquals(health.body.listeners, 1);
    assertEquals(health.body.users, 1);
    assertEquals(health.body.config_error, null);

    const listeners = await call(p, "GET", "/api/listeners");
    assertEquals(listeners.body.listeners.length, 1);
    assertEquals(listeners.body.listeners[0].name, "main");
    assertEquals(listeners.body.listeners[0].port, p.port);
    assertEquals(listeners.body.listeners[0].protocols, ["tls", "dd", "plain"]);

    const openapi = await call(p, "GET", "/api/openapi.json");
    assertEquals(openapi.body.openapi, "3.1.0");
    for (
      const path of [
        "/api/health",
        "/api/listeners",
        "/api/history",
        "/api/users",
        "/api/users/{name}",
        "/api/users/{name}/links",
        "/api/reload",
      ]
    ) assert(path in openapi.body.paths, path);

    const before = await call(p, "GET", "/api/users");
    assertEquals(before.body.users.map((u: { name: string }) => u.name), ["carol"]);
    assertEquals(before.body.users[0].source, "config");

    // Bad requests name the key and the reason, and never echo a secret.
    const badJson = await call(p, "POST", "/api/users", { raw: "{not json" });
    assertEquals(badJson.status, 400);
    assertEquals(badJson.body.problems, [{ key: "", reason: "the body must be a JSON object" }]);
    const huge = await call(p, "POST", "/api/users", { raw: `{"name":"${"x".repeat(70_000)}"}` });
    assertEquals(huge.status, 413);
    const noName = await call(p, "POST", "/api/users", { json: { max_connections: 1 } });
    assertEquals(noName.status, 400);
    assertEquals(noName.body.problems[0].key, "name");
    const nearSecret = "0123456789abcdef0123456789abcde";
    const bad = await call(p, "POST", "/api/users", {
      json: { name: "bob", secret: nearSecret, max_connections: -1, colour: "red" },
    });
    assertEquals(bad.status, 400);
    assertEquals(bad.body.problems.map((x: { key: string }) => x.key), [
      "secret",
      "max_connections",
      "colour",
    ]);
    assertStringIncludes(bad.body.problems[0].reason, "got 31 hex digits");
    assert(!bad.text.includes(nearSecret));
    // A secret another user has: refused by the whole configuration's check.
    const same = await call(p, "POST", "/api/users", {
      json: { name: "bob", secret: CAROL_SECRET },
    });
    assertEquals(same.status, 400);
    assertEquals(same.body.problems[0].key, "secret");
    assert(!same.text.includes(CAROL_SECRET));
    const clash = await call(p, "POST", "/api/users", { json: { name: "carol" } });
    assertEquals(clash.status, 409);
    await assertRejectsNothingWritten(p);

    // Add bob: 201, applied at once, no secret in the answer.
    const added = await call(p, "POST", "/api/users", {
      json: {
        name: "bob",
        max_connections: 2,
        max_unique_ips: 2,
        data_quota: "10GB",
        expires: "2099-01-31",
      },
    });
    assertEquals(added.status, 201, added.text);
    assertEquals(added.body.user.name, "bob");
    assertEquals(added.body.user.source, "users_file");
    assertEquals(added.body.user.max_connections, 2);
    assertEquals(added.body.user.data_quota, 10_000_000_000);
    assertEquals(added.body.user.expires, "2099-01-31T00:00:00.000Z");
    assertEquals(added.body.reload.ok, true);
    assertEquals((await call(p, "POST", "/api/users", { json: { name: "bob" } })).status, 409);

    const links = await call(p, "GET", "/api/users/bob/links");
    assertEquals(links.status, 200);
    const key = parseSecret(links.body.secret).key;
    assertEquals(
      links.body.links.map((l: { protocol: string; encoding: string }) =>
        `${l.protocol}/${l.encoding}`
      ),
      ["tls/hex", "tls/base64url", "dd/hex", "plain/hex"],
    );
    for (const l of links.body.links) {
      assertStringIncludes(l.tg, "tg://proxy?server=proxy.example.net&port=");
      assertStringIncludes(l.tg, l.secret);
      assert(l.encoding === "base64url" ? l.qr_svg === null : l.qr_svg.startsWith("<svg"));
    }
    assertEquals((await call(p, "GET", "/api/users/nobody/links")).status, 404);
    // Only the links endpoint shows it: not the add answer, the list, or one user.
    const hex = links.body.secret as string;
    const one = await call(p, "GET", "/api/users/bob");
    const list = await call(p, "GET", "/api/users");
    for (const a of [added, one, list]) assert(!a.text.includes(hex), "no secret outside /links");
    assertEquals((await usersFile(p)).bob?.secret, hex);

    // Bob connects in every protocol with the secret the API made.
    for (const kind of ["dd", "plain", "tls"] as const) {
      const c = await connect(p, key, kind);
      await served(c);
      await c.close();
    }

    // Disabled: the live client is closed (reloaded), a new one refused; enabled again: served.
    const live = await connect(p, key);
    await served(live);
    // Live usage: the one open connection, its address, its bytes against the quota.
    const usage = (await call(p, "GET", "/api/users/bob")).body.user;
    assertEquals(usage.connections, 1);
    assertEquals(usage.unique_ips, 1);
    assert(usage.bytes_used > 0, JSON.stringify(usage));
    assertEquals(usage.quota_left, 10_000_000_000 - usage.bytes_used);
    const health2 = await call(p, "GET", "/api/health");
    assertEquals(health2.body.connections, 1);
    const listeners2 = await call(p, "GET", "/api/listeners");
    assertEquals(listeners2.body.listeners[0].connections, 1);
    const disabled = await call(p, "PATCH", "/api/users/bob", { json: { enabled: false } });
    assertEquals(disabled.status, 200, disabled.text);
    assertEquals(disabled.body.user.enabled, false);
    assertEquals(disabled.body.reload.closed, 1);
    await live.closed();
    await live.close();
    await refused(p, key);
    assertEquals((await usersFile(p)).bob?.enabled, false);
    const badPatch = await call(p, "PATCH", "/api/users/bob", { json: { max_connections: "x" } });
    assertEquals(badPatch.status, 400);
    assertEquals(badPatch.body.problems[0].key, "max_connections");
    assertEquals((await call(p, "PATCH", "/api/users/bob", { json: { name: "x" } })).status, 400);
    const enabled = await call(p, "PATCH", "/api/users/bob", {
      json: { enabled: null, expires: null },
    });
    assertEquals(enabled.status, 200);
    assertEquals(enabled.body.user.enabled, true);
    assertEquals(enabled.body.user.expires, null);
    assertEquals(Object.keys((await usersFile(p)).bob ?? {}).sort(), [
      "data_quota",
      "max_connections",
      "max_unique_ips",
      "secret",
    ]);
    const again = await connect(p, key);
    await served(again);

    // The config file's user is not the API's to change; unknown users are 404.
    assertEquals(
      (await call(p, "PATCH", "/api/users/carol", { json: { enabled: false } })).status,
      409,
    );
    assertEquals((await call(p, "DELETE", "/api/users/carol")).status, 409);
    assertEquals((await call(p, "PATCH", "/api/users/nobody", { json: {} })).status, 404);
    assertEquals((await call(p, "DELETE", "/api/users/nobody")).status, 404);

    // Deleted: the live client is closed and the secret no longer gets in.
    const deleted = await call(p, "DELETE", "/api/users/bob");
    assertEquals(deleted.status, 200, deleted.text);
    assertEquals(deleted.body.deleted, "bob");
    await again.closed();
    await again.close();
    await refused(p, key);
    assertEquals(Object.keys(await usersFile(p)), []);
    assertEquals((await call(p, "GET", "/api/users/bob")).status, 404);

    const reload = await call(p, "POST", "/api/reload");
    assertEquals(reload.status, 200);
    assertEquals(reload.body.ok, true);
    const history = await call(p, "GET", "/api/history");
    assertEquals(history.body.interval_seconds, 60);
    assert(history.body.samples.length >= 2, history.text);
    assertEquals((await call(p, "GET", "/api/nothing")).status, 404);

    for (const secret of [hex, p.token, CAROL_SECRET]) {
      assert(!p.proxy.stderr.includes(secret), "no secret in the log");
      assert(!p.proxy.stdout.includes(secret), "no secret on stdout");
    }
    assertEquals(await p.proxy.stop(), 0);
  } finally {
    await p.proxy.stop();
    await dc.close();
    await Deno.remove(dir, { recursive: true });
  }
});

/** Requests that were refused left no users file behind. */
async function assertRejectsNothingWritten(p: AdminProxy): Promise<void> {
  let exists = true;
  try {
    await Deno.lstat(`${p.dir}/mtproxy-users.yaml`);
  } catch {
    exists = false;
  }
  assert(!exists, "no users file after refused requests");
}

Deno.test("users added through the admin API survive a restart, and a hand edit of the users file applies on SIGHUP", async () => {
  const dir = await Deno.makeTempDir();
  const dc = await startFakeDc();
  const ports = { port: freePort(), admin: freePort() };
  // One worker here (the endpoints test has two): the server in this thread serves the API.
  let p = await startAdminProxy(dir, dc.port, ports, 1);
  try {
    const added = await call(p, "POST", "/api/users", { json: { name: "alice" } });
    assertEquals(added.status, 201, added.text);
    const key = await userKey(p, "alice");
    assertEquals(await p.proxy.stop(), 0);

    p = await startAdminProxy(dir, dc.port, ports, 1);
    const list = await call(p, "GET", "/api/users");
    assertEquals(list.body.users.map((u: { name: string }) => u.name), ["carol", "alice"]);
    assertEquals(list.body.users[1].source, "users_file");
    assertEquals(await userKey(p, "alice"), key);
    const c = await connect(p, key, "tls");
    await served(c);
    await c.close();

    // The file is the users' home: written by hand, applied on SIGHUP like the config.
    const dave = "9e8d7c6b5a4938271605f4e3d2c1b0a9";
    const text = await Deno.readTextFile(`${dir}/mtproxy-users.yaml`);
    await Deno.writeTextFile(
      `${dir}/mtproxy-users.yaml`,
      `${text}  dave:\n    secret: "${dave}"\n`,
    );
    // The API shows the users in force: dave only once a reload applied the file.
    const unapplied = await call(p, "GET", "/api/users");
    assertEquals(unapplied.body.users.map((u: { name: string }) => u.name), ["carol", "alice"]);
    p.proxy.signal("SIGHUP");
    await p.proxy.waitForLog("users.dave (added)");
    const d = await connect(p, parseSecret(dave).key);
    await served(d);
    await d.close();
    const names = (await call(p, "GET", "/api/users")).body.users.map((u: { name: string }) =>
      u.name
    );
    assertEquals(names, ["carol", "alice", "dave"]);

    // A name in both files is an error naming the key; the running users stay.
    await Deno.writeTextFile(
      `${dir}/mtproxy-users.yaml`,
      `${text}  carol:\n    secret: "${dave}"\n`,
    );
    p.proxy.signal("SIGHUP");
    await p.proxy.waitForLog("users.carol: defined both in the config file and in the users file");
    const health = await call(p, "GET", "/api/health");
    assertStringIncludes(health.body.config_error, "users.carol: defined both");
    const kept = await call(p, "GET", "/api/users");
    assertEquals(kept.body.users.map((u: { name: string }) => u.name), ["carol", "alice", "dave"]);
    // Changes through the API wait until the files validate again.
    const blocked = await call(p, "POST", "/api/users", { json: { name: "erin" } });
    assertEquals(blocked.status, 409);
    assertStringIncludes(blocked.body.problems[0].key, "users.carol");
    assert(!p.proxy.stderr.includes(dave), "no secret in the log");
    const d2 = await connect(p, parseSecret(dave).key);
    await served(d2);
    await d2.close();
    assertEquals(await p.proxy.stop(), 0);
  } finally {
    await p.proxy.stop();
    await dc.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a listener's users may name a user of the users file: it connects there, and deleting it is refused (400, the key) while named", async () => {
  const dir = await Deno.makeTempDir();
  const dc = await startFakeDc();
  const ports = { port: freePort(), admin: freePort() };
  const bob = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
  await Deno.writeTextFile(
    `${dir}/config.yaml`,
    [
      "workers: 1",
      "listeners:",
      `  - { name: main, host: 127.0.0.1, port: ${ports.port}, tls_domain: example.com, users: [carol, bob] }`,
      "public_host: proxy.example.net",
      "fronting: { mode: off }",
      `telegram: { dc_addresses: { "2": "127.0.0.1:${dc.port}" } }`,
      `users: { carol: { secret: "${CAROL_SECRET}" } }`,
      `admin: { listen: "127.0.0.1:${ports.admin}" }`,
      "",
    ].join("\n"),
  );
  await Deno.writeTextFile(`${dir}/mtproxy-users.yaml`, `users:\n  bob: { secret: "${bob}" }\n`);
  const p = await startAdminProxy(dir, dc.port, ports);
  try {
    const c = await connect(p, parseSecret(bob).key);
    await served(c);
    await c.close();
    const listeners = await call(p, "GET", "/api/listeners");
    assertEquals(listeners.body.listeners[0].users, ["carol", "bob"]);
    const refused = await call(p, "DELETE", "/api/users/bob");
    assertEquals(refused.status, 400, refused.text);
    assertEquals(refused.body.problems[0].key, "listeners[0].users[1]");
    assert(!refused.text.includes(bob), "no secret in the answer");
    assertEquals(Object.keys(await usersFile(p)), ["bob"]);
    const again = await connect(p, parseSecret(bob).key);
    await served(again);
    await again.close();
    assertEquals(await p.proxy.stop(), 0);
  } finally {
    await p.proxy.stop();
    await dc.close();
    await Deno.remove(dir, { recursive: true });
  }
});
