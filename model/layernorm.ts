// LayerNorm module (HF naming: `<path>.weight`, `<path>.bias`), weight 1 and bias 0 at init.
import { layerNorm } from '../engine/ops/layernorm.ts';
import type { Tensor } from '../engine/tensor.ts';
import { Module, parameter } from './module.ts';

export class LayerNorm extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor;

  constructor(readonly path: string, readonly dim: number, readonly eps: number) {
    super();
    this.weight = parameter(`${path}.weight`, new Float32Array(dim).fill(1), [dim]);
    this.bias = parameter(`${path}.bias`, new Float32Array(dim), [dim]);
  }

  /** x [..., C] → same shape, normalised over C. */
  forward(x: Tensor): Tensor {
    return layerNorm(x, this.weight, this.bias, this.eps);
  }

  override parameters(): Tensor[] {
    return [this.weight, this.bias];
  }
}
