/** A bounded load loop for tests: a fixed number of calls, a fixed number at a time. */

/** Runs `total` calls, `concurrency` at a time; counts the ones that failed. */
export async function burst(total: number, concurrency: number, call: () => Promise<void>): Promise<{ ok: number; failed: unknown[] }> {
  let next = 0;
  let ok = 0;
  const failed: unknown[] = [];
  const loop = async (): Promise<void> => {
    while (next < total) {
      next++;
      try {
        await call();
        ok++;
      } catch (error) {
        failed.push(error);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  return { ok, failed };
}
