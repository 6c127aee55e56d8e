import {
  assert,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "./assert.ts";
import type { HostPort } from "../lib/config/types.ts";
import {
  CACHE_FILE_NAMES,
  diffProxyConfig,
  fetchCoreFile,
  fetchProxyFiles,
  parseProxyConfig,
  parseProxySecret,
  type ProxyConfig,
  type TelegramConfigChange,
  TelegramConfigStore,
  type TelegramConfigStoreOptions,
} from "../lib/telegram/proxy_config.ts";
import {
  BUNDLED_PROXY_CONFIG,
  BUNDLED_PROXY_SECRET_HEX,
  bundledProxySecret,
} from "../lib/telegram/telegram_config.ts";
import { FAKE_CORE_HTML, type FakeCoreApi, startFakeCoreApi } from "./kit/fake_core_api.ts";

/** Shaped like a real getProxyConfig answer, with the extras MTProxy's parser understands. */
const SAMPLE_V4 = [
  "# force_probability 10 10",
  "# Telegram middle proxies, generated 2024-05-01",
  "default 2;",
  "min_connections 4;",
  "max_connections 16;",
  "timeout 300;",
  "",
  "proxy_for 1 149.154.175.50:8888;",
  "proxy_for -1 149.154.175.50:8888;",
  "proxy_for 2 149.154.161.144:8888;",
  "proxy_for 2 149.154.162.33:80;     # several lines per DC",
  "proxy_for -2 149.154.162.38:80;",
  "proxy_for 3 149.154.175.100:8888;",
  "proxy_for -3 149.154.175.100:8888;",
  "proxy_for 4 91.108.4.136:8888;",
  "proxy_for 4 91.108.4.144:8888;",
  "proxy_for -4 149.154.165.109:8888;",
  "proxy_for 5 91.108.56.183:8888;",
  "proxy_for -5 91.108.56.183:8888;",
  "proxy_for 203 91.105.192.100:443;",
  "",
].join("\n");

/** Shaped like a getProxyConfigV6 answer: bracketed hosts. */
const SAMPLE_V6 = [
  "# IPv6 middle proxies",
  "default 2;",
  "proxy_for 1 [2001:b28:f23d:f001::d]:8888;",
  "proxy_for -1 [2001:b28:f23d:f001::d]:8888;",
  "proxy_for 2 [2001:67c:4e8:f002::d]:80;",
  "proxy_for -2 [2001:67c:4e8:f002::d]:80;",
  "proxy_for 3 [2001:b28:f23d:f003::d]:8888;",
  "proxy_for 4 [2001:67c:4e8:f004::d]:8888;",
  "proxy_for 5 [2001:b28:f23f:f005::d]:8888;",
  "",
].join("\n");

const UA = "mtproxy-test/1.0 (+https://example.invalid)";

function parsed(text: string): ProxyConfig {
  const result = parseProxyConfig(text);
  if (!result.ok) throw new Error(`Expected a valid config: ${result.reason}`);
  return result.config;
}

function addrs(list: readonly HostPort[] | undefined): string[] {
  return (list ?? []).map((a) => `${a.host} ${a.port}`);
}

function secretOf(byte: number, n = 128): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (byte + i * 37) & 0xff;
  out[0] = byte;
  return out;
}

function noSleep(): Promise<void> {
  return Promise.resolve();
}

function fetchOptions(
  extra: Partial<TelegramConfigStoreOptions> = {},
): TelegramConfigStoreOptions {
  return { timeoutMs: 5000, retries: 0, userAgent: UA, sleep: noSleep, ...extra };
}

async function withApi(fn: (api: FakeCoreApi) => Promise<void>): Promise<void> {
  const api = startFakeCoreApi({
    proxySecret: secretOf(0x11),
    configV4: SAMPLE_V4,
    configV6: SAMPLE_V6,
  });
  try {
    await fn(api);
  } finally {
    await api.close();
  }
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "mtproxy-proxy-config-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

// ---------------------------------------------------------------------------------------------
// Parsing

Deno.test("parseProxyConfig reads a realistic download with comments, extras and negative ids", () => {
  const config = parsed(SAMPLE_V4);
  assertEquals(config.defaultDc, 2);
  assertEquals([...config.dcs.keys()], [1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 203]);
  assertEquals(addrs(config.dcs.get(2)), ["149.154.161.144 8888", "149.154.162.33 80"]);
  assertEquals(addrs(config.dcs.get(-2)), ["149.154.162.38 80"]);
  assertEquals(addrs(config.dcs.get(4)), ["91.108.4.136 8888", "91.108.4.144 8888"]);
  assertEquals(addrs(config.dcs.get(-4)), ["149.154.165.109 8888"]);
  assertEquals(addrs(config.dcs.get(203)), ["91.105.192.100 443"]);
  assert(Object.isFrozen(config) && Object.isFrozen(config.dcs.get(2)));
  assert(Object.isFrozen(config.dcs.get(2)![0]));
});

Deno.test("parseProxyConfig strips the brackets of IPv6 hosts and reads unbracketed ones", () => {
  const config = parsed(SAMPLE_V6);
  assertEquals(addrs(config.dcs.get(1)), ["2001:b28:f23d:f001::d 8888"]);
  assertEquals(addrs(config.dcs.get(-2)), ["2001:67c:4e8:f002::d 80"]);
  const bare = parsed("proxy_for 2 2001:67c:4e8:f002::d:8888;\n");
  assertEquals(addrs(bare.dcs.get(2)), ["2001:67c:4e8:f002::d 8888"]);
  assertEquals(bare.defaultDc, null);
});

Deno.test("parseProxyConfig accepts CRLF, a BOM, tabs, several statements per line and duplicates", () => {
  const text = "\uFEFF# c\r\ndefault\t-2 ;\r\nproxy_for 1 10.0.0.1:1; proxy_for 1 10.0.0.2:2;\r\n" +
    "proxy_for 1 10.0.0.1:1;\r\nproxy_for\t-2   10.0.0.3:3 ;\r\nunknown_statement a b c;\r\n" +
    "something without a semicolon\r\n";
  const config = parsed(text);
  assertEquals(config.defaultDc, -2);
  assertEquals(addrs(config.dcs.get(1)), ["10.0.0.1 1", "10.0.0.2 2"]);
  assertEquals(addrs(config.dcs.get(-2)), ["10.0.0.3 3"]);
  assertEquals(parsed("default 1;\ndefault 3;\nproxy_for 3 h.example:4;").defaultDc, 3);
});

Deno.test("parseProxyConfig rejects malformed downloads with a reason", () => {
  const cases: [string, string][] = [
    ["", "Empty proxy config"],
    [" \n\t\r\n", "Empty proxy config"],
    [FAKE_CORE_HTML, "HTML"],
    ["  <?xml version='1.0'?><error/>", "HTML"],
    ["# only comments\ndefault 2;\nmin_connections 4;\n", "No proxy_for"],
    ["Service temporarily unavailable, try again later\n", "No proxy_for"],
    ["proxy_for 1 149.154.175.50:8888;\nproxy_for 2 149.154.16", 'Line 2: statement without ";"'],
    ["proxy_for 2 149.154.161.144:8888\n", 'without ";"'],
    ["proxy_for 2 149.154.161.144;\n", "Address without a port"],
    ["proxy_for 2 149.154.161.144:0;\n", "Port out of range"],
    ["proxy_for 2 149.154.161.144:70000;\n", "Port out of range"],
    ["proxy_for 2 149.154.161.144:88a;\n", "Bad port"],
    ["proxy_for two 149.154.161.144:8888;\n", "DC id is not an integer"],
    ["proxy_for 40000 149.154.161.144:8888;\n", "DC id out of range"],
    ["proxy_for 2 [2001:db8::1:8888;\n", "Bad bracketed"],
    ["proxy_for 2 [10.0.0.1]:8888;\n", "Bad bracketed"],
    ["proxy_for 2 :8888;\n", "Address without a port"],
    ["proxy_for 2 h\u00e9te:8888;\n", "Bad host"],
    ["proxy_for 2 10.0.0.1:8888 extra;\n", "Expected"],
    ["proxy_for 2;\n", "Expected"],
    ["proxy_for 2 10.0.0.1:8888;\ndefault;\n", "Line 2: Expected"],
    ["proxy_for 2 10.0.0.1:8888;\ndefault x;\n", "DC id is not an integer"],
  ];
  for (const [text, reason] of cases) {
    const result = parseProxyConfig(text);
    assert(!result.ok, `Expected a rejection of ${JSON.stringify(text)}`);
    assertStringIncludes(result.reason, reason);
  }
});

Deno.test("parseProxyConfig never throws on random bytes or mangled configs", () => {
  let seed = 12345;
  const next = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff);
  const decoder = new TextDecoder();
  for (let i = 0; i < 300; i++) {
    const bytes = new Uint8Array(next() % 400);
    for (let j = 0; j < bytes.length; j++) bytes[j] = next() & 0xff;
    const result = parseProxyConfig(decoder.decode(bytes));
    assert(result.ok || result.reason.length > 0);
  }
  const alphabet = "proxy_fordefault0123456789-:[];# \n.";
  for (let i = 0; i < 300; i++) {
    const chars = [...SAMPLE_V6];
    for (let k = 0; k < 5; k++) chars[next() % chars.length] = alphabet[next() % alphabet.length]!;
    const result = parseProxyConfig(chars.join(""));
    if (result.ok) {
      for (const list of result.config.dcs.values()) {
        assert(list.length > 0);
        for (const a of list) assert(a.port >= 1 && a.port <= 65535 && a.host.length > 0);
      }
    } else assert(result.reason.length > 0);
  }
});

Deno.test("parseProxySecret accepts 32..256 binary bytes and returns a copy", () => {
  for (const n of [32, 128, 256]) {
    const bytes = secretOf(0x80, n);
    const result = parseProxySecret(bytes);
    assert(result.ok);
    assertEquals(result.secret, bytes);
    bytes[0] = 0;
    assertEquals(result.secret[0], 0x80);
  }
  assert(parseProxySecret(bundledProxySecret()).ok);
});

Deno.test("parseProxySecret rejects wrong sizes and text such as an HTML page", () => {
  for (const n of [0, 16, 31, 257, 4096]) {
    const result = parseProxySecret(secretOf(0x80, n));
    assert(!result.ok);
    assertStringIncludes(result.reason, `got ${n}`);
  }
  const html = parseProxySecret(
    new TextEncoder().encode("<html><body>404 Not Found</body></html>"),
  );
  assert(!html.ok);
  assertStringIncludes(html.reason, "text");
  assert(!parseProxySecret(new TextEncoder().encode(FAKE_CORE_HTML)).ok);
});

// ---------------------------------------------------------------------------------------------
// Bundled fallback

Deno.test("The bundled proxy secret is the historic 128-byte value with key selector c4f9faca", () => {
  const secret = bundledProxySecret();
  assertEquals(secret.length, 128);
  assertEquals(BUNDLED_PROXY_SECRET_HEX.length, 256);
  assertEquals([...secret.subarray(0, 4)], [0xc4, 0xf9, 0xfa, 0xca]);
  assertEquals(secret[127], 0x12);
  secret[0] = 0;
  assertEquals(bundledProxySecret()[0], 0xc4);
});

Deno.test("The bundled middle-proxy table is alexbers' table on port 8888", () => {
  const text = [
    "proxy_for 1 149.154.175.50:8888;",
    "proxy_for -1 149.154.175.50:8888;",
    "proxy_for 2 149.154.161.144:8888;",
    "proxy_for -2 149.154.161.144:8888;",
    "proxy_for 3 149.154.175.100:8888;",
    "proxy_for -3 149.154.175.100:8888;",
    "proxy_for 4 91.108.4.136:8888;",
    "proxy_for -4 149.154.165.109:8888;",
    "proxy_for 5 91.108.56.183:8888;",
    "proxy_for -5 91.108.56.183:8888;",
  ].join("\n") + "\n";
  assertEquals(BUNDLED_PROXY_CONFIG, parsed(text));
  assert(diffProxyConfig(BUNDLED_PROXY_CONFIG, parsed(text)).unchanged);
});

// ---------------------------------------------------------------------------------------------
// Diff

Deno.test("diffProxyConfig reports added, removed and moved DCs and a new default", () => {
  const before = parsed(SAMPLE_V4);
  const after = parsed(
    SAMPLE_V4
      .replace("proxy_for 2 149.154.161.144:8888;", "proxy_for 2 149.154.161.200:8888;")
      .replace("proxy_for -4 149.154.165.109:8888;\n", "")
      .replace("default 2;", "default 4;") + "proxy_for 7 10.7.7.7:8888;\n",
  );
  assertEquals(diffProxyConfig(before, after), {
    added: [7],
    removed: [-4],
    changed: [2],
    defaultDc: { from: 2, to: 4 },
    unchanged: false,
  });
});

Deno.test("diffProxyConfig ignores address order and treats null as an empty table", () => {
  const a = parsed("proxy_for 2 10.0.0.1:1;\nproxy_for 2 10.0.0.2:2;\nproxy_for -1 10.0.0.3:3;\n");
  const b = parsed("proxy_for -1 10.0.0.3:3;\nproxy_for 2 10.0.0.2:2;\nproxy_for 2 10.0.0.1:1;\n");
  assertEquals(diffProxyConfig(a, b), {
    added: [],
    removed: [],
    changed: [],
    defaultDc: null,
    unchanged: true,
  });
  const grown = parsed(
    "proxy_for 2 10.0.0.1:1;\nproxy_for 2 10.0.0.2:2;\nproxy_for 2 10.0.0.9:9;\n",
  );
  assertEquals(diffProxyConfig(a, grown).changed, [2]);
  assertEquals(diffProxyConfig(null, a).added, [-1, 2]);
  assertEquals(diffProxyConfig(a, null).removed, [-1, 2]);
  assert(diffProxyConfig(null, null).unchanged);
});

// ---------------------------------------------------------------------------------------------
// Downloading

Deno.test("fetchProxyFiles downloads the three files exactly, with our User-Agent", async () => {
  await withApi(async (api) => {
    const files = await fetchProxyFiles(api.urls, fetchOptions());
    assert(files.proxySecret.ok && files.configV4.ok && files.configV6?.ok);
    assertEquals(files.proxySecret.value, secretOf(0x11));
    assertEquals(files.proxySecret.attempts, 1);
    assertEquals(files.configV4.value, SAMPLE_V4);
    assertEquals(files.configV6.value, SAMPLE_V6);
    assertEquals(api.userAgents("proxySecret"), [UA]);
    assertEquals(api.userAgents("configV6"), [UA]);

    const v4Only = await fetchProxyFiles(
      { secretUrl: api.urls.secretUrl, configUrl: api.urls.configUrl },
      fetchOptions(),
    );
    assertEquals(v4Only.configV6, null);
    assertEquals(api.requests("configV6"), 1);
  });
});

Deno.test("fetchCoreFile retries HTTP 500 with a doubling backoff and then succeeds", async () => {
  await withApi(async (api) => {
    api.queue("configV4", "status500", "status500");
    const sleeps: number[] = [];
    const sleep = (ms: number) => {
      sleeps.push(ms);
      return Promise.resolve();
    };
    const result = await fetchCoreFile(
      api.urls.configUrl,
      fetchOptions({ retries: 3, retryDelayMs: 100, sleep }),
    );
    assert(result.ok);
    assertEquals(result.attempts, 3);
    assertEquals(sleeps, [100, 200]);
    assertEquals(api.requests("configV4"), 3);
  });
});

Deno.test("fetchCoreFile gives up after the last retry with the HTTP status in the reason", async () => {
  await withApi(async (api) => {
    api.setMode("status500");
    const result = await fetchCoreFile(api.urls.secretUrl, fetchOptions({ retries: 2 }));
    assert(!result.ok);
    assertEquals([result.kind, result.status, result.attempts], ["status", 500, 3]);
    assertEquals(result.reason, `Cannot download "${api.urls.secretUrl}": HTTP 500 (3 attempts)`);
    assertEquals(api.requests("proxySecret"), 3);
  });
});

Deno.test("fetchCoreFile does not retry a 404", async () => {
  await withApi(async (api) => {
    const url = `${api.origin}/nowhere`;
    const result = await fetchCoreFile(url, fetchOptions({ retries: 3 }));
    assert(!result.ok);
    assertEquals([result.kind, result.status, result.attempts], ["status", 404, 1]);
    assertEquals(result.reason, `Cannot download "${url}": HTTP 404`);
  });
});

Deno.test("fetchCoreFile times out a hanging server on every attempt", async () => {
  await withApi(async (api) => {
    api.setMode("hang", "configV4");
    const result = await fetchCoreFile(
      api.urls.configUrl,
      fetchOptions({ timeoutMs: 200, retries: 1 }),
    );
    assert(!result.ok);
    assertEquals([result.kind, result.attempts], ["timeout", 2]);
    assertStringIncludes(result.reason, "no complete answer within 200 ms (2 attempts)");
    assertEquals(api.requests("configV4"), 2);
  });
});

Deno.test("fetchCoreFile times out an injected fetch that ignores the abort signal", async () => {
  let calls = 0;
  const stuck = (() => {
    calls++;
    return new Promise<Response>(() => {});
  }) as typeof fetch;
  const result = await fetchCoreFile(
    "http://127.0.0.1:9/getProxySecret",
    fetchOptions({ timeoutMs: 50, retries: 2, fetch: stuck }),
  );
  assert(!result.ok);
  assertEquals([result.kind, result.attempts, calls], ["timeout", 3, 3]);
});

Deno.test("fetchCoreFile refuses bodies over 1 MiB without retrying", async () => {
  await withApi(async (api) => {
    for (const mode of ["huge-stream", "huge-declared"] as const) {
      api.setMode(mode, "configV4");
      const before = api.requests("configV4");
      const result = await fetchCoreFile(api.urls.configUrl, fetchOptions({ retries: 2 }));
      assert(!result.ok, mode);
      assertEquals([result.kind, result.attempts], ["too-large", 1]);
      assertStringIncludes(result.reason, "larger than 1048576 bytes");
      assertEquals(api.requests("configV4") - before, 1);
    }
    const capped = await fetchCoreFile(api.urls.secretUrl, fetchOptions({ maxBytes: 100 }));
    assert(!capped.ok && capped.kind === "too-large");
  });
});

Deno.test("fetchCoreFile reports a refused connection as a network error", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  const result = await fetchCoreFile(
    `http://127.0.0.1:${port}/getProxyConfig`,
    fetchOptions({ retries: 1 }),
  );
  assert(!result.ok);
  assertEquals([result.kind, result.attempts], ["network", 2]);
  assertStringIncludes(result.reason, "network error");
});

Deno.test("fetchProxyFiles refuses out-of-range options with a RangeError", async () => {
  const urls = { secretUrl: "http://127.0.0.1:9/a", configUrl: "http://127.0.0.1:9/b" };
  for (const bad of [{ timeoutMs: 0 }, { timeoutMs: NaN }, { retries: -1 }, { retries: 1.5 }]) {
    await assertRejects(() => fetchProxyFiles(urls, fetchOptions(bad)), RangeError, "Download");
  }
  assertThrows(() => new TelegramConfigStore(urls, fetchOptions({ retries: -1 })), RangeError);
});

// ---------------------------------------------------------------------------------------------
// The store

Deno.test("TelegramConfigStore loads from the network and caches the exact downloads", async () => {
  await withApi((api) =>
    withDir(async (dir) => {
      const cacheDir = `${dir}/cache/telegram`;
      const store = new TelegramConfigStore(api.urls, fetchOptions({ cacheDir }));
      assertThrows(() => store.current, Error, "not loaded");
      const { snapshot, problems } = await store.load();
      assertEquals(problems, []);
      assertEquals(snapshot.sources, {
        proxySecret: "network",
        configV4: "network",
        configV6: "network",
      });
      assertEquals(snapshot.proxySecret, secretOf(0x11));
      assertEquals(snapshot.configV4, parsed(SAMPLE_V4));
      assertEquals(snapshot.configV6, parsed(SAMPLE_V6));
      assert(store.current === snapshot && Object.isFrozen(snapshot));
      assertEquals(await listDir(cacheDir), [
        "proxy-multi-v6.conf",
        "proxy-multi.conf",
        "proxy-secret",
      ]);
      assertEquals(await Deno.readFile(`${cacheDir}/proxy-secret`), secretOf(0x11));
      assertEquals(await Deno.readTextFile(`${cacheDir}/proxy-multi.conf`), SAMPLE_V4);
    })
  );
});

Deno.test("TelegramConfigStore falls back to the disk cache when the server fails", async () => {
  await withApi((api) =>
    withDir(async (dir) => {
      await new TelegramConfigStore(api.urls, fetchOptions({ cacheDir: dir })).load();
      api.setMode("status500");
      const store = new TelegramConfigStore(api.urls, fetchOptions({ cacheDir: dir, retries: 1 }));
      const { snapshot, problems } = await store.load();
      assertEquals(snapshot.sources, {
        proxySecret: "cache",
        configV4: "cache",
        configV6: "cache",
      });
      assertEquals(snapshot.proxySecret, secretOf(0x11));
      assertEquals(snapshot.configV4, parsed(SAMPLE_V4));
      assertEquals(snapshot.configV6, parsed(SAMPLE_V6));
      assertEquals(problems.length, 3);
      for (const p of problems) assertStringIncludes(p, "HTTP 500 (2 attempts)");
    })
  );
});

Deno.test("TelegramConfigStore falls back per file: network where it works, cache or bundled elsewhere", async () => {
  await withApi((api) =>
    withDir(async (dir) => {
      await Deno.writeTextFile(`${dir}/${CACHE_FILE_NAMES.configV4}`, SAMPLE_V4);
      api.setMode("html", "configV4");
      api.setMode("hang", "configV6");
      const store = new TelegramConfigStore(
        api.urls,
        fetchOptions({ cacheDir: dir, timeoutMs: 200 }),
      );
      const { snapshot, problems } = await store.load();
      assertEquals(snapshot.sources, { proxySecret: "network", configV4: "cache", configV6: null });
      assertEquals(snapshot.configV6, null);
      assertEquals(snapshot.configV4, parsed(SAMPLE_V4));
      assertEquals(problems.length, 2);
      assertStringIncludes(problems[0]!, "Malformed download");
      assertStringIncludes(problems[0]!, "HTML");
      assertStringIncludes(problems[1]!, "no complete answer within 200 ms");
      // Only the good download was written; the cached table was left alone.
      assertEquals(await listDir(dir), ["proxy-multi.conf", "proxy-secret"]);
    })
  );
});

Deno.test("TelegramConfigStore falls back to the bundled copy without a usable cache", async () => {
  await withApi((api) =>
    withDir(async (dir) => {
      api.setMode("status500");
      const noCache = new TelegramConfigStore(api.urls, fetchOptions());
      const first = await noCache.load();
      assertEquals(first.snapshot.sources, {
        proxySecret: "bundled",
        configV4: "bundled",
        configV6: null,
      });
      assertEquals(first.snapshot.proxySecret, bundledProxySecret());
      assertEquals(first.snapshot.configV4, BUNDLED_PROXY_CONFIG);
      assertEquals(first.snapshot.configV6, null);

      // An empty cache directory and a corrupted cache file do no better.
      await Deno.writeTextFile(`${dir}/${CACHE_FILE_NAMES.configV4}`, FAKE_CORE_HTML);
      await Deno.writeFile(`${dir}/${CACHE_FILE_NAMES.proxySecret}`, new Uint8Array(10));
      const broken = new TelegramConfigStore(api.urls, fetchOptions({ cacheDir: dir }));
      const second = await broken.load();
      assertEquals(second.snapshot.sources.configV4, "bundled");
      assertEquals(second.snapshot.sources.proxySecret, "bundled");
      assert(second.problems.some((p) => p.includes("Cached proxy-multi.conf is unusable")));
      assert(second.problems.some((p) => p.includes("Cached proxy-secret is unusable")));
    })
  );
});

Deno.test("TelegramConfigStore.refresh keeps the old snapshot on malformed or failing downloads", async () => {
  await withApi((api) =>
    withDir(async (dir) => {
      const store = new TelegramConfigStore(
        api.urls,
        fetchOptions({ cacheDir: dir, timeoutMs: 200 }),
      );
      const { snapshot } = await store.load();
      const changes: TelegramConfigChange[] = [];
      store.onChange((c) => changes.push(c));
      const failures: [string, () => void][] = [
        ["HTML", () => api.setMode("html")],
        ["Empty proxy config", () => api.setMode("empty")],
        ["HTTP 500", () => api.setMode("status500")],
        ["within 200 ms", () => api.setMode("hang")],
        ["larger than", () => api.setMode("huge-stream")],
        ['statement without ";"', () => {
          api.setMode("ok");
          api.configV4 = "proxy_for 1 10.0.0.1:8888;\nproxy_for 2 10.0.0.2:88";
          api.configV6 = SAMPLE_V6.replace("proxy_for 1 [2001", "proxy_for 1 [[2001");
          api.proxySecret = new Uint8Array(16);
        }],
      ];
      for (const [reason, breakIt] of failures) {
        breakIt();
        const result = await store.refresh();
        assert(!result.ok, reason);
        assertEquals(result.change, null);
        assert(result.snapshot === snapshot && store.current === snapshot);
        assertEquals(result.problems.length, 3, reason);
        assert(result.problems.some((p) => p.includes(reason)), `${reason}: ${result.problems}`);
      }
      assertEquals(changes, []);
      assertEquals(await Deno.readTextFile(`${dir}/proxy-multi.conf`), SAMPLE_V4);
      assertEquals(await Deno.readFile(`${dir}/proxy-secret`), secretOf(0x11));
    })
  );
});

Deno.test("TelegramConfigStore.refresh reports moved DCs and a new secret, and caches them", async () => {
  await withApi((api) =>
    withDir(async (dir) => {
      const store = new TelegramConfigStore(api.urls, fetchOptions({ cacheDir: dir }));
      const loaded = await store.load();
      const seen: TelegramConfigChange[] = [];
      const unsubscribe = store.onChange((c) => seen.push(c));
      const same = await store.refresh();
      assert(same.ok);
      assertEquals(same.change, null);

      const movedV4 = SAMPLE_V4
        .replace("proxy_for -1 149.154.175.50:8888;", "proxy_for -1 149.154.175.51:8888;")
        .replace("proxy_for 203 91.105.192.100:443;\n", "") + "proxy_for 6 10.6.6.6:8888;\n";
      api.configV4 = movedV4;
      api.proxySecret = secretOf(0x22);
      const result = await store.refresh();
      assert(result.ok);
      assert(result.change !== null);
      assertEquals(result.change.v4, {
        added: [6],
        removed: [203],
        changed: [-1],
        defaultDc: null,
        unchanged: false,
      });
      assert(result.change.v6.unchanged);
      assert(result.change.secretChanged);
      assert(result.change.previous === loaded.snapshot);
      assert(result.change.current === store.current && result.snapshot === store.current);
      assertEquals(store.current.proxySecret, secretOf(0x22));
      assertEquals(seen, [result.change]);
      assertEquals(await Deno.readTextFile(`${dir}/proxy-multi.conf`), movedV4);
      assertEquals(await Deno.readFile(`${dir}/proxy-secret`), secretOf(0x22));
      assertEquals(await listDir(dir), ["proxy-multi-v6.conf", "proxy-multi.conf", "proxy-secret"]);

      unsubscribe();
      api.configV6 = SAMPLE_V6 + "proxy_for 7 [2001:db8::7]:8888;\n";
      const again = await store.refresh();
      assertEquals(again.change?.v6.added, [7]);
      assertEquals(seen.length, 1);
    })
  );
});

Deno.test("TelegramConfigStore.refresh applies good parts and keeps failed ones", async () => {
  await withApi(async (api) => {
    api.setMode("status500");
    const store = new TelegramConfigStore(api.urls, fetchOptions());
    await store.load();
    api.setMode("ok");
    api.setMode("html", "configV4");
    const result = await store.refresh();
    assert(!result.ok);
    assertEquals(result.snapshot.sources, {
      proxySecret: "network",
      configV4: "bundled",
      configV6: "network",
    });
    assert(result.change !== null && result.change.secretChanged);
    assertEquals(result.change.v6.added.length, 7);
    assert(result.change.v4.unchanged);
  });
});

Deno.test("TelegramConfigStore.refresh before load rejects, and concurrent refreshes share one", async () => {
  await withApi(async (api) => {
    const store = new TelegramConfigStore(api.urls, fetchOptions());
    await assertRejects(() => store.refresh(), Error, "call load() before refresh()");
    await store.load();
    const before = api.requests();
    const [a, b] = await Promise.all([store.refresh(), store.refresh()]);
    assert(a === b);
    assertEquals(api.requests() - before, 3);
  });
});

Deno.test("TelegramConfigStore reports a throwing listener and a cache it cannot write", async () => {
  await withApi((api) =>
    withDir(async (dir) => {
      const blocked = `${dir}/not-a-dir`;
      await Deno.writeTextFile(blocked, "a file where the cache directory should be");
      const store = new TelegramConfigStore(api.urls, fetchOptions({ cacheDir: blocked }));
      const { snapshot, problems } = await store.load();
      assertEquals(snapshot.sources.configV4, "network");
      assertEquals(problems.length, 3);
      assertStringIncludes(problems[0]!, `Cannot write cache file "${blocked}/proxy-secret"`);

      let called = 0;
      store.onChange(() => {
        throw new Error("pool exploded");
      });
      store.onChange(() => called++);
      api.configV4 = "proxy_for 2 10.0.0.2:8888;\n";
      const result = await store.refresh();
      assertEquals(called, 1);
      assert(result.ok);
      assert(result.problems.includes("Telegram config listener failed: pool exploded"));
    })
  );
});
