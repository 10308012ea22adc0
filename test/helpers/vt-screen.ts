/**
 * A small terminal model for tests: applies what a program wrote to a pty (text, CR/LF, the CSI
 * sequences ferry uses: cursor moves, erase in line/display, SGR) to a rows × cols screen, the way
 * xterm does (auto-wrap after the last column, scrolling at the bottom). It counts what a test must
 * never see: wrapped lines and scrolled-away frames. Unknown sequences are recorded, not guessed.
 */
export class VtScreen {
  readonly lines: string[][];
  row = 0;
  col = 0;
  /** Lines the terminal broke because text ran past the last column. */
  wraps = 0;
  /** Lines scrolled off the top. */
  scrolled = 0;
  readonly unknown: string[] = [];
  private pendingWrap = false;

  constructor(
    readonly rows: number,
    readonly cols: number,
  ) {
    this.lines = Array.from({ length: rows }, () => this.blank());
  }

  private blank(): string[] {
    return Array.from({ length: this.cols }, () => ' ');
  }

  /** The screen as text, trailing spaces removed. */
  text(): string[] {
    return this.lines.map((l) => l.join('').trimEnd());
  }

  write(data: string): void {
    for (let i = 0; i < data.length; i++) {
      const ch = data[i];
      if (ch === '\x1b') {
        const m = /^\x1b\[([?0-9;]*)([A-Za-z])/.exec(data.slice(i));
        if (!m) {
          this.unknown.push(JSON.stringify(data.slice(i, i + 6)));
          continue;
        }
        this.csi(m[1], m[2]);
        i += m[0].length - 1;
      } else if (ch === '\r') {
        this.col = 0;
        this.pendingWrap = false;
      } else if (ch === '\n') {
        this.lineFeed();
      } else if (ch === '\b') {
        this.col = Math.max(0, this.col - 1);
      } else if (ch >= ' ') {
        if (this.pendingWrap) {
          this.wraps++;
          this.col = 0;
          this.lineFeed();
        }
        this.lines[this.row][this.col] = ch;
        if (this.col === this.cols - 1) this.pendingWrap = true;
        else this.col++;
      }
    }
  }

  private lineFeed(): void {
    this.pendingWrap = false;
    if (this.row === this.rows - 1) {
      this.lines.shift();
      this.lines.push(this.blank());
      this.scrolled++;
    } else this.row++;
  }

  private csi(params: string, final: string): void {
    if (params.startsWith('?')) return; // cursor visibility and other modes
    const n = params.split(';').map((p) => (p === '' ? undefined : Number(p)));
    const count = n[0] ?? 1;
    this.pendingWrap = false;
    switch (final) {
      case 'H':
      case 'f':
        this.row = Math.min(this.rows - 1, (n[0] ?? 1) - 1);
        this.col = Math.min(this.cols - 1, (n[1] ?? 1) - 1);
        return;
      case 'A':
        this.row = Math.max(0, this.row - count);
        return;
      case 'B':
        this.row = Math.min(this.rows - 1, this.row + count);
        return;
      case 'C':
        this.col = Math.min(this.cols - 1, this.col + count);
        return;
      case 'D':
        this.col = Math.max(0, this.col - count);
        return;
      case 'G':
        this.col = Math.min(this.cols - 1, count - 1);
        return;
      case 'K': {
        const mode = n[0] ?? 0;
        const line = this.lines[this.row];
        for (let c = 0; c < this.cols; c++) if ((mode === 0 && c >= this.col) || (mode === 1 && c <= this.col) || mode === 2) line[c] = ' ';
        return;
      }
      case 'J': {
        const mode = n[0] ?? 0;
        if (mode === 2 || mode === 3) {
          for (let r = 0; r < this.rows; r++) this.lines[r] = this.blank();
          return;
        }
        if (mode === 0) {
          for (let c = this.col; c < this.cols; c++) this.lines[this.row][c] = ' ';
          for (let r = this.row + 1; r < this.rows; r++) this.lines[r] = this.blank();
        }
        return;
      }
      case 'm':
        return;
      default:
        this.unknown.push(`CSI ${params}${final}`);
    }
  }
}
