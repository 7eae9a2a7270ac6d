// OpenTelemetry traces for podpool's calls, from its diagnostics channels: podpool itself knows
// nothing of OpenTelemetry (it only publishes on node:diagnostics_channel), and this file is all
// the wiring an application needs. Copy it, or write the same for another APM.
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { context, SpanKind, SpanStatusCode, type Link, type Span, type Tracer } from '@opentelemetry/api';
import { CHANNEL_NAMES, type CallEndMessage, type CallErrorMessage, type CallStartMessage } from 'podpool';

/**
 * Opens one span per attempt of every call `pool` makes on a pod (`use()`, a broadcast's
 * deliveries, adapter calls), named `podpool <kind>` (`podpool use`, `podpool broadcast`,
 * `podpool adapter`), a CLIENT span in the context active where the call was made, with the pod it
 * went to (`podpool.endpoint`, `server.address`, `server.port`), `podpool.attempt`,
 * `podpool.hedge` and `podpool.balancer` (and `k8s.pod.name` when discovery knows it).
 *
 * A retry or a hedge is a span of its own, because it went to another pod and took its own time:
 * it links to the span of the attempt before it in the same call, and carries a `podpool.retry`
 * (or `podpool.hedge`) event naming that attempt's pod, so a trace view shows the retry on the
 * span where it happened. An attempt that ended without an answer (or with one counted as the pod
 * failing) has status ERROR, its `podpool.outcome` (`failed`, `abandoned` for a hedge's loser,
 * `unrecorded` when the caller gave up, `answered` for a request the pod refused) and the
 * exception recorded.
 *
 * Returns a function that stops tracing.
 */
export function traceCalls(pool: object, tracer: Tracer): () => void {
  const spans = new WeakMap<object, Span>();
  // The last attempt of each logical call, for the next attempt's link.
  const last = new WeakMap<object, { span: Span; endpoint: string }>();

  const onStart = (message: unknown): void => {
    const m = message as CallStartMessage;
    if (m.pool !== pool) return;
    const previous = m.attempt > 1 ? last.get(m.logicalCall) : undefined;
    const links: Link[] = previous === undefined ? [] : [{ context: previous.span.spanContext() }];
    const span = tracer.startSpan(
      `podpool ${m.kind}`,
      {
        kind: SpanKind.CLIENT,
        links,
        attributes: {
          'podpool.endpoint': m.endpoint.key,
          'podpool.attempt': m.attempt,
          'podpool.hedge': m.hedge,
          'podpool.balancer': m.balancer,
          'server.address': m.endpoint.address,
          'server.port': m.endpoint.port,
          ...(m.endpoint.podName !== undefined && { 'k8s.pod.name': m.endpoint.podName }),
        },
      },
      context.active(),
    );
    if (previous !== undefined) span.addEvent(m.hedge ? 'podpool.hedge' : 'podpool.retry', { 'podpool.previous_endpoint': previous.endpoint });
    spans.set(m.call, span);
    last.set(m.logicalCall, { span, endpoint: m.endpoint.key });
  };
  const onEnd = (message: unknown): void => {
    const m = message as CallEndMessage;
    if (m.pool !== pool) return;
    const span = spans.get(m.call);
    if (span === undefined) return; // started before tracing did
    spans.delete(m.call);
    span.end();
  };
  const onError = (message: unknown): void => {
    const m = message as CallErrorMessage;
    if (m.pool !== pool) return;
    const span = spans.get(m.call);
    if (span === undefined) return;
    spans.delete(m.call);
    span.setAttribute('podpool.outcome', m.outcome);
    if (m.error instanceof Error) span.recordException(m.error);
    span.setStatus({ code: SpanStatusCode.ERROR, message: m.error instanceof Error ? m.error.message : String(m.error) });
    span.end();
  };

  subscribe(CHANNEL_NAMES.callStart, onStart);
  subscribe(CHANNEL_NAMES.callEnd, onEnd);
  subscribe(CHANNEL_NAMES.callError, onError);
  return () => {
    unsubscribe(CHANNEL_NAMES.callStart, onStart);
    unsubscribe(CHANNEL_NAMES.callEnd, onEnd);
    unsubscribe(CHANNEL_NAMES.callError, onError);
  };
}
