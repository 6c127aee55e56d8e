/**
 * What happens to client sessions, as typed events. Logging and counters subscribe to them, so
 * the session code never formats log lines or knows about metrics.
 *
 * @module
 */
import type { ClientProtocol } from "../config/types.ts";
import type { TransportTag } from "../protocol/obfuscated2.ts";

/** Why a client was turned away before its traffic reached Telegram. */
export type RejectReason =
  | "timeout"
  | "eof"
  | "bad_secret"
  | "protocol_disallowed"
  | "tls_expected"
  | "bad_sni"
  | "no_sni"
  | "tls_malformed"
  | "tls_bad_digest"
  | "tls_bad_timestamp"
  | "tls_inner_not_padded"
  | "tls_bad_record"
  | "too_many_connections"
  | "dc_unreachable"
  | "dc_timeout"
  | "replay"
  | "http_request"
  | "fronting_failed"
  | "fronting_loop"
  /** Middle-proxy mode: the client's first packet broke its transport's framing. */
  | "bad_frame"
  /** A listener with proxy_protocol got no valid PROXY header from its balancer. */
  | "bad_proxy_header"
  /** Policy: the client's address is denied (or not allowed). */
  | "ip_denied"
  /** Policy: the client's address already holds max_connections_per_ip connections. */
  | "ip_limit"
  /** Policy: a fake-TLS client's SNI is denied (or not allowed). */
  | "sni_denied"
  /** Policy: the SNI already holds max_connections_per_sni connections. */
  | "sni_limit"
  /** The policy was reloaded during the handshake and refuses this client now. */
  | "policy"
  /** The configuration was reloaded during the handshake and refuses this client's user now. */
  | "reloaded"
  /** Split mode (front): no link to a back was up within link.wait. */
  | "link_unavailable"
  /** A user's secret matched, and the user is disabled. */
  | "user_disabled"
  /** A user's secret matched, and the user has expired. */
  | "user_expired"
  /** A user's secret matched, and the user holds max_connections connections already. */
  | "user_limit"
  /** A user's secret matched, from an address beyond the user's max_unique_ips in the window. */
  | "user_ips"
  /** A user's secret matched, and the user's data_quota is used up for this period. */
  | "user_quota"
  | "shutdown";

/** Why an established relay ended. */
export type CloseReason =
  | "client_closed"
  | "dc_closed"
  | "idle"
  | "shutdown"
  | "tls_bad_record"
  | "server_error"
  /** Middle-proxy mode: the client read too slowly and held too much undelivered data. */
  | "slow_client"
  /** Middle-proxy mode: the client sent a frame its transport does not allow. */
  | "bad_frame"
  /** The policy was reloaded and refuses this client now (deny_ips, deny_sni, ...). */
  | "policy"
  /** The configuration was reloaded and no longer lets this client's user in. */
  | "reloaded"
  /** Split mode (front): the link that carried this client to its back was lost. */
  | "link_lost"
  /** Something threw while serving this client (a bug): it alone was closed; `detail` says what. */
  | "internal_error"
  /** The client's user used up their data_quota. */
  | "user_quota"
  | "fronted";

/** One thing that happened to a session. */
export type ProxyEvent =
  | { type: "accepted"; listener: string; peer: string }
  | {
    type: "rejected";
    listener: string;
    peer: string;
    reason: RejectReason;
    detail?: string;
    /** The user whose secret matched, when that user was refused. */
    user?: string;
  }
  | {
    type: "established";
    listener: string;
    peer: string;
    protocol: ClientProtocol;
    transport: TransportTag;
    /** The DC id the client asked for. */
    requestedDc: number;
    /** The DC id used (differs when the requested one was unknown). */
    dc: number;
    dcAddress: string;
    /** The user whose secret the client used; absent for the listener's own secret. */
    user?: string;
  }
  | {
    type: "fronted";
    listener: string;
    peer: string;
    /** Why the connection could not be a client. */
    reason: RejectReason;
    target: string;
    /** The user whose secret matched, when that user was refused. */
    user?: string;
  }
  | {
    type: "closed";
    listener: string;
    peer: string;
    reason: CloseReason;
    /** What went wrong, for reasons that need it (bad_frame, internal_error). */
    detail?: string;
    bytesFromClient: number;
    bytesToClient: number;
    durationMs: number;
    /** The user whose secret the client used; absent for the listener's own secret. */
    user?: string;
  };

/** Receives events. */
export interface EventSink {
  emit(event: ProxyEvent): void;
}

/** A sink that drops everything. */
export const dropEvents: EventSink = { emit: () => {} };
