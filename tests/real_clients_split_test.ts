/**
 * Real Telegram clients through split mode: client -> front (`role: "front"`, the client
 * listener) -> link -> back (`role: "back"`) -> a fake DC (back in direct mode) or a fake middle
 * proxy (back in middle mode, the ad tag set on the front's listener only), for plain, `dd` and
 * `ee` secrets. The clients and checks are those of `tests/real_clients_test.ts` (standalone):
 * TDLib 1.8.65 `pingProxy` returns a latency and `testProxy` gets as far as `req_DH_params`;
 * mtcute 0.30.3's `MtProxyTcpTransport` gets as far as `req_DH_params`.
 *
 * The front, the back and the fakes run in this process; each client runs in a subprocess (see
 * `tests/kit/real_clients.ts`, which also installs the clients' npm packages on the first run).
 *
 * @module
 */
import { assert, assertEquals } from "./assert.ts";
import {
  type FakeTelegramMiddle,
  startFakeTelegramMiddle,
  startTestProxy,
  TEST_SECRET,
  testConfig,
  type TestProxy,
  until,
} from "./helpers.ts";
import { type FakeDc, startFakeDc } from "./kit/fake_dc.ts";
import {
  checkEstablished,
  checkInits,
  checkMiddle,
  checkPing,
  describe,
  ensureInstalled,
  established,
  findDhParams,
  findMiddleDhParams,
  json,
  type Kind,
  KINDS,
  runMtcute,
  runTdlib,
  TLS_DOMAIN,
} from "./kit/real_clients.ts";
import type { Config } from "../lib/config/types.ts";
import { type ServerHandle, startServer } from "../lib/server.ts";

const AD_TAG = Uint8Array.from({ length: 16 }, (_, i) => 0xc0 + i);
const LINK_SECRET = Uint8Array.from({ length: 16 }, (_, i) => 0x30 + i);
const LINK = { windowBytes: 256 * 1024, keepaliveMs: 1000, timeoutMs: 5000, waitMs: 2000 };
/** The back's link listener's fake-TLS domain (the front's hello names it). */
const LINK_DOMAIN = "example.org";

/** A back with one link listener, one front credential, no ad tag of its own, and `telegram`. */
function _backConfig(telegram: Config["telegram"]): Config {
  return {
    ...testConfig(),
    role: "back",
    listeners: [],
    linkListeners: [{ name: "link1", host: "127.0.0.1", port: 0, tlsDomains: [LINK_DOMAIN] }],
    fronts: [{ name: "home", secret: LINK_SECRET }],
    defaultTag: null,
    link: LINK,
    telegram,
  };
}

/** A front whose client listener takes the real-client secrets, with two links to the back. */
function _frontConfig(backPort: number, tag: Uint8Array | null): Config {
  const base = testConfig({ secret: TEST_SECRET, tlsDomains: [TLS_DOMAIN] });
  return {
    ...base,
    role: "front",
    listeners: base.listeners.map((l) => ({ ...l, tag })),
    backs: [{
      address: { host: "127.0.0.1", port: backPort },
      secret: LINK_SECRET,
      tlsDomain: LINK_DOMAIN,
      links: 2,
    }],
    link: LINK,
  };
}

/** The front (its client listener is where clients go) and the back behind it. */
interface Split {
  readonly front: TestProxy;
  readonly back: ServerHandle;
}

/** Start the back, then a front linked to it; run `fn` once both links are up. */
async function _withSplit(
  backConfig: Config,
  tag: Uint8Array | null,
  fn: (split: Split) => Promise<void>,
): Promise<void> {
  const back = await startServer(backConfig);
  try {
    await using front = await startTestProxy(_frontConfig(back.linkAddresses[0]!.port, tag));
    await until(() => front.server.linksUp() === 2, "both links up");
    await fn({ front, back });
    // The clients came and went on streams; the links they rode on stay up.
    assertEquals(front.server.linksUp(), 2, `front links: ${json(front.server.backLinks())}`);
    assertEquals(back.linksUp(), 2, `back links: ${json(_frontLinks(back))}`);
  } finally {
    await back.shutdown();
  }
}

/** A fake DC in mtproto mode, and a back in direct mode routing every DC id (±1..5) to it. */
async function _withSplitAndDc(fn: (split: Split, dc: FakeDc) => Promise<void>): Promise<void> {
  const dc = await startFakeDc({ mode: "mtproto" });
  try {
    const dcPorts: Record<number, number> = {};
    for (let id = 1; id <= 5; id++) {
      dcPorts[id] = dc.port;
      dcPorts[-id] = dc.port;
    }
    const telegram = { ...testConfig({ dcPorts }).telegram, mode: "direct" as const };
    await _withSplit(_backConfig(telegram), null, (split) => fn(split, dc));
  } finally {
    await dc.close();
  }
}

/**
 * A fake middle proxy checking {@linkcode AD_TAG} (its config lists DC 2 and `default 2`, so
 * TDLib's ping of DC 1 also lands there), and a back in middle mode; the front's listener has
 * the ad tag, the back has none, so a tag the fake accepts came over the link.
 */
async function _withSplitAndMiddle(
  fn: (split: Split, telegram: FakeTelegramMiddle) => Promise<void>,
): Promise<void> {
  await using telegram = await startFakeTelegramMiddle(AD_TAG, "mtproto");
  const back = _backConfig(
    testConfig({ proxyUrls: telegram.proxyUrls, externalIp: "127.0.0.1", telegramMode: "middle" })
      .telegram,
  );
  await _withSplit(back, AD_TAG, (split) => fn(split, telegram));
}

/** The back's per-front link and stream counters, as JSON-able maps. */
function _frontLinks(back: ServerHandle): unknown {
  const s = back.frontLinks();
  return s && Object.fromEntries(
    Object.entries(s).map(([k, v]) => [k, v instanceof Map ? Object.fromEntries(v) : v]),
  );
}

/** Where the client's traffic went, for failure messages. */
function _seen(split: Split, fake: { readonly events: readonly unknown[] }, fakeName: string) {
  return `${fakeName} ${json(fake.events)}; front ${json(split.front.events)}; ` +
    `front links ${json(split.front.server.backLinks())}; back ${json(_frontLinks(split.back))}`;
}

/** No client connection was refused by the front, and its sessions asked for DCs 1 and 2. */
function _checkTdlibSessions(split: Split, kind: Kind, what: string): void {
  checkEstablished(split.front, kind, what);
  // For ee, "tls" sessions mean the front accepted TDLib's fake-TLS hello and TDLib accepted
  // the front's answer (it checks the server HMAC before sending anything).
  const rejected = split.front.events.filter((e) => e.type === "rejected");
  assertEquals(rejected, [], `the front rejected a TDLib connection; ${what}`);
  assertEquals(
    established(split.front.events).map((e) => e.requestedDc).sort(),
    [1, 2],
    `DC ids: pingProxy asks for the main DC (1 in a fresh database), testProxy for 2`,
  );
}

for (const kind of KINDS) {
  Deno.test(`TDLib pingProxy and testProxy work through front -> back (direct) with ${kind.name} secret`, async () => {
    await ensureInstalled();
    await _withSplitAndDc(async (split, dc) => {
      const { run, report } = await runTdlib(split.front, kind);
      const what = describe(`TDLib (split, direct) with ${kind.name} secret`, run);
      checkPing(report, `${what}; ${_seen(split, dc, "fake DC")}`);

      // pingProxy: one connection, two req_pq_multi on it (the second one is timed).
      // testProxy: one connection that gets as far as req_DH_params, with both nonces right.
      const dh = findDhParams(dc);
      assert(
        dh,
        `testProxy did not reach req_DH_params: ${_seen(split, dc, "fake DC")}; ${what}`,
      );
      assert(dh.nonceOk && dh.serverNonceOk, `req_DH_params nonces: ${json(dh)}`);
      const pqs = dc.events.filter((e) => e.type === "req_pq");
      assert(pqs.length >= 3, `req_pq count ${pqs.length}: ${json(dc.events)}`);
      // The fake DC is dialled by the back, not by the client: the client's obfuscated2 init
      // ends at the front, which unframes its packets and opens a link stream carrying the
      // client's transport tag; the back dials the DC with that tag and frames the packets
      // again (its own padding for padded). So the tag the fake DC sees is still the client's
      // (the standalone check holds, and proves the tag crossed the link). What is new in
      // split mode: each client session is exactly one DC connection made by the back, whose
      // init names the DC the client asked for at the front (every id is routed, so no
      // default-DC fallback hides a lost id).
      checkInits(dc, kind, what);
      const inits = dc.events.flatMap((e) => (e.type === "init" ? [e] : []));
      assertEquals(
        inits.map((e) => e.dcId).sort(),
        established(split.front.events).map((e) => e.requestedDc).sort(),
        `one DC connection per front session, for the DC it asked for: ` +
          _seen(split, dc, "fake DC"),
      );
      _checkTdlibSessions(split, kind, what);
    });
  });
}

for (const kind of KINDS) {
  Deno.test(`mtcute MtProxyTcpTransport reaches req_DH_params through front -> back (direct) with ${kind.name} secret`, async () => {
    await ensureInstalled();
    await _withSplitAndDc(async (split, dc) => {
      const run = await runMtcute(split.front, kind, () => findDhParams(dc) !== undefined);
      const what = describe(`mtcute (split, direct) with ${kind.name} secret`, run);
      const dh = findDhParams(dc);
      assert(
        dh,
        `mtcute did not reach req_DH_params: ${_seen(split, dc, "fake DC")}; ${what}`,
      );
      assert(dh.nonceOk && dh.serverNonceOk, `req_DH_params nonces: ${json(dh)}; ${what}`);
      // As for TDLib: the back dials the DC with the client's tag and DC id, forwarded by the
      // front. (mtcute is killed once req_DH_params arrives, so connections are not counted.)
      checkInits(dc, kind, what);
      for (const e of dc.events) {
        if (e.type === "init") assertEquals(e.dcId, 2, `DC id in the back's init; ${what}`);
      }
      checkEstablished(split.front, kind, what);
      const first = established(split.front.events)[0]!;
      assertEquals(first.requestedDc, 2, `DC id mtcute asked for; ${what}`);
    });
  });
}

for (const kind of KINDS) {
  Deno.test(`TDLib pingProxy and testProxy work through front -> back (middle proxy) with ${kind.name} secret`, async () => {
    await ensureInstalled();
    await _withSplitAndMiddle(async (split, { mp }) => {
      const { run, report } = await runTdlib(split.front, kind);
      const what = describe(`TDLib (split, middle) with ${kind.name} secret`, run);
      checkPing(report, `${what}; ${_seen(split, mp, "fake middle proxy")}`);
      const dh = findMiddleDhParams(mp);
      assert(
        dh,
        `testProxy did not reach req_DH_params: ${_seen(split, mp, "fake middle proxy")}; ${what}`,
      );
      assert(dh.nonceOk && dh.serverNonceOk, `req_DH_params nonces: ${json(dh)}`);
      const pqs = mp.events.filter((e) => e.type === "req_pq");
      assert(pqs.length >= 3, `req_pq count ${pqs.length}: ${json(mp.events)}`);
      // Every PROXY_REQ has the front's ad tag and the client's transport.
      checkMiddle(mp, kind, what);
      _checkTdlibSessions(split, kind, what);
    });
  });
}

for (const kind of KINDS) {
  Deno.test(`mtcute MtProxyTcpTransport reaches req_DH_params through front -> back (middle proxy) with ${kind.name} secret`, async () => {
    await ensureInstalled();
    await _withSplitAndMiddle(async (split, { mp }) => {
      const run = await runMtcute(split.front, kind, () => findMiddleDhParams(mp) !== undefined);
      const what = describe(`mtcute (split, middle) with ${kind.name} secret`, run);
      const dh = findMiddleDhParams(mp);
      assert(
        dh,
        `mtcute did not reach req_DH_params: ${_seen(split, mp, "fake middle proxy")}; ${what}`,
      );
      assert(dh.nonceOk && dh.serverNonceOk, `req_DH_params nonces: ${json(dh)}; ${what}`);
      checkMiddle(mp, kind, what);
      checkEstablished(split.front, kind, what);
      const first = established(split.front.events)[0]!;
      assertEquals(first.requestedDc, 2, `DC id mtcute asked for; ${what}`);
    });
  });
}
