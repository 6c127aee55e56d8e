import {
  assert,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "./assert.ts";
import {
  buildConfig,
  buildConfigDraft,
  ConfigError,
  type ConfigOverrides,
  loadConfigDraftFile,
  loadConfigFile,
  parseConfig,
  parseConfigDraft,
  resolveSecrets,
  suggest,
} from "../lib/config/load.ts";
import * as defaults from "../lib/config/defaults.ts";
import {
  loadOrCreateState,
  readState,
  resolveStatePath,
  StateFileError,
  writeState,
} from "../lib/config/state.ts";
import { toHex } from "../lib/secret.ts";

const HEX = "0123456789abcdef0123456789abcdef";
const KEY = Uint8Array.from(HEX.match(/../g)!, (h) => parseInt(h, 16));

function problemsOf(fn: () => unknown): readonly string[] {
  const e = assertThrows(fn, ConfigError);
  return (e as ConfigError).problems;
}

// ---------------------------------------------------------------------------------------------
// Defaults and a full file

Deno.test("parseConfigDraft of an empty file gives one default listener and every default", () => {
  for (const text of ["", "# only a comment\n", "---\n"]) {
    const d = parseConfigDraft(text, "empty.yaml");
    assertEquals(d.listeners.length, 1);
    const l = d.listeners[0]!;
    assertEquals(l.name, defaults.DEFAULT_LISTENER_NAME);
    assertEquals(l.host, defaults.DEFAULT_HOST);
    assertEquals(l.port, defaults.DEFAULT_PORT);
    assertEquals(l.secret, null);
    assertEquals(l.tlsDomains, [defaults.DEFAULT_TLS_DOMAIN]);
    assertEquals(l.allowedProtocols, defaults.DEFAULT_ALLOWED_PROTOCOLS);
    assertEquals(d.allowedProtocols, defaults.DEFAULT_ALLOWED_PROTOCOLS);
    assertEquals(d.publicHost, null);
    assertEquals(d.logLevel, defaults.DEFAULT_LOG_LEVEL);
    assertEquals(d.maxConnections, defaults.DEFAULT_MAX_CONNECTIONS);
    assertEquals(d.telegram.defaultDc, defaults.DEFAULT_DC);
    assertEquals(d.telegram.preferIpv6, defaults.DEFAULT_PREFER_IPV6);
    assertEquals(d.telegram.dcAddresses.size, 0);
    assertEquals(d.timeouts, {
      handshakeMs: defaults.DEFAULT_HANDSHAKE_TIMEOUT_MS,
      idleMs: defaults.DEFAULT_IDLE_TIMEOUT_MS,
      dcConnectMs: defaults.DEFAULT_DC_CONNECT_TIMEOUT_MS,
      shutdownGraceMs: defaults.DEFAULT_SHUTDOWN_GRACE_MS,
    });
    assertEquals(d.tls.maxClockSkewMs, defaults.DEFAULT_TLS_MAX_CLOCK_SKEW_MS);
    assertEquals(d.stateFile, null);
    assertEquals(d.warnings, []);
  }
});

Deno.test("the defaults match the brief: port 1443, 30/1200/10/10 s timeouts, DC 2", () => {
  assertEquals(defaults.DEFAULT_PORT, 1443);
  assertEquals(defaults.DEFAULT_HOST, "0.0.0.0");
  assertEquals(defaults.DEFAULT_ALLOWED_PROTOCOLS, ["tls", "dd", "plain"]);
  assertEquals(defaults.DEFAULT_LOG_LEVEL, "info");
  assertEquals(defaults.DEFAULT_HANDSHAKE_TIMEOUT_MS, 30_000);
  assertEquals(defaults.DEFAULT_IDLE_TIMEOUT_MS, 1_200_000);
  assertEquals(defaults.DEFAULT_DC_CONNECT_TIMEOUT_MS, 10_000);
  assertEquals(defaults.DEFAULT_SHUTDOWN_GRACE_MS, 10_000);
  assertEquals(defaults.DEFAULT_TLS_MAX_CLOCK_SKEW_MS, 600_000);
  assertEquals(defaults.DEFAULT_DC, 2);
  assertEquals(defaults.DEFAULT_MAX_CONNECTIONS, 10_000);
  assertEquals(defaults.DEFAULT_TLS_DOMAIN, "www.cloudflare.com");
});

Deno.test("config.example.yaml parses and states exactly the defaults", async () => {
  const path = new URL("../config.example.yaml", import.meta.url);
  const text = await Deno.readTextFile(path);
  assertEquals(parseConfigDraft(text, "config.example.yaml"), parseConfigDraft("", "empty"));
  // Every commented-out example line is valid too once uncommented.
  const uncommented = text
    .replace('# secret: "', 'secret: "')
    .replace("# tls_domain: www.example.com", "tls_domain: www.example.com")
    .replace("# allowed_protocols: [tls]", "allowed_protocols: [tls]")
    .replace("# proxy_protocol: true", "proxy_protocol: true")
    .replace("# public_host:", "public_host:")
    .replace("# dc_addresses:", "dc_addresses:")
    .replace('#   "2":', '  "2":')
    .replace('#   "-2":', '  "-2":')
    .replace("# state_file:", "state_file:")
    .replace("# allow_ips:", "  allow_ips:")
    .replace("# deny_ips:", "  deny_ips:")
    .replace("# allow_sni:", "  allow_sni:")
    .replace("# deny_sni:", "  deny_sni:")
    .replace("# metrics:", "metrics:")
    .replace('#   listen: "127.0.0.1:9100"', '  listen: "127.0.0.1:9100"');
  const c = parseConfig(uncommented, "uncommented");
  assertEquals(c.metrics.listen, { host: "127.0.0.1", port: 9100 });
  assertEquals(c.policy, {
    maxConnectionsPerIp: 0,
    maxConnectionsPerSni: 0,
    allowIps: ["203.0.113.0/24", "2001:db8::/32"],
    denyIps: ["198.51.100.7"],
    allowSni: ["alice.example.com"],
    denySni: ["mallory.example.com"],
  });
  assertEquals(toHex(c.listeners[0]!.secret), HEX);
  assertEquals(c.listeners[0]!.tlsDomains, ["www.example.com"]);
  assertEquals(c.listeners[0]!.allowedProtocols, ["tls"]);
  assertEquals(c.listeners[0]!.proxyProtocol, true);
  assertEquals(c.publicHost, "proxy.example.com");
  assertEquals(c.telegram.dcAddresses.get(-2), { host: "2001:67c:4e8:f002::a", port: 443 });
});

Deno.test("parseConfig reads every key of a full file", () => {
  const c = parseConfig(
    `
listeners:
  - name: front
    host: "::"
    port: 443
    secret: ${HEX}
    tls_domain: [WWW.Example.com, cdn.example.com]
    allowed_protocols: tls
  - port: 8443
    host: 127.0.0.1
    secret: dd${HEX}
allowed_protocols: [dd, plain]
public_host: Proxy.Example.com
log_level: DEBUG
max_connections: 500
telegram:
  dc_addresses: { "2": "127.0.0.1:4432", "-2": "[::1]:443", 4: "dc4.example:443" }
  prefer_ipv6: true
  default_dc: 4
timeouts: { handshake: 1.5, idle: 60, dc_connect: 2, shutdown_grace: 0.25 }
tls: { max_clock_skew: 30 }
state_file: /var/lib/mtproxy/state.json
`,
    "full.yaml",
  );
  assertEquals(c.listeners.length, 2);
  const [a, b] = c.listeners;
  assertEquals(a!.name, "front");
  assertEquals(a!.host, "::");
  assertEquals(a!.port, 443);
  assertEquals(a!.secret, KEY);
  assertEquals(a!.tlsDomains, ["www.example.com", "cdn.example.com"]);
  assertEquals(a!.allowedProtocols, ["tls"]);
  assertEquals(b!.name, "listener2");
  assertEquals(b!.secret, KEY);
  assertEquals(b!.tlsDomains, [defaults.DEFAULT_TLS_DOMAIN]);
  assertEquals(b!.allowedProtocols, ["dd", "plain"]);
  assertEquals(c.allowedProtocols, ["dd", "plain"]);
  assertEquals(c.publicHost, "proxy.example.com");
  assertEquals(c.logLevel, "debug");
  assertEquals(c.maxConnections, 500);
  assertEquals(c.telegram.dcAddresses.size, 3);
  assertEquals(c.telegram.dcAddresses.get(2), { host: "127.0.0.1", port: 4432 });
  assertEquals(c.telegram.dcAddresses.get(-2), { host: "::1", port: 443 });
  assertEquals(c.telegram.dcAddresses.get(4), { host: "dc4.example", port: 443 });
  assertEquals(c.telegram.preferIpv6, true);
  assertEquals(c.telegram.defaultDc, 4);
  assertEquals(c.timeouts, {
    handshakeMs: 1500,
    idleMs: 60_000,
    dcConnectMs: 2000,
    shutdownGraceMs: 250,
  });
  assertEquals(c.tls.maxClockSkewMs, 30_000);
});

Deno.test("parseConfigDraft keeps state_file as written", () => {
  assertEquals(parseConfigDraft("state_file: ./s.json", "x").stateFile, "./s.json");
});

// ---------------------------------------------------------------------------------------------
// Problems

Deno.test("parseConfig reports every problem with its key path", () => {
  const problems = problemsOf(() =>
    parseConfigDraft(
      `
listeners:
  - name: a
    host: localhost
    port: abc
    secret: nothex
  - name: a
    port: 70000
    tls_domain: "bad domain"
allowed_protocols: [tls, tsl]
log_level: verbose
max_connections: 0
public_host: "a b"
telegram:
  dc_addresses: { "0": "1.2.3.4:443", "7": "nohost" }
  prefer_ipv6: yes
  default_dc: 9
timeouts: { handshake: -1, idle: forever }
tls: { max_clock_skew: 0 }
`,
      "bad.yaml",
    )
  );
  const expected = [
    'listeners[0].host: must be an IPv4 or IPv6 address literal such as 0.0.0.0 or ::: got "localhost"',
    'listeners[0].port: must be an integer 1-65535: got "abc"',
    'listeners[0].secret: must be 32 hex digits, "dd" + 32 hex digits, or an "ee" secret in hex or base64url: got "nothex"',
    "listeners[1].port: must be an integer 1-65535: got 70000",
    'listeners[1].tls_domain[0]: must be a host name of at most 182 characters: got "bad domain"',
    'allowed_protocols[1]: must be one of tls, dd, plain: got "tsl" (did you mean "tls"?)',
    'log_level: must be one of debug, info, warning, error: got "verbose"',
    "max_connections: must be an integer 1-10000000: got 0",
    'public_host: must be a host name or an IP address: got "a b"',
    'telegram.dc_addresses.0: DC id must be a nonzero integer -1000..1000: got "0"',
    'telegram.dc_addresses.7: must be "host:port" (IPv6 as "[addr]:port") with a port 1-65535: got "nohost"',
    'telegram.prefer_ipv6: must be true or false: got "yes"',
    "timeouts.handshake: must be a positive number of seconds up to 2147483: got -1",
    'timeouts.idle: must be a positive number of seconds up to 2147483: got "forever"',
    "tls.max_clock_skew: must be a positive number of seconds up to 2147483: got 0",
  ];
  for (const p of expected) assert(problems.includes(p), `missing ${p}\nin ${problems.join("\n")}`);
  assertEquals(problems.length, expected.length, problems.join("\n"));
});

Deno.test("ConfigError's message starts with 'Invalid configuration' and joins the problems", () => {
  const e = assertThrows(() => parseConfigDraft("log_level: loud", "x"), ConfigError);
  assertStringIncludes(e.message, "Invalid configuration: log_level: must be one of");
  assertEquals(e.name, "ConfigError");
});

Deno.test("parseConfig reports cross-field problems: duplicate names, addresses, unknown default_dc", () => {
  const problems = problemsOf(() =>
    parseConfigDraft(
      `
listeners:
  - { name: a, port: 443 }
  - { name: a, port: 443 }
  - { name: b, host: "::", port: 443 }
  - { name: c, host: "0:0::0", port: 443 }
telegram: { default_dc: 7 }
`,
      "dup.yaml",
    )
  );
  assertEquals(problems, [
    'listeners[1].name: duplicate listener name (also listeners[0]): got "a"',
    'listeners[1]: same address as listeners[0]: got "0.0.0.0:443"',
    'listeners[3]: same address as listeners[2]: got "[::]:443"',
    "telegram.default_dc: must be a built-in DC (1, 2, 3, 4, 5, 203) or a key of telegram.dc_addresses: got 7",
  ]);
});

Deno.test("parseConfig accepts a default_dc that dc_addresses defines", () => {
  const d = parseConfigDraft(
    'telegram: { default_dc: 7, dc_addresses: { 7: "10.0.0.7:443" } }',
    "x",
  );
  assertEquals(d.telegram.defaultDc, 7);
});

Deno.test("parseConfig flags unknown keys and suggests the likely one", () => {
  const problems = problemsOf(() =>
    parseConfigDraft(
      `
listeners:
  - prot: 443
    tls_domains: a.example
log-level: info
timeout: { idle: 5 }
port: 443
frobnicate: 1
telegram: { default-dc: 2 }
`,
      "typos.yaml",
    )
  );
  assertEquals(problems, [
    'listeners[0].prot: unknown key (did you mean "port"?)',
    'listeners[0].tls_domains: unknown key (did you mean "tls_domain"?)',
    'log-level: unknown key (did you mean "log_level"?)',
    'timeout: unknown key (did you mean "timeouts"?)',
    "port: unknown key (did you mean listeners[0].port?)",
    "frobnicate: unknown key (known keys: listeners, allowed_protocols, public_host, log_level, max_connections, telegram, timeouts, tls, replay, fronting, pool, external_ip, ip_lookup_urls, per_sni_secrets, per_sni_salt, state_file, policy, metrics)",
    'telegram.default-dc: unknown key (did you mean "default_dc"?)',
  ]);
});

Deno.test("parseConfig reports YAML syntax errors with line and column, never a stack", () => {
  const e = assertThrows(
    () => parseConfigDraft("log_level: info\nlisteners: [\n  - port: 1\n", "broken.yaml"),
    ConfigError,
  ) as ConfigError;
  assert(e.problems.length >= 1);
  assert(/^broken\.yaml:\d+:\d+: YAML syntax error: /.test(e.problems[0]!), e.problems[0]);
  const dup = problemsOf(() => parseConfigDraft("log_level: info\nlog_level: debug\n", "d.yaml"));
  assertEquals(dup, ["d.yaml:2:1: YAML syntax error: Map keys must be unique"]);
});

Deno.test("parseConfig rejects a file that is not a mapping, and empty lists", () => {
  assertEquals(problemsOf(() => parseConfigDraft("- a\n- b\n", "x")), [
    "(top level): must be a mapping of keys to values: got a list",
  ]);
  assertEquals(problemsOf(() => parseConfigDraft("just text", "x")), [
    '(top level): must be a mapping of keys to values: got "just text"',
  ]);
  assertEquals(problemsOf(() => parseConfigDraft("listeners: []\nallowed_protocols: []", "x")), [
    "listeners: must not be empty",
    "allowed_protocols: must not be empty",
  ]);
});

Deno.test("parseConfig keeps an all-digit secret intact instead of reading a number", () => {
  const digits = "01234567890123456789012345678901";
  const d = parseConfigDraft(`listeners: [{ secret: ${digits} }]`, "x");
  assertEquals(toHex(d.listeners[0]!.secret!), digits);
});

Deno.test("parseConfig takes the key of dd and ee secrets; an ee domain becomes tls_domain", () => {
  const eeHex = "ee" + HEX + toHex(new TextEncoder().encode("Fronted.Example.com"));
  const d = parseConfigDraft(
    `listeners:\n  - { port: 1, secret: ${eeHex} }\n  - { port: 2, secret: dd${HEX} }`,
    "x",
  );
  assertEquals(d.listeners[0]!.secret, KEY);
  assertEquals(d.listeners[0]!.tlsDomains, ["fronted.example.com"]);
  assertEquals(d.listeners[1]!.secret, KEY);
  assertEquals(d.listeners[1]!.tlsDomains, [defaults.DEFAULT_TLS_DOMAIN]);
  assertEquals(d.warnings, []);
});

Deno.test("parseConfig warns when an ee secret's domain is not among tls_domain", () => {
  const eeHex = "ee" + HEX + toHex(new TextEncoder().encode("a.example"));
  const d = parseConfigDraft(`listeners: [{ secret: ${eeHex}, tls_domain: b.example }]`, "x");
  assertEquals(d.listeners[0]!.tlsDomains, ["b.example"]);
  assertEquals(d.warnings.length, 1);
  assertStringIncludes(d.warnings[0]!, 'listeners[0].secret: its "ee" domain "a.example"');
});

Deno.test("parseConfig reports a bad ee domain as such", () => {
  const eeHex = "ee" + HEX + toHex(new TextEncoder().encode("bad domain"));
  const [p] = problemsOf(() => parseConfigDraft(`listeners: [{ secret: ${eeHex} }]`, "x"));
  assertStringIncludes(p!, 'listeners[0].secret: has an invalid "ee" domain');
});

// ---------------------------------------------------------------------------------------------
// Overrides

const OVERRIDES: ConfigOverrides = {
  host: { value: "127.0.0.1", source: "--host" },
  port: { value: "8443", source: "MTP_PORT" },
  secret: { value: "dd" + HEX, source: "--secret" },
  tlsDomains: { value: ["cli.example"], source: "--tls-domain" },
  allowedProtocols: { value: ["tls"], source: "MTP_ALLOW" },
  publicHost: { value: "203.0.113.5", source: "--public-host" },
  logLevel: { value: "warning", source: "MTP_LOG_LEVEL" },
};

Deno.test("buildConfigDraft lays overrides over the file, first listener only", () => {
  const d = buildConfigDraft(
    {
      listeners: [
        { name: "one", port: 443, tls_domain: "file.example", allowed_protocols: ["plain"] },
        { name: "two", port: 444, allowed_protocols: ["dd"] },
      ],
      log_level: "debug",
      public_host: "file.example",
    },
    { overrides: OVERRIDES },
  );
  const [one, two] = d.listeners;
  assertEquals(one!.host, "127.0.0.1");
  assertEquals(one!.port, 8443);
  assertEquals(one!.secret, KEY);
  assertEquals(one!.tlsDomains, ["cli.example"]);
  assertEquals(one!.allowedProtocols, ["tls"]);
  assertEquals(two!.port, 444);
  assertEquals(two!.secret, null);
  assertEquals(two!.allowedProtocols, ["tls"]);
  assertEquals(d.publicHost, "203.0.113.5");
  assertEquals(d.logLevel, "warning");
});

Deno.test("buildConfigDraft creates the default listener for listener overrides", () => {
  for (const raw of [null, {}, { listeners: [] }]) {
    const d = buildConfigDraft(raw, { overrides: { port: { value: 443, source: "--port" } } });
    assertEquals(d.listeners.map((l) => [l.name, l.host, l.port]), [["main", "0.0.0.0", 443]]);
  }
});

Deno.test("buildConfigDraft names the override behind a bad value", () => {
  const problems = problemsOf(() =>
    buildConfigDraft(null, {
      overrides: {
        port: { value: "abc", source: "MTP_PORT" },
        allowedProtocols: { value: ["tls", "udp"], source: "--allow" },
        secret: { value: "short", source: "--secret" },
      },
    })
  );
  assertEquals(problems, [
    'allowed_protocols[1] (from --allow): must be one of tls, dd, plain: got "udp"',
    'listeners[0].port (from MTP_PORT): must be an integer 1-65535: got "abc"',
    'listeners[0].secret (from --secret): must be 32 hex digits, "dd" + 32 hex digits, or an "ee" secret in hex or base64url: got "short"',
  ]);
});

Deno.test("buildConfigDraft does not change the value it was given", () => {
  const raw = { listeners: [{ port: 1 }] };
  buildConfigDraft(raw, { overrides: { port: { value: 2, source: "x" } } });
  assertEquals(raw, { listeners: [{ port: 1 }] });
});

// ---------------------------------------------------------------------------------------------
// Secrets and freezing

Deno.test("resolveSecrets fills missing secrets from the state secret only", () => {
  const draft = parseConfigDraft(
    `listeners:\n  - { port: 1 }\n  - { port: 2, secret: "${"ff".repeat(16)}" }`,
    "x",
  );
  const state = new Uint8Array(16).fill(7);
  const c = resolveSecrets(draft, state);
  assertEquals(c.listeners[0]!.secret, state);
  assertEquals(c.listeners[1]!.secret, new Uint8Array(16).fill(0xff));
  const problems = problemsOf(() => resolveSecrets(draft, null));
  assertEquals(problems.length, 1);
  assertStringIncludes(problems[0]!, "listeners[0].secret: missing");
});

Deno.test("parseConfig without a state secret requires every listener to have one", () => {
  assertThrows(() => parseConfig("", "x"), ConfigError, "listeners[0].secret: missing");
  const c = parseConfig("", "x", { stateSecret: KEY });
  assertEquals(c.listeners[0]!.secret, KEY);
});

Deno.test("the final Config is deeply frozen", () => {
  const c = buildConfig(
    { telegram: { dc_addresses: { "2": "127.0.0.1:1" } } },
    { stateSecret: KEY },
  );
  assert(Object.isFrozen(c));
  assert(Object.isFrozen(c.listeners));
  assert(Object.isFrozen(c.listeners[0]));
  assert(Object.isFrozen(c.listeners[0]!.tlsDomains));
  assert(Object.isFrozen(c.listeners[0]!.allowedProtocols));
  assert(Object.isFrozen(c.allowedProtocols));
  assert(Object.isFrozen(c.telegram));
  assert(Object.isFrozen(c.timeouts));
  assert(Object.isFrozen(c.tls));
  assert(Object.isFrozen(c.telegram.dcAddresses.get(2)));
  const map = c.telegram.dcAddresses as Map<number, unknown>;
  assertThrows(() => map.set(3, {}), TypeError, "read-only");
  assertThrows(() => map.delete(2), TypeError, "read-only");
  assertThrows(() => map.clear(), TypeError, "read-only");
  assertEquals(c.telegram.dcAddresses.size, 1);
  // The secret is a copy: changing the caller's bytes changes nothing.
  const state = KEY.slice();
  const c2 = buildConfig(null, { stateSecret: state });
  state.fill(0);
  assertEquals(c2.listeners[0]!.secret, KEY);
});

// ---------------------------------------------------------------------------------------------
// Files

Deno.test("loadConfigFile reads a file; a missing file is a ConfigError", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/c.yaml`;
    await Deno.writeTextFile(path, `listeners: [{ port: 443, secret: "${HEX}" }]\n`);
    const c = await loadConfigFile(path);
    assertEquals(c.listeners[0]!.port, 443);
    const d = await loadConfigDraftFile(path, { overrides: { port: { value: 1, source: "x" } } });
    assertEquals(d.listeners[0]!.port, 1);
    const e = await assertRejects(() => loadConfigFile(`${dir}/nope.yaml`), ConfigError);
    assertEquals((e as ConfigError).problems, [
      `Cannot read config file ${JSON.stringify(`${dir}/nope.yaml`)}: no such file`,
    ]);
    await Deno.writeTextFile(path, "listeners: [\n");
    const e2 = await assertRejects(() => loadConfigFile(path), ConfigError);
    assert((e2 as ConfigError).problems[0]!.startsWith(`${path}:`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("suggest finds typos, case and dash variants, and nothing for strangers", () => {
  assertEquals(suggest("prot", ["port", "host"]), "port");
  assertEquals(suggest("LOG-LEVEL", ["log_level"]), "log_level");
  assertEquals(suggest("timeout", ["timeouts", "tls"]), "timeouts");
  assertEquals(suggest("warn", ["debug", "info", "warning", "error"]), "warning");
  assertEquals(suggest("xyzzy", ["port", "host"]), undefined);
});

// ---------------------------------------------------------------------------------------------
// State file

Deno.test("resolveStatePath prefers MTP_STATE_FILE, then state_file, then the config directory", () => {
  const env = { MTP_STATE_FILE: "rel/state.json" };
  assertEquals(
    resolveStatePath({ env, stateFile: "/x.json", cwd: "/work" }),
    "/work/rel/state.json",
  );
  assertEquals(
    resolveStatePath({ stateFile: "s.json", configPath: "/etc/mtp/c.yaml", cwd: "/work" }),
    "/etc/mtp/s.json",
  );
  assertEquals(resolveStatePath({ stateFile: "/abs/s.json", cwd: "/work" }), "/abs/s.json");
  assertEquals(
    resolveStatePath({ configPath: "conf/c.yaml", cwd: "/work" }),
    "/work/conf/mtproxy-state.json",
  );
  assertEquals(resolveStatePath({ cwd: "/work" }), "/work/mtproxy-state.json");
  assertEquals(
    resolveStatePath({ env: { MTP_STATE_FILE: " " }, cwd: "/w" }),
    "/w/mtproxy-state.json",
  );
});

Deno.test("loadOrCreateState makes a secret once, keeps it, and writes mode 0600", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/sub/state.json`;
    assertEquals(await readState(path), null);
    const first = await loadOrCreateState(path);
    assert(first.created);
    assertEquals(first.state.secret.length, 16);
    const again = await loadOrCreateState(path);
    assert(!again.created);
    assertEquals(again.state.secret, first.state.secret);
    assertEquals(again.state.createdAt, first.state.createdAt);
    if (Deno.build.os !== "windows") assertEquals((await Deno.stat(path)).mode! & 0o777, 0o600);
    const doc = JSON.parse(await Deno.readTextFile(path));
    assertEquals(doc.version, 1);
    assertEquals(doc.secret, toHex(first.state.secret));
    // No temporary files are left behind.
    const names = [];
    for await (const e of Deno.readDir(`${dir}/sub`)) names.push(e.name);
    assertEquals(names, ["state.json"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadOrCreateState gives racing callers the same secret", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/state.json`;
    const results = await Promise.all(Array.from({ length: 8 }, () => loadOrCreateState(path)));
    const secrets = new Set(results.map((r) => toHex(r.state.secret)));
    assertEquals(secrets.size, 1);
    assertEquals(toHex((await readState(path))!.secret), [...secrets][0]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeState replaces the file atomically and readState reads it back", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/state.json`;
    await writeState(path, { secret: KEY, createdAt: "2026-01-01T00:00:00.000Z" });
    await writeState(path, { secret: KEY, createdAt: "2026-01-02T00:00:00.000Z" });
    assertEquals(await readState(path), { secret: KEY, createdAt: "2026-01-02T00:00:00.000Z" });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a corrupt state file is a clear StateFileError", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/state.json`;
    const cases: [string, string][] = [
      ["{not json", "not JSON"],
      ["[1]", "expected a JSON object"],
      ['{"version": 2, "secret": "00"}', "unsupported version: got 2"],
      ['{"version": 1}', '"secret" must be a string'],
      ['{"version": 1, "secret": "dd' + HEX + '"}', '"secret" must be 32 hex digits'],
    ];
    for (const [text, why] of cases) {
      await Deno.writeTextFile(path, text);
      const e = await assertRejects(() => loadOrCreateState(path), StateFileError, why);
      assertStringIncludes(e.message, `State file ${JSON.stringify(path)} is not valid`);
      assertEquals(await Deno.readTextFile(path), text, "a corrupt file is left alone");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("metrics.listen: off by default, an ip:port to bind, a warning off loopback", () => {
  assertEquals(parseConfigDraft("", "x").metrics.listen, null);
  const v6 = parseConfigDraft('metrics: { listen: "[::1]:9100" }', "x");
  assertEquals(v6.metrics.listen, { host: "::1", port: 9100 });
  assertEquals(v6.warnings, []);
  const open = parseConfigDraft('metrics: { listen: "0.0.0.0:9100" }', "x");
  assertEquals(open.metrics.listen, { host: "0.0.0.0", port: 9100 });
  assertEquals(open.warnings.length, 1);
  assertStringIncludes(open.warnings[0]!, "metrics.listen: not a loopback address");
  for (const bad of ["localhost:9100", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "9100"]) {
    const problems = problemsOf(() => parseConfig(`metrics: { listen: "${bad}" }`, "x"));
    assertEquals(problems.length, 1, bad);
    assertStringIncludes(problems[0]!, 'metrics.listen: must be "ip:port"');
  }
});

Deno.test("policy: no limits and no lists by default; networks and SNIs are checked", () => {
  assertEquals(parseConfigDraft("", "x").policy, {
    maxConnectionsPerIp: 0,
    maxConnectionsPerSni: 0,
    allowIps: [],
    denyIps: [],
    allowSni: [],
    denySni: [],
  });
  const c = parseConfigDraft(
    "policy: { max_connections_per_ip: 8, deny_ips: ' 10.0.0.0/8 ', allow_sni: [A.Example] }",
    "x",
  );
  assertEquals(c.policy.maxConnectionsPerIp, 8);
  assertEquals(c.policy.denyIps, ["10.0.0.0/8"]);
  assertEquals(c.policy.allowSni, ["a.example"]);
  const problems = problemsOf(() =>
    parseConfig(
      "policy: { max_connections_per_ip: -1, allow_ips: [10.0.0.0/33, fe80::/64], deny_sni: ['a b'] }",
      "x",
    )
  );
  assertEquals(problems.length, 3, problems.join("\n"));
  assertStringIncludes(problems[0]!, "policy.max_connections_per_ip: must be an integer");
  assertStringIncludes(problems[1]!, "policy.allow_ips[0]: must be an IP address or a network");
  assertStringIncludes(problems[2]!, "policy.deny_sni[0]: must be a host name");
});

Deno.test("listeners[].proxy_protocol: off by default, a boolean", () => {
  const d = parseConfigDraft("listeners: [{ port: 1 }, { port: 2, proxy_protocol: true }]", "x");
  assertEquals(d.listeners.map((l) => l.proxyProtocol), [false, true]);
  // Behind an SNI-routing balancer, sni fronting could dial the balancer and loop: a warning.
  assertEquals(d.warnings.length, 1);
  assertStringIncludes(d.warnings[0]!, 'listeners[1].proxy_protocol: with fronting.mode "sni"');
  const fixed = parseConfigDraft(
    "listeners: [{ proxy_protocol: true }]\nfronting: { mode: '127.0.0.1:8443' }",
    "x",
  );
  assertEquals(fixed.warnings, []);
  const problems = problemsOf(() => parseConfig("listeners: [{ proxy_protocol: v2 }]", "x"));
  assertEquals(problems.length, 1);
  assertStringIncludes(problems[0]!, "listeners[0].proxy_protocol:");
});
