/**
 * How many bytes a piece of code allocates: heap growth over the run plus what every garbage
 * collection during it freed (node:v8's GCProfiler), so a collection in the middle can't hide an
 * allocation. Warm the code up first: optimized code is heap too.
 */
import { GCProfiler, getHeapStatistics } from 'node:v8';

export function bytesAllocated(run: () => void): number {
  const profiler = new GCProfiler();
  profiler.start();
  const before = getHeapStatistics().used_heap_size;
  run();
  const after = getHeapStatistics().used_heap_size;
  const freed = (profiler.stop()?.statistics ?? []).reduce(
    (sum, gc) => sum + gc.beforeGC.heapStatistics.usedHeapSize - gc.afterGC.heapStatistics.usedHeapSize,
    0,
  );
  return after - before + freed;
}
