/**
 * The Chrome-like ClientHello builder now lives in lib/protocol/client_hello.ts (the TLS
 * profile prober needs it too). This re-export keeps the test kit's import path working.
 *
 * @module
 */
export {
  buildClientHello,
  type ClientHelloOptions,
  PADDED_HELLO_LEN,
} from "../../lib/protocol/client_hello.ts";
