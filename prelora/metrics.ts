// The per-epoch metrics record and its writer. metrics.jsonl has one JSON object per line,
// appended at every epoch end, so a crashed run keeps every finished epoch.
import { appendFileSync, mkdirSync, readFileSync, existsSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Phase } from './phases.ts';

export interface EpochMetrics {
  epoch: number;
  /** Optimizer steps taken so far, over the whole run. */
  step: number;
  phase: Phase;
  /** Mean training loss over the epoch (with label smoothing, as optimised). */
  loss: number;
  trainTop1: number;
  /** Mean validation cross-entropy (no label smoothing). */
  valLoss: number;
  valTop1: number;
  lr: number;
  epochSeconds: number;
  imagesPerSecond: number;
  /** Device bytes held by tensors at the epoch end, and the peak during the epoch. */
  liveBytes: number;
  peakBytes: number;
  /** Bytes of AdamW state (m and v) held at the epoch end. */
  optimizerBytes: number;
  trainableParams: number;
  /** Per target module: mean over layers of the weight norm, and the per-layer norms. */
  normMeans: Record<string, number>;
  norms: Record<string, number[]>;
  /** Per target module: adapter rank per layer, when adapters are attached. */
  ranks?: Record<string, number[]>;
  /** Present on the epoch whose end changed the phase. */
  transition?: { from: Phase; to: Phase; reason: string };
}

export class MetricsLog {
  constructor(readonly path: string) {
    mkdirSync(dirname(path), { recursive: true });
  }

  append(m: EpochMetrics): void {
    appendFileSync(this.path, JSON.stringify(m) + '\n');
  }

  /** Keeps only the records of the first `finished` epochs (a resumed run rewrites what follows). */
  keepFinished(finished: number): void {
    if (!existsSync(this.path)) return;
    const kept = readMetrics(this.path).filter((m) => m.epoch <= finished);
    writeFileSync(this.path, kept.map((m) => JSON.stringify(m) + '\n').join(''));
  }
}

export function readMetrics(path: string): EpochMetrics[] {
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.trim().length > 0)
    .map((l) => JSON.parse(l) as EpochMetrics);
}
