/**
 * The pod side of `webSocketTransport`'s requests: a handler on a `ws` server that answers each
 * request frame, so a pod written in Node needs no framing code of its own.
 */
import { WebSocket, type WebSocketServer } from 'ws';
import { invalidArgument } from '../options.ts';
import { encodeReply, parseFrame } from '../wire/request-frame.ts';

/** Pod-side: what the handler of {@link answerRequests} is told about a message. */
export interface WebSocketMessage {
  /** The socket it came on. */
  readonly socket: WebSocket;
  /** True for `request()`: the handler's return value (or error) goes back to the client. */
  readonly expectsReply: boolean;
}

/** Pod-side: answers one message; what it returns (or resolves to) is the reply. */
export type WebSocketHandler = (data: unknown, message: WebSocketMessage) => unknown;

/**
 * Pod-side: answers the framing of `WebSocketClient` on every socket of `server`, present and
 * future. `handler(data, { socket, expectsReply })` runs for each message; for a request, what it
 * returns (or resolves to) goes back as `{ id, reply }`, and what it throws as
 * `{ id, error: { message, code } }`, which the client rejects with `PODPOOL_MESSAGE_REJECTED`.
 */
export function answerRequests(server: WebSocketServer, handler: WebSocketHandler): void {
  if (server === null || typeof server !== 'object' || typeof server.on !== 'function') {
    invalidArgument('server', 'a ws WebSocketServer', server);
  }
  if (typeof handler !== 'function') invalidArgument('handler', 'a function', handler);
  const serve = (socket: WebSocket): void => {
    socket.on('message', (raw, isBinary) => {
      if (isBinary) return;
      const frame = parseFrame(raw);
      if (frame === undefined) return;
      const { id, data } = frame;
      const expectsReply = typeof id === 'number';
      const answer = (outcome: { reply: unknown } | { error: unknown }): void => {
        if (expectsReply && socket.readyState === WebSocket.OPEN) socket.send(encodeReply(id, outcome));
      };
      let result: unknown;
      try {
        result = handler(data, { socket, expectsReply });
      } catch (error) {
        answer({ error });
        return;
      }
      Promise.resolve(result).then(
        (reply) => answer({ reply }),
        (error: unknown) => answer({ error }),
      );
    });
  };
  for (const socket of server.clients) serve(socket);
  server.on('connection', serve);
}
