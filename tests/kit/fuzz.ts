/**
 * Seeded property tests: each property runs `MTP_FUZZ_CASES` random cases (default 2000, so the
 * suite stays quick; the `fuzz` task runs many more) from a generator seeded by `MTP_FUZZ_SEED`
 * (default: a fresh seed per run). A failing case names the property, the case and the seed;
 * `MTP_FUZZ_SEED=<seed>` replays the same cases.
 *
 * @module
 */
import { seededRandom } from "./seeded.ts";

/** Cases per property when MTP_FUZZ_CASES is not set. */
export const DEFAULT_FUZZ_CASES = 2000;

function _env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // No --allow-env: the defaults.
  }
}

function _intFromEnv(name: string, fallback: () => number): number {
  const text = _env(name);
  if (text === undefined || text === "") return fallback();
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new RangeError(`${name} must be a whole number: got "${text}"`);
  }
  return n;
}

/** Cases per property (MTP_FUZZ_CASES). */
export const FUZZ_CASES: number = _intFromEnv("MTP_FUZZ_CASES", () => DEFAULT_FUZZ_CASES);

/** The run's seed (MTP_FUZZ_SEED, else random). */
export const FUZZ_SEED: number = _intFromEnv(
  "MTP_FUZZ_SEED",
  () => Math.floor(Math.random() * 2 ** 32),
);

/** A seeded source of random test input. */
export class Gen {
  readonly #next: () => number;

  constructor(seed: number) {
    this.#next = seededRandom(seed);
  }

  /** A float in [0, 1). */
  float(): number {
    return this.#next();
  }

  /** An integer in [min, max]. */
  int(min: number, max: number): number {
    return min + Math.floor(this.#next() * (max - min + 1));
  }

  /** True with probability `p`. */
  chance(p: number): boolean {
    return this.#next() < p;
  }

  /** One of `items`. */
  pick<T>(items: readonly T[]): T {
    return items[this.int(0, items.length - 1)]!;
  }

  /** `n` random bytes. */
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i += 4) {
      const r = (this.#next() * 4294967296) >>> 0;
      out[i] = r;
      if (i + 1 < n) out[i + 1] = r >>> 8;
      if (i + 2 < n) out[i + 2] = r >>> 16;
      if (i + 3 < n) out[i + 3] = r >>> 24;
    }
    return out;
  }

  /**
   * Cut `bytes` into random chunks (some empty, mostly small, sometimes all of it): at most a
   * few hundred, so that long inputs stay quick.
   */
  chunks(bytes: Uint8Array): Uint8Array[] {
    if (this.chance(0.1)) return [bytes.slice()];
    const out: Uint8Array[] = [];
    let off = 0;
    const maxChunk = Math.max(this.pick([1, 3, 8, 64, 512, 4096]), Math.ceil(bytes.length / 200));
    while (off < bytes.length) {
      const n = this.chance(0.05) ? 0 : this.int(1, maxChunk);
      out.push(bytes.slice(off, off + n));
      off += n;
    }
    return out;
  }

  /**
   * `bytes` as a view into the middle of a larger buffer of random bytes: a parser that reads
   * past the view's end (or ignores its offset) sees the garbage.
   */
  embedded(bytes: Uint8Array): Uint8Array {
    const before = this.int(0, 16);
    const outer = this.bytes(before + bytes.length + this.int(1, 16));
    outer.set(bytes, before);
    return outer.subarray(before, before + bytes.length);
  }

  /** `bytes` with 1 to 4 random bytes changed (each to another value) at or after `from`. */
  mutate(bytes: Uint8Array, from = 0): Uint8Array {
    const out = bytes.slice();
    if (out.length <= from) return out;
    const n = this.int(1, 4);
    for (let i = 0; i < n; i++) {
      const at = this.int(from, out.length - 1);
      out[at] = out[at]! ^ this.int(1, 255);
    }
    return out;
  }
}

function _hash(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** Options for {@linkcode property}. */
export interface PropertyOptions {
  /** Cases to run. @default FUZZ_CASES */
  cases?: number;
}

/**
 * Register a Deno test that runs `check` on `cases` generated cases. Each property draws from
 * its own generator (the run's seed mixed with the name), so properties replay independently.
 */
export function property(
  name: string,
  check: (gen: Gen, index: number) => void,
  options: PropertyOptions = {},
): void {
  const cases = options.cases ?? FUZZ_CASES;
  Deno.test(name, () => {
    const gen = new Gen((FUZZ_SEED ^ _hash(name)) >>> 0);
    for (let i = 0; i < cases; i++) {
      try {
        check(gen, i);
      } catch (e) {
        const why = e instanceof Error ? e.message : String(e);
        throw new Error(
          `Case ${i} of ${cases} failed; replay with MTP_FUZZ_SEED=${FUZZ_SEED}: ${why}`,
          { cause: e },
        );
      }
    }
  });
}
