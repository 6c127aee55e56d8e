/**
 * Summarise V8 `.cpuprofile` files (from `deno run --cpu-prof`): the functions with the most
 * self time and the most total time (each sample counted once per function on its stack), as
 * percentages of all samples, with the program's idle time left out.
 *
 * Usage: `deno run -A scripts/cpu_profile_summary.ts [--top 40] [--filter TEXT] FILE...`
 * (`--filter`: only functions whose name or file contains TEXT in the total-time list).
 *
 * @module
 */
import { parseArgs } from "node:util";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

function _name(f: CallFrame): string {
  const file = f.url.replace(/^.*\/(lib|scripts|ext|node|tests)\//, "$1/");
  return `${f.functionName || "(anonymous)"} ${file}:${f.lineNumber + 1}`;
}

const IDLE = new Set(["(idle)", "(program)", "(garbage collector)"]);

function _main(): void {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      top: { type: "string", default: "40" },
      filter: { type: "string" },
      callers: { type: "string" },
    },
  });
  const self = new Map<string, number>();
  /** Stacks (innermost first, up to 6 frames) under a function named by `--callers`. */
  const stacks = new Map<string, number>();
  const total = new Map<string, number>();
  let busy = 0;
  let idle = 0;
  let gc = 0;
  for (const file of positionals) {
    const p: Profile = JSON.parse(Deno.readTextFileSync(file));
    const byId = new Map(p.nodes.map((n) => [n.id, n]));
    const parent = new Map<number, number>();
    for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
    for (let i = 0; i < p.samples.length; i++) {
      const dt = p.timeDeltas[i + 1] ?? 0;
      const node = byId.get(p.samples[i]!)!;
      const fn = node.callFrame.functionName;
      if (fn === "(idle)" || fn === "(program)") {
        idle += dt;
        continue;
      }
      if (fn === "(garbage collector)") gc += dt;
      busy += dt;
      const key = _name(node.callFrame);
      self.set(key, (self.get(key) ?? 0) + dt);
      if (values.callers) {
        const frames: string[] = [];
        let hit = false;
        for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
          const f = byId.get(id)!.callFrame;
          if (f.functionName === "(root)") continue;
          if (!hit && _name(f).includes(values.callers)) hit = true;
          if (hit) frames.push(_name(f));
          if (frames.length >= 6) break;
        }
        if (hit) {
          const k = frames.join(" < ");
          stacks.set(k, (stacks.get(k) ?? 0) + dt);
        }
      }
      const seen = new Set<string>();
      for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
        const f = byId.get(id)!.callFrame;
        if (IDLE.has(f.functionName) || f.functionName === "(root)") continue;
        const k = _name(f);
        if (seen.has(k)) continue;
        seen.add(k);
        total.set(k, (total.get(k) ?? 0) + dt);
      }
    }
  }
  const top = Number(values.top);
  const pct = (x: number) => `${((100 * x) / busy).toFixed(1).padStart(5)}%`;
  console.log(
    `busy ${(busy / 1e6).toFixed(2)} s (gc ${(gc / 1e6).toFixed(2)} s), ` +
      `idle or unattributed ${(idle / 1e6).toFixed(2)} s`,
  );
  console.log("\nself time:");
  for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`${pct(v)}  ${k}`);
  }
  console.log("\ntotal time:");
  const filter = values.filter;
  const rows = [...total].filter(([k]) => !filter || k.includes(filter));
  for (const [k, v] of rows.sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`${pct(v)}  ${k}`);
  }
  if (values.callers) {
    console.log(`\nstacks through ${values.callers}:`);
    for (const [k, v] of [...stacks].sort((a, b) => b[1] - a[1]).slice(0, top)) {
      console.log(`${pct(v)}  ${k}`);
    }
  }
}

if (import.meta.main) _main();
