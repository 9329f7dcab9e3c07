// Vision Transformer (Dosovitskiy et al.), pre-norm, with Hugging Face ViT parameter names
// so checkpoints load in that ecosystem. Shapes: B batch, Cin image channels, Np patches,
// T = Np + 1 tokens (CLS first), C width, H heads, L layers.
import { attention } from '../engine/ops/attention.ts';
import { add } from '../engine/ops/elementwise.ts';
import { reshape } from '../engine/ops/shape.ts';
import { patchify, prependToken, selectToken } from '../engine/ops/tokens.ts';
import type { Tensor } from '../engine/tensor.ts';
import { Rng, hashString, truncNormal } from './init.ts';
import { LayerNorm } from './layernorm.ts';
import { Linear } from './linear.ts';
import { Module, parameter } from './module.ts';

export interface VitConfig {
  imageSize: number;
  patchSize: number;
  channels: number;
  /** Width C. */
  hidden: number;
  /** Depth L. */
  layers: number;
  heads: number;
  /** Width of the MLP's hidden layer (4·C in the standard presets). */
  mlpDim: number;
  numClasses: number;
  /** HF ViT's layer_norm_eps. */
  layerNormEps: number;
}

/**
 * The LoRA target modules, by short name, and their path inside an encoder layer:
 * q, k, v, d (attention output) and o (MLP output) are the default targets; i (the MLP's
 * first layer) can be added.
 */
export { VIT_LAYER_MODULES as TARGET_MODULES } from './peft.ts';
import { VIT_LAYER_MODULES as TARGET_MODULES } from './peft.ts';
export type TargetModule = 'q' | 'k' | 'v' | 'd' | 'i' | 'o';

export class EncoderLayer extends Module {
  readonly layernormBefore: LayerNorm;
  readonly query: Linear;
  readonly key: Linear;
  readonly value: Linear;
  readonly attnOut: Linear;
  readonly layernormAfter: LayerNorm;
  readonly intermediate: Linear;
  readonly output: Linear;

  constructor(readonly path: string, readonly cfg: VitConfig, rng: Rng) {
    super();
    const C = cfg.hidden;
    const lin = (name: string, inF: number, outF: number) => new Linear(`${path}.${name}`, inF, outF, rng.fork(hashString(name)));
    this.layernormBefore = new LayerNorm(`${path}.layernorm_before`, C, cfg.layerNormEps);
    this.query = lin(TARGET_MODULES.q, C, C);
    this.key = lin(TARGET_MODULES.k, C, C);
    this.value = lin(TARGET_MODULES.v, C, C);
    this.attnOut = lin(TARGET_MODULES.d, C, C);
    this.layernormAfter = new LayerNorm(`${path}.layernorm_after`, C, cfg.layerNormEps);
    this.intermediate = lin(TARGET_MODULES.i, C, cfg.mlpDim);
    this.output = lin(TARGET_MODULES.o, cfg.mlpDim, C);
  }

  /** x [B, T, C] → [B, T, C]. */
  forward(x: Tensor): Tensor {
    // Attention sub-block: q, k, v stay in [B, T, H·D]; the attention kernel reads heads in place.
    const h = this.layernormBefore.forward(x);
    const q = this.query.forward(h);
    const k = this.key.forward(h);
    const v = this.value.forward(h);
    const a = attention(q, k, v, { heads: this.cfg.heads, layout: 'bthd' });
    const x1 = add(x, this.attnOut.forward(a));

    // MLP sub-block, GELU fused into the first linear.
    const m = this.intermediate.forward(this.layernormAfter.forward(x1), { gelu: true });
    return add(x1, this.output.forward(m));
  }

  linear(module: TargetModule): Linear {
    switch (module) {
      case 'q': return this.query;
      case 'k': return this.key;
      case 'v': return this.value;
      case 'd': return this.attnOut;
      case 'i': return this.intermediate;
      case 'o': return this.output;
    }
  }

  override parameters(): Tensor[] {
    return [
      ...this.layernormBefore.parameters(),
      ...this.query.parameters(), ...this.key.parameters(), ...this.value.parameters(), ...this.attnOut.parameters(),
      ...this.layernormAfter.parameters(),
      ...this.intermediate.parameters(), ...this.output.parameters(),
    ];
  }
}

export class ViT extends Module {
  readonly clsToken: Tensor;
  readonly positionEmbeddings: Tensor;
  readonly patchEmbed: Linear;
  readonly layers: EncoderLayer[];
  readonly layernorm: LayerNorm;
  readonly classifier: Linear;
  readonly numPatches: number;

  constructor(readonly cfg: VitConfig, seed: number) {
    super();
    validateConfig(cfg);
    const rng = new Rng(seed);
    const C = cfg.hidden;
    const P = cfg.patchSize;
    this.numPatches = (cfg.imageSize / P) ** 2;
    const T = this.numPatches + 1;

    // Patch embedding as a linear layer on flattened patches; its weight [C, Cin·P·P] is
    // HF's convolution weight [C, Cin, P, P] in the same memory order.
    this.patchEmbed = new Linear('vit.embeddings.patch_embeddings.projection', cfg.channels * P * P, C, rng.fork(1));
    this.clsToken = parameter('vit.embeddings.cls_token', truncNormal(C, 0.02, rng.fork(2)), [1, 1, C]);
    this.positionEmbeddings = parameter('vit.embeddings.position_embeddings', truncNormal(T * C, 0.02, rng.fork(3)), [1, T, C]);
    this.layers = Array.from({ length: cfg.layers }, (_, l) => new EncoderLayer(`vit.encoder.layer.${l}`, cfg, rng.fork(100 + l)));
    this.layernorm = new LayerNorm('vit.layernorm', C, cfg.layerNormEps);
    this.classifier = new Linear('classifier', C, cfg.numClasses, rng.fork(4));
  }

  /** images [B, Cin, S, S] → logits [B, classes]. */
  forward(images: Tensor): Tensor {
    const B = images.shape[0];
    const T = this.numPatches + 1;
    const C = this.cfg.hidden;

    // Embeddings: patches → tokens, CLS first, plus learned positions.
    const patches = patchify(images, this.cfg.patchSize);
    let x = prependToken(this.patchEmbed.forward(patches), this.clsToken);
    x = add(x, reshape(this.positionEmbeddings, [T, C]));

    for (const layer of this.layers) x = layer.forward(x);

    // LayerNorm is per token, so normalising only the CLS token gives the same logits.
    const cls = selectToken(x, 0);
    if (cls.shape[0] !== B) throw new Error('internal: CLS selection lost the batch axis');
    return this.classifier.forward(this.layernorm.forward(cls));
  }

  /** Per layer, the linear layer of one target module. */
  targets(module: TargetModule): Linear[] {
    return this.layers.map((l) => l.linear(module));
  }

  override parameters(): Tensor[] {
    return [
      this.clsToken, this.positionEmbeddings, ...this.patchEmbed.parameters(),
      ...this.layers.flatMap((l) => l.parameters()),
      ...this.layernorm.parameters(), ...this.classifier.parameters(),
    ];
  }

  /** Shapes under which HF stores a parameter, where ours differ (the patch projection). */
  exportShape(p: Tensor): readonly number[] {
    if (p === this.patchEmbed.weight) {
      const P = this.cfg.patchSize;
      return [this.cfg.hidden, this.cfg.channels, P, P];
    }
    return p.shape;
  }
}

export function validateConfig(cfg: VitConfig): void {
  const bad = (field: string, value: unknown, fix: string) => {
    throw new Error(`invalid model config: ${field} = ${value}; ${fix}`);
  };
  if (cfg.imageSize % cfg.patchSize !== 0) bad('imageSize', cfg.imageSize, `use a multiple of patchSize ${cfg.patchSize}`);
  if (cfg.hidden % cfg.heads !== 0) bad('hidden', cfg.hidden, `use a multiple of heads ${cfg.heads}`);
  for (const k of ['imageSize', 'patchSize', 'channels', 'hidden', 'layers', 'heads', 'mlpDim', 'numClasses'] as const) {
    if (!Number.isInteger(cfg[k]) || cfg[k] < 1) bad(k, cfg[k], 'use a positive integer');
  }
}
