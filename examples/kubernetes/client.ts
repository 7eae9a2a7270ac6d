// Sends a request a second to the echo Service, each time to the next of its pods, over one
// keep-alive connection per pod; prints which pod answered and follows scaling as it happens.
import { createPool, httpTransport, kubernetesEndpoints } from 'podpool';

const service = process.env.BACKEND_SERVICE ?? 'echo';
const port = process.env.BACKEND_PORT ?? 'http';
// The downward API sets it (see client.yaml); a client only reads EndpointSlices in its own namespace.
const namespace = process.env.POD_NAMESPACE ?? 'default';

const pool = createPool({
  // In a pod, podpool uses the pod's service account; elsewhere, KUBECONFIG or ~/.kube/config.
  source: kubernetesEndpoints({ service, namespace, port }),
  transport: httpTransport(),
});

pool.on('change', (endpoints, diff) => {
  console.log(`${endpoints.ready().length} of ${endpoints.size} pods ready (+${diff.added.length} -${diff.removed.length})`);
});
pool.on('sourceError', (error) => console.error(error.message));

await pool.ready();

const timer = setInterval(() => {
  pool
    .use(async (client, endpoint) => {
      const res = await client.request({ method: 'GET', path: '/hostname' });
      return `${endpoint.key} (${endpoint.podName ?? 'no pod name'}) answered ${await res.body.text()}`;
    })
    .then(console.log, (error: Error) => console.error(error.message));
}, 1000);

// Kubernetes sends SIGTERM before it stops the pod: stop calling, close the connections and the watch.
process.once('SIGTERM', () => {
  clearInterval(timer);
  void pool.close();
});
