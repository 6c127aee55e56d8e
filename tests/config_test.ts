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
import { resolveRunConfig } from "../lib/cli/options.ts";

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
      drainMs: defaults.DEFAULT_DRAIN_MS,
    });
    assertEquals(d.workers, "auto");
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
timeouts: { handshake: 1.5, idle: 60, dc_connect: 2, shutdown_grace: 0.25, drain: 90 }
workers: 3
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
    drainMs: 90_000,
  });
  assertEquals(c.workers, 3);
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
workers: many
`,
      "bad.yaml",
    )
  );
  const expected = [
    'listeners[0].host: must be an IPv4 or IPv6 address literal such as 0.0.0.0 or ::: got "localhost"',
    'listeners[0].port: must be an integer 1-65535: got "abc"',
    'listeners[0].secret: must be 32 hex digits, "dd" + 32 hex digits, or an "ee" secret in hex or base64url: got 6 characters, not all hex digits',
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
    'workers: must be auto or an integer 1-256: got "many"',
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
    "frobnicate: unknown key (known keys: role, workers, listeners, allowed_protocols, public_host, log_level, max_connections, telegram, timeouts, tls, replay, fronting, pool, external_ip, ip_lookup_urls, per_sni_secrets, per_sni_salt, state_file, policy, metrics, users, users_file, admin, shared_state, backs, link_listeners, fronts, default_tag, link)",
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
    'listeners[0].secret (from --secret): must be 32 hex digits, "dd" + 32 hex digits, or an "ee" secret in hex or base64url: got 5 characters, not all hex digits',
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

// ---------------------------------------------------------------------------------------------
// Split mode: roles, backs, link listeners, fronts, link

const HEX2 = "fedcba9876543210fedcba9876543210";
const KEY2 = Uint8Array.from(HEX2.match(/../g)!, (h) => parseInt(h, 16));
const MINIMAL_FRONT = { role: "front", backs: [{ address: "back.example.com:443", secret: HEX }] };
const MINIMAL_BACK = {
  role: "back",
  link_listeners: [{}],
  fronts: [{ name: "home", secret: HEX }],
};

Deno.test("role is standalone by default, with no split-mode parts and the link defaults", () => {
  const c = buildConfig(null, { stateSecret: KEY });
  assertEquals(c.role, "standalone");
  assertEquals(defaults.DEFAULT_ROLE, "standalone");
  assertEquals(c.backs, []);
  assertEquals(c.linkListeners, []);
  assertEquals(c.fronts, []);
  assertEquals(c.defaultTag, null);
  assertEquals(c.link, {
    windowBytes: 262_144,
    keepaliveMs: 10_000,
    timeoutMs: 30_000,
    waitMs: 5_000,
  });
  assertEquals(c.link, defaults.DEFAULT_LINK);
  assertEquals(buildConfig({ role: "standalone" }, { stateSecret: KEY }).role, "standalone");
});

Deno.test("a minimal front has its backs with defaults and keeps its client listeners", () => {
  const c = buildConfig(MINIMAL_FRONT, { stateSecret: KEY });
  assertEquals(c.role, "front");
  assertEquals(c.backs, [{
    address: { host: "back.example.com", port: 443 },
    secret: KEY,
    tlsDomain: defaults.DEFAULT_TLS_DOMAIN,
    links: defaults.DEFAULT_BACK_LINKS,
  }]);
  assertEquals(defaults.DEFAULT_BACK_LINKS, 2);
  assertEquals(c.listeners.length, 1);
  assertEquals(c.listeners[0]!.name, defaults.DEFAULT_LISTENER_NAME);
  assertEquals(c.linkListeners, []);
  assertEquals(c.fronts, []);
  assert(Object.isFrozen(c.backs[0]));
});

Deno.test("a front keeps listeners, secrets, fronting, policy, replay, per-SNI, tls, timeouts, metrics", () => {
  const c = parseConfig(
    `
role: front
listeners: [{ port: 443, secret: "${HEX}", tls_domain: a.example, tag: "${HEX2}" }]
allowed_protocols: [tls]
public_host: proxy.example.com
max_connections: 50
fronting: { mode: sni }
policy: { max_connections_per_ip: 5 }
replay: { max_entries: 10 }
per_sni_secrets: true
per_sni_salt: salt
tls: { max_clock_skew: 60 }
timeouts: { idle: 60 }
metrics: { listen: "127.0.0.1:9100" }
backs:
  - { address: "[2001:DB8::1]:8443", secret: "${HEX}", tls_domain: B.Example, links: 16 }
  - { address: "203.0.113.7:443", secret: "${HEX2}", links: 1 }
link: { window: 16384, keepalive: 1.5, timeout: 2, wait: 0.5 }
`,
    "front.yaml",
  );
  assertEquals(c.role, "front");
  assertEquals(c.listeners[0]!.tag, KEY2);
  assertEquals(c.maxConnections, 50);
  assertEquals(c.policy.maxConnectionsPerIp, 5);
  assertEquals(c.perSniSecrets, true);
  assertEquals(c.backs.map((b) => [b.address, b.tlsDomain, b.links]), [
    [{ host: "2001:db8::1", port: 8443 }, "b.example", 16],
    [{ host: "203.0.113.7", port: 443 }, defaults.DEFAULT_TLS_DOMAIN, 1],
  ]);
  assertEquals(c.backs[1]!.secret, KEY2);
  assertEquals(c.link, { windowBytes: 16384, keepaliveMs: 1500, timeoutMs: 2000, waitMs: 500 });
});

Deno.test("a minimal back has no client listeners and needs no state-file secret", () => {
  const d = buildConfigDraft(MINIMAL_BACK);
  assertEquals(d.role, "back");
  assertEquals(d.listeners, []);
  const c = resolveSecrets(d, null);
  assertEquals(c.listeners, []);
  assertEquals(c.linkListeners, [{
    name: "link1",
    host: defaults.DEFAULT_HOST,
    port: defaults.DEFAULT_LINK_LISTENER_PORT,
    tlsDomains: [defaults.DEFAULT_TLS_DOMAIN],
  }]);
  assertEquals(defaults.DEFAULT_LINK_LISTENER_PORT, 443);
  assertEquals(c.fronts, [{ name: "home", secret: KEY }]);
  assertEquals(c.defaultTag, null);
  assertEquals(c.backs, []);
  assert(Object.isFrozen(c.fronts[0]) && Object.isFrozen(c.linkListeners[0]!.tlsDomains));
});

Deno.test("a back reads link listeners, fronts, default_tag and keeps its Telegram side", () => {
  const c = parseConfig(
    `
role: BACK
link_listeners:
  - { host: "::", port: 8443, tls_domain: [A.example, b.example] }
  - { name: alt, port: 443 }
fronts:
  - name: home
    secret: "${HEX}"
  - name: office.2
    secret: "${HEX2.toUpperCase()}"
default_tag: "${HEX2}"
telegram: { mode: middle }
pool: { min_connections: 1 }
external_ip: 203.0.113.9
fronting: { mode: off }
metrics: { listen: "127.0.0.1:9100" }
`,
    "back.yaml",
  );
  assertEquals(c.role, "back");
  assertEquals(c.linkListeners.map((l) => [l.name, l.host, l.port, l.tlsDomains]), [
    ["link1", "::", 8443, ["a.example", "b.example"]],
    ["alt", "0.0.0.0", 443, [defaults.DEFAULT_TLS_DOMAIN]],
  ]);
  assertEquals(c.fronts.map((f) => [f.name, toHex(f.secret)]), [["home", HEX], ["office.2", HEX2]]);
  assertEquals(c.defaultTag, KEY2);
  assertEquals(c.telegram.mode, "middle");
  assertEquals(c.pool.minConnections, 1);
  assertEquals(c.externalIp, "203.0.113.9");
});

Deno.test("a standalone proxy refuses every split-mode key, naming the role it belongs to", () => {
  const problems = problemsOf(() =>
    buildConfig({
      backs: MINIMAL_FRONT.backs,
      link_listeners: [{}],
      fronts: MINIMAL_BACK.fronts,
      default_tag: HEX,
      link: { window: 16384 },
    }, { stateSecret: KEY })
  );
  assertEquals(problems, [
    'backs: only for role "front"',
    'link_listeners: only for role "back"',
    'fronts: only for role "back"',
    'default_tag: only for role "back"',
    'link: only for roles "front" and "back"',
  ]);
  assert(!problems.join().includes(HEX), "no secret in the problems");
});

Deno.test("a front refuses the Telegram side: set it on the back", () => {
  const refused: Record<string, unknown> = {
    telegram: { mode: "direct" },
    pool: { min_connections: 1 },
    external_ip: "203.0.113.5",
    ip_lookup_urls: ["https://ip.example/"],
    link_listeners: [{}],
    fronts: [{ name: "home", secret: HEX2 }],
    default_tag: HEX2,
  };
  for (const [key, value] of Object.entries(refused)) {
    const problems = problemsOf(() =>
      buildConfig({ ...MINIMAL_FRONT, [key]: value }, { stateSecret: KEY })
    );
    assertEquals(problems, [`${key}: a front has no Telegram side: set it on the back`]);
  }
  // Set to nothing is the same as left out.
  assertEquals(
    buildConfig({ ...MINIMAL_FRONT, telegram: null }, { stateSecret: KEY }).role,
    "front",
  );
});

Deno.test("a back refuses client-side keys: set it on the front", () => {
  const refused: Record<string, unknown> = {
    listeners: [{ secret: HEX2 }],
    backs: MINIMAL_FRONT.backs,
    allowed_protocols: ["tls"],
    per_sni_secrets: true,
    per_sni_salt: "salt",
    policy: { max_connections_per_ip: 1 },
    public_host: "proxy.example.com",
    max_connections: 10,
  };
  for (const [key, value] of Object.entries(refused)) {
    const problems = problemsOf(() => buildConfig({ ...MINIMAL_BACK, [key]: value }));
    assertEquals(problems, [`${key}: a back has no client listeners: set it on the front`]);
  }
});

Deno.test("a front needs backs, a back needs link listeners and fronts, each entry its keys", () => {
  assertEquals(problemsOf(() => buildConfigDraft({ role: "front" })), [
    "backs: missing: a front needs at least one back to carry its clients to",
  ]);
  assertEquals(problemsOf(() => buildConfigDraft({ role: "front", backs: [] })), [
    "backs: must not be empty",
  ]);
  assertEquals(problemsOf(() => buildConfigDraft({ role: "back" })), [
    "link_listeners: missing: a back needs at least one link listener for fronts to connect to",
    "fronts: missing: a back needs at least one front to accept",
  ]);
  assertEquals(
    problemsOf(() => buildConfigDraft({ role: "back", link_listeners: [], fronts: [] })),
    ["link_listeners: must not be empty", "fronts: must not be empty"],
  );
  const entries = problemsOf(() => buildConfigDraft({ role: "front", backs: [{}, null] }));
  assertEquals(entries.length, 4);
  assertStringIncludes(entries[0]!, "backs[0].address: missing:");
  assertStringIncludes(entries[1]!, "backs[0].secret: missing: the link secret the back lists");
  assertStringIncludes(entries[2]!, "backs[1].address: missing:");
  const fronts = problemsOf(() =>
    buildConfigDraft({
      role: "back",
      link_listeners: [{}],
      fronts: [{ secret: HEX }, { name: "x" }],
    })
  );
  assertEquals(fronts.map((p) => p.split(": missing")[0]), ["fronts[0].name", "fronts[1].secret"]);
});

Deno.test("an invalid role is reported alone, with a suggestion, and no role rules apply", () => {
  assertEquals(problemsOf(() => buildConfigDraft({ role: "frnt", telegram: {} })), [
    'role: must be one of standalone, front, back: got "frnt" (did you mean "front"?)',
  ]);
});

Deno.test("backs, link listeners and fronts: duplicates are refused", () => {
  const backs = problemsOf(() =>
    buildConfigDraft({
      role: "front",
      backs: [
        { address: "Back.example.com:443", secret: HEX },
        { address: "back.example.com:443", secret: HEX2 },
        { address: "[2001:db8:0::1]:443", secret: HEX },
        { address: "[2001:db8::1]:443", secret: HEX2 },
      ],
    })
  );
  assertEquals(backs, [
    'backs[1].address: same address as backs[0]: got "back.example.com:443"',
    'backs[3].address: same address as backs[2]: got "[2001:db8::1]:443"',
  ]);
  const links = problemsOf(() =>
    buildConfigDraft({
      ...MINIMAL_BACK,
      link_listeners: [{ name: "a" }, { name: "a", port: 8443 }, { name: "b", host: "0.0.0.0" }],
    })
  );
  assertEquals(links, [
    'link_listeners[1].name: duplicate link listener name (also link_listeners[0]): got "a"',
    'link_listeners[2]: same address as link_listeners[0]: got "0.0.0.0:443"',
  ]);
  const fronts = problemsOf(() =>
    buildConfigDraft({
      ...MINIMAL_BACK,
      fronts: [
        { name: "home", secret: HEX },
        { name: "home", secret: HEX2 },
        { name: "office", secret: HEX.toUpperCase() },
      ],
    })
  );
  assertEquals(fronts, [
    'fronts[1].name: duplicate front name (also fronts[0]): got "home"',
    "fronts[2].secret: same secret as fronts[0]: the back could not tell them apart; give each front its own",
  ]);
});

Deno.test("link secrets are exactly 32 hex digits, and a problem never shows the value", () => {
  const cases: [unknown, string][] = [
    [HEX.slice(0, 30), "must be 32 hex digits: got 30 characters"],
    [`dd${HEX}`, "must be 32 hex digits: got 34 characters"],
    [HEX.slice(0, 31) + "g", "must be 32 hex digits: it has characters that are not hex digits"],
    [[HEX], "must be a string of 32 hex digits: got a list"],
    [true, "must be a string of 32 hex digits: got true or false"],
  ];
  for (const [secret, reason] of cases) {
    for (
      const raw of [
        { role: "front", backs: [{ address: "b.example:443", secret }] },
        { ...MINIMAL_BACK, fronts: [{ name: "home", secret }] },
      ]
    ) {
      const problems = problemsOf(() => buildConfigDraft(raw));
      assertEquals(problems.length, 1, problems.join("\n"));
      const where = raw.role === "front" ? "backs[0].secret" : "fronts[0].secret";
      assertStringIncludes(problems[0]!, `${where}: ${reason} (make one with`);
      if (typeof secret === "string") {
        assert(!problems[0]!.includes(secret), `secret echoed: ${problems[0]}`);
        assert(!problems[0]!.includes(secret.slice(0, 8)), `secret echoed: ${problems[0]}`);
      }
    }
  }
});

Deno.test("all-digit link secrets in backs and fronts stay strings in YAML", () => {
  const digits = "01234567890123456789012345678901";
  const front = parseConfig(
    `role: front\nbacks:\n  - address: b.example:443\n    secret: ${digits}\n`,
    "f.yaml",
    { stateSecret: KEY },
  );
  assertEquals(toHex(front.backs[0]!.secret), digits);
  const back = parseConfig(
    `role: back\nlink_listeners: [{}]\nfronts: [{ name: home, secret: ${digits} }]\n`,
    "b.yaml",
  );
  assertEquals(toHex(back.fronts[0]!.secret), digits);
});

Deno.test("backs[] and link_listeners[] values are checked", () => {
  const front = problemsOf(() =>
    buildConfigDraft({
      role: "front",
      backs: [{ address: "back.example.com", secret: HEX, tls_domain: "not a domain", links: 17 }],
    })
  );
  assertEquals(front, [
    'backs[0].address: must be "host:port" (IPv6 as "[addr]:port") with a port 1-65535: got "back.example.com"',
    'backs[0].tls_domain: must be a host name of at most 182 characters: got "not a domain"',
    "backs[0].links: must be an integer 1-16: got 17",
  ]);
  assertEquals(
    problemsOf(() =>
      buildConfigDraft({ role: "front", backs: [{ address: "b:1", secret: HEX, links: 0 }] })
    ),
    [
      "backs[0].links: must be an integer 1-16: got 0",
    ],
  );
  const back = problemsOf(() =>
    buildConfigDraft({
      ...MINIMAL_BACK,
      link_listeners: [{ name: "bad name", host: "example.com", port: 0, tls_domain: [] }],
    })
  );
  assertEquals(back.map((p) => p.split(":")[0]), [
    "link_listeners[0].name",
    "link_listeners[0].host",
    "link_listeners[0].port",
    "link_listeners[0].tls_domain",
  ]);
  assertEquals(problemsOf(() => buildConfigDraft({ ...MINIMAL_BACK, default_tag: "abc" })), [
    "default_tag: must be 32 hex digits (the tag from @MTProxybot; quote it): got 3 hex digits",
  ]);
});

Deno.test("link.*: window 16384-16777216, positive seconds, timeout longer than keepalive", () => {
  const ok = buildConfigDraft({ ...MINIMAL_FRONT, link: { window: 16 * 1024 * 1024 } });
  assertEquals(ok.link.windowBytes, 16_777_216);
  const cases: [Record<string, unknown>, string][] = [
    [{ window: 16383 }, "link.window: must be an integer 16384-16777216: got 16383"],
    [{ window: 16_777_217 }, "link.window: must be an integer 16384-16777216: got 16777217"],
    [{ keepalive: 0 }, "link.keepalive: must be a positive number of seconds up to 2147483: got 0"],
    [{ wait: -1 }, "link.wait: must be a positive number of seconds up to 2147483: got -1"],
    [
      { timeout: 10 },
      "link.timeout: must be longer than link.keepalive (10 s), or a live link would be declared dead between pings: got 10",
    ],
    [
      { keepalive: 40 },
      "link.timeout: must be longer than link.keepalive (40 s), or a live link would be declared dead between pings: got 30",
    ],
    [{ timeut: 40 }, 'link.timeut: unknown key (did you mean "timeout"?)'],
  ];
  for (const [link, problem] of cases) {
    for (const base of [MINIMAL_FRONT, MINIMAL_BACK]) {
      assertEquals(problemsOf(() => buildConfigDraft({ ...base, link })), [problem]);
    }
  }
  assertEquals(
    buildConfigDraft({ ...MINIMAL_BACK, link: { keepalive: 40, timeout: 41 } }).link.timeoutMs,
    41_000,
  );
});

Deno.test("role comes from the flag over the environment over the file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mtproxy_role_test_" });
  try {
    await Deno.writeTextFile(
      `${dir}/back.yaml`,
      `role: back\nlink_listeners: [{}]\nfronts: [{ name: home, secret: "${HEX}" }]\n`,
    );
    const file = await resolveRunConfig(["--config", "back.yaml"], {}, { cwd: dir });
    assertEquals(file.config.role, "back");
    assertEquals(file.stateUsed, false);
    const env = { MTP_CONFIG: "back.yaml", MTP_ROLE: "front" };
    const fromEnv = await assertRejects(() => resolveRunConfig([], env, { cwd: dir }), ConfigError);
    assertEquals((fromEnv as ConfigError).problems, [
      "link_listeners: a front has no Telegram side: set it on the back",
      "fronts: a front has no Telegram side: set it on the back",
      "backs: missing: a front needs at least one back to carry its clients to",
    ]);
    const fromFlag = await resolveRunConfig(["--role", "back"], env, { cwd: dir });
    assertEquals(fromFlag.config.role, "back");
    const bad = await assertRejects(
      () => resolveRunConfig([], { ...env, MTP_ROLE: "middle" }, { cwd: dir }),
      ConfigError,
    );
    assertEquals((bad as ConfigError).problems, [
      'role (from MTP_ROLE): must be one of standalone, front, back: got "middle"',
    ]);
    const flagBad = await assertRejects(
      () => resolveRunConfig(["--role", "frnt"], env, { cwd: dir }),
      ConfigError,
    );
    assertStringIncludes(String(flagBad), "role (from --role): must be one of");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("listener overrides on a back are refused with their source, not silently dropped", () => {
  const o: ConfigOverrides = { port: { value: "443", source: "MTP_PORT" } };
  assertEquals(problemsOf(() => buildConfigDraft(MINIMAL_BACK, { overrides: o })), [
    "listeners (from MTP_PORT): a back has no client listeners: set it on the front",
  ]);
  const allow: ConfigOverrides = { allowedProtocols: { value: ["tls"], source: "--allow" } };
  assertEquals(problemsOf(() => buildConfigDraft(MINIMAL_BACK, { overrides: allow })), [
    "allowed_protocols (from --allow): a back has no client listeners: set it on the front",
  ]);
  // The role override decides whether a default listener is invented.
  const role: ConfigOverrides = { role: { value: "back", source: "--role" } };
  const d = buildConfigDraft({ link_listeners: [{}], fronts: MINIMAL_BACK.fronts }, {
    overrides: role,
  });
  assertEquals([d.role, d.listeners.length], ["back", 0]);
});

Deno.test("config.example.yaml's split-mode examples validate once uncommented", async () => {
  const text = await Deno.readTextFile(new URL("../config.example.yaml", import.meta.url));
  const lines = text.split("\n");
  /** The commented-out block that starts with `first`, up to the next bare "#", uncommented. */
  const block = (first: string) => {
    const start = lines.indexOf(`# ${first}`);
    assert(start >= 0, `no "# ${first}" in config.example.yaml`);
    const end = lines.findIndex((l, i) => i > start && !l.startsWith("# "));
    return lines.slice(start, end < 0 ? undefined : end).map((l) => l.slice(2)).join("\n");
  };
  const link = block("link:");
  const front = parseConfig(`role: front\n${block("backs:")}\n${link}\n`, "front", {
    stateSecret: KEY,
  });
  assertEquals(front.backs[0]!.address, { host: "back.example.com", port: 443 });
  assertEquals(front.backs[0]!.links, defaults.DEFAULT_BACK_LINKS);
  assertEquals(front.backs[0]!.tlsDomain, defaults.DEFAULT_TLS_DOMAIN);
  assertEquals(front.link, defaults.DEFAULT_LINK);
  const back = parseConfig(`role: back\n${block("link_listeners:")}\n${link}\n`, "back");
  assertEquals(back.linkListeners, [{
    name: "link1",
    host: defaults.DEFAULT_HOST,
    port: defaults.DEFAULT_LINK_LISTENER_PORT,
    tlsDomains: [defaults.DEFAULT_TLS_DOMAIN],
  }]);
  assertEquals(back.fronts.map((f) => f.name), ["home"]);
  assert(back.defaultTag !== null);
  assertEquals(back.link, defaults.DEFAULT_LINK);
  assertStringIncludes(text, "# role: standalone");
});
