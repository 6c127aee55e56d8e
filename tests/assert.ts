/**
 * The few assertions the tests use, on top of `node:assert` (JSR's @std/assert is not reachable
 * from our build machines). Names and argument order follow @std/assert.
 *
 * @module
 */
import nodeAssert from "node:assert/strict";

/** Assert that `value` is truthy. */
export function assert(value: unknown, message?: string): asserts value {
  nodeAssert.ok(value, message);
}

/** Deep, strict equality (typed arrays compare by content). */
export function assertEquals<T>(actual: T, expected: T, message?: string): void {
  nodeAssert.deepStrictEqual(actual, expected, message);
}

/** Deep, strict inequality. */
export function assertNotEquals<T>(actual: T, expected: T, message?: string): void {
  nodeAssert.notDeepStrictEqual(actual, expected, message);
}

/** Assert that `text` contains `part`. */
export function assertStringIncludes(text: string, part: string, message?: string): void {
  if (!text.includes(part)) {
    throw new nodeAssert.AssertionError({
      message: message ??
        `Expected text to include ${JSON.stringify(part)}: ${JSON.stringify(text)}`,
    });
  }
}

type ErrorClass = abstract new (...args: never[]) => Error;

/** Assert that `fn` throws, optionally an instance of `cls` whose message includes `includes`. */
export function assertThrows(fn: () => unknown, cls?: ErrorClass, includes?: string): Error {
  try {
    fn();
  } catch (e) {
    _checkError(e, cls, includes);
    return e as Error;
  }
  throw new nodeAssert.AssertionError({ message: "Expected function to throw" });
}

/** Assert that the promise rejects, optionally with an instance of `cls` mentioning `includes`. */
export async function assertRejects(
  fn: () => Promise<unknown>,
  cls?: ErrorClass,
  includes?: string,
): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    _checkError(e, cls, includes);
    return e as Error;
  }
  throw new nodeAssert.AssertionError({ message: "Expected promise to reject" });
}

function _checkError(e: unknown, cls?: ErrorClass, includes?: string): void {
  if (cls && !(e instanceof cls)) {
    throw new nodeAssert.AssertionError({ message: `Expected ${cls.name}, got ${String(e)}` });
  }
  if (includes !== undefined && !(e instanceof Error && e.message.includes(includes))) {
    throw new nodeAssert.AssertionError({
      message: `Expected error message to include ${JSON.stringify(includes)}: ${String(e)}`,
    });
  }
}
