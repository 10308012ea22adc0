import { sweepEveryCutPoint } from './helpers/sweep-suite.js';

// Every cut point for MCUboot overwrite-only (test/helpers/sweep-suite.ts).
sweepEveryCutPoint(['mcuboot-overwrite']);
