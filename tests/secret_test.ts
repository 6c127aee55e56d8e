import { assert, assertEquals, assertStringIncludes, assertThrows } from "./assert.ts";
import {
  formatDdSecret,
  formatPlainSecret,
  formatTlsSecret,
  generateSecret,
  isValidTlsDomain,
  parseSecret,
  perSniSecret,
  proxyLink,
  proxyLinks,
  SecretError,
  toHex,
} from "../lib/secret.ts";

// A copy of shared/spec/test-vectors.json, so the tests run on a clean clone of this repository.
const VECTORS_URL = new URL("./testdata/test-vectors.json", import.meta.url);

interface Vector {
  id: string;
  inputs: Record<string, string>;
  expected: Record<string, string>;
}

const vectors: Vector[] = JSON.parse(await Deno.readTextFile(VECTORS_URL)).vectors;

function vector(id: string): Vector {
  const v = vectors.find((x) => x.id === id);
  if (!v) throw new Error(`No test vector: ${JSON.stringify(id)}`);
  return v;
}

function unhex(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g) ?? [], (h) => parseInt(h, 16));
}

const KEY = unhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0");

Deno.test("formatTlsSecret matches the secret_formats_tls vector in hex and base64url", () => {
  const v = vector("secret_formats_tls");
  const key = unhex(v.inputs.secret!);
  assertEquals(formatTlsSecret(key, v.inputs.domain!), v.expected.hex);
  assertEquals(
    formatTlsSecret(key, v.inputs.domain!, { encoding: "base64url" }),
    v.expected.base64url,
  );
});

Deno.test("parseSecret reads both ee forms of the secret_formats_tls vector", () => {
  const v = vector("secret_formats_tls");
  for (const text of [v.expected.hex!, v.expected.base64url!, v.expected.hex!.toUpperCase()]) {
    const parsed = parseSecret(text);
    assertEquals(parsed.kind, "tls");
    assertEquals(toHex(parsed.key), v.inputs.secret);
    assertEquals(parsed.domain, v.inputs.domain);
  }
});

for (const id of ["per_sni_secret_default_salt", "per_sni_secret_readme"]) {
  Deno.test(`perSniSecret matches the ${id} vector`, () => {
    const v = vector(id);
    const derived = perSniSecret(unhex(v.inputs.base_secret!), v.inputs.sni!, v.inputs.salt!);
    assertEquals(toHex(derived), v.expected.derived_secret);
    if (v.expected.link_secret_hex) {
      assertEquals(formatTlsSecret(derived, v.inputs.sni!), v.expected.link_secret_hex);
    }
  });
}

Deno.test("perSniSecret uses the Erlang default salt when none is given", () => {
  const v = vector("per_sni_secret_default_salt");
  assertEquals(
    toHex(perSniSecret(unhex(v.inputs.base_secret!), v.inputs.sni!)),
    v.expected.derived_secret,
  );
});

Deno.test("parseSecret reads plain and dd secrets in hex and base64url, any case", () => {
  const hex = toHex(KEY);
  const cases: [string, "plain" | "dd"][] = [
    [hex, "plain"],
    [hex.toUpperCase(), "plain"],
    [` ${hex}\n`, "plain"],
    ["dd" + hex, "dd"],
    ["DD" + hex.toUpperCase(), "dd"],
    [btoa(String.fromCharCode(...KEY)).replace(/=+$/, ""), "plain"],
    [
      btoa(String.fromCharCode(0xdd, ...KEY)).replaceAll("+", "-").replaceAll("/", "_"),
      "dd",
    ],
  ];
  for (const [text, kind] of cases) {
    const parsed = parseSecret(text);
    assertEquals(parsed.kind, kind, text);
    assertEquals(parsed.key, KEY, text);
    assertEquals(parsed.domain, undefined);
  }
});

Deno.test("parseSecret rejects wrong lengths, wrong prefixes and bad ee domains", () => {
  const hex = toHex(KEY);
  for (
    const bad of ["", "xyz", hex.slice(0, 30), hex + "0", "ab" + hex, "ee" + hex, "dd" + hex + "00"]
  ) {
    const e = assertThrows(() => parseSecret(bad), SecretError);
    assertEquals((e as SecretError).reason, "bad_format", bad);
    assertStringIncludes(e.message, JSON.stringify(bad));
  }
  const badDomain = "ee" + hex + toHex(new TextEncoder().encode("bad domain"));
  const e = assertThrows(() => parseSecret(badDomain), SecretError, "Domain");
  assertEquals((e as SecretError).reason, "bad_domain");
});

Deno.test("secret forms round-trip through parseSecret for random keys and domains", () => {
  for (let i = 0; i < 200; i++) {
    const key = generateSecret();
    const domain = `h${i}.example${i % 7}.com`;
    assertEquals(parseSecret(formatPlainSecret(key)), { kind: "plain", key });
    assertEquals(parseSecret(formatDdSecret(key)), { kind: "dd", key });
    for (const encoding of ["hex", "base64url"] as const) {
      assertEquals(parseSecret(formatTlsSecret(key, domain, { encoding })), {
        kind: "tls",
        key,
        domain,
      });
    }
  }
});

Deno.test("generateSecret returns 16 fresh random bytes", () => {
  const a = generateSecret();
  const b = generateSecret();
  assertEquals(a.length, 16);
  assert(toHex(a) !== toHex(b));
});

Deno.test("secret formatters refuse keys that are not 16 bytes and bad domains", () => {
  assertThrows(() => formatPlainSecret(new Uint8Array(15)), SecretError, "16 bytes");
  assertThrows(() => formatDdSecret(new Uint8Array(17)), SecretError, "16 bytes");
  assertThrows(() => formatTlsSecret(KEY, "not a domain"), SecretError, '"not a domain"');
  assertThrows(() => formatTlsSecret(KEY, "a".repeat(183)), SecretError);
  assert(isValidTlsDomain("a".repeat(63) + ".com"));
  assert(!isValidTlsDomain("-bad.com"));
  assert(!isValidTlsDomain("trailing.dot."));
});

Deno.test("proxyLinks makes tg and t.me links for each protocol, tls in hex then base64url", () => {
  const links = proxyLinks({ host: "proxy.example.com", port: 443 }, KEY, {
    protocols: ["tls", "dd", "plain"],
    tlsDomain: "example.com",
  });
  assertEquals(links.map((l) => `${l.kind}/${l.encoding}`), [
    "tls/hex",
    "tls/base64url",
    "dd/hex",
    "plain/hex",
  ]);
  const v = vector("secret_formats_tls");
  assertEquals(
    links[0]!.tg,
    `tg://proxy?server=proxy.example.com&port=443&secret=${v.expected.hex}`,
  );
  assertEquals(
    links[1]!.https,
    `https://t.me/proxy?server=proxy.example.com&port=443&secret=${v.expected.base64url}`,
  );
  assertEquals(links[2]!.secret, "dd" + toHex(KEY));
  assertEquals(links[3]!.secret, toHex(KEY));
});

Deno.test("proxyLinks follows the order of the allowed protocols and skips the others", () => {
  const links = proxyLinks({ host: "203.0.113.5", port: 8443 }, KEY, { protocols: ["plain"] });
  assertEquals(links.length, 1);
  assertEquals(links[0]!.tg, `tg://proxy?server=203.0.113.5&port=8443&secret=${toHex(KEY)}`);
});

Deno.test("proxyLink keeps an IPv6 host as is and URL-encodes other parameters", () => {
  assertEquals(
    proxyLink({ host: "2001:db8::1", port: 443 }, "abc"),
    "tg://proxy?server=2001:db8::1&port=443&secret=abc",
  );
  assertEquals(
    proxyLink({ host: "[2001:db8::1]", port: 443 }, "abc", { scheme: "https" }),
    "https://t.me/proxy?server=2001:db8::1&port=443&secret=abc",
  );
  assertEquals(
    proxyLink({ host: "a&b", port: 1 }, "x=y"),
    "tg://proxy?server=a%26b&port=1&secret=x%3Dy",
  );
});

Deno.test("proxyLinks needs a TLS domain for fake-TLS links", () => {
  assertThrows(
    () => proxyLinks({ host: "h.example", port: 1 }, KEY, { protocols: ["tls"] }),
    SecretError,
    "TLS domain",
  );
});
