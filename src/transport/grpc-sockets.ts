/**
 * The sockets of each pod's gRPC channel, for grpcTransport: grpc-js does not let go of a
 * connection stuck in its handshake, so the transport keeps hold of every socket itself.
 */
import type { Socket } from 'node:net';
import { ChannelCredentials, type CallCredentials, type ChannelOptions } from '@grpc/grpc-js';

type GrpcUri = Parameters<ChannelCredentials['_createSecureConnector']>[0];
type SecureConnector = ReturnType<ChannelCredentials['_createSecureConnector']>;

/**
 * The sockets of one pod's channel, kept by wrapping its credentials (each connection grpc-js
 * opens passes through them). grpc-js closes a connection gracefully, and one still in its
 * handshake not at all: it would close it if the handshake ever completed, so a pod that
 * accepts TCP and then says nothing (a wedged process) would keep one socket per connect
 * attempt. Closing a pod's connection destroys its sockets, and waits until they are gone.
 */
export class OwnSockets {
  readonly credentials: ChannelCredentials;
  readonly #open = new Set<Socket>();
  #destroyed = false;
  /**
   * Called when the last open socket closes: the channel's old connection, still carrying the
   * calls that were in flight when it stopped taking new ones (a GOAWAY), is gone.
   */
  onIdle: (() => void) | undefined = undefined;

  constructor(inner: ChannelCredentials) {
    // grpc-js has built connections through `_createSecureConnector` since 1.13; without it
    // podpool can only close channels as grpc-js does.
    this.credentials = typeof inner._createSecureConnector === 'function' ? new TrackingCredentials(inner, this) : inner;
  }

  track(socket: Socket): void {
    if (this.#destroyed) {
      socket.destroy();
      return;
    }
    if (this.#open.has(socket) || socket.closed) return;
    this.#open.add(socket);
    socket.once('close', () => {
      this.#open.delete(socket);
      if (this.#open.size === 0) this.onIdle?.();
    });
  }

  /** Sockets open now (a TLS connection counts its TCP socket and its TLS socket). */
  get open(): number {
    return this.#open.size;
  }

  /** Destroys every socket still open; resolves once all are closed. */
  async destroy(): Promise<void> {
    this.#destroyed = true;
    this.onIdle = undefined;
    const closing = [...this.#open].map((socket) => new Promise((resolve) => socket.once('close', resolve)));
    for (const socket of this.#open) socket.destroy();
    await Promise.all(closing);
  }
}

class TrackingCredentials extends ChannelCredentials {
  readonly #inner: ChannelCredentials;
  readonly #sockets: OwnSockets;

  constructor(inner: ChannelCredentials, sockets: OwnSockets) {
    super();
    this.#inner = inner;
    this.#sockets = sockets;
  }

  override _isSecure(): boolean {
    return this.#inner._isSecure();
  }

  override _equals(other: ChannelCredentials): boolean {
    return other === this;
  }

  override _createSecureConnector(...args: [GrpcUri, ChannelOptions, CallCredentials?]): SecureConnector {
    const connector = this.#inner._createSecureConnector(...args);
    const sockets = this.#sockets;
    return {
      async connect(socket) {
        sockets.track(socket);
        const secured = await connector.connect(socket);
        sockets.track(secured.socket);
        return secured;
      },
      waitForReady: () => connector.waitForReady(),
      getCallCredentials: () => connector.getCallCredentials(),
      destroy: () => connector.destroy(),
    };
  }
}
