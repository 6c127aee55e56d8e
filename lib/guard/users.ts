/**
 * Many users on one port: which users a listener accepts, in which order a handshake tries their
 * secrets, and whether a matched user may connect now. Pure apart from the counts it is given.
 *
 * Matching costs one HMAC (fake-TLS) or one key derivation (obfuscated2) per user tried, so the
 * order matters with many users: a client address that matched a user before tries that user
 * first (apps reconnect from the same address all day), then the users matched most recently.
 *
 * @module
 */
import type { ListenerConfig, UserConfig } from "../config/types.ts";
import type { ConnectionCounts } from "./policy.ts";

/** Why a matched user is refused. */
export type UserRefusal = "user_disabled" | "user_expired" | "user_limit";

/** Client addresses remembered for their last user, at most. */
const HINTS = 65_536;

/** The users of a proxy and what a handshake asks of them. */
export class UserDirectory {
  readonly #byListener = new Map<string, UserConfig[]>();
  readonly #all: readonly UserConfig[];
  /** Client address -> the user it matched last (insertion order = age, for eviction). */
  readonly #hints = new Map<string, UserConfig>();
  readonly #counts: ConnectionCounts;

  constructor(
    users: readonly UserConfig[],
    listeners: readonly ListenerConfig[],
    counts: ConnectionCounts,
  ) {
    this.#all = users;
    this.#counts = counts;
    for (const l of listeners) {
      const names = l.users;
      this.#byListener.set(
        l.name,
        names === null ? [...users] : users.filter((u) => names.includes(u.name)),
      );
    }
  }

  /** How many users there are. */
  get size(): number {
    return this.#all.length;
  }

  /**
   * The users `listener` accepts, most likely first for a client from `ip`: its last match
   * first, then the others by recency of their last match anywhere.
   */
  candidates(listener: string, ip: string): readonly UserConfig[] {
    const list = this.#byListener.get(listener);
    if (!list || list.length === 0) return [];
    const hint = this.#hints.get(ip);
    if (!hint || list[0] === hint) return list;
    const at = list.indexOf(hint);
    if (at < 0) return list;
    return [hint, ...list.slice(0, at), ...list.slice(at + 1)];
  }

  /** `user` matched a client from `ip` on `listener`: try it first next time. */
  matched(listener: string, user: UserConfig, ip: string): void {
    this.#hints.delete(ip);
    this.#hints.set(ip, user);
    if (this.#hints.size > HINTS) this.#hints.delete(this.#hints.keys().next().value!);
    // Recently matched users move to the front of their listener's list.
    const list = this.#byListener.get(listener);
    if (!list || list[0] === user) return;
    const at = list.indexOf(user);
    if (at > 0) {
      list.splice(at, 1);
      list.unshift(user);
    }
  }

  /**
   * Admit one connection of a matched `user` at `nowMs`: a function that gives its slot back
   * (call it once, when the connection ends), or why it is refused.
   */
  admit(user: UserConfig, nowMs: number): (() => void) | UserRefusal {
    if (!user.enabled) return "user_disabled";
    if (user.expiresAt !== null && nowMs >= user.expiresAt) return "user_expired";
    if (!this.#counts.tryAcquire(user.name, user.maxConnections)) return "user_limit";
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#counts.release(user.name);
    };
  }
}
