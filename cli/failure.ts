/**
 * How the ferry command ends when it cannot do its job: one line on stderr, `ferry <command>: what
 * was wrong`, and a non-zero exit, at once. Exiting (rather than only setting exitCode) matters for
 * the long-running commands: a listener, a database or a reconnect timer opened before the failure
 * would keep a process alive that does nothing, and under systemd looks healthy.
 */
let commandName = 'ferry';

/** Commands whose second word names what they do (`ferry release publish`, `ferry devices add`). */
const TWO_WORDS = new Set(['release', 'sim', 'devices', 'agents', 'operators']);

/** Remembers which command runs, for the prefix of its failure line. */
export function setCommand(args: readonly string[]): void {
  const words: string[] = [];
  for (const a of args) {
    if (a.startsWith('-') || words.length === 2) break;
    words.push(a);
    if (!TWO_WORDS.has(words[0])) break;
  }
  // Only plain words: the line must not echo arbitrary argument text back as a command name.
  commandName = ['ferry', ...words.filter((w) => /^[a-z][a-z-]{0,20}$/.test(w))].join(' ');
}

/** `ferry <command>: msg`, a message of several lines (yargs' "Invalid values:" …) joined into one. */
export function failureLine(msg: string): string {
  const text = msg
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .join(' ');
  return `${commandName}: ${text}`;
}

/** Prints the one line and exits with `code` now. */
export function exitWithFailure(msg: string, code = 1): never {
  process.stderr.write(`${failureLine(msg)}\n`);
  process.exit(code);
}

/**
 * `ferry devices list | head`: the reader goes away and the next write fails with EPIPE. That is the
 * reader's choice, not an error: stop quietly and successfully. A closed stderr is ignored (there is
 * nowhere left to report anything), so a daemon whose log reader died keeps serving.
 */
export function quietOnClosedOutput(): void {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    exitWithFailure(`writing to stdout: ${err.message}`);
  });
  process.stderr.on('error', () => {});
}
