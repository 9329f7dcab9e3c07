// Per-layer Frobenius norms of the target weights, computed on the device and read back
// in one batch. With an adapter attached, the norm is of the effective weight W + s·B·A,
// the matrix the layer actually applies.
import { noGrad } from '../engine/autograd.ts';
import { frobeniusNorms } from '../engine/ops/norm.ts';
import { runtime } from '../engine/runtime.ts';
import { Scope, empty, type Tensor } from '../engine/tensor.ts';
import { matmul as matmulKernel } from '../kernels/matmul.ts';
import type { Linear } from '../model/linear.ts';
import type { TargetModule, ViT } from '../model/vit.ts';

/** Per module, per layer (index = layer) norms. */
export type LayerNorms = Partial<Record<TargetModule, number[]>>;

export async function targetNorms(model: ViT, modules: readonly TargetModule[]): Promise<LayerNorms> {
  const scope = new Scope();
  try {
    const layers = modules.map((m) => model.targets(m));
    const tensors = noGrad(() => layers.flat().map(effectiveWeight));
    const flat = await frobeniusNorms(tensors);

    const out: LayerNorms = {};
    let i = 0;
    modules.forEach((m, j) => {
      out[m] = layers[j].map(() => flat[i++]);
    });
    return out;
  } finally {
    scope.end();
  }
}

/** W, or a temporary W + s·B·A when an adapter is attached. */
function effectiveWeight(lin: Linear): Tensor {
  const l = lin.lora;
  if (!l) return lin.weight;
  const r = runtime();
  const w = empty(lin.weight.shape);
  r.copy(lin.weight.buffer, 0, w.buffer, 0, lin.weight.bytes);
  matmulKernel(r, { a: l.b.buffer, b: l.a.buffer, c: w.buffer, M: lin.outFeatures, N: lin.inFeatures, K: l.rank, alpha: l.scale, accumulate: true, tag: 'norm' });
  return w;
}

/** Mean over layers of each module's norms. */
export function moduleMeans(norms: LayerNorms): Partial<Record<TargetModule, number>> {
  const out: Partial<Record<TargetModule, number>> = {};
  for (const [m, v] of Object.entries(norms) as Array<[TargetModule, number[]]>) {
    out[m] = v.reduce((a, b) => a + b, 0) / v.length;
  }
  return out;
}
