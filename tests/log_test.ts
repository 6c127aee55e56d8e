import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import { logger, resetLogging, setupLogging } from "../lib/ops/log.ts";

Deno.test("setupLogging writes one line per record with time, level, category and message", async () => {
  const lines: string[] = [];
  await setupLogging("info", { write: (line) => lines.push(line) });
  try {
    logger("client").info("accepted {peer} for {listener}", {
      peer: "203.0.113.5:50000",
      listener: "main",
    });
    logger("client").debug("not shown at info");
    logger("server", "accept").error("accept failed: {error}", { error: "EMFILE" });
  } finally {
    await resetLogging();
  }
  assertEquals(lines.length, 2, lines.join("\n"));
  assert(
    /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} [+-]\d\d \[INF\] mtproxy\.client: accepted 203\.0\.113\.5:50000 for main$/
      .test(lines[0]!),
    lines[0],
  );
  assertStringIncludes(lines[1]!, "[ERR] mtproxy.server.accept: accept failed: EMFILE");
});

Deno.test("setupLogging keeps attacker-chosen values on one line", async () => {
  const lines: string[] = [];
  await setupLogging("debug", { write: (line) => lines.push(line) });
  try {
    logger("client").debug("bad sni {sni}", { sni: "evil\n2026-01-01 [INF] forged\x1b[2J" });
  } finally {
    await resetLogging();
  }
  assertEquals(lines.length, 1);
  assert(!lines[0]!.includes("\n") && !lines[0]!.includes("\x1b"), JSON.stringify(lines[0]));
});

Deno.test("setupLogging filters by level and drops everything after resetLogging", async () => {
  const lines: string[] = [];
  await setupLogging("warning", { write: (line) => lines.push(line) });
  logger("x").info("dropped");
  logger("x").warn("kept");
  await resetLogging();
  logger("x").error("after reset");
  assertEquals(lines.length, 1);
  assertStringIncludes(lines[0]!, "[WRN] mtproxy.x: kept");
});

Deno.test("setupLogging silences LogTape's meta logger notice", async () => {
  const lines: string[] = [];
  await setupLogging("debug", { write: (line) => lines.push(line) });
  await resetLogging();
  assertEquals(lines.filter((l) => l.includes("logtape")), []);
});
