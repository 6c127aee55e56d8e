/**
 * A small OpenAPI 3 description of the admin API (lib/ops/admin.ts), served at
 * `GET /api/openapi.json`.
 *
 * @module
 */

const _error = {
  type: "object",
  properties: {
    error: { type: "string" },
    problems: {
      type: "array",
      items: {
        type: "object",
        properties: { key: { type: "string" }, reason: { type: "string" } },
      },
    },
  },
};

const _userInput = {
  type: "object",
  additionalProperties: false,
  description:
    "The keys of users.NAME in the configuration (sizes like 10GB, rates like 8Mbit, dates in ISO 8601). In PATCH, null removes a key.",
  properties: {
    secret: { type: "string", description: "32 hex digits (POST: made at random when absent)" },
    enabled: { type: "boolean" },
    max_connections: { type: "integer", minimum: 0 },
    max_unique_ips: { type: "integer", minimum: 0 },
    unique_ip_window: { type: "number", description: "seconds" },
    data_quota: { oneOf: [{ type: "integer" }, { type: "string" }] },
    quota_reset: { type: "string", enum: ["daily", "weekly", "monthly"] },
    expires: { type: "string", description: "ISO 8601 date or date-time" },
    rate_limit: { oneOf: [{ type: "number" }, { type: "string" }] },
    tag: { type: "string", description: "32 hex digits" },
  },
};

const _user = {
  type: "object",
  description: "A user without its secret",
  properties: {
    name: { type: "string" },
    source: { type: "string", enum: ["config", "users_file"] },
    enabled: { type: "boolean" },
    expires: { type: ["string", "null"] },
    expired: { type: "boolean" },
    max_connections: { type: "integer" },
    max_unique_ips: { type: "integer" },
    unique_ip_window: { type: "number" },
    data_quota: { type: ["integer", "null"] },
    quota_reset: { type: ["string", "null"] },
    rate_limit: { type: ["integer", "null"], description: "bytes per second" },
    has_tag: { type: "boolean" },
    listeners: { type: "array", items: { type: "string" } },
    connections: { type: ["integer", "null"] },
    unique_ips: { type: ["integer", "null"] },
    bytes_used: { type: ["integer", "null"] },
    quota_left: { type: ["integer", "null"] },
    period_start: { type: ["string", "null"] },
  },
};

const _reload = {
  type: "object",
  properties: {
    ok: { type: "boolean" },
    error: { type: "string" },
    changed: { type: "array", items: { type: "string" } },
    notLive: { type: "array", items: { type: "string" } },
    closed: { type: "integer" },
  },
};

function _json(description: string, schema: unknown): Record<string, unknown> {
  return { description, content: { "application/json": { schema } } };
}

const _errors = {
  "400": _json(
    "Bad JSON, an unknown key, an invalid value, or a change the whole configuration refuses (a user still named in listeners[].users, a taken secret): each problem's key and reason",
    _error,
  ),
  "401": _json("No token or a wrong one", _error),
  "429": _json("Too many failed attempts from this address (see Retry-After)", _error),
};

const _name = { name: "name", in: "path", required: true, schema: { type: "string" } };

/**
 * The OpenAPI 3.1 document of the admin API.
 *
 * @example Usage
 * ```ts
 * import { adminOpenApi } from "./admin_openapi.ts";
 * adminOpenApi("0.1.0").openapi; // "3.1.0"
 * ```
 */
export function adminOpenApi(version: string): { openapi: string } & Record<string, unknown> {
  return {
    openapi: "3.1.0",
    info: {
      title: "mtproxy admin API",
      version,
      description:
        "Every request needs Authorization: Bearer <token>. Only GET /api/users/{name}/links answers with secrets.",
    },
    components: {
      securitySchemes: { bearer: { type: "http", scheme: "bearer" } },
      schemas: { Error: _error, User: _user, UserInput: _userInput, ReloadReport: _reload },
    },
    security: [{ bearer: [] }],
    paths: {
      "/api/health": {
        get: {
          summary: "Health: version, role, uptime, listeners, users, live connections",
          responses: { "200": _json("Healthy", { type: "object" }), ..._errors },
        },
      },
      "/api/listeners": {
        get: {
          summary: "Listeners with their address, protocols and live connections",
          responses: { "200": _json("Listeners", { type: "object" }), ..._errors },
        },
      },
      "/api/history": {
        get: {
          summary: "Live connections once a minute over the last hour, and now",
          responses: { "200": _json("Samples, oldest first", { type: "object" }), ..._errors },
        },
      },
      "/api/users": {
        get: {
          summary: "Every user with limits and live usage (no secrets)",
          responses: {
            "200": _json("Users", {
              type: "object",
              properties: { users: { type: "array", items: _user } },
            }),
            ..._errors,
          },
        },
        post: {
          summary: "Add a user to the users file and apply it",
          requestBody: {
            required: true,
            content: {
              "application/json": {
                schema: {
                  ..._userInput,
                  properties: { name: { type: "string" }, ..._userInput.properties },
                  required: ["name"],
                },
              },
            },
          },
          responses: {
            "201": _json("Added and applied", { type: "object" }),
            "409": _json("The user exists", _error),
            ..._errors,
          },
        },
      },
      "/api/users/{name}": {
        parameters: [_name],
        get: {
          summary: "One user (no secret)",
          responses: {
            "200": _json("The user", { type: "object" }),
            "404": _json("No such user", _error),
            ..._errors,
          },
        },
        patch: {
          summary: "Change a user of the users file (enabled: false disables it) and apply it",
          requestBody: { required: true, content: { "application/json": { schema: _userInput } } },
          responses: {
            "200": _json("Changed and applied", { type: "object" }),
            "404": _json("No such user", _error),
            "409": _json("The user is defined in the config file", _error),
            ..._errors,
          },
        },
        delete: {
          summary: "Delete a user of the users file and apply it (its clients are closed)",
          responses: {
            "200": _json("Deleted and applied", { type: "object" }),
            "404": _json("No such user", _error),
            "409": _json("In the config file, or the files do not validate now", _error),
            ..._errors,
          },
        },
      },
      "/api/users/{name}/links": {
        parameters: [_name],
        get: {
          summary: "The user's secret and links on every listener that accepts it, with QR codes",
          responses: {
            "200": _json("Links (secrets!)", { type: "object" }),
            "404": _json("No such user", _error),
            ..._errors,
          },
        },
      },
      "/api/reload": {
        post: {
          summary: "Reload the whole configuration, as SIGHUP does",
          responses: {
            "200": _json("Reloaded", _reload),
            "422": _json("Invalid configuration: nothing changed", _reload),
            ..._errors,
          },
        },
      },
      "/api/openapi.json": {
        get: {
          summary: "This document",
          responses: { "200": _json("OpenAPI", { type: "object" }) },
        },
      },
    },
  };
}
