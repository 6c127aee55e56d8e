/** The `users` section: many users per port, each with a secret, limits and a quota. */
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { ConfigError, parseConfig } from "../lib/config/load.ts";

const A = "0123456789abcdef0123456789abcdef";
const B = "fedcba9876543210fedcba9876543210";
const L = "00112233445566778899aabbccddeeff";

function problems(yaml: string): readonly string[] {
  const e = assertThrows(() => parseConfig(yaml, "test.yaml"), ConfigError);
  return (e as ConfigError).problems;
}

Deno.test("users: every field, with sizes, rates and dates in human units", () => {
  const c = parseConfig(
    `
listeners:
  - secret: "${L}"
    users: [alice]
  - port: 1444
    secret: "${L}"
users:
  alice:
    secret: "${A}"
    max_connections: 3
    max_unique_ips: 2
    unique_ip_window: 3600
    data_quota: 10GB
    quota_reset: monthly
    expires: 2027-01-31
    rate_limit: 8Mbit
    tag: "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
  bob:
    secret: "dd${B}"
    enabled: false
    data_quota: 1.5GiB
    expires: "2027-01-31T18:00:00+02:00"
    rate_limit: 2MB/s
`,
    "test.yaml",
  );
  assertEquals(c.listeners[0]!.users, ["alice"]);
  assertEquals(c.listeners[1]!.users, null);
  const [alice, bob] = c.users;
  assertEquals(alice!.name, "alice");
  assertEquals(alice!.enabled, true);
  assertEquals(alice!.maxConnections, 3);
  assertEquals(alice!.maxUniqueIps, 2);
  assertEquals(alice!.uniqueIpWindowMs, 3_600_000);
  assertEquals(alice!.dataQuotaBytes, 10_000_000_000);
  assertEquals(alice!.quotaReset, "monthly");
  assertEquals(alice!.expiresAt, Date.UTC(2027, 0, 31));
  assertEquals(alice!.rateLimitBytesPerSec, 1_000_000);
  assertEquals(alice!.tag!.length, 16);
  assertEquals(bob!.secret, Uint8Array.from(B.match(/../g)!, (h) => parseInt(h, 16)));
  assertEquals(bob!.enabled, false);
  assertEquals(bob!.dataQuotaBytes, 1.5 * 2 ** 30);
  assertEquals(bob!.expiresAt, Date.UTC(2027, 0, 31, 16));
  assertEquals(bob!.rateLimitBytesPerSec, 2_000_000);
  assertEquals(bob!.maxConnections, 0);
  assertEquals(bob!.quotaReset, null);
});

Deno.test("users: each problem names its key, and no secret is echoed", () => {
  const got = problems(`
listeners:
  - secret: "${L}"
    users: [alice, carol]
users:
  alice:
    secret: "${A}"
    data_quota: lots
    rate_limit: fast
    expires: next week
  bob:
    max_connections: -1
  dave:
    secret: "${A}"
  eve:
    secret: "${L}"
  "bad name!":
    secret: "${B}"
`);
  const expect = [
    'users.alice.data_quota: must be a size in bytes such as 500MB, 10GB or 1.5GiB: got "lots"',
    'users.alice.rate_limit: must be a rate such as 8Mbit, 500kbit or 2MB/s: got "fast"',
    'users.alice.expires: must be an ISO 8601 date such as 2027-01-31 or 2027-01-31T18:00:00Z: got "next week"',
    "users.bob.max_connections: must be an integer 0-10000000: got -1",
    'users.bob.secret: missing: the user\'s own secret (make one with "mtproxy secret"; quote it)',
    'users.bad name!: a user name must be 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit',
  ];
  for (const p of expect) assert(got.includes(p), `missing ${p}\nin ${got.join("\n")}`);
  // Cross-checks run once the section itself is valid.
  const second = problems(`
listeners:
  - secret: "${L}"
    users: [alice, carol]
users:
  alice:
    secret: "${A}"
  dave:
    secret: "${A}"
  eve:
    secret: "${L}"
`);
  assert(
    second.includes('listeners[0].users[1]: no such user in users: got "carol"'),
    second.join("\n"),
  );
  assert(
    second.includes("users.dave.secret: the same secret as users.alice (each user needs its own)"),
    second.join("\n"),
  );
  assert(
    second.includes("users.eve.secret: the same secret as listeners[0] (each user needs its own)"),
    second.join("\n"),
  );
  for (const line of [...got, ...second]) {
    for (const s of [A, B, L]) assert(!line.includes(s), `a secret echoed: ${line}`);
  }
});

Deno.test("users belong where the clients are: a back refuses them", () => {
  const got = problems(`
role: back
link_listeners: [{port: 443}]
fronts: [{name: home, secret: "${L}"}]
users:
  alice:
    secret: "${A}"
`);
  assert(got.some((p) => p.startsWith("users:")), got.join("\n"));
});
