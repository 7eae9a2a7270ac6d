/**
 * The `tls` option of the transports that dial pods over TLS themselves (`httpTransport`,
 * `webSocketTransport`), checked once at the door: a CA, certificate or key Node can't load fails
 * there with `PODPOOL_INVALID_OPTION`, not at every connect, and no message shows the material.
 */
import { createSecureContext, type ConnectionOptions } from 'node:tls';
import { InvalidOptionError } from '../errors.ts';
import { invalidOption } from '../options.ts';

/**
 * Node's own messages about a bad TLS option end with the value it got (`Received type string
 * ('…')`, `"…" is not a valid minimum TLS protocol version`), which may be a key: that part
 * goes. OpenSSL's (`PEM routines::no start line`) hold none.
 */
function withoutValue(message: string): string {
  return message.replace(/\.?\s*Received\b[\s\S]*$/, '').replace(/^[\s\S]*? is not a valid /, 'the value is not a valid ');
}

/**
 * Checks `tls` and loads its CA, certificate and key into a secure context, once: reconnects
 * don't parse them again. Returns the options to dial with.
 */
export function checkTls(tls: unknown): ConnectionOptions {
  if (tls === null || typeof tls !== 'object' || Array.isArray(tls)) invalidOption('tls', 'TLS connection options ({ ca, servername, cert, key, … })', tls);
  const options = tls as ConnectionOptions;
  const { servername } = options;
  if (servername !== undefined && (typeof servername !== 'string' || servername === '')) {
    invalidOption('tls.servername', 'the DNS name the pods\' certificate holds, such as "backend.default.svc.cluster.local"', servername);
  }
  if ((options.cert === undefined) !== (options.key === undefined)) {
    // Not invalidOption: the one given may be a key, which no message prints.
    throw new InvalidOptionError(
      `option tls must have cert and key together (a client certificate and its private key), got only ${options.cert === undefined ? 'key' : 'cert'}`,
    );
  }
  if (options.secureContext !== undefined) return { ...options };
  try {
    return { ...options, secureContext: createSecureContext(options) };
  } catch (error) {
    const { code, message } = error as NodeJS.ErrnoException;
    // The cause is kept only when its message holds no value: a logger prints causes too.
    const redacted = withoutValue(String(message));
    throw new InvalidOptionError(
      `option tls must hold a CA, certificate and key Node can load (PEM or DER): ${redacted}${code === undefined ? '' : ` (${code})`}`,
      redacted === message ? { cause: error } : undefined,
    );
  }
}
