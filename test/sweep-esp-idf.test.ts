import { sweepEveryCutPoint } from './helpers/sweep-suite.js';

// Every cut point for the ESP-IDF profiles (test/helpers/sweep-suite.ts).
sweepEveryCutPoint(['esp-idf', 'esp-idf-norollback']);
