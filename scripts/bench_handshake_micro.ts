/**
 * In-process microbench of the CPU work in one fake-TLS (`ee`) handshake, step by step, driving
 * lib/protocol/fake_tls.ts, lib/protocol/obfuscated2.ts and lib/crypto.ts the way
 * lib/client/session.ts and lib/telegram/direct.ts do (no sockets): ClientHello parse, digest
 * check, replay check, ServerHello (X25519 key, ML-KEM-sized share, random fake certificate,
 * HMAC), the client's obfuscated2 init (SHA-256 keys, AES-256-CTR), and for direct mode the
 * proxy's own init toward the DC. Prints process CPU microseconds per call of each step and of the whole
 * (median of interleaved rounds).
 *
 * Usage: `deno run -A scripts/bench_handshake_micro.ts [--ms 100] [--rounds 7]
 * [--backend openssl|node]`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import process from "node:process";
import {
  type CipherBackend,
  createAesCtr,
  hmacSha256,
  randomBytes,
  randomInt,
  sha256,
  x25519PublicKey,
} from "../lib/crypto.ts";
import {
  buildServerHello,
  type ClientHello,
  GROUP_X25519_MLKEM768,
  parseClientHello,
  signClientHello,
  verifyClientHello,
} from "../lib/protocol/fake_tls.ts";
import { buildClientHello } from "../lib/protocol/client_hello.ts";
import { createInit, openClientInit, replyKeyMaterial } from "../lib/protocol/obfuscated2.ts";
import { initRandom } from "../lib/telegram/direct.ts";
import { createReplayCache } from "../lib/guard/replay.ts";
import { concatBytes } from "../lib/protocol/bytes.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    ms: { type: "string", default: "100" },
    rounds: { type: "string", default: "7" },
    backend: { type: "string" },
  },
});
const MS = Number(values.ms);
const ROUNDS = Number(values.rounds);
const backend = values.backend as CipherBackend | undefined;
if (backend) Deno.env.set("MTP_CRYPTO_BACKEND", backend);

const secret = randomBytes(16);
const template = buildClientHello({ sni: "example.com" });

function _signedHello(): Uint8Array {
  const h = template.slice();
  h.set(randomBytes(32), 44);
  return signClientHello(h, secret, Math.floor(Date.now() / 1000));
}

/** A pool of distinct signed hellos, so the replay check and the parse see fresh ones. */
const hellos = Array.from({ length: 512 }, _signedHello);
const parsed: ClientHello[] = hellos.map((h) => {
  const s = parseClientHello(h);
  if (s.kind !== "hello") throw new Error("bad hello");
  return s.hello;
});

/** A client's obfuscated2 init for `secret` (padded, DC 2), as the proxy receives it. */
const inits = Array.from(
  { length: 512 },
  () => createInit(initRandom(), "padded", 2, { secret }).wire,
);

const replay = createReplayCache({ maxEntries: 1_000_000, maxAgeMs: 3_600_000 });
let sink = 0;

/** Process CPU microseconds (user + system): unlike wall time, not inflated by other processes. */
function _cpuUs(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

/** CPU microseconds per call of `fn`, over about MS milliseconds. */
function _time(fn: (i: number) => void): number {
  let n = 0;
  const c0 = _cpuUs();
  const t0 = performance.now();
  while (performance.now() - t0 < MS) {
    for (let k = 0; k < 50; k++) fn(n++);
  }
  return (_cpuUs() - c0) / n;
}

function _median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

const now = () => Date.now() / 1000;
const steps: Record<string, (i: number) => void> = {
  "parseClientHello (1.8 KB hello)": (i) => {
    sink += parseClientHello(hellos[i % 512]!).kind.length;
  },
  "verifyClientHello (HMAC-SHA256 over the hello)": (i) => {
    sink += verifyClientHello(parsed[i % 512]!, secret, now(), 600).kind.length;
  },
  "replay checkAndAdd": () => {
    sink += replay.checkAndAdd(randomBytes(32), Date.now()) ? 1 : 0;
  },
  "x25519PublicKey()": () => {
    sink += x25519PublicKey()[0]!;
  },
  "ML-KEM share: randomBytes(1088) + concat": () => {
    sink += concatBytes([randomBytes(1088), secret]).length;
  },
  "randomInt (fake cert size)": () => {
    sink += randomInt(2500, 4700);
  },
  "buildServerHello (ML-KEM, ~3.6 KB random cert, HMAC)": (i) => {
    const key = new Uint8Array(1088 + 32);
    sink += buildServerHello(parsed[i % 512]!, secret, {
      keyShare: key,
      keyShareGroup: GROUP_X25519_MLKEM768,
      appData: 2500 + (i % 2200),
      fillAppData: (p) => crypto.getRandomValues(p),
    }).length;
  },
  "ServerHello as session.ts builds it (randomBytes(1088) + concat, then build)": (i) => {
    const x25519 = secret.subarray(0, 32);
    sink += buildServerHello(parsed[i % 512]!, secret, {
      keyShare: concatBytes([randomBytes(1088), x25519]),
      keyShareGroup: GROUP_X25519_MLKEM768,
      appData: 2500 + (i % 2200),
      fillAppData: (p) => crypto.getRandomValues(p),
    }).length;
  },
  "ServerHello with the ML-KEM ciphertext filled in place (keySharePrefix)": (i) => {
    const x25519 = secret.subarray(0, 32);
    sink += buildServerHello(parsed[i % 512]!, secret, {
      keyShare: x25519,
      keySharePrefix: 1088,
      fillKeySharePrefix: (p) => crypto.getRandomValues(p),
      keyShareGroup: GROUP_X25519_MLKEM768,
      appData: 2500 + (i % 2200),
      fillAppData: (p) => crypto.getRandomValues(p),
    }).length;
  },
  "openClientInit (2x SHA-256, 2x AES-CTR setup)": (i) => {
    const s = openClientInit(inits[i % 512]!, secret)!;
    s.decryptor.close();
    s.encryptor.close();
  },
  "direct: initRandom + createInit toward the DC": () => {
    const r = createInit(initRandom(), "padded", 2);
    r.encryptor.close();
    r.decryptor.close();
  },
  "direct fast mode: createInit with reply key material": () => {
    const k = randomBytes(32);
    const r = createInit(initRandom(), "padded", 2, {
      keyMaterial: replyKeyMaterial(k, k.subarray(0, 16)),
    });
    r.encryptor.close();
    r.decryptor.close();
  },
  "hmacSha256 (16-byte key, 32 B + 1.3 KB)": (i) => {
    sink += hmacSha256(secret, parsed[i % 512]!.random, hellos[i % 512]!.subarray(0, 1300))[0]!;
  },
  "sha256 (32 B + 16 B)": (i) => {
    sink += sha256(inits[i % 512]!.subarray(8, 40), secret)[0]!;
  },
  "createAesCtr + close": (i) => {
    createAesCtr(inits[i % 512]!.subarray(0, 32), inits[i % 512]!.subarray(32, 48)).close();
  },
  "randomBytes(64)": () => {
    sink += randomBytes(64)[0]!;
  },
};

/** The whole of the proxy's CPU work for one ee handshake in direct mode (no I/O). */
function _whole(i: number, direct: boolean): void {
  const step = parseClientHello(hellos[i % 512]!);
  if (step.kind !== "hello") throw new Error("bad hello");
  const hello = step.hello;
  verifyClientHello(hello, secret, now(), 600);
  replay.checkAndAdd(randomBytes(32), Date.now());
  const x25519 = x25519PublicKey();
  const answer = buildServerHello(hello, secret, {
    keyShare: concatBytes([randomBytes(1088), x25519]),
    keyShareGroup: GROUP_X25519_MLKEM768,
    appData: randomInt(2500, 4700),
    fillAppData: (p) => crypto.getRandomValues(p),
  });
  sink += answer.length;
  const s = openClientInit(inits[i % 512]!, secret)!;
  if (direct) {
    const r = createInit(initRandom(), s.tag, s.dcId);
    r.encryptor.close();
    r.decryptor.close();
  }
  s.decryptor.close();
  s.encryptor.close();
}

steps["whole handshake, middle mode (no dial)"] = (i) => _whole(i, false);
steps["whole handshake, direct mode (incl. the DC init)"] = (i) => _whole(i, true);
console.log(
  `backend: ${backend ?? "default"}; CPU us per call, median of ${ROUNDS} rounds of ${MS} ms`,
);
for (const fn of Object.values(steps)) for (let i = 0; i < 200; i++) fn(i);
const results = new Map<string, number[]>();
// Rounds interleave the steps, so a noisy moment hits them all alike.
for (let r = 0; r < ROUNDS; r++) {
  for (const [name, fn] of Object.entries(steps)) {
    const acc = results.get(name) ?? [];
    acc.push(_time(fn));
    results.set(name, acc);
  }
}
for (const [name, xs] of results) {
  console.log(
    `${_median(xs).toFixed(2).padStart(9)} us  ${name}` +
      `  (${Math.min(...xs).toFixed(1)}-${Math.max(...xs).toFixed(1)})`,
  );
}
if (sink === 0.5) console.log(sink);
