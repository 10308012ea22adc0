#!/usr/bin/env node
import { runCli } from '../cli/main.js';
import { exitWithFailure, quietOnClosedOutput, setCommand } from '../cli/failure.js';

const args = process.argv.slice(2);
setCommand(args);
quietOnClosedOutput();
runCli(args).catch((err: unknown) => exitWithFailure((err as Error)?.message ?? String(err)));
