/**
 * Reading a proxy's `/metrics` from a test, and waiting on conditions that need I/O to check.
 *
 * @module
 */

/** The samples of `name` on the metrics page at 127.0.0.1:`port`, summed; `labels` filters them. */
export async function scrapeMetric(port: number, name: string, labels = ""): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name + "{") && !line.startsWith(name + " ")) continue;
    if (labels && !line.includes(labels)) continue;
    sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return sum;
}

/** Resolve once `cond()` resolves true (polled every 50 ms); fail after `timeoutMs`. */
export async function eventually(
  cond: () => Promise<boolean>,
  what: string,
  timeoutMs = 20_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
