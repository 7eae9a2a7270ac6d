/**
 * The OpenTelemetry example as a user runs it: `traceCalls()` over a real pool of loopback HTTP
 * pods, spans read back from the SDK's in-memory exporter (one span per attempt, on the pod the
 * call went to, a retry linked to the attempt it follows); and main.ts run to the end.
 */
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import { describe, test } from 'node:test';
import { promisify } from 'node:util';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { traceCalls } from '../examples/opentelemetry/tracing.ts';
import { createPool, httpTransport, roundRobin, staticEndpoints } from '../src/index.ts';
import { startHttpPods, stopPods } from '../testkit/http-pods.ts';
import { first } from './support/first-balancer.ts';

const run = promisify(execFile);

describe('examples/opentelemetry', () => {
  test('one span per attempt with the pod it went to; a retry is its own span, linked, with a podpool.retry event', async (t) => {
    const exporter = new InMemorySpanExporter();
    const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    t.after(() => provider.shutdown());
    // Every call goes to 127.0.0.51 (the `first` balancer), which answers its first request with
    // a 503: that idempotent call is sent again to another pod.
    const pods = await startHttpPods(3, {
      first: 51,
      handler: (pod, req, res) => {
        req.resume();
        res.statusCode = pod.address === '127.0.0.51' && pod.requests === 1 ? 503 : 200;
        res.end(pod.key);
      },
    });
    t.after(() => stopPods(pods));
    const pool = createPool({ source: staticEndpoints(pods), transport: httpTransport(), balancer: first() });
    t.after(() => pool.close());
    const other = createPool({ source: staticEndpoints(pods), transport: httpTransport(), balancer: roundRobin() });
    t.after(() => other.close());
    const stop = traceCalls(pool, provider.getTracer('test'));
    t.after(stop);
    await Promise.all([pool.ready({ minEndpoints: 3 }), other.ready({ minEndpoints: 3 })]);

    const get = (p: typeof pool) =>
      p.use(
        async (client) => {
          const res = await client.request({ method: 'GET', path: '/' });
          return { statusCode: res.statusCode, pod: await res.body.text() };
        },
        { retry: { idempotent: true } },
      );
    const answers = [];
    for (let i = 0; i < 3; i++) answers.push(await get(pool));
    await get(other); // another pool's calls are not traced
    assert.deepEqual(answers.map((a) => a.statusCode), [200, 200, 200]);

    const spans = exporter.getFinishedSpans();
    const key51 = pods[0].key;
    // Three calls, the first sent again: a span per attempt.
    const failed = spans.filter((s) => s.status.code === SpanStatusCode.ERROR);
    assert.equal(failed.length, 1);
    assert.equal(spans.length, 4);
    for (const span of spans) {
      assert.equal(span.name, 'podpool use');
      assert.equal(span.kind, SpanKind.CLIENT);
      assert.equal(span.attributes['podpool.balancer'], 'first');
      assert.equal(span.attributes['server.address'], String(span.attributes['podpool.endpoint']).split(':')[0]);
      assert.equal(span.attributes['server.port'], Number(String(span.attributes['podpool.endpoint']).split(':')[1]));
    }
    const ok = spans.filter((s) => s.status.code !== SpanStatusCode.ERROR);
    assert.deepEqual(
      ok.map((s) => s.attributes['podpool.endpoint']),
      answers.map((a) => a.pod),
      'each answered span carries the pod that answered, in order',
    );
    const retries = spans.filter((s) => s.attributes['podpool.attempt'] === 2);
    assert.equal(retries.length, failed.length);
    for (const [i, f] of failed.entries()) {
      assert.equal(f.attributes['podpool.endpoint'], key51);
      assert.equal(f.attributes['podpool.outcome'], 'failed');
      assert.equal(f.attributes['podpool.attempt'], 1);
      assert.match(f.status.message!, /answered HTTP 503/);
      assert.ok(f.events.some((e) => e.name === 'exception'));
      // Spans are exported as they end: each failed attempt's retry ends after it, before the next call.
      const retry = retries[i];
      assert.notEqual(retry.attributes['podpool.endpoint'], key51, 'the retry went to another pod');
      assert.deepEqual(retry.links.map((l) => l.context.spanId), [f.spanContext().spanId]);
      assert.deepEqual(
        retry.events.filter((e) => e.name === 'podpool.retry').map((e) => e.attributes),
        [{ 'podpool.previous_endpoint': key51 }],
      );
    }
    for (const s of spans) if (!retries.includes(s)) assert.deepEqual(s.links, []);

    // Once stopped, nothing more is traced.
    stop();
    await get(pool);
    assert.equal(exporter.getFinishedSpans().length, spans.length);
  });

  test('main.ts prints a span per attempt, the retry with its event, and three answers', async () => {
    const file = new URL('../examples/opentelemetry/main.ts', import.meta.url).pathname;
    const { stdout } = await run(process.execPath, ['--conditions=podpool-source', file], { timeout: 60_000 });
    assert.match(stdout, /(GET \/items\/1 → 200 from 127\.0\.0\.1[13]:\d+\n[^]*){3}/);
    // Round robin starts at a random pod: the 503 pod gets one or two of the three calls, each retried.
    const failed = stdout.match(/'podpool\.outcome': 'failed'/g)?.length ?? 0;
    assert.ok(failed >= 1);
    assert.equal(stdout.match(/name: 'podpool use'/g)?.length, 3 + failed);
    assert.equal(stdout.match(/'podpool\.attempt': 2/g)?.length, failed);
    assert.equal(stdout.match(/name: 'podpool\.retry'/g)?.length, failed);
  });
});
