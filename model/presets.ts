// Model presets. "tiny" fits 28×28 grayscale images (Fashion-MNIST) and trains in minutes
// on a CPU through lavapipe; the others are the standard ViT sizes at 224×224 (ViT-L/16 is
// the PreLoRA paper's model, about 300M parameters).
import type { VitConfig } from './vit.ts';

const base = { layerNormEps: 1e-12, numClasses: 1000, channels: 3, imageSize: 224, patchSize: 16 };

export const MODEL_PRESETS = {
  tiny: { ...base, imageSize: 28, patchSize: 7, channels: 1, hidden: 64, layers: 4, heads: 4, mlpDim: 256, numClasses: 10 },
  'vit-s16': { ...base, hidden: 384, layers: 12, heads: 6, mlpDim: 1536 },
  'vit-b16': { ...base, hidden: 768, layers: 12, heads: 12, mlpDim: 3072 },
  'vit-l16': { ...base, hidden: 1024, layers: 24, heads: 16, mlpDim: 4096 },
} satisfies Record<string, VitConfig>;

export type ModelPreset = keyof typeof MODEL_PRESETS;

export function parameterCount(cfg: VitConfig): number {
  const C = cfg.hidden;
  const Np = (cfg.imageSize / cfg.patchSize) ** 2;
  const perLayer = 4 * (C * C + C) + 2 * 2 * C + (C * cfg.mlpDim + cfg.mlpDim) + (cfg.mlpDim * C + C);
  const embed = cfg.channels * cfg.patchSize ** 2 * C + C + C + (Np + 1) * C;
  return embed + cfg.layers * perLayer + 2 * C + C * cfg.numClasses + cfg.numClasses;
}
