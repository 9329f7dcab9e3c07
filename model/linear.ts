// A linear layer (HF naming: `<path>.weight` [Cout, Cin], `<path>.bias` [Cout]) that can
// carry a LoRA adapter: attach, detach, merge (W += s·B·A) and re-initialise. The adapter's
// parameters are named `<path>.lora_A.weight` [R, Cin] and `<path>.lora_B.weight` [Cout, R].
import { noGrad } from '../engine/autograd.ts';
import { linear as linearOp, type LoraParams } from '../engine/ops/linear.ts';
import { matmul as matmulKernel } from '../kernels/matmul.ts';
import { runtime } from '../engine/runtime.ts';
import type { Tensor } from '../engine/tensor.ts';
import { Rng, truncNormal, uniform } from './init.ts';
import { Module, parameter } from './module.ts';

export interface LoraConfig {
  rank: number;
  alpha: number;
  /** rsLoRA scaling s = alpha/√R instead of alpha/R. */
  rsLora?: boolean;
}

export interface Adapter extends LoraParams {
  rank: number;
  alpha: number;
}

export function loraScale(cfg: LoraConfig): number {
  return cfg.rsLora ? cfg.alpha / Math.sqrt(cfg.rank) : cfg.alpha / cfg.rank;
}

export class Linear extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  lora: Adapter | null = null;

  constructor(
    readonly path: string,
    readonly inFeatures: number,
    readonly outFeatures: number,
    rng: Rng,
    opts: { bias?: boolean; std?: number } = {},
  ) {
    super();
    // HF ViT initialises linear weights with N(0, 0.02²) and zero biases.
    this.weight = parameter(`${path}.weight`, truncNormal(outFeatures * inFeatures, opts.std ?? 0.02, rng), [outFeatures, inFeatures]);
    this.bias = opts.bias === false ? null : parameter(`${path}.bias`, new Float32Array(outFeatures), [outFeatures]);
  }

  /** x [..., Cin] → [..., Cout]. */
  forward(x: Tensor, opts: { gelu?: boolean } = {}): Tensor {
    return linearOp(x, this.weight, this.bias, this.lora, opts);
  }

  override parameters(): Tensor[] {
    const ps = [this.weight];
    if (this.bias) ps.push(this.bias);
    if (this.lora) ps.push(this.lora.a, this.lora.b);
    return ps;
  }

  baseParameters(): Tensor[] {
    return this.bias ? [this.weight, this.bias] : [this.weight];
  }

  adapterParameters(): Tensor[] {
    return this.lora ? [this.lora.a, this.lora.b] : [];
  }

  /**
   * Attaches an adapter: A ~ U(±1/√Cin) (Kaiming-uniform with a = √5, as PyTorch's
   * nn.Linear and PEFT use), B = 0. The layer's output is unchanged at this moment, and B
   * gets a non-zero gradient through X·Aᵀ from the first step (were both zero, neither
   * would ever move).
   */
  attachLora(cfg: LoraConfig, rng: Rng): Adapter {
    if (this.lora) throw new Error(`attachLora: ${this.path} already has an adapter (rank ${this.lora.rank})`);
    if (!Number.isInteger(cfg.rank) || cfg.rank < 1) throw new Error(`attachLora: invalid rank ${cfg.rank} for ${this.path}; use a positive integer`);
    const a = parameter(`${this.path}.lora_A.weight`, uniform(cfg.rank * this.inFeatures, 1 / Math.sqrt(this.inFeatures), rng), [cfg.rank, this.inFeatures]);
    const b = parameter(`${this.path}.lora_B.weight`, new Float32Array(this.outFeatures * cfg.rank), [this.outFeatures, cfg.rank]);
    this.lora = { a, b, rank: cfg.rank, alpha: cfg.alpha, scale: loraScale(cfg) };
    return this.lora;
  }

  /** Removes the adapter without merging; returns its parameters (already released). */
  detachLora(): Tensor[] {
    const ps = this.adapterParameters();
    for (const p of ps) {
      p.grad?.release();
      p.grad = null;
      p.release();
    }
    this.lora = null;
    return ps;
  }

  /** W += s·B·A on the device. The output is unchanged if B is then zeroed (see reinitLora). */
  mergeLora(): void {
    const l = this.lora;
    if (!l) return;
    noGrad(() =>
      matmulKernel(runtime(), {
        a: l.b.buffer, b: l.a.buffer, c: this.weight.buffer,
        M: this.outFeatures, N: this.inFeatures, K: l.rank, alpha: l.scale, accumulate: true, tag: 'merge',
      }),
    );
  }

  /** Fresh A (Kaiming-uniform) and B = 0, in place; used after a merge (ReLoRA). */
  reinitLora(rng: Rng): void {
    const l = this.lora;
    if (!l) return;
    l.a.write(uniform(l.rank * this.inFeatures, 1 / Math.sqrt(this.inFeatures), rng));
    l.b.write(new Float32Array(this.outFeatures * l.rank));
  }
}
