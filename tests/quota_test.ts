/**
 * Data quotas and the usage file: periods and their rollover on an injected clock, the refusal
 * at the boundary, the file read, written atomically, merged with another process's writes, and
 * a broken file reported and started from zero; unique-address tables (the same ledger); and,
 * through a real `mtproxy run`, the bytes used surviving a restart.
 */
import { assert, assertEquals } from "./assert.ts";
import {
  createUserLedger,
  openUserLedger,
  parseUsageFile,
  QUOTA_EXCEEDED,
  quotaPeriodStart,
  USAGE_FILE_NAME,
  UsageStore,
} from "../lib/guard/quota.ts";
import { admitIp, countIps, IP_SLOT_CELLS, ipTableSlots } from "../lib/guard/unique_ips.ts";
import { UserDirectory } from "../lib/guard/users.ts";
import { createMemoryCounts } from "../lib/guard/policy.ts";
import { testUser } from "./helpers.ts";
import { freePort, ProxyProcess } from "./kit/proxy_process.ts";
import { startFakeDc } from "./kit/fake_dc.ts";
import { connectTestClient, type TestClient } from "./kit/test_client.ts";
import { randomBytes } from "../lib/crypto.ts";

/** Poll `cond` every 50 ms until it holds; throws after `timeoutMs` naming `what`. */
async function eventually(cond: () => Promise<boolean>, what: string, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const ledger = () => openUserLedger(createUserLedger({ users: 16, ipSlots: 256 }));
const iso = (ms: number | null) => ms === null ? null : new Date(ms).toISOString();

Deno.test("quotaPeriodStart: days, ISO weeks (Monday) and months in UTC, at their edges", () => {
  const t = Date.UTC(2027, 0, 1, 0, 0, 0); // a Friday
  assertEquals(iso(quotaPeriodStart("daily", t)), "2027-01-01T00:00:00.000Z");
  assertEquals(iso(quotaPeriodStart("daily", t - 1)), "2026-12-31T00:00:00.000Z");
  assertEquals(iso(quotaPeriodStart("weekly", t)), "2026-12-28T00:00:00.000Z");
  assertEquals(iso(quotaPeriodStart("weekly", Date.UTC(2026, 11, 28))), "2026-12-28T00:00:00.000Z");
  assertEquals(
    iso(quotaPeriodStart("weekly", Date.UTC(2026, 11, 27, 23, 59))),
    "2026-12-21T00:00:00.000Z",
  );
  assertEquals(iso(quotaPeriodStart("monthly", t)), "2027-01-01T00:00:00.000Z");
  assertEquals(iso(quotaPeriodStart("monthly", t - 1)), "2026-12-01T00:00:00.000Z");
  assertEquals(
    iso(quotaPeriodStart("monthly", Date.UTC(2028, 1, 29, 12))),
    "2028-02-01T00:00:00.000Z",
  );
  assertEquals(quotaPeriodStart(null, t), null);
});

Deno.test("a quota refuses exactly at its boundary and starts again when the period rolls over", () => {
  const l = ledger();
  const alice = testUser("alice", { dataQuotaBytes: 1000, quotaReset: "monthly" });
  const users = new UserDirectory([alice], [], createMemoryCounts(), l);
  const dec31 = Date.UTC(2026, 11, 31, 23, 59, 59);
  const release = users.admit(alice, dec31, "198.51.100.1");
  assert(typeof release === "function");
  assertEquals(users.charge("alice", 999, dec31), 0);
  // One byte short: still admitted.
  assert(typeof users.admit(alice, dec31) === "function");
  // The byte that reaches the quota closes the client that moved it; new ones are refused.
  assertEquals(users.charge("alice", 1, dec31), QUOTA_EXCEEDED);
  assertEquals(users.admit(alice, dec31), "user_quota");
  assertEquals(l.periodStart(alice, dec31), Date.UTC(2026, 11, 1));
  // January: a new period, nothing used.
  const jan1 = Date.UTC(2027, 0, 1);
  assertEquals(l.used(alice, jan1), 0);
  assertEquals(l.periodStart(alice, jan1), jan1);
  assert(typeof users.admit(alice, jan1) === "function");
  assertEquals(users.charge("alice", 500, jan1 + 1), 0);
  assertEquals(l.used(alice, jan1 + 2), 500);
  // Without quota_reset it never starts again.
  const bob = testUser("bob", { dataQuotaBytes: 10 });
  assertEquals(l.charge(bob, 10, dec31), QUOTA_EXCEEDED);
  assertEquals(l.used(bob, Date.UTC(2030, 0, 1)), 10);
  assertEquals(l.periodStart(bob, dec31), null);
});

Deno.test("the usage file is written atomically, read back at start, and a stale period is dropped", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/${USAGE_FILE_NAME}`;
    const warnings: string[] = [];
    const now = Date.UTC(2026, 11, 9);
    const l1 = ledger();
    const s1 = new UsageStore(path, l1, { warn: (m) => warnings.push(m), now: () => now });
    await s1.load();
    const alice = testUser("alice", { dataQuotaBytes: 10_000, quotaReset: "daily" });
    const bob = testUser("bob");
    l1.charge(alice, 1234, now);
    l1.charge(bob, 99, now);
    await s1.stop();
    assertEquals(warnings, []);
    // Only the file itself is left: the temporary one was renamed over it.
    const names = [...Deno.readDirSync(dir)].map((e) => e.name);
    assertEquals(names, [USAGE_FILE_NAME]);
    const file = parseUsageFile(await Deno.readTextFile(path));
    assert(typeof file !== "string");
    assertEquals(file.get("alice"), { bytes: 1234, periodStart: Date.UTC(2026, 11, 9) });
    assertEquals(file.get("bob"), { bytes: 99, periodStart: null });
    assertEquals((await Deno.stat(path)).mode! & 0o777, 0o600);
    // A restart: the bytes are there; the next day, alice's are not (bob's never reset).
    const l2 = ledger();
    await new UsageStore(path, l2, { warn: (m) => warnings.push(m) }).load();
    assertEquals(l2.used(alice, now + 1000), 1234);
    assertEquals(l2.used(bob, now + 1000), 99);
    assertEquals(l2.used(alice, now + 86_400_000), 0);
    // Nothing changed since: a flush does not write.
    const before = (await Deno.stat(path)).mtime;
    const l3 = ledger();
    const s3 = new UsageStore(path, l3, { warn: (m) => warnings.push(m) });
    await s3.load();
    await s3.flush();
    assertEquals((await Deno.stat(path)).mtime, before);
    assertEquals(warnings, []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("two processes sharing the usage file (an upgrade) add up their bytes", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/${USAGE_FILE_NAME}`;
    const warn = (m: string) => {
      throw new Error(m);
    };
    const alice = testUser("alice", { dataQuotaBytes: 1000 });
    const t = Date.UTC(2026, 11, 9);
    const oldL = ledger(), newL = ledger();
    const oldS = new UsageStore(path, oldL, { warn });
    oldL.charge(alice, 100, t);
    await oldS.flush();
    // The new process starts from the file, then both serve alice.
    const newS = new UsageStore(path, newL, { warn });
    await newS.load();
    oldL.charge(alice, 300, t);
    newL.charge(alice, 50, t);
    await oldS.flush();
    await newS.flush();
    const file = parseUsageFile(await Deno.readTextFile(path));
    assert(typeof file !== "string");
    assertEquals(file.get("alice")!.bytes, 450);
    // The new process now counts the old one's bytes against the quota too.
    assertEquals(newL.used(alice, t), 450);
    oldL.charge(alice, 10, t);
    await oldS.stop();
    assertEquals(oldL.used(alice, t), 460);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a broken or unreadable usage file is reported in one line and usage starts from zero", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/${USAGE_FILE_NAME}`;
    for (
      const text of ["{not json", '{"version": 2}', '{"version":1,"users":{"a":{"bytes":-1}}}']
    ) {
      await Deno.writeTextFile(path, text);
      const warnings: string[] = [];
      const l = ledger();
      const s = new UsageStore(path, l, { warn: (m) => warnings.push(m) });
      await s.load();
      assertEquals(warnings.length, 1, text);
      assert(warnings[0]!.includes(path) && warnings[0]!.includes("starts from zero"), warnings[0]);
      assertEquals(l.used(testUser("alice"), Date.now()), 0);
      // The next flush replaces it with a good one.
      l.charge(testUser("alice"), 7, Date.now());
      await s.flush();
      const file = parseUsageFile(await Deno.readTextFile(path));
      assert(typeof file !== "string");
      assertEquals(file.get("alice")!.bytes, 7);
    }
    // A directory where the file should be: reported, never thrown.
    await Deno.remove(path);
    await Deno.mkdir(path);
    const warnings: string[] = [];
    const l = ledger();
    const s = new UsageStore(path, l, { warn: (m) => warnings.push(m) });
    await s.load();
    l.charge(testUser("alice"), 7, Date.now());
    await s.flush();
    assertEquals(warnings.length, 2, warnings.join("\n"));
    assert(warnings[1]!.startsWith("Cannot write the usage file"), warnings[1]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an address table keeps at most its limit within the window, refreshing known ones", () => {
  const slots = ipTableSlots(3);
  const buf = new ArrayBuffer(slots * IP_SLOT_CELLS * 8);
  const table = { f64: new Float64Array(buf), i32: new Int32Array(buf), base: 0, slots };
  const ip = (n: number) => Uint8Array.from({ length: 16 }, (_, i) => i === 15 ? n : 0);
  const opts = { limit: 3, windowMs: 1000 };
  const t = 1_700_000_000_000;
  assertEquals([1, 2, 3].map((n) => admitIp(table, ip(n), t, opts)), ["added", "added", "added"]);
  assertEquals(admitIp(table, ip(4), t, opts), "full");
  assertEquals(admitIp(table, ip(2), t + 900, opts), "known");
  // 1 and 3 leave the window; 2 was seen again and stays.
  assertEquals(admitIp(table, ip(4), t + 1000, opts), "added");
  assertEquals(admitIp(table, ip(5), t + 1000, opts), "added");
  assertEquals(admitIp(table, ip(6), t + 1000, opts), "full");
  assertEquals(countIps(table, t + 1000, 1000), 3);
  // Many addresses over time never fill the table.
  for (let i = 0; i < 1000; i++) admitIp(table, ip(i % 250), t + 2000 + i * 1000, opts);
  assertEquals(countIps(table, t + 2000 + 999 * 1000, 1000), 1);
});

Deno.test("a user's unique addresses are one count for the threads sharing a ledger; a raised limit keeps them", () => {
  const storage = createUserLedger({ users: 4, ipSlots: 64 });
  const w1 = openUserLedger(storage), w2 = openUserLedger(storage);
  const alice = testUser("alice", { maxUniqueIps: 2 });
  const t = Date.now();
  assert(w1.admitIp(alice, "203.0.113.1", t));
  assert(w2.admitIp(alice, "203.0.113.2", t));
  assert(!w1.admitIp(alice, "203.0.113.3", t));
  assert(w2.admitIp(alice, "203.0.113.1", t));
  // The same address as IPv4-mapped IPv6 is the same client.
  assert(w2.admitIp(alice, "::ffff:203.0.113.2", t));
  const raised = { ...alice, maxUniqueIps: 5 };
  assert(w2.admitIp(raised, "203.0.113.3", t));
  assertEquals(w1.uniqueIps(raised, t), 3);
});

Deno.test("a user beyond the ledger's size is still limited, by this thread alone, and it says so once", () => {
  const l = openUserLedger(createUserLedger({ users: 1, ipSlots: 16 }));
  const spilled: string[] = [];
  l.onSpill = (name) => spilled.push(name);
  const alice = testUser("alice", { dataQuotaBytes: 100 }),
    bob = testUser("bob", { dataQuotaBytes: 100 });
  const carol = testUser("carol", { maxUniqueIps: 1 });
  const t = Date.now();
  assertEquals(l.charge(alice, 50, t), 0);
  assertEquals(l.charge(bob, 50, t), 0);
  assertEquals(l.charge(bob, 50, t), QUOTA_EXCEEDED);
  assert(l.admitIp(carol, "203.0.113.1", t));
  assert(!l.admitIp(carol, "203.0.113.2", t));
  assertEquals(spilled, ["bob"]);
  assertEquals(l.entries().map((e) => [e.name, e.bytes]), [["alice", 50], ["bob", 100], [
    "carol",
    0,
  ]]);
});

// Through a real `mtproxy run`: bytes used survive a restart, and the restarted proxy refuses.
for (const workers of [1, 2]) {
  Deno.test(`a user's data usage survives a restart of mtproxy run with ${workers} worker(s) (usage file beside the state file)`, async () => {
    const dir = await Deno.makeTempDir();
    const dc = await startFakeDc({ mode: "echo" });
    try {
      const secret = "0123456789abcdef0123456789abcdef";
      const alice = "a1a2a3a4a5a6a7a8a9aaabacadaeafa0";
      const config = `${dir}/config.yaml`;
      await Deno.writeTextFile(
        config,
        `listeners:
  - host: 127.0.0.1
    port: ${freePort()}
    secret: "${secret}"
    tls_domain: example.com
log_level: info
workers: ${workers}
telegram:
  mode: direct
  dc_addresses: { 2: "127.0.0.1:${dc.port}" }
fronting: { mode: "off" }
users:
  alice: { secret: "${alice}", data_quota: 60000 }
`,
      );
      const run = () =>
        new ProxyProcess(["run", "--config", config, "--quiet-links"], { cwd: dir });
      const key = Uint8Array.from(alice.match(/../g)!, (h) => parseInt(h, 16));
      const echo = async (c: TestClient, n: number) => {
        const payload = randomBytes(n);
        await c.send(payload, { padding: 0 });
        assertEquals((await c.receive(5000)).subarray(0, n), payload);
      };
      const usage = async () => {
        const text = await Deno.readTextFile(`${dir}/${USAGE_FILE_NAME}`).catch(() => "");
        const got = text ? parseUsageFile(text) : new Map();
        return typeof got === "string" ? 0 : got.get("alice")?.bytes ?? 0;
      };
      // First run: about 40 kB of the 60 kB, then a clean stop (SIGTERM flushes the file).
      let proxy = run();
      try {
        await proxy.waitFor("listening on");
        if (workers > 1) await proxy.waitForLog(`${workers} workers serving`);
        const c = await connectTestClient({ port: proxy.port(), secret: key, kind: "dd", dcId: 2 });
        for (let i = 0; i < 5; i++) await echo(c, 4000);
        await c.close();
      } finally {
        proxy.signal("SIGTERM");
        assertEquals(await proxy.wait(), 0, proxy.stderr);
      }
      const first = await usage();
      assert(first >= 40_000 && first < 60_000, `used ${first}`);
      // Second run: the same bytes count; passing 60 kB closes the client and refuses new ones.
      proxy = run();
      try {
        await proxy.waitFor("listening on");
        const c = await connectTestClient({ port: proxy.port(), secret: key, kind: "dd", dcId: 2 });
        await echo(c, 4000);
        await c.send(randomBytes(16_000), { padding: 0 });
        await c.closed();
        await c.close();
        await proxy.waitForLog("closed: user_quota (user alice used up its data_quota)");
        const d = await connectTestClient({ port: proxy.port(), secret: key, kind: "dd", dcId: 2 });
        await d.closed();
        await d.close();
        await proxy.waitForLog("refused: user_quota");
        // The periodic flush writes it while running too (within 10 s).
        await eventually(async () => (await usage()) >= 60_000, "the usage file's flush", 20_000);
      } finally {
        proxy.signal("SIGTERM");
        assertEquals(await proxy.wait(), 0, proxy.stderr);
      }
      assert((await usage()) >= 60_000);
      // Third run: still used up.
      proxy = run();
      try {
        await proxy.waitFor("listening on");
        const d = await connectTestClient({ port: proxy.port(), secret: key, kind: "dd", dcId: 2 });
        await d.closed();
        await d.close();
        await proxy.waitForLog("refused: user_quota");
      } finally {
        proxy.signal("SIGTERM");
        assertEquals(await proxy.wait(), 0, proxy.stderr);
      }
    } finally {
      await dc.close();
      await Deno.remove(dir, { recursive: true });
    }
  });
}
