// One OpenTelemetry span per call podpool makes, with the pod it went to; a retry is a span of
// its own, linked to the attempt it follows and carrying a `podpool.retry` event.
// Runs on its own: it starts three stand-in HTTP pods on 127.0.0.11-13 first (127.0.0.12 answers 503).
//   node_modules/.bin/node --conditions=podpool-source examples/opentelemetry/main.ts
import { trace } from '@opentelemetry/api';
import { BasicTracerProvider, ConsoleSpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { createPool, httpTransport, roundRobin, staticEndpoints } from 'podpool';
import { startHttpPods, stopPods } from '../../testkit/http-pods.ts';
import { traceCalls } from './tracing.ts';

// In an application, the SDK is set up once (NodeSDK, or a provider with an OTLP exporter);
// the console exporter prints each span as it ends.
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(new ConsoleSpanExporter())] });
trace.setGlobalTracerProvider(provider);

const pods = await startHttpPods(3, {
  handler: (pod, req, res) => {
    req.resume();
    res.statusCode = pod.address === '127.0.0.12' ? 503 : 200;
    res.end(pod.key);
  },
});
const pool = createPool({ source: staticEndpoints(pods), transport: httpTransport(), balancer: roundRobin() });
const stop = traceCalls(pool, trace.getTracer('podpool-example'));
try {
  await pool.ready({ minEndpoints: 3, timeoutMs: 5_000 });
  // Idempotent GETs: the one that lands on the 503 pod is sent again to another pod.
  for (let i = 0; i < 3; i++) {
    const body = await pool.use(
      async (client) => {
        const res = await client.request({ method: 'GET', path: '/items/1' });
        return { statusCode: res.statusCode, text: await res.body.text() };
      },
      { retry: { idempotent: true } },
    );
    console.log(`GET /items/1 → ${body.statusCode} from ${body.text}`);
  }
} finally {
  stop();
  await pool.close();
  await stopPods(pods);
  await provider.shutdown();
}
