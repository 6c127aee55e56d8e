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
import type { UserLedger } from "./quota.ts";

/** Why a matched user is refused. */
export type UserRefusal =
  | "user_disabled"
  | "user_expired"
  | "user_limit"
  /** `max_unique_ips` other addresses were seen within `unique_ip_window`. */
  | "user_ips"
  /** `data_quota` is used up for this period. */
  | "user_quota";

/** Client addresses remembered for their last user, at most. */
const HINTS = 65_536;

/** The users of a proxy and what a handshake asks of them. */
export class UserDirectory {
  readonly #byListener = new Map<string, UserConfig[]>();
  readonly #all: readonly UserConfig[];
  /** Client address -> the user it matched last (insertion order = age, for eviction). */
  readonly #hints = new Map<string, UserConfig>();
  readonly #counts: ConnectionCounts;
  readonly #ledger: UserLedger | null;
  readonly #byName = new Map<string, UserConfig>();

  constructor(
    users: readonly UserConfig[],
    listeners: readonly ListenerConfig[],
    counts: ConnectionCounts,
    ledger: UserLedger | null = null,
  ) {
    this.#all = users;
    this.#counts = counts;
    this.#ledger = ledger;
    for (const u of users) this.#byName.set(u.name, u);
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
   * Admit one connection of a matched `user` from client address `ip` at `nowMs`: a function
   * that gives its slot back (call it once, when the connection ends), or why it is refused.
   * Checked in this order: enabled, expiry, quota, connections at once, unique addresses (a
   * refused connection leaves no address behind).
   */
  admit(user: UserConfig, nowMs: number, ip = ""): (() => void) | UserRefusal {
    if (!user.enabled) return "user_disabled";
    if (user.expiresAt !== null && nowMs >= user.expiresAt) return "user_expired";
    const ledger = this.#ledger;
    if (
      ledger && user.dataQuotaBytes !== null && ledger.used(user, nowMs) >= user.dataQuotaBytes
    ) {
      return "user_quota";
    }
    if (!this.#counts.tryAcquire(user.name, user.maxConnections)) return "user_limit";
    if (ledger && ip !== "" && !ledger.admitIp(user, ip, nowMs)) {
      this.#counts.release(user.name);
      return "user_ips";
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#counts.release(user.name);
    };
  }

  /**
   * Count `bytes` moved by a client of the user named `name` at `nowMs`, under the user's limits
   * as they are now (a reload may have changed them): how many ms its relay should wait before
   * reading again (0: go on), or `QUOTA_EXCEEDED` (quota.ts) when its quota is used up.
   */
  charge(name: string, bytes: number, nowMs: number): number {
    const user = this.#byName.get(name);
    if (!user || !this.#ledger) return 0;
    return this.#ledger.charge(user, bytes, nowMs);
  }

  /** A client of user `name` from `ip` is still connected: its address keeps counting. */
  stillUsing(name: string, ip: string, nowMs: number): void {
    const user = this.#byName.get(name);
    if (user && user.maxUniqueIps > 0) this.#ledger?.touchIp(user, ip, nowMs);
  }

  /** The user called `name`, if there is one. */
  get(name: string): UserConfig | undefined {
    return this.#byName.get(name);
  }

  /** Every user. */
  get all(): readonly UserConfig[] {
    return this.#all;
  }
}
