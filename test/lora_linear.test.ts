// The LoRA linear op: gradients for every trainability combination and the dispatches of
// the fused adapter path. Then the layer-level invariants: a fresh adapter and a merge leave
// the output unchanged, and the adapter's initialisation, scale and rank are as configured.
import { beforeAll, describe, expect, it } from 'vitest';
import { Tape, noGrad, record } from '../engine/autograd.ts';
import { linear } from '../engine/ops/linear.ts';
import type { Runtime } from '../engine/runtime.ts';
import { Scope, fromArray } from '../engine/tensor.ts';
import { Rng } from '../model/init.ts';
import { Linear } from '../model/linear.ts';
import { assertGradients } from './helpers/gradcheck.ts';
import { gpu } from './helpers/gpu.ts';
import { maxAbsDiff, randomArray } from './helpers/reference.ts';
import { refGelu, refLinear } from './helpers/vit_reference.ts';

let r: Runtime;
beforeAll(async () => {
  r = await gpu();
});

describe('linear op gradients', () => {
  const N = 7, Cin = 9, Cout = 5, R = 3, s = 0.75;
  const combos: Array<{ name: string; base: boolean; adapter: boolean }> = [
    { name: 'base and adapter', base: true, adapter: true },
    { name: 'frozen base, adapter trains', base: false, adapter: true },
    { name: 'base trains, frozen adapter', base: true, adapter: false },
    { name: 'all frozen, dX only', base: false, adapter: false },
  ];
  for (const c of combos) {
    for (const gelu of [false, true]) {
      it(`${c.name}${gelu ? ', GELU' : ''}`, async () => {
        await assertGradients({
          inputs: [
            { shape: [N, Cin] },
            { shape: [Cout, Cin], scale: 0.5, requiresGrad: c.base },
            { shape: [Cout], requiresGrad: c.base },
            { shape: [R, Cin], scale: 0.5, requiresGrad: c.adapter },
            { shape: [Cout, R], scale: 0.5, requiresGrad: c.adapter },
          ],
          engine: ([x, w, b, a, bb]) => linear(x, w, b, { a, b: bb, scale: s }, { gelu }),
          reference: ([x, w, b, a, bb]) => {
            const y = refLinear(x, N, Cin, w, b, Cout, { a, b: bb, R, s });
            return gelu ? y.map(refGelu) : y;
          },
        });
      });
    }
  }

  // Rank 16 and widths that are multiples of 4 take the vec4 variants of the fused GEMMs,
  // and N = 16 outputs (U, dU, dB) run transposed.
  for (const base of [true, false]) {
    it(`rank 16, ${base ? 'base and adapter' : 'frozen base'}, GELU`, async () => {
      const N = 37, Cin = 20, Cout = 12, R = 16;
      await assertGradients({
        inputs: [
          { shape: [N, Cin] },
          { shape: [Cout, Cin], scale: 0.5, requiresGrad: base },
          { shape: [Cout], requiresGrad: base },
          { shape: [R, Cin], scale: 0.5 },
          { shape: [Cout, R], scale: 0.5 },
        ],
        engine: ([x, w, b, a, bb]) => linear(x, w, b, { a, b: bb, scale: s }, { gelu: true }),
        reference: ([x, w, b, a, bb]) => refLinear(x, N, Cin, w, b, Cout, { a, b: bb, R, s }).map(refGelu),
      });
    });
  }

  it('without adapter, batched input', async () => {
    await assertGradients({
      inputs: [{ shape: [2, 4, 6] }, { shape: [3, 6] }, { shape: [3] }],
      engine: ([x, w, b]) => linear(x, w, b, null),
      reference: ([x, w, b]) => refLinear(x, 8, 6, w, b, 3),
    });
  });
});

describe('linear op dispatches', () => {
  // Forward: U = X·Aᵀ, then X·Wᵀ + s·U·Bᵀ + b as one GEMM. Backward with the base frozen:
  // dU, dX (with dU·A fused in), dA and dB, and neither the dW GEMM nor the bias column sum.
  async function countStep(base: boolean) {
    const scope = new Scope();
    const tape = new Tape();
    try {
      const x = fromArray(randomArray(9 * 8, 1), [9, 8], { requiresGrad: true });
      const w = fromArray(randomArray(6 * 8, 2), [6, 8], { requiresGrad: base });
      const b = fromArray(randomArray(6, 3), [6], { requiresGrad: base });
      const a = fromArray(randomArray(4 * 8, 4), [4, 8], { requiresGrad: true });
      const bb = fromArray(randomArray(6 * 4, 5), [6, 4], { requiresGrad: true });
      r.resetCounters();
      const y = linear(x, w, b, { a, b: bb, scale: 0.5 });
      const forward = r.counters();
      const loss = fromArray([0], [1]);
      // dL/dY = 1 everywhere through a probe node, as the gradient-check harness does.
      record('probe', loss, [y], [], () => [fromArray(new Float32Array(y.size).fill(1), y.shape)]);
      r.resetCounters();
      tape.backward(loss);
      const backward = r.counters();
      for (const t of [x, w, b, a, bb]) t.grad?.release();
      return { forward, backward };
    } finally {
      tape.end();
      scope.end();
    }
  }

  it('forward is two GEMMs', async () => {
    const { forward } = await countStep(false);
    expect(forward.matmul).toBe(2);
  });

  it('frozen base skips dW and db', async () => {
    const { backward } = await countStep(false);
    expect(backward.matmul, 'backward GEMMs: dU, dX, dA, dB').toBe(4);
    expect(backward['matmul:dX'], 'dX GEMMs').toBe(1);
    expect(backward['matmul:dW'] ?? 0, 'dW GEMMs').toBe(0);
    expect(backward['colsum:db'] ?? 0, 'bias column sums').toBe(0);
  });

  it('trainable base adds dW and db', async () => {
    const { backward } = await countStep(true);
    expect(backward.matmul, 'backward GEMMs: dU, dX, dW, dA, dB').toBe(5);
    expect(backward['matmul:dW'], 'dW GEMMs').toBe(1);
    expect(backward['colsum:db'], 'bias column sums').toBe(1);
  });
});

describe('lora layer', () => {
  async function outputOf(layer: Linear, x: Float32Array, N: number): Promise<Float32Array> {
    const scope = new Scope();
    const t = fromArray(x, [N, layer.inFeatures]);
    const y = await noGrad(() => layer.forward(t)).toArray();
    scope.end();
    return y;
  }

  it('fresh adapter leaves output unchanged', async () => {
    const layer = new Linear('l', 33, 17, new Rng(1));
    const x = randomArray(5 * 33, 2);
    const before = await outputOf(layer, x, 5);
    layer.attachLora({ rank: 4, alpha: 8 }, new Rng(3));
    expect(await outputOf(layer, x, 5)).toEqual(before);
    layer.release();
  });

  it('merge then detach leaves output unchanged', async () => {
    const layer = new Linear('l', 33, 17, new Rng(1));
    const adapter = layer.attachLora({ rank: 8, alpha: 16 }, new Rng(3));
    adapter.b.write(randomArray(17 * 8, 4, 0.5));
    const x = randomArray(5 * 33, 2);
    const withAdapter = await outputOf(layer, x, 5);
    layer.mergeLora();
    layer.detachLora();
    const merged = await outputOf(layer, x, 5);
    // Same sum, different association of f32 roundings: |y| ~ 1, K ≤ 33.
    expect(maxAbsDiff(merged, withAdapter)).toBeLessThan(1e-5);
    layer.release();
  });

  it('reinit after merge keeps the output', async () => {
    const layer = new Linear('l', 12, 6, new Rng(1));
    const adapter = layer.attachLora({ rank: 2, alpha: 4 }, new Rng(3));
    adapter.b.write(randomArray(6 * 2, 4, 0.5));
    const x = randomArray(3 * 12, 2);
    const before = await outputOf(layer, x, 3);
    layer.mergeLora();
    layer.reinitLora(new Rng(9));
    expect(maxAbsDiff(await outputOf(layer, x, 3), before)).toBeLessThan(1e-5);
    const bHost = await layer.lora!.b.toArray();
    expect(bHost.every((v) => v === 0)).toBe(true);
    layer.release();
  });

  it('A is Kaiming-uniform within ±1/√Cin and B is zero', async () => {
    const layer = new Linear('l', 64, 8, new Rng(1));
    layer.attachLora({ rank: 16, alpha: 16 }, new Rng(5));
    const a = await layer.lora!.a.toArray();
    const bound = 1 / Math.sqrt(64);
    expect(Math.max(...a.map(Math.abs))).toBeLessThanOrEqual(bound);
    expect(Math.max(...a.map(Math.abs))).toBeGreaterThan(0.9 * bound);
    expect((await layer.lora!.b.toArray()).every((v) => v === 0)).toBe(true);
    expect(layer.lora!.scale).toBe(1);
    layer.release();
  });

  it('rsLoRA scale is alpha over root rank', () => {
    const layer = new Linear('l', 8, 8, new Rng(1));
    layer.attachLora({ rank: 16, alpha: 8, rsLora: true }, new Rng(5));
    expect(layer.lora!.scale).toBe(2);
    layer.release();
  });

  it('invalid rank is rejected', () => {
    const layer = new Linear('l', 8, 8, new Rng(1));
    expect(() => layer.attachLora({ rank: 0, alpha: 8 }, new Rng(5))).toThrow(/invalid rank 0/);
    layer.release();
  });
});
