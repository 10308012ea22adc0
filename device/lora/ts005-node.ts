import { ProtocolError } from '../../shared/errors.js';
import { EU868 } from '../../shared/lora/regions.js';
import { unixMsOfGps, gpsSeconds } from '../../shared/lora/ts003.js';
import { decodeTs005Requests, encodeTs005Answers, sessionTimeoutSeconds, TS005_PACKAGE_IDENTIFIER, TS005_PACKAGE_VERSION, TS005_PORT, type Ts005Answer } from '../../shared/lora/ts005.js';

/**
 * The node side of TS005 v1 (fPort 200), as LoRaMac-node answers it: up to 4 multicast groups, each with an
 * optional Class C window [SessionTime, SessionTime + 2^k s) on its own frequency and DR. Kept in RAM only: a
 * reset forgets the groups (the agent sets them up again). McKey is not checked: the simulator's radio carries
 * plaintext. A start time already past is refused as McGroupUndefined (LoRaMac-node's behaviour).
 */
interface Group {
  mcAddr: number;
  window?: { startMs: number; endMs: number; frequencyHz: number; dr: number };
}

const MIN_HZ = 863_000_000;
const MAX_HZ = 870_000_000;

export class Ts005Node {
  private groups: (Group | undefined)[] = [undefined, undefined, undefined, undefined];

  reset(): void {
    this.groups = [undefined, undefined, undefined, undefined];
  }

  groupOf(mcAddr: number): number | undefined {
    const i = this.groups.findIndex((g) => g?.mcAddr === mcAddr);
    return i < 0 ? undefined : i;
  }

  /** Whether the node is inside the Class C window of the group with this McAddr. */
  listensTo(mcAddr: number, nowMs: number): boolean {
    const g = this.groups.find((x) => x?.mcAddr === mcAddr);
    return !!g?.window && nowMs >= g.window.startMs && nowMs < g.window.endMs;
  }

  openWindow(nowMs: number): { mcAddr: number; frequencyHz: number; dr: number } | undefined {
    for (const g of this.groups) if (g?.window && nowMs >= g.window.startMs && nowMs < g.window.endMs) return { mcAddr: g.mcAddr, ...g.window };
    return undefined;
  }

  /** Earliest future window start among the groups with this McAddr (for a gateway holding a multicast frame). */
  windowStart(mcAddr: number, nowMs: number): number | undefined {
    const g = this.groups.find((x) => x?.mcAddr === mcAddr);
    return g?.window && g.window.endMs > nowMs ? g.window.startMs : undefined;
  }

  receive(bytes: Uint8Array, multicast: boolean, _random: () => number, nowUnixMs: number, log: (l: 'info' | 'warn', m: string) => void) {
    if (multicast) return [];
    let cmds;
    try {
      cmds = decodeTs005Requests(bytes);
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      log('warn', `TS005 frame ignored: ${e.message}`);
      return [];
    }
    const out: Ts005Answer[] = [];
    for (const c of cmds) {
      switch (c.cmd) {
        case 'PackageVersionReq':
          out.push({ cmd: 'PackageVersionAns', packageIdentifier: TS005_PACKAGE_IDENTIFIER, packageVersion: TS005_PACKAGE_VERSION });
          break;
        case 'McGroupStatusReq':
          out.push({
            cmd: 'McGroupStatusAns', nbTotalGroups: this.groups.filter(Boolean).length,
            groups: this.groups.flatMap((g, i) => (g && c.reqGroupMask & (1 << i) ? [{ mcGroupId: i, mcAddr: g.mcAddr }] : [])),
          });
          break;
        case 'McGroupSetupReq':
          this.groups[c.mcGroupId] = { mcAddr: c.mcAddr };
          out.push({ cmd: 'McGroupSetupAns', mcGroupId: c.mcGroupId, idError: false });
          break;
        case 'McGroupDeleteReq':
          out.push({ cmd: 'McGroupDeleteAns', mcGroupId: c.mcGroupId, mcGroupUndefined: !this.groups[c.mcGroupId] });
          this.groups[c.mcGroupId] = undefined;
          break;
        case 'McClassCSessionReq': {
          const g = this.groups[c.mcGroupId];
          const drError = !EU868.dataRates.some((d) => d.dr === c.dr);
          const freqError = c.dlFrequencyHz < MIN_HZ || c.dlFrequencyHz >= MAX_HZ;
          const toStart = c.sessionTime - gpsSeconds(nowUnixMs);
          const undefinedGroup = !g || toStart < 0;
          if (g && !drError && !freqError && !undefinedGroup) {
            const startMs = unixMsOfGps(c.sessionTime);
            g.window = { startMs, endMs: startMs + sessionTimeoutSeconds(c.sessionTimeOut) * 1000, frequencyHz: c.dlFrequencyHz, dr: c.dr };
            out.push({ cmd: 'McClassCSessionAns', mcGroupId: c.mcGroupId, drError, freqError, mcGroupUndefined: false, timeToStart: toStart });
          } else {
            log('warn', `McClassCSession ${c.mcGroupId} refused:${drError ? ' DR' : ''}${freqError ? ' frequency' : ''}${!g ? ' no such group' : toStart < 0 ? ' start time passed' : ''}`);
            out.push({ cmd: 'McClassCSessionAns', mcGroupId: c.mcGroupId, drError, freqError, mcGroupUndefined: undefinedGroup });
          }
          break;
        }
      }
    }
    return out.length ? [{ fPort: TS005_PORT, bytes: encodeTs005Answers(out), delayMs: 0 }] : [];
  }
}
