/** Lets every pending promise job and I/O callback run (not timers that are not due). */
export function flush(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
