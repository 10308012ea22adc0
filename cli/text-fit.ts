/**
 * Text that fits a terminal line. Widths count UTF-16 units: every string ferry draws is ASCII plus
 * the ellipsis and box characters, each one column wide. A line exactly as wide as the terminal
 * would leave the cursor in the last column, where terminals differ on wrapping: callers pass
 * `columns - 1` where a redraw depends on the line count.
 */
export function fitLine(text: string, width?: number): string {
  if (width === undefined || text.length <= width) return text;
  if (width <= 0) return '';
  return `${text.slice(0, width - 1)}…`;
}

/** Splits text at spaces into lines of at most `width`; a word longer than a line (a digest) is split into pieces, never cut. */
export function wrapWords(text: string, width?: number): string[] {
  if (width === undefined || text.length <= width) return [text];
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    const next = line ? `${line} ${word}` : word;
    if (next.length <= width) line = next;
    else {
      if (line) lines.push(line);
      let rest = word;
      while (rest.length > width) {
        lines.push(rest.slice(0, width));
        rest = rest.slice(width);
      }
      line = rest;
    }
  }
  if (line) lines.push(line);
  return lines;
}

/** The usable width of a terminal stream (one column kept free, see fitLine), or undefined for a pipe. */
export function terminalWidth(stream: { isTTY?: boolean; columns?: number }): number | undefined {
  if (!stream.isTTY) return undefined;
  const cols = stream.columns || Number(process.env.COLUMNS) || 80;
  return Math.max(20, cols - 1);
}
