// Small training runs for tests: the tiny ViT (narrowed) on a few hundred Fashion-MNIST
// images, in a temporary run directory.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mergeConfig, parseConfig, type Config, type ConfigInput } from '../../prelora/config.ts';
import { SilentProgress } from '../../prelora/progress.ts';
import { loadDatasets, prepareRun, type Datasets } from '../../prelora/run.ts';
import type { Trainer } from '../../prelora/trainer.ts';

export function tempRunDir(tag: string): string {
  return mkdtempSync(join(tmpdir(), `prelora-${tag}-`));
}

/** Builds a fast config: 2 layers of width 32, 128 training and 64 validation images, batch 32. */
export function smallConfig(dir: string, overrides: ConfigInput = {}): Config {
  const base: ConfigInput = {
    model: { preset: 'tiny', hidden: 32, layers: 2, heads: 2 },
    data: { dataset: 'fashion-mnist', trainSubset: 128, valSubset: 64 },
    train: { epochs: 3, batchSize: 32, lr: 2e-3, warmupEpochs: 0.5, seed: 1 },
    prelora: { enabled: false },
    run: { dir, report: false, quiet: true },
  };
  return parseConfig(mergeConfig(base, overrides));
}

let cached: Promise<Datasets> | null = null;

export async function smallTrainer(cfg: Config): Promise<{ trainer: Trainer; progress: SilentProgress }> {
  cached ??= loadDatasets(cfg);
  const progress = new SilentProgress();
  const { trainer } = await prepareRun(cfg, progress, await cached);
  return { trainer, progress };
}

/** Reads every parameter's values, by name. */
export async function snapshot(trainer: Trainer): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const p of trainer.model.parameters()) out.set(p.name!, await p.toArray());
  return out;
}

export function maxDiff(a: Map<string, Float32Array>, b: Map<string, Float32Array>): number {
  let m = 0;
  for (const [k, v] of a) {
    const w = b.get(k);
    if (!w) return Infinity;
    for (let i = 0; i < v.length; i++) m = Math.max(m, Math.abs(v[i] - w[i]));
  }
  return m;
}
