/**
 * The Kubernetes merge hands the pool snapshots that know what changed since the last one, so the
 * pool reconciles them in the time of the changes. What they say they changed must be exactly what
 * a comparison of the two whole sets finds, whatever the slices do.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { EndpointSliceMerge, readSlice, type ParsedSlice } from '../../src/discovery/endpoint-slices.ts';
import { EndpointSet, type EndpointDiff } from '../../src/endpoint.ts';
import { endpointSlice, podIp } from '../../testkit/fake-apiserver.ts';

type Op = { kind: 'set'; slice: number; pods: { n: number; ready: boolean; zone: number }[] } | { kind: 'delete'; slice: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant('set' as const),
      slice: fc.integer({ min: 0, max: 3 }),
      pods: fc.uniqueArray(fc.record({ n: fc.integer({ min: 0, max: 11 }), ready: fc.boolean(), zone: fc.integer({ min: 0, max: 2 }) }), { selector: (p) => p.n, maxLength: 8 }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('delete' as const), slice: fc.integer({ min: 0, max: 3 }) }) },
);

/** A diff as sorted keys, with each changed endpoint's after-view, to compare two of them. */
function shape(diff: EndpointDiff): unknown {
  const keys = (list: readonly { key: string }[]) => list.map((e) => e.key).sort();
  return {
    added: keys(diff.added),
    removed: keys(diff.removed),
    changed: diff.changed.map(([before, after]) => [before.key, after]).sort((a, b) => ((a[0] as string) < (b[0] as string) ? -1 : 1)),
  };
}

describe('snapshots the Kubernetes merge derives', () => {
  it('diff against the snapshot before them exactly as two whole sets compare', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 30 }), (ops) => {
        const merge = new EndpointSliceMerge();
        let previous = EndpointSet.empty;
        for (const op of ops) {
          if (op.kind === 'delete') merge.delete(`svc-${op.slice}`);
          else {
            const raw = endpointSlice({
              name: `svc-${op.slice}`,
              service: 'svc',
              endpoints: op.pods.map((p) => ({ ip: podIp(p.n), pod: `svc-${p.n}`, ready: p.ready, zone: `zone-${p.zone}` })),
            });
            merge.set(readSlice(raw, 'http', new Set()) as ParsedSlice);
          }
          const next = merge.snapshot();
          if (next === undefined) continue;
          const whole = new EndpointSet([...next]).diff(new EndpointSet([...previous]));
          assert.deepEqual(shape(next.diff(previous)), shape(whole));
          // Against any other set it is the whole comparison.
          assert.deepEqual(shape(next.diff(EndpointSet.empty)), shape(new EndpointSet([...next]).diff(EndpointSet.empty)));
          previous = next;
        }
      }),
      { numRuns: 300 },
    );
  });
});
