import { sweepEveryCutPoint } from './helpers/sweep-suite.js';

// Every cut point for MCUboot swap using scratch (test/helpers/sweep-suite.ts).
sweepEveryCutPoint(['mcuboot-swap']);
