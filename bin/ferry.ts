#!/usr/bin/env node
import { runCli } from '../cli/main.js';

runCli(process.argv.slice(2)).catch((err: unknown) => {
  process.stderr.write(`ferry: ${(err as Error).message ?? String(err)}\n`);
  process.exitCode = 1;
});
