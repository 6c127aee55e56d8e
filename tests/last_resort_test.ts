import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import { until } from "./helpers.ts";
import { installLastResort, reportUnexpected } from "../lib/ops/last_resort.ts";

const MODULE = new URL("../lib/ops/last_resort.ts", import.meta.url).href;

/** Run `code` (with installLastResort imported) in a fresh Deno process. */
async function runScript(code: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", `import { installLastResort } from ${JSON.stringify(MODULE)};\n${code}`],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

Deno.test("installLastResort logs and counts an unhandled rejection and an uncaught exception, and the test goes on", async () => {
  const logged: string[] = [];
  let caught = 0;
  const uninstall = installLastResort({
    log: (message, error) => logged.push(`${message}: ${(error as Error).message}`),
    onCaught: () => caught++,
  });
  try {
    Promise.reject(new Error("nobody handles this"));
    setTimeout(() => {
      throw new Error("thrown in a timer");
    }, 0);
    await until(() => caught === 2, "both errors to be caught", 5000);
    assertEquals(logged.sort(), [
      "Uncaught exception: thrown in a timer",
      "Unhandled promise rejection: nobody handles this",
    ]);
  } finally {
    uninstall();
  }
});

Deno.test("reportUnexpected reaches every installed handler and survives handlers that throw", () => {
  const seen: string[] = [];
  const a = installLastResort({
    log: (message) => seen.push(`a ${message}`),
    onCaught: () => {
      throw new Error("broken counter");
    },
  });
  const b = installLastResort({
    log: () => {
      throw new Error("broken log");
    },
    onCaught: () => seen.push("b counted"),
  });
  try {
    reportUnexpected("Client 192.0.2.1:1 closed", new Error("boom"));
    assertEquals(seen, ["a Client 192.0.2.1:1 closed", "b counted"]);
  } finally {
    a();
    b();
  }
  b(); // Uninstalling twice is harmless.
  seen.length = 0;
  const c = installLastResort({ log: (m) => seen.push(m), onCaught: () => {} });
  c();
  // Uninstalled handlers hear nothing.
  const originalError = console.error;
  const printed: unknown[] = [];
  console.error = (...args: unknown[]) => printed.push(args.join(" "));
  try {
    reportUnexpected("Nobody listening", new Error("still said"));
  } finally {
    console.error = originalError;
  }
  assertEquals(seen, []);
  assertEquals(printed.length, 1);
  assertStringIncludes(String(printed[0]), "Nobody listening: unexpected error: Error: still said");
});

Deno.test("a process with installLastResort survives an unhandled rejection; after uninstall it does not", async () => {
  const kept = await runScript(`
    let n = 0;
    installLastResort({ log: () => {}, onCaught: () => n++ });
    Promise.reject(new Error("lost"));
    setTimeout(() => { throw new Error("lost too"); }, 0);
    setTimeout(() => console.log("still serving after", n), 100);
  `);
  assertEquals(kept.code, 0, kept.stderr);
  assertEquals(kept.stdout.trim(), "still serving after 2");

  const restored = await runScript(`
    installLastResort({ log: () => {}, onCaught: () => {} })();
    Promise.reject(new Error("lost after uninstall"));
    setTimeout(() => console.log("still serving"), 100);
  `);
  assert(restored.code !== 0, "the default (exit) is back once uninstalled");
  assertEquals(restored.stdout, "");
  assertStringIncludes(restored.stderr, "lost after uninstall");
});
