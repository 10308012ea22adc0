#!/usr/bin/env node
import { runCli } from '../cli/main.js';
import { exitWithFailure, quietOnClosedOutput, setCommand } from '../cli/failure.js';

const args = process.argv.slice(2);
setCommand(args);
quietOnClosedOutput();
let finished = false;
// A command whose work stopped without settling (nothing left to wait for) must not pass for success.
process.on('beforeExit', () => finished || exitWithFailure('stopped before finishing (nothing left to wait for): please report this'));
runCli(args).then(
  () => void (finished = true),
  (err: unknown) => exitWithFailure((err as Error)?.message ?? String(err)),
);
