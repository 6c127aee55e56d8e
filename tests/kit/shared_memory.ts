/**
 * Run tasks on shared memory in real Worker threads, one thread per task, and collect what each
 * posts back (see `shared_memory_worker.ts`).
 *
 * @module
 */
import type { SharedResult, SharedTask } from "./shared_memory_worker.ts";

export type { SharedResult, SharedTask } from "./shared_memory_worker.ts";
export { countsKey } from "./shared_memory_worker.ts";

const WORKER_URL = new URL("./shared_memory_worker.ts", import.meta.url).href;

/**
 * Start one Worker per task, give each its task, and resolve with their results in task order
 * once all have answered. Every worker is terminated before this returns, also on failure.
 */
export async function runInWorkers(tasks: readonly SharedTask[]): Promise<SharedResult[]> {
  const workers: Worker[] = [];
  try {
    const answers = tasks.map((task) => {
      const worker = new Worker(WORKER_URL, { type: "module" });
      workers.push(worker);
      return new Promise<SharedResult>((resolve, reject) => {
        worker.onmessage = (event: MessageEvent<SharedResult>) => resolve(event.data);
        worker.onerror = (event: ErrorEvent) => {
          event.preventDefault();
          reject(new Error(`Worker failed on its ${task.kind} task: ${event.message}`));
        };
        worker.onmessageerror = () =>
          reject(new Error("Worker sent a message that cannot be read"));
        worker.postMessage(task);
      });
    });
    return await Promise.all(answers);
  } finally {
    for (const worker of workers) worker.terminate();
  }
}

/** A fresh shared barrier (or two) for `SharedTask`s. */
export function sharedBarrier(): SharedArrayBuffer {
  return new SharedArrayBuffer(8);
}
