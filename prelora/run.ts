// Builds everything a run needs from a validated config: the datasets, the model sized to
// them, and the trainer; writes the resolved config into the run directory.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { channelStats, loadDataset, subset, type Dataset } from '../data/index.ts';
import { MODEL_PRESETS } from '../model/presets.ts';
import { ViT, type VitConfig } from '../model/vit.ts';
import { ConfigError, type Config } from './config.ts';
import type { ProgressReporter } from './progress.ts';
import { Trainer } from './trainer.ts';

/** Fashion-MNIST's training-split pixel statistics in [0, 1] units (measured on the 60,000 images). */
const FASHION_MNIST_STATS = { mean: [0.286], std: [0.3528] };

export interface Datasets {
  train: Dataset;
  val: Dataset;
  mean: number[];
  std: number[];
}

export async function loadDatasets(cfg: Config): Promise<Datasets> {
  const preset = MODEL_PRESETS[cfg.model.preset];
  const spec = {
    name: cfg.data.dataset, path: cfg.data.path, cacheDir: cfg.data.cacheDir,
    imageSize: cfg.data.dataset === 'folder' ? preset.imageSize : undefined,
    channels: preset.channels as 1 | 3,
  };
  let train = await loadDataset({ ...spec, split: 'train' });
  let val = await loadDataset({ ...spec, path: cfg.data.dataset === 'folder' ? (cfg.data.valPath ?? cfg.data.path) : cfg.data.path, split: 'test' });
  if (cfg.data.trainSubset > 0) train = subset(train, Math.min(cfg.data.trainSubset, train.length));
  if (cfg.data.valSubset > 0) val = subset(val, Math.min(cfg.data.valSubset, val.length));
  const stats = cfg.data.dataset === 'fashion-mnist' ? FASHION_MNIST_STATS : channelStats(train);
  return { train, val, mean: stats.mean, std: stats.std };
}

/** Builds the model config from the preset, the config's overrides, and the dataset's image shape and classes. */
export function modelConfig(cfg: Config, data: Pick<Dataset, 'imageShape' | 'numClasses'>): VitConfig {
  const preset = MODEL_PRESETS[cfg.model.preset];
  const m = cfg.model;
  const [C, H, W] = data.imageShape;
  if (H !== W) throw new ConfigError(`invalid data: images are ${H}×${W}; only square images are supported`);
  if (C !== preset.channels || H !== preset.imageSize) {
    throw new ConfigError(
      `invalid model.preset "${m.preset}": it expects ${preset.channels}×${preset.imageSize}×${preset.imageSize} images, ` +
        `the dataset has ${C}×${H}×${W}; use the "tiny" preset for 28×28 grayscale data or a folder dataset for 224×224`,
    );
  }
  return {
    ...preset,
    hidden: m.hidden ?? preset.hidden,
    layers: m.layers ?? preset.layers,
    heads: m.heads ?? preset.heads,
    mlpDim: m.mlpDim ?? (m.hidden ? 4 * m.hidden : preset.mlpDim),
    patchSize: m.patchSize ?? preset.patchSize,
    numClasses: data.numClasses,
  };
}

export interface PreparedRun {
  trainer: Trainer;
  model: ViT;
  data: Datasets;
}

export async function prepareRun(cfg: Config, progress: ProgressReporter, data?: Datasets): Promise<PreparedRun> {
  data ??= await loadDatasets(cfg);
  const vitCfg = modelConfig(cfg, data.train);
  const model = new ViT(vitCfg, cfg.train.seed);
  const trainer = new Trainer({ config: cfg, model, train: data.train, val: data.val, mean: data.mean, std: data.std, progress });
  mkdirSync(cfg.run.dir, { recursive: true });
  writeFileSync(join(cfg.run.dir, 'config.json'), JSON.stringify(cfg, null, 2) + '\n');
  return { trainer, model, data };
}
