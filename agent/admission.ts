/**
 * Admission of transfers: at most `max` at once (a transfer holds its slot from preparing its payload
 * to the node's verified report); the rest wait in arrival order, so none starves.
 */
export class Admission {
  private readonly line: string[] = [];

  constructor(
    private readonly max: number,
    /** Transfers holding a slot now. */
    private readonly active: () => number,
  ) {}

  /** True: start now. False: the node waits its turn. */
  request(id: string): boolean {
    if (this.line.length === 0 && this.active() < this.max) return true;
    if (!this.line.includes(id)) this.line.push(id);
    return false;
  }

  /** Puts a node at the end of the line whatever the slots (rebuilding the line after a restart). */
  enqueue(id: string): void {
    if (!this.line.includes(id)) this.line.push(id);
  }

  /** Waiting nodes, oldest first, while slots are free; `start` returns false for one that no longer waits. */
  admit(start: (id: string) => boolean): void {
    while (this.line.length > 0 && this.active() < this.max) {
      const id = this.line.shift()!;
      start(id);
    }
  }

  remove(id: string): void {
    const i = this.line.indexOf(id);
    if (i >= 0) this.line.splice(i, 1);
  }

  get waiting(): readonly string[] {
    return this.line;
  }
}
