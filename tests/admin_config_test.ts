/**
 * The admin API's configuration (`admin`, `users_file`), the users file, the state file's token,
 * and the admin module's pure parts (failure counting, the sample ring).
 */
import { assert, assertEquals, assertRejects, assertStringIncludes } from "./assert.ts";
import { buildConfigDraft, checkUser, ConfigError } from "../lib/config/load.ts";
import {
  parseUsersFile,
  readUsersFile,
  resolveUsersFilePath,
  writeUsersFile,
} from "../lib/config/users_file.ts";
import { loadOrCreateAdminToken, loadOrCreateState, readState } from "../lib/config/state.ts";
import { resolveRunConfig } from "../lib/cli/options.ts";
import { AuthFailures, SampleRing, sumMetric } from "../lib/ops/admin.ts";
import { toHex } from "../lib/secret.ts";

const SECRET = "0123456789abcdef0123456789abcdef";
const OTHER = "fedcba9876543210fedcba9876543210";

function problems(f: () => unknown): readonly string[] {
  try {
    f();
  } catch (e) {
    if (e instanceof ConfigError) return e.problems;
    throw e;
  }
  throw new Error("no ConfigError");
}

Deno.test("admin is off by default; admin.listen and admin.token are read, a short token is refused unshown", () => {
  const d = buildConfigDraft(null);
  assertEquals(d.admin, { listen: null, token: null });
  assertEquals(d.usersFile, null);
  const on = buildConfigDraft({
    admin: { listen: "127.0.0.1:9200", token: "a-token-of-twenty-chars" },
    users_file: "users.yaml",
  });
  assertEquals(on.admin, {
    listen: { host: "127.0.0.1", port: 9200 },
    token: "a-token-of-twenty-chars",
  });
  assertEquals(on.usersFile, "users.yaml");
  assertEquals(on.warnings, []);
  const short = "short-tok";
  const p = problems(() => buildConfigDraft({ admin: { listen: "127.0.0.1:1", token: short } }));
  assertEquals(p, [
    "admin.token: must be at least 16 characters: got 9 (leave it out to have one made in the state file)",
  ]);
  assert(!p.join().includes(short));
  assertEquals(
    problems(() => buildConfigDraft({ admin: { token: "has a space in it here" } })),
    ["admin.token: must be printable ASCII characters without spaces"],
  );
  assertEquals(problems(() => buildConfigDraft({ admin: { listen: "localhost:80", port: 1 } })), [
    'admin.listen: must be "ip:port" with an IP address literal (IPv6 as "[addr]:port") and a port 1-65535: got "localhost:80"',
    "admin.port: unknown key (known keys: listen, token)",
  ]);
});

Deno.test("admin.listen off loopback is a warning, and admin.token alone does nothing", () => {
  const d = buildConfigDraft({ admin: { listen: "0.0.0.0:9200" } });
  assertEquals(d.warnings.length, 1);
  assertStringIncludes(d.warnings[0]!, "admin.listen: not a loopback address");
  const t = buildConfigDraft({ admin: { token: "0123456789abcdefXYZ" } });
  assertEquals(t.warnings, ["admin.token: has no effect without admin.listen"]);
});

Deno.test("users of the users file join the config file's users, labelled with the file, a name in both refused", () => {
  const source = "users file /x/mtproxy-users.yaml";
  const d = buildConfigDraft({ users: { alice: { secret: SECRET } } }, {
    fileUsers: { users: { bob: { secret: OTHER, max_connections: 2 } }, source },
  });
  assertEquals(d.users.map((u) => [u.name, u.maxConnections]), [["alice", 0], ["bob", 2]]);
  // Problems of a file user name the key and the file, never the secret.
  const bad = problems(() =>
    buildConfigDraft({ users: { alice: { secret: SECRET } } }, {
      fileUsers: {
        users: { alice: { secret: OTHER }, bob: { secret: SECRET.slice(1), enabled: "yes" } },
        source,
      },
    })
  );
  assertEquals(bad, [
    `users.alice: defined both in the config file and in the ${source}: keep one`,
    `users.bob.secret (from ${source}): must be 32 hex digits, "dd" + 32 hex digits, or an "ee" secret in hex or base64url: got 31 hex digits`,
    `users.bob.enabled (from ${source}): must be true or false: got "yes"`,
  ]);
  assert(!bad.join().includes(SECRET.slice(1)));
  // The same secret as the config file's user: the whole configuration's check.
  const same = problems(() =>
    buildConfigDraft({ users: { alice: { secret: SECRET } } }, {
      fileUsers: { users: { bob: { secret: SECRET } }, source },
    })
  );
  assertEquals(same, [
    `users.bob.secret (from ${source}): the same secret as users.alice (each user needs its own)`,
  ]);
  // A back has no users, from either file.
  assertEquals(
    problems(() =>
      buildConfigDraft({ role: "back", link_listeners: [{}], fronts: [], users_file: "u.yaml" })
    ).includes("users_file: a back has no client listeners: set it on the front"),
    true,
  );
});

Deno.test("checkUser names each key and reason of one user, as the admin API reports them", () => {
  assertEquals(checkUser({ secret: SECRET }), []);
  assertEquals(checkUser({ secret: SECRET, data_quota: "lots", quota_reset: "yearly", x: 1 }), [
    'data_quota: must be a size in bytes such as 500MB, 10GB or 1.5GiB: got "lots"',
    'quota_reset: must be one of daily, weekly, monthly: got "yearly"',
    "x: unknown key (known keys: secret, enabled, max_connections, max_unique_ips, unique_ip_window, data_quota, quota_reset, expires, rate_limit, tag)",
  ]);
  assertEquals(checkUser({}), [
    'secret: missing: the user\'s own secret (make one with "mtproxy secret"; quote it)',
  ]);
});

Deno.test("the users file: default path beside the state file, parsed strictly, written atomically with mode 0600", async () => {
  assertEquals(
    resolveUsersFilePath({ statePath: "/var/lib/mtproxy/mtproxy-state.json" }),
    "/var/lib/mtproxy/mtproxy-users.yaml",
  );
  assertEquals(
    resolveUsersFilePath({
      usersFile: "u/users.yaml",
      statePath: "/s/state.json",
      configPath: "/etc/mtproxy/config.yaml",
    }),
    "/etc/mtproxy/u/users.yaml",
  );
  assertEquals(parseUsersFile("", "f.yaml").users, {});
  assertEquals(
    problems(() => parseUsersFile("users: []\nother: 1\n", "f.yaml")),
    ['users file f.yaml: other: unknown key (the file has only "users")'],
  );
  assertEquals(
    problems(() => parseUsersFile("users: [a]\n", "f.yaml")),
    ["users file f.yaml: users: must be a mapping of user names to users"],
  );
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/sub/users.yaml`;
    assertEquals(await readUsersFile(path), null);
    // An all-digit secret must come back as the same string, not a number.
    const digits = "01234567890123456789012345678901";
    await writeUsersFile(path, { bob: { secret: digits, max_connections: 3, enabled: false } });
    assertEquals((await Deno.stat(path)).mode! & 0o777, 0o600);
    const back = await readUsersFile(path);
    assertEquals(back?.users, { bob: { secret: digits, max_connections: 3, enabled: false } });
    assertEquals([...Deno.readDirSync(`${dir}/sub`)].map((e) => e.name), ["users.yaml"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("resolveRunConfig lets a listener's users name a user of the users file only", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(
      `${dir}/config.yaml`,
      `listeners:\n  - { port: 443, secret: "${SECRET}", users: [alice, bob] }\n` +
        `users:\n  alice:\n    secret: "${SECRET.replace("0", "1")}"\n`,
    );
    const env = { MTP_STATE_FILE: `${dir}/state.json` };
    const args = ["--config", `${dir}/config.yaml`];
    // Without the users file, bob is nobody: the problem names the key.
    const e = await assertRejects(() => resolveRunConfig(args, env), ConfigError);
    assertEquals((e as ConfigError).problems, [
      'listeners[0].users[1]: no such user in users: got "bob"',
    ]);
    await writeUsersFile(`${dir}/mtproxy-users.yaml`, { bob: { secret: OTHER } });
    const r = await resolveRunConfig(args, env);
    assertEquals(r.config.listeners[0]!.users, ["alice", "bob"]);
    assertEquals(r.config.users.map((u) => u.name), ["alice", "bob"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("resolveRunConfig reads the users file beside the state file, and a broken one is a ConfigError", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/config.yaml`, `users:\n  alice:\n    secret: "${SECRET}"\n`);
    const env = { MTP_STATE_FILE: `${dir}/state.json` };
    await writeUsersFile(`${dir}/mtproxy-users.yaml`, { bob: { secret: OTHER } });
    const r = await resolveRunConfig([
      "--config",
      `${dir}/config.yaml`,
      "-s",
      SECRET.replace("0", "1"),
    ], env);
    assertEquals(r.usersPath, `${dir}/mtproxy-users.yaml`);
    assertEquals(r.config.users.map((u) => u.name), ["alice", "bob"]);
    await Deno.writeTextFile(`${dir}/mtproxy-users.yaml`, "users:\n  bob: {secret: 12}\n");
    const e = await assertRejects(
      () =>
        resolveRunConfig(["--config", `${dir}/config.yaml`, "-s", SECRET.replace("0", "1")], env),
      ConfigError,
    );
    assertStringIncludes(
      (e as ConfigError).problems[0]!,
      `users.bob.secret (from users file ${dir}/mtproxy-users.yaml): must be`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the admin token is made once into the state file, beside the secret it keeps", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/state.json`;
    const { state } = await loadOrCreateState(path);
    const first = await loadOrCreateAdminToken(path);
    assertEquals(first.created, true);
    assert(/^[A-Za-z0-9_-]{32}$/.test(first.token), first.token);
    const again = await loadOrCreateAdminToken(path);
    assertEquals(again, { token: first.token, created: false });
    const read = await readState(path);
    assertEquals(toHex(read!.secret), toHex(state.secret));
    assertEquals(read!.adminToken, first.token);
    assertEquals((await Deno.stat(path)).mode! & 0o777, 0o600);
    // A broken token is reported without itself.
    await Deno.writeTextFile(
      path,
      JSON.stringify({ version: 1, secret: toHex(state.secret), admin_token: "short" }),
    );
    const e = await assertRejects(() => readState(path));
    assertStringIncludes(String(e), '"admin_token" must be at least 16 printable characters');
    assert(!String(e).includes("short"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("AuthFailures lets an address try again once its oldest failure leaves the window", () => {
  const f = new AuthFailures(5, 60_000);
  for (let i = 0; i < 4; i++) f.fail("a", i * 1000);
  assertEquals(f.blockedForMs("a", 4_000), 0);
  f.fail("a", 4_000);
  assertEquals(f.blockedForMs("a", 4_000), 56_000);
  assertEquals(f.blockedForMs("b", 4_000), 0);
  assertEquals(f.blockedForMs("a", 59_999), 1);
  assertEquals(f.blockedForMs("a", 60_000), 0);
});

Deno.test("SampleRing keeps the last samples oldest first, and sumMetric adds a metric's labels", () => {
  const ring = new SampleRing(3);
  assertEquals(ring.samples(), []);
  for (let i = 1; i <= 5; i++) ring.add({ time: i, connections: i * 10 });
  assertEquals(ring.samples().map((s) => s.time), [3, 4, 5]);
  const text = [
    "# TYPE mtproxy_connections_active gauge",
    'mtproxy_connections_active{listener="a"} 2',
    'mtproxy_connections_active{listener="b"} 5',
    "mtproxy_connections_active_x 100",
  ].join("\n");
  assertEquals(sumMetric(text, "mtproxy_connections_active"), 7);
});
