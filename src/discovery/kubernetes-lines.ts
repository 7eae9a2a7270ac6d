/**
 * A watch's body as the API server writes it: one JSON event a line. Reading it ourselves is what
 * lets discovery notice a line cut short or garbled in transit (the client's `Watch` skips it, and
 * the event is lost for good), and bound the memory a line may take.
 */

/**
 * The longest line accepted. An EndpointSlice holds at most 1,000 endpoints and etcd refuses
 * objects over 1.5 MiB, so a real event is far below this; a longer line is a broken stream.
 */
export const MAX_LINE_BYTES = 16 * 1024 * 1024;

const NEWLINE = 0x0a;

/** Cuts a stream of bytes into lines of at most `max` bytes; bytes of an unfinished line wait for the next chunk. */
export class LineSplitter {
  readonly #max: number;
  #parts: Buffer[] = [];
  #pending = 0;

  constructor(max = MAX_LINE_BYTES) {
    this.#max = max;
  }

  /** Bytes of a line not finished yet: what a stream that ends now leaves cut short. */
  get pending(): number {
    return this.#pending;
  }

  /**
   * The lines `chunk` completes, in order, without their newline; throws when a line grows past
   * the bound (what was buffered is dropped).
   */
  push(chunk: Buffer): string[] {
    const lines: string[] = [];
    let start = 0;
    // Splitting on the byte 0x0a never cuts a UTF-8 character: no multi-byte sequence holds it.
    for (let end = chunk.indexOf(NEWLINE, start); end !== -1; end = chunk.indexOf(NEWLINE, start)) {
      this.#take(end - start);
      const tail = chunk.subarray(start, end);
      lines.push((this.#parts.length === 0 ? tail : Buffer.concat([...this.#parts, tail])).toString('utf8'));
      this.#parts = [];
      this.#pending = 0;
      start = end + 1;
    }
    if (start < chunk.length) {
      this.#take(chunk.length - start);
      this.#parts.push(chunk.subarray(start));
    }
    return lines;
  }

  #take(bytes: number): void {
    this.#pending += bytes;
    if (this.#pending > this.#max) {
      this.#parts = [];
      this.#pending = 0;
      throw new Error(`a watch line grew past ${this.#max} bytes without ending`);
    }
  }
}

/** A watch event whose envelope is sound; its object is still unread. */
export interface WatchEvent {
  readonly type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  readonly object: Record<string, unknown>;
}

const TYPES: ReadonlySet<string> = new Set(['ADDED', 'MODIFIED', 'DELETED', 'BOOKMARK', 'ERROR']);

/**
 * The event on one line, or why the line is not one (a sentence's end: "… is not JSON"). An
 * empty line is `undefined`: servers may send them to keep the connection alive.
 */
export function parseWatchLine(line: string): WatchEvent | { readonly problem: string } | undefined {
  if (line.trim() === '') return undefined;
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return { problem: `a watch line is not JSON (cut short in transit?): ${excerpt(line)}` };
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return { problem: `a watch line is not an event object: ${excerpt(line)}` };
  }
  const { type, object } = value as { type?: unknown; object?: unknown };
  if (typeof type !== 'string' || !TYPES.has(type)) {
    return { problem: `a watch event has type ${excerpt(JSON.stringify(type) ?? 'undefined')}, not ADDED, MODIFIED, DELETED, BOOKMARK or ERROR` };
  }
  if (object === null || typeof object !== 'object' || Array.isArray(object)) {
    return { problem: `a ${type} watch event has no object (got ${excerpt(JSON.stringify(object) ?? 'undefined')})` };
  }
  return { type: type as WatchEvent['type'], object: object as Record<string, unknown> };
}

/** The start of a text for a message: enough to recognise it, never a whole slice. */
export function excerpt(text: string, max = 80): string {
  return text.length <= max ? text : `${text.slice(0, max)}… (${text.length} characters)`;
}
