/**
 * Atomic file writes for the files the proxy keeps (the state file, the users file, the usage
 * file): a reader sees the old content or the new, never part of either.
 *
 * @module
 */
import { basename, dirname, join } from "node:path";

/** Options of {@linkcode writeFileAtomic}. */
export interface WriteFileAtomicOptions {
  /**
   * Only create `path`: fail with `Deno.errors.AlreadyExists` when it exists, never replacing
   * it (a hard link from the temporary file). Where the file system has no hard links, a plain
   * rename, which does replace it.
   * @default false
   */
  createNew?: boolean;
}

/**
 * Write `data` to `path` atomically: a temporary file beside it (mode 0600, created new), all of
 * `data` written and synced, then renamed over `path`. Makes the directory (mode 0700) when
 * missing. On failure the temporary file is removed and the error is thrown as it came.
 *
 * @example Usage
 * ```ts
 * import { writeFileAtomic } from "./atomic_file.ts";
 * const dir = await Deno.makeTempDir();
 * await writeFileAtomic(`${dir}/state.json`, '{"version": 1}\n');
 * (await Deno.stat(`${dir}/state.json`)).mode! & 0o777; // 0o600
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  options: WriteFileAtomicOptions = {},
): Promise<void> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const suffix = crypto.getRandomValues(new Uint32Array(1))[0]!.toString(16).padStart(8, "0");
  const tmp = join(dirname(path), `.${basename(path)}.${suffix}.tmp`);
  try {
    await Deno.mkdir(dirname(path), { recursive: true, mode: 0o700 });
    const file = await Deno.open(tmp, { write: true, createNew: true, mode: 0o600 });
    try {
      for (let off = 0; off < bytes.length;) off += await file.write(bytes.subarray(off));
      await file.syncData();
    } finally {
      file.close();
    }
    if (options.createNew) {
      try {
        // A hard link creates `path` only if it does not exist yet: no clobbering a racing writer.
        await Deno.link(tmp, path);
        await _removeQuietly(tmp);
        return;
      } catch (e) {
        if (e instanceof Deno.errors.AlreadyExists) throw e;
        // No hard links here (some file systems): a plain rename.
      }
    }
    await Deno.rename(tmp, path);
  } catch (e) {
    await _removeQuietly(tmp);
    throw e;
  }
}

async function _removeQuietly(path: string): Promise<void> {
  try {
    await Deno.remove(path);
  } catch {
    // Never made, or already renamed.
  }
}
