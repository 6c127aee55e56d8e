/**
 * The command line, run as a user runs it: `deno run -A main.ts ...` in a temporary directory.
 * No test here starts a server.
 */
import {
  assert,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "./assert.ts";
import { fileURLToPath as fromFileUrl } from "node:url";
import { parseSecret, toHex } from "../lib/secret.ts";
import { writeState } from "../lib/config/state.ts";
import { buildConfig, buildConfigDraft, ConfigError, parseYaml } from "../lib/config/load.ts";
import { parseRunArgs, resolveRunConfig, UsageError } from "../lib/cli/options.ts";
import { formatLinkListeners, formatLinks } from "../lib/cli/link.ts";
import { linkSecretLines, secretLines } from "../lib/cli/secret.ts";
import { summarizeConfig } from "../lib/cli/check_config.ts";

const MAIN = fromFileUrl(new URL("../main.ts", import.meta.url));
const EXAMPLE = fromFileUrl(new URL("../config.example.yaml", import.meta.url));
const HEX = "0123456789abcdef0123456789abcdef";
const KEY = Uint8Array.from(HEX.match(/../g)!, (h) => parseInt(h, 16));
const MTP_VARS = [
  "MTP_CONFIG",
  "MTP_ROLE",
  "MTP_PORT",
  "MTP_HOST",
  "MTP_SECRET",
  "MTP_TAG",
  "MTP_ALLOW",
  "MTP_TLS_DOMAIN",
  "MTP_PUBLIC_HOST",
  "MTP_LOG_LEVEL",
  "MTP_STATE_FILE",
];

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run mtproxy with every MTP_* variable blanked unless `env` sets it. */
async function mtproxy(
  args: string[],
  options: { cwd?: string; env?: Record<string, string> } = {},
): Promise<Result> {
  const env: Record<string, string> = { NO_COLOR: "1" };
  for (const name of MTP_VARS) env[name] = "";
  Object.assign(env, options.env ?? {});
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    ...(options.cwd !== undefined && { cwd: options.cwd }),
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

function assertNoStack(r: Result): void {
  assert(!/^\s+at /m.test(r.stderr), `stack trace in stderr:\n${r.stderr}`);
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "mtproxy_cli_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function linksIn(stdout: string): string[] {
  return stdout.split("\n").map((l) => l.trim().split(/\s+/).pop() ?? "").filter((w) =>
    w.startsWith("tg://") || w.startsWith("https://t.me/")
  );
}

// ---------------------------------------------------------------------------------------------
// Help and dispatch

Deno.test("mtproxy --help lists every subcommand and exits 0", async () => {
  for (const args of [["--help"], ["-h"], ["help"]]) {
    const r = await mtproxy(args);
    assertEquals(r.code, 0, r.stderr);
    for (const word of ["run", "link", "secret", "--front", "check-config", "--version"]) {
      assertStringIncludes(r.stdout, word);
    }
  }
});

Deno.test("mtproxy COMMAND --help shows that command's options", async () => {
  const cases: [string[], string][] = [
    [["run", "--help"], "--public-host"],
    [["--help", "run"], "link"],
    [["link", "-h"], "MTP_PUBLIC_HOST"],
    [["secret", "--help"], "--tls-domain"],
    [["secret", "--help"], "--front NAME"],
    [["run", "--help"], "MTP_ROLE"],
    [["check-config", "--help"], "Configuration OK"],
    [["help", "link"], "never creates"],
  ];
  for (const [args, text] of cases) {
    const r = await mtproxy(args);
    assertEquals(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
    assertStringIncludes(r.stdout, text);
  }
});

Deno.test("mtproxy --version prints the version", async () => {
  const r = await mtproxy(["--version"]);
  assertEquals(r.code, 0);
  assert(/^mtproxy \d+\.\d+\.\d+\n$/.test(r.stdout), r.stdout);
});

Deno.test("mtproxy refuses unknown commands and flags with one line, a hint and exit code 2", async () => {
  const cases: [string[], string][] = [
    [["lnik"], 'mtproxy: Unknown command "lnik" (did you mean "link"?); see "mtproxy --help"'],
    [["--frob"], 'mtproxy run: Unknown option "--frob"; see "mtproxy run --help"'],
    [["run", "--prot", "1"], 'mtproxy run: Unknown option "--prot" (did you mean "--port"?)'],
    [["link", "-z"], 'mtproxy link: Unknown option "-z"; see "mtproxy link --help"'],
    [["link", "extra"], 'mtproxy link: Unexpected argument "extra"'],
    [["link", "--port"], 'mtproxy link: Option "-p, --port" needs a value'],
    [["secret", "--tls-domain"], 'mtproxy secret: Option "-d, --tls-domain" needs a value'],
    [["secret", "--help=yes"], 'mtproxy secret: Option "-h, --help" does not take a value'],
    [["check-config"], "mtproxy check-config: Missing the configuration file to check"],
    [["check-config", "a", "b"], "Expected one configuration file: got 2"],
    [["help", "nope"], 'Unknown command "nope"'],
  ];
  for (const [args, text] of cases) {
    const r = await mtproxy(args);
    assertEquals(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assertStringIncludes(r.stderr, text);
    assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
    assertEquals(r.stdout, "");
  }
});

// ---------------------------------------------------------------------------------------------
// secret

Deno.test("mtproxy secret prints one new secret in every form", async () => {
  const r = await mtproxy(["secret"]);
  assertEquals(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split("\n");
  assertEquals(lines.map((l) => l.split(/\s{2,}/)[0]), [
    "secret",
    "plain",
    "dd",
    "ee (hex)",
    "ee (base64url)",
  ]);
  const values = lines.map((l) => l.split(/\s+/).pop()!);
  const key = parseSecret(values[0]!).key;
  assertEquals(parseSecret(values[2]!), { kind: "dd", key });
  assertEquals(parseSecret(values[3]!), { kind: "tls", key, domain: "www.cloudflare.com" });
  assertEquals(parseSecret(values[4]!), { kind: "tls", key, domain: "www.cloudflare.com" });
  const again = await mtproxy(["secret"]);
  assert(again.stdout !== r.stdout, "each run makes a new secret");
});

Deno.test("mtproxy secret --tls-domain puts the domain in the ee forms", async () => {
  const r = await mtproxy(["secret", "-d", "WWW.Example.com"]);
  assertEquals(r.code, 0, r.stderr);
  const ee = r.stdout.split("\n").find((l) => l.startsWith("ee (base64url)"))!.split(/\s+/).pop()!;
  assertEquals(parseSecret(ee).domain, "www.example.com");
  const bad = await mtproxy(["secret", "--tls-domain", "not a domain"]);
  assertEquals(bad.code, 2);
  assertStringIncludes(bad.stderr, 'got "not a domain"');
});

Deno.test("secretLines formats a known key", () => {
  const lines = secretLines(KEY, "example.com");
  assertEquals(lines[0], `secret          ${HEX}`);
  assertEquals(lines[2], `dd              dd${HEX}`);
});

// ---------------------------------------------------------------------------------------------
// link

Deno.test("mtproxy link prints tg and t.me links for every listener and protocol", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(
      `${dir}/c.yaml`,
      `public_host: proxy.example.com
listeners:
  - { name: a, port: 443, secret: "${HEX}", tls_domain: www.example.com }
  - { name: b, port: 8443, secret: "dd${"ff".repeat(16)}", allowed_protocols: [dd] }
`,
    );
    const r = await mtproxy(["link", "--config", "c.yaml"], { cwd: dir });
    assertEquals(r.code, 0, r.stderr);
    assertEquals(r.stderr, "");
    const ee = "ee" + HEX + toHex(new TextEncoder().encode("www.example.com"));
    const b64 = "7gEjRWeJq83vASNFZ4mrze93d3cuZXhhbXBsZS5jb20";
    const q = (port: number, s: string) =>
      `proxy?server=proxy.example.com&port=${port}&secret=${s}`;
    assertEquals(linksIn(r.stdout), [
      `tg://${q(443, ee)}`,
      `https://t.me/${q(443, ee)}`,
      `tg://${q(443, b64)}`,
      `https://t.me/${q(443, b64)}`,
      `tg://${q(443, "dd" + HEX)}`,
      `https://t.me/${q(443, "dd" + HEX)}`,
      `tg://${q(443, HEX)}`,
      `https://t.me/${q(443, HEX)}`,
      `tg://${q(8443, "dd" + "ff".repeat(16))}`,
      `https://t.me/${q(8443, "dd" + "ff".repeat(16))}`,
    ]);
    assertStringIncludes(r.stdout, "a (0.0.0.0:443), links to proxy.example.com:443");
    assertStringIncludes(r.stdout, "b (0.0.0.0:8443), links to proxy.example.com:8443");
  });
});

Deno.test("mtproxy link warns on stderr when public_host is unset and the host is 0.0.0.0", async () => {
  const r = await mtproxy(["link", "-s", HEX, "-a", "dd"]);
  assertEquals(r.code, 0, r.stderr);
  assertStringIncludes(r.stderr, "public_host is not set");
  assertStringIncludes(r.stderr, "0.0.0.0, which is no address clients can reach");
  assertEquals(linksIn(r.stdout)[0], `tg://proxy?server=0.0.0.0&port=1443&secret=dd${HEX}`);
  const r6 = await mtproxy(["link", "-s", HEX, "--host", "::", "-a", "plain"]);
  assertStringIncludes(r6.stderr, "bind address ::, which is no address clients can reach");
  assertEquals(linksIn(r6.stdout)[0], `tg://proxy?server=::&port=1443&secret=${HEX}`);
});

Deno.test("mtproxy link takes flags over environment over file", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(
      `${dir}/c.yaml`,
      `listeners: [{ port: 443, secret: "${HEX}" }]\npublic_host: file.example\nallowed_protocols: [plain]\n`,
    );
    const env = { MTP_CONFIG: `${dir}/c.yaml`, MTP_PORT: "8443", MTP_PUBLIC_HOST: "env.example" };
    const fromEnv = await mtproxy(["link"], { env });
    assertEquals(fromEnv.code, 0, fromEnv.stderr);
    assertEquals(
      linksIn(fromEnv.stdout)[0],
      `tg://proxy?server=env.example&port=8443&secret=${HEX}`,
    );
    const fromFlags = await mtproxy(["link", "-p", "9443", "--public-host", "cli.example"], {
      env,
    });
    assertEquals(
      linksIn(fromFlags.stdout)[0],
      `tg://proxy?server=cli.example&port=9443&secret=${HEX}`,
    );
    const fromFile = await mtproxy(["link", "--config", "c.yaml"], { cwd: dir });
    assertEquals(
      linksIn(fromFile.stdout)[0],
      `tg://proxy?server=file.example&port=443&secret=${HEX}`,
    );
  });
});

Deno.test("mtproxy link names the variable behind a bad value and exits 1", async () => {
  const r = await mtproxy(["link", "-s", HEX], { env: { MTP_PORT: "abc", MTP_ALLOW: "tls,udp" } });
  assertEquals(r.code, 1);
  assertNoStack(r);
  assertStringIncludes(r.stderr, "mtproxy link: Invalid configuration:");
  assertStringIncludes(
    r.stderr,
    'listeners[0].port (from MTP_PORT): must be an integer 1-65535: got "abc"',
  );
  assertStringIncludes(r.stderr, "allowed_protocols[1] (from MTP_ALLOW): must be one of");
});

Deno.test("mtproxy link reads the secret from the state file and never creates one", async () => {
  await withTempDir(async (dir) => {
    const missing = await mtproxy(["link", "--public-host", "p.example"], { cwd: dir });
    assertEquals(missing.code, 1);
    assertNoStack(missing);
    assertStringIncludes(missing.stderr, 'No secret yet for listener "main"');
    assertStringIncludes(missing.stderr, `${dir}/mtproxy-state.json`);
    assertEquals([...Deno.readDirSync(dir)].length, 0);

    await writeState(`${dir}/state.json`, { secret: KEY, createdAt: "2026-01-01T00:00:00Z" });
    const r = await mtproxy(["link", "--public-host", "p.example", "-a", "plain"], {
      cwd: dir,
      env: { MTP_STATE_FILE: "state.json" },
    });
    assertEquals(r.code, 0, r.stderr);
    assertEquals(linksIn(r.stdout)[0], `tg://proxy?server=p.example&port=1443&secret=${HEX}`);

    await Deno.writeTextFile(`${dir}/state.json`, "{broken");
    const corrupt = await mtproxy(["link"], { cwd: dir, env: { MTP_STATE_FILE: "state.json" } });
    assertEquals(corrupt.code, 1);
    assertNoStack(corrupt);
    assertStringIncludes(corrupt.stderr, "is not valid: not JSON");
  });
});

// ---------------------------------------------------------------------------------------------
// check-config

Deno.test("mtproxy check-config accepts a good file and the example", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/c.yaml`, "listeners: [{ port: 443 }, { port: 444 }]\n");
    const r = await mtproxy(["check-config", `${dir}/c.yaml`]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(r.stdout, "Configuration OK: 2 listeners\n");
  });
  const ex = await mtproxy(["check-config", EXAMPLE]);
  assertEquals(ex.code, 0, ex.stderr);
  assertEquals(ex.stdout, "Configuration OK: 1 listener\n");
});

Deno.test("mtproxy check-config prints every problem on its own line and exits 1", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/bad.yaml`;
    await Deno.writeTextFile(
      path,
      "listeners:\n  - port: abc\n    prot: 1\nlog_level: loud\ntimeouts: { idle: -5 }\n",
    );
    const r = await mtproxy(["check-config", path]);
    assertEquals(r.code, 1);
    assertNoStack(r);
    assertEquals(r.stdout, "");
    assertEquals(r.stderr.trim().split("\n"), [
      `${path}: 4 problems`,
      'listeners[0].port: must be an integer 1-65535: got "abc"',
      'listeners[0].prot: unknown key (did you mean "port"?)',
      'log_level: must be one of debug, info, warning, error: got "loud"',
      "timeouts.idle: must be a positive number of seconds up to 2147483: got -5",
    ]);
  });
});

Deno.test("mtproxy check-config reports YAML syntax errors and missing files without a stack", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/broken.yaml`, "a: 1\na: 2\n");
    const r = await mtproxy(["check-config", "broken.yaml"], { cwd: dir });
    assertEquals(r.code, 1);
    assertNoStack(r);
    assertStringIncludes(r.stderr, "broken.yaml:2:1: YAML syntax error: Map keys must be unique");
    const missing = await mtproxy(["check-config", "nope.yaml"], { cwd: dir });
    assertEquals(missing.code, 1);
    assertNoStack(missing);
    assertStringIncludes(missing.stderr, 'Cannot read config file "nope.yaml": no such file');
  });
});

// ---------------------------------------------------------------------------------------------
// run (without starting a server)

Deno.test("mtproxy check-config checks the users file too, naming it and the key, never a secret", async () => {
  await withTempDir(async (dir) => {
    // A near-miss of a secret (31 hex digits) is mostly the secret: it must never be printed.
    const nearMiss = HEX.slice(1);
    const other = "fedcba9876543210fedcba9876543210";
    await Deno.writeTextFile(
      `${dir}/c.yaml`,
      `listeners: [{ port: 443 }]\nusers:\n  carol: { secret: "${HEX}" }\n`,
    );
    const users = `${dir}/mtproxy-users.yaml`;
    await Deno.writeTextFile(
      users,
      `users:\n  bob: { secret: "${nearMiss}", max_connections: -1 }\n  carol: { secret: "${other}" }\n`,
    );
    const r = await mtproxy(["check-config", "c.yaml"], { cwd: dir });
    assertEquals(r.code, 1, r.stdout);
    assertNoStack(r);
    assertEquals(r.stderr.trim().split("\n"), [
      "c.yaml: 3 problems",
      `users.carol: defined both in the config file and in the users file ${users}: keep one`,
      `users.bob.secret (from users file ${users}): must be 32 hex digits, "dd" + 32 hex digits, or an "ee" secret in hex or base64url: got 31 hex digits`,
      `users.bob.max_connections (from users file ${users}): must be an integer 0-10000000: got -1`,
    ]);
    for (const s of [HEX, nearMiss, other]) assert(!r.stderr.includes(s), r.stderr);

    // users_file (relative to the config file), read even when the config file has problems.
    await Deno.writeTextFile(
      `${dir}/d.yaml`,
      "listeners: [{ port: abc }]\nusers_file: sub/u.yaml\n",
    );
    await Deno.mkdir(`${dir}/sub`);
    await Deno.writeTextFile(`${dir}/sub/u.yaml`, "users: [1]\n");
    const d = await mtproxy(["check-config", `${dir}/d.yaml`]);
    assertEquals(d.code, 1);
    assertEquals(d.stderr.trim().split("\n"), [
      `${dir}/d.yaml: 2 problems`,
      'listeners[0].port: must be an integer 1-65535: got "abc"',
      `users file ${dir}/sub/u.yaml: users: must be a mapping of user names to users`,
    ]);

    // A good users file: OK.
    await Deno.writeTextFile(users, `users:\n  bob: { secret: "${other}" }\n`);
    const ok = await mtproxy(["check-config", "c.yaml"], { cwd: dir });
    assertEquals(ok.code, 0, ok.stderr);
    assertEquals(ok.stdout, "Configuration OK: 1 listener\n");
    // A listener's users may name a user of the users file only.
    await Deno.writeTextFile(
      `${dir}/e.yaml`,
      `listeners: [{ port: 443, users: [carol, bob] }]\nusers:\n  carol: { secret: "${HEX}" }\n`,
    );
    const named = await mtproxy(["check-config", "e.yaml"], { cwd: dir });
    assertEquals(named.code, 0, named.stderr);
    await Deno.remove(users);
    const nobody = await mtproxy(["check-config", "e.yaml"], { cwd: dir });
    assertEquals(nobody.code, 1);
    assertStringIncludes(nobody.stderr, 'listeners[0].users[1]: no such user in users: got "bob"');
  });
});

Deno.test("mtproxy run stops before listening when the configuration is invalid", async () => {
  await withTempDir(async (dir) => {
    const r = await mtproxy(["run", "--log-level", "loud", "-p", "0"], { cwd: dir });
    assertEquals(r.code, 1);
    assertNoStack(r);
    assertStringIncludes(r.stderr, "log_level (from --log-level): must be one of");
    assertStringIncludes(r.stderr, "listeners[0].port (from --port): must be an integer 1-65535");
    assert(!r.stdout.includes("listening on"));
    assertEquals([...Deno.readDirSync(dir)].length, 0, "no state file for a bad config");
  });
});

// ---------------------------------------------------------------------------------------------
// In-process: option resolution

Deno.test("resolveRunConfig layers flags over environment over file and reads lists", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(
      `${dir}/c.yaml`,
      `listeners: [{ port: 443, secret: "${HEX}" }]\nlog_level: debug\n`,
    );
    const env = {
      MTP_CONFIG: "c.yaml",
      MTP_ALLOW: "tls, dd",
      MTP_TLS_DOMAIN: "a.example,b.example",
      MTP_HOST: "127.0.0.1",
      MTP_LOG_LEVEL: "error",
    };
    const r = await resolveRunConfig(["--log-level", "warning", "-a", "plain"], env, { cwd: dir });
    const l = r.config.listeners[0]!;
    assertEquals(r.configPath, "c.yaml");
    assertEquals(l.host, "127.0.0.1");
    assertEquals(l.tlsDomains, ["a.example", "b.example"]);
    assertEquals(l.allowedProtocols, ["plain"]);
    assertEquals(r.config.logLevel, "warning");
    assertEquals(r.stateUsed, false);
  });
});

Deno.test("--metrics and MTP_METRICS set metrics.listen over the file, and bad values name their source", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(
      `${dir}/c.yaml`,
      `listeners: [{ secret: "${HEX}" }]\nmetrics: { listen: "127.0.0.1:9000" }\n`,
    );
    const fromFile = await resolveRunConfig(["--config", "c.yaml"], {}, { cwd: dir });
    assertEquals(fromFile.config.metrics.listen, { host: "127.0.0.1", port: 9000 });
    const env = { MTP_CONFIG: "c.yaml", MTP_METRICS: "127.0.0.1:9001" };
    const fromEnv = await resolveRunConfig([], env, { cwd: dir });
    assertEquals(fromEnv.config.metrics.listen, { host: "127.0.0.1", port: 9001 });
    const fromFlag = await resolveRunConfig(["--metrics", "[::1]:9002"], env, { cwd: dir });
    assertEquals(fromFlag.config.metrics.listen, { host: "::1", port: 9002 });
    const noFile = await resolveRunConfig(["--metrics", "127.0.0.1:9003", "-s", HEX], {}, {
      cwd: dir,
    });
    assertEquals(noFile.config.metrics.listen, { host: "127.0.0.1", port: 9003 });
    const bad = await assertRejects(() =>
      resolveRunConfig(["--metrics", "9100"], env, { cwd: dir })
    );
    assertStringIncludes(String(bad), 'metrics.listen (from --metrics): must be "ip:port"');
  });
});

Deno.test("resolveRunConfig with createState makes the state file next to the config file", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(`${dir}/etc`);
    await Deno.writeTextFile(`${dir}/etc/c.yaml`, "listeners: [{ port: 443 }, { port: 444 }]\n");
    const first = await resolveRunConfig(["--config", "etc/c.yaml"], {}, {
      cwd: dir,
      createState: true,
    });
    assertEquals(first.statePath, `${dir}/etc/mtproxy-state.json`);
    assert(first.stateUsed && first.stateCreated);
    const [a, b] = first.config.listeners;
    assertEquals(a!.secret, b!.secret);
    const again = await resolveRunConfig(["--config", `${dir}/etc/c.yaml`], {}, { cwd: dir });
    assertEquals(again.config.listeners[0]!.secret, a!.secret);
    assertEquals(again.stateCreated, false);
  });
});

Deno.test("resolveRunConfig reports a missing config file as a ConfigError", async () => {
  await assertRejects(
    () => resolveRunConfig(["--config", "/nonexistent/mtproxy.yaml"], {}),
    ConfigError,
    "Cannot read config file",
  );
});

Deno.test("parseRunArgs collects repeated flags and rejects unknown ones", () => {
  const a = parseRunArgs(["-a", "tls", "--allow", "dd", "-d", "x.example", "-d", "y.example"]);
  assertEquals(a.allow, ["tls", "dd"]);
  assertEquals(a.tlsDomains, ["x.example", "y.example"]);
  assertThrows(() => parseRunArgs(["--tls-domian", "x"]), UsageError, '"--tls-domain"');
});

Deno.test("formatLinks prints no warning when public_host is set", async () => {
  const r = await resolveRunConfig(["-s", HEX, "--public-host", "203.0.113.5"], {});
  const out = formatLinks(r.config);
  assertEquals(out.warnings, []);
  assertEquals(out.lines[0], "main (0.0.0.0:1443), links to 203.0.113.5:1443");
});

Deno.test("mtproxy link --sni prints a user's per-SNI fake-TLS links (README vector)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(
      `${dir}/c.yaml`,
      "per_sni_secrets: true\nper_sni_salt: my-private-salt-change-me\npublic_host: p.example.net\n" +
        "listeners:\n  - secret: d0d6e111bada5511fcce9584deadbeef\n",
    );
    const r = await mtproxy(["link", "--config", "c.yaml", "--sni", "alice.example.com"], {
      cwd: dir,
    });
    assertEquals(r.code, 0, r.stderr);
    assertStringIncludes(
      r.stdout,
      "secret=eeaf4d5729ce2a0de4a40bbf439ac9d515616c6963652e6578616d706c652e636f6d",
    );
    // The base secret never appears in a fake-TLS link.
    assert(!r.stdout.includes("secret=eed0d6e111"));
    const plain = await mtproxy(["link", "--config", "c.yaml"], { cwd: dir });
    assertStringIncludes(plain.stdout, "--sni NAME");
    assert(!plain.stdout.includes("secret=ee"));
    const off = await mtproxy(["link", "-s", HEX, "--sni", "a.example.com"], { cwd: dir });
    assertEquals(off.code, 2);
    assertStringIncludes(off.stderr, "per_sni_secrets");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------
// Split mode: secret --front, check-config and link by role

/** The `fronts` and `backs` snippets of `secret --front` output, checked as YAML. */
function linkSnippets(stdout: string): { fronts: unknown; backs: unknown } {
  const doc = parseYaml(stdout, "stdout") as Record<string, unknown>;
  assertEquals(Object.keys(doc).sort(), ["backs", "fronts"]);
  return { fronts: doc.fronts, backs: doc.backs };
}

Deno.test("mtproxy secret --front prints YAML whose snippets make a valid back and front", async () => {
  const r = await mtproxy(["secret", "--front", "home"]);
  assertEquals(r.code, 0, r.stderr);
  const { fronts, backs } = linkSnippets(r.stdout);
  const back = buildConfig({ role: "back", link_listeners: [{}], fronts });
  const front = buildConfig({ role: "front", backs }, { stateSecret: KEY });
  assertEquals(back.fronts.length, 1);
  assertEquals(back.fronts[0]!.name, "home");
  assertEquals(front.backs.length, 1);
  const b = front.backs[0]!;
  assertEquals(b.address, { host: "back.example.com", port: 443 });
  assertEquals(b.tlsDomain, "www.cloudflare.com");
  assertEquals(b.links, 2);
  assertEquals(b.secret, back.fronts[0]!.secret);
  assert(back.linkListeners[0]!.tlsDomains.includes(b.tlsDomain), "the default SNIs match");
  assertStringIncludes(r.stdout, "# replace with the back's address");
  assertStringIncludes(r.stdout, `secret: "${toHex(b.secret)}"`);
  const again = linkSnippets((await mtproxy(["secret", "--front", "home"])).stdout);
  assert(JSON.stringify(again) !== JSON.stringify({ fronts, backs }), "a new secret each time");
});

Deno.test("mtproxy secret --front --back --tls-domain fills the front's entry", async () => {
  const r = await mtproxy([
    "secret",
    "--front",
    "office.2",
    "--back",
    "[2001:DB8::7]:8443",
    "-d",
    "WWW.Example.com",
  ]);
  assertEquals(r.code, 0, r.stderr);
  assert(!r.stdout.includes("replace with"), r.stdout);
  const { fronts, backs } = linkSnippets(r.stdout);
  const front = buildConfig({ role: "front", backs }, { stateSecret: KEY });
  assertEquals(front.backs[0]!.address, { host: "2001:db8::7", port: 8443 });
  assertEquals(front.backs[0]!.tlsDomain, "www.example.com");
  const back = buildConfig({
    role: "back",
    link_listeners: [{ tls_domain: "www.example.com" }],
    fronts,
  });
  assertEquals(back.fronts[0]!.name, "office.2");
  // Names YAML would read as something else stay strings.
  const odd = await mtproxy(["secret", "--front", "null"]);
  assertEquals(odd.code, 0, odd.stderr);
  const oddBack = buildConfig({
    role: "back",
    link_listeners: [{}],
    fronts: linkSnippets(odd.stdout).fronts,
  });
  assertEquals(oddBack.fronts[0]!.name, "null");
});

Deno.test("mtproxy secret --front refuses a bad name, back address or domain with exit code 2", async () => {
  const cases: [string[], string][] = [
    [["--front", "my front"], 'Front name must be 1-64 letters, digits, ".", "_" or "-"'],
    [["--front=-x"], "Front name must be"],
    [["--front", "a".repeat(65)], "Front name must be"],
    [["--front", "home", "--back", "back.example.com"], 'Back address must be "host:port"'],
    [["--front", "home", "--back", "b.example:70000"], 'got "b.example:70000"'],
    [["--front", "home", "-d", "not a domain"], 'got "not a domain"'],
    [["--back", "b.example:443"], "--back needs --front NAME"],
    [["--front"], 'Option "--front" needs a value'],
  ];
  for (const [args, text] of cases) {
    const r = await mtproxy(["secret", ...args]);
    assertEquals(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assertStringIncludes(r.stderr, text);
    assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
    assertEquals(r.stdout, "");
  }
});

Deno.test("linkSecretLines formats a known key in both snippets", () => {
  const lines = linkSecretLines("home", KEY, { back: "203.0.113.7:443", tlsDomain: "a.example" });
  assertEquals(lines.filter((l) => l.trim().startsWith("secret:")), [
    `    secret: "${HEX}"`,
    `    secret: "${HEX}"`,
  ]);
  assert(lines.includes('  - name: "home"'));
  assert(lines.includes('  - address: "203.0.113.7:443"'));
  assert(lines.some((l) => l.startsWith('    tls_domain: "a.example"')));
  assert(lines.includes("    links: 2"));
});

Deno.test("mtproxy check-config reports a back's link listeners and fronts and a front's backs", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(
      `${dir}/back.yaml`,
      [
        "role: back",
        "link_listeners: [{}, { name: alt, port: 8443 }]",
        "fronts:",
        `  - { name: home, secret: "${HEX}" }`,
        `  - { name: office, secret: "fedcba9876543210fedcba9876543210" }`,
        "",
      ].join("\n"),
    );
    const back = await mtproxy(["check-config", `${dir}/back.yaml`]);
    assertEquals(back.code, 0, back.stderr);
    assertEquals(
      back.stdout,
      "Configuration OK: role back, 2 link listeners (link1, alt), 2 fronts (home, office)\n",
    );
    assert(!back.stdout.includes(HEX));
    await Deno.writeTextFile(
      `${dir}/front.yaml`,
      [
        "role: front",
        "backs:",
        `  - { address: "back.example.com:443", secret: "${HEX}" }`,
        `  - { address: "[2001:db8::1]:443", secret: "${HEX}" }`,
        "",
      ].join("\n"),
    );
    const front = await mtproxy(["check-config", `${dir}/front.yaml`]);
    assertEquals(front.code, 0, front.stderr);
    assertEquals(
      front.stdout,
      "Configuration OK: role front, 1 listener, 2 backs (back.example.com:443, [2001:db8::1]:443)\n",
    );
    // --role checks a file as another role (MTP_ROLE is not read by check-config).
    const asFront = await mtproxy(["check-config", "--role", "front", `${dir}/back.yaml`], {
      env: { MTP_ROLE: "back" },
    });
    assertEquals(asFront.code, 1);
    assertStringIncludes(
      asFront.stderr,
      "fronts: a front has no Telegram side: set it on the back",
    );
    assertStringIncludes(asFront.stderr, "backs: missing: a front needs at least one back");
    assert(!asFront.stderr.includes(HEX));
  });
});

Deno.test("mtproxy check-config lists split-mode problems without echoing secrets", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/bad.yaml`;
    await Deno.writeTextFile(
      path,
      `role: back\nlisteners: [{}]\nlink_listeners: [{}]\nfronts: [{ name: home, secret: "${
        HEX.slice(0, 31)
      }x" }]\n`,
    );
    const r = await mtproxy(["check-config", path]);
    assertEquals(r.code, 1);
    assertNoStack(r);
    assertEquals(r.stderr.trim().split("\n"), [
      `${path}: 2 problems`,
      "listeners: a back has no client listeners: set it on the front",
      'fronts[0].secret: must be 32 hex digits: it has characters that are not hex digits (make one with "mtproxy secret --front NAME"; quote it in YAML)',
    ]);
  });
});

Deno.test("summarizeConfig keeps the standalone line and names the other side of a pair", () => {
  assertEquals(
    summarizeConfig(buildConfigDraft({ listeners: [{}] })),
    "Configuration OK: 1 listener",
  );
  assertEquals(
    summarizeConfig(buildConfigDraft({
      role: "back",
      link_listeners: [{ name: "x" }],
      fronts: [{ name: "home", secret: HEX }],
    })),
    "Configuration OK: role back, 1 link listener (x), 1 front (home)",
  );
});

Deno.test("mtproxy link on a back says a back has no client links and exits 1", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(
      `${dir}/back.yaml`,
      `role: back\nlink_listeners: [{}]\nfronts: [{ name: home, secret: "${HEX}" }]\n`,
    );
    const r = await mtproxy(["link", "--config", "back.yaml"], { cwd: dir });
    assertEquals(r.code, 1, r.stderr);
    assertNoStack(r);
    assertEquals(r.stdout, "");
    assertStringIncludes(r.stderr, "mtproxy link: A back has no client links");
    assertEquals([...Deno.readDirSync(dir)].length, 1, "no state file for a back");
    const viaEnv = await mtproxy(["link"], {
      cwd: dir,
      env: { MTP_CONFIG: "back.yaml", MTP_ROLE: "back" },
    });
    assertEquals(viaEnv.code, 1);
    assertStringIncludes(viaEnv.stderr, "A back has no client links");
  });
});

Deno.test("formatLinkListeners shows a back's link listeners and fronts' names, no secrets", () => {
  const config = buildConfig({
    role: "back",
    link_listeners: [{ host: "::", port: 8443, tls_domain: ["a.example", "b.example"] }],
    fronts: [{ name: "home", secret: HEX }, { name: "office", secret: HEX.replace("0", "f") }],
  });
  const lines = formatLinkListeners(config);
  assertEquals(lines, [
    "link1 ([::]:8443), link listener for fronts: home, office",
    "  tls_domain       a.example, b.example",
  ]);
  assertEquals(formatLinks(config).lines, []);
});
