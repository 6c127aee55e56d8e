/** The release version, shown by --version and sent as the User-Agent to Telegram. */
export const VERSION = "0.1.0";
