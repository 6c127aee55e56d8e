/**
 * One `/metrics` for a process of several workers: each worker renders its own exposition
 * (lib/ops/metrics.ts) and the supervisor adds them up here. Pure text in, text out.
 *
 * Counters and most gauges are summed over workers. A few families describe the process or
 * state the workers share, and are the same in every worker: for those the largest value is
 * kept instead ({@linkcode SAME_IN_EVERY_WORKER}).
 *
 * @module
 */

/** Families whose value is per process (or shared), not per worker: keep the largest. */
export const SAME_IN_EVERY_WORKER: ReadonlySet<string> = new Set([
  "mtproxy_info",
  "mtproxy_start_time_seconds",
  "process_resident_memory_bytes",
  "mtproxy_replay_cache_entries",
  "mtproxy_link_rtt_seconds",
  // The users' ledger is shared memory: every worker reads the same figures.
  "mtproxy_user_quota_used_bytes",
  "mtproxy_user_quota_left_bytes",
  "mtproxy_user_unique_ips",
]);

/** A parsed exposition: families in order of first appearance. */
export interface Exposition {
  readonly families: Map<string, ExpositionFamily>;
}

/** One metric family: its HELP, TYPE and samples by label set (`{a="1"}` or ""). */
export interface ExpositionFamily {
  help: string;
  type: string;
  readonly samples: Map<string, number>;
}

/**
 * Parse the text format as lib/ops/metrics.ts writes it: `# HELP`, `# TYPE`, then
 * `name{labels} value` lines. Unknown lines are skipped.
 */
export function parseExposition(text: string): Exposition {
  const families = new Map<string, ExpositionFamily>();
  const family = (name: string) => {
    let f = families.get(name);
    if (!f) families.set(name, f = { help: "", type: "untyped", samples: new Map() });
    return f;
  };
  for (const line of text.split("\n")) {
    if (line.startsWith("# HELP ")) {
      const rest = line.slice(7);
      const sp = rest.indexOf(" ");
      if (sp > 0) family(rest.slice(0, sp)).help = rest.slice(sp + 1);
    } else if (line.startsWith("# TYPE ")) {
      const [name, type] = line.slice(7).split(" ");
      if (name && type) family(name).type = type;
    } else if (line !== "" && !line.startsWith("#")) {
      const sp = line.lastIndexOf(" ");
      if (sp <= 0) continue;
      const value = Number(line.slice(sp + 1));
      if (!Number.isFinite(value)) continue;
      const key = line.slice(0, sp);
      const brace = key.indexOf("{");
      const name = brace < 0 ? key : key.slice(0, brace);
      family(name).samples.set(brace < 0 ? "" : key.slice(brace), value);
    }
  }
  return { families };
}

/** Add up workers' expositions (see the module comment for which families are not summed). */
export function mergeExpositions(expositions: readonly Exposition[]): Exposition {
  const families = new Map<string, ExpositionFamily>();
  for (const e of expositions) {
    for (const [name, f] of e.families) {
      let out = families.get(name);
      if (!out) families.set(name, out = { help: f.help, type: f.type, samples: new Map() });
      const keepMax = SAME_IN_EVERY_WORKER.has(name);
      for (const [labels, v] of f.samples) {
        const prev = out.samples.get(labels);
        out.samples.set(
          labels,
          prev === undefined ? v : keepMax ? Math.max(prev, v) : prev + v,
        );
      }
    }
  }
  return { families };
}

/** Render an exposition in the text format. */
export function renderExposition(e: Exposition): string {
  const out: string[] = [];
  for (const [name, f] of e.families) {
    out.push(`# HELP ${name} ${f.help}`, `# TYPE ${name} ${f.type}`);
    for (const [labels, value] of f.samples) out.push(`${name}${labels} ${value}`);
  }
  return out.join("\n") + "\n";
}

/** The sum of a family's samples (0 when absent). */
export function familyTotal(e: Exposition, name: string): number {
  let sum = 0;
  for (const v of e.families.get(name)?.samples.values() ?? []) sum += v;
  return sum;
}
