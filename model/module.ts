// Modules own named parameters. A parameter is a persistent Tensor whose name is its full
// Hugging Face ViT path (e.g. "vit.encoder.layer.0.attention.attention.query.weight"), so
// checkpoints and exports use those names directly.
import { fromArray, persistent, type Tensor } from '../engine/tensor.ts';

export abstract class Module {
  /** Direct parameters and child modules; namedParameters() walks both. */
  abstract parameters(): Tensor[];

  /** Returns every parameter with its name, in a stable order. */
  namedParameters(): Array<[string, Tensor]> {
    return this.parameters().map((p) => [p.name!, p]);
  }

  /** Releases every parameter's storage and gradient. */
  release(): void {
    for (const p of this.parameters()) {
      p.grad?.release();
      p.grad = null;
      p.release();
    }
  }
}

/** Creates a trainable leaf tensor that no scope owns. */
export function parameter(name: string, data: Float32Array, shape: readonly number[]): Tensor {
  const t = persistent(() => fromArray(data, shape, { requiresGrad: true }));
  t.name = name;
  return t;
}
