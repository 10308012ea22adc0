import { decodeUp, FERRY_LORA_PORT, type LoraUp } from '../../shared/lora/control.js';
import type { SessionInput } from '../../shared/lora/session.js';
import { decodeAnswers, TS004_PORT } from '../../shared/lora/ts004.js';
import { decodeTs005Answers, TS005_PORT, type Ts005Answer } from '../../shared/lora/ts005.js';

/**
 * What one LoRa uplink says, decoded by its fPort (docs/lora.md §7): ferry's control message, TS005 answers, or
 * TS004 answers already turned into inputs of the block session they name (FragIndex). A frame that does not
 * decode comes back as `bad` with the decoder's one-line reason; other fPorts are `other`.
 */
export type ParsedUplink =
  | { port: 'ferry'; message: LoraUp }
  | { port: 'ts005'; answers: Ts005Answer[] }
  | { port: 'ts004'; inputs: { input: SessionInput; fragIndex: number }[] }
  | { port: 'other' }
  | { port: 'bad'; what: string; why: string };

export function parseUplink(devEui: string, fPort: number, bytes: Uint8Array): ParsedUplink {
  try {
    if (fPort === FERRY_LORA_PORT) return { port: 'ferry', message: decodeUp(bytes) };
    if (fPort === TS005_PORT) return { port: 'ts005', answers: decodeTs005Answers(bytes) };
    if (fPort !== TS004_PORT) return { port: 'other' };
    const inputs: { input: SessionInput; fragIndex: number }[] = [];
    for (const a of decodeAnswers(bytes)) {
      if (a.cmd === 'FragSessionSetupAns') {
        const bad = [a.encodingUnsupported && 'encoding unsupported', a.notEnoughMemory && 'not enough memory', a.fragIndexUnsupported && 'FragIndex unsupported', a.wrongDescriptor && 'wrong descriptor'].filter(Boolean);
        inputs.push({ input: { kind: 'setupAns', devEui, ok: bad.length === 0, detail: bad.join(', ') }, fragIndex: a.fragIndex });
      } else if (a.cmd === 'FragSessionStatusAns') {
        inputs.push({ input: { kind: 'statusAns', devEui, received: a.nbFragReceived, missing: a.missingFrag, memoryError: a.notEnoughMatrixMemory }, fragIndex: a.fragIndex });
      }
    }
    return { port: 'ts004', inputs };
  } catch (err) {
    const what = fPort === FERRY_LORA_PORT ? 'fPort 10' : fPort === TS005_PORT ? 'TS005' : 'TS004';
    return { port: 'bad', what, why: err instanceof Error ? err.message : String(err) };
  }
}
