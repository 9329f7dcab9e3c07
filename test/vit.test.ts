// The ViT forward pass against the float64 reference, with the model's own initial weights.
import { beforeAll, describe, expect, it } from 'vitest';
import { noGrad } from '../engine/autograd.ts';
import { Scope, fromArray } from '../engine/tensor.ts';
import { MODEL_PRESETS, parameterCount } from '../model/presets.ts';
import { ViT, type VitConfig } from '../model/vit.ts';
import { gpu } from './helpers/gpu.ts';
import { maxAbs, maxAbsDiff, randomArray } from './helpers/reference.ts';
import { refVitForward, type Weights } from './helpers/vit_reference.ts';

beforeAll(async () => {
  await gpu();
});

async function weightsOf(model: ViT): Promise<Weights> {
  const w: Weights = new Map();
  for (const [name, p] of model.namedParameters()) w.set(name, Float64Array.from(await p.toArray()));
  return w;
}

describe('vit', () => {
  const cases: Array<[string, VitConfig]> = [
    ['tiny preset, 2 layers', { ...MODEL_PRESETS.tiny, layers: 2 }],
    ['3 channels, 17 tokens, 3 heads', { ...MODEL_PRESETS.tiny, channels: 3, imageSize: 16, patchSize: 4, hidden: 48, heads: 3, mlpDim: 72, layers: 1, numClasses: 7 }],
  ];
  for (const [name, cfg] of cases) {
    it(`forward matches reference: ${name}`, async () => {
      const model = new ViT(cfg, 7);
      // Larger weights than the 0.02 init so attention is not uniform and every path matters.
      for (const p of model.parameters()) if (p.shape.length >= 2) p.write(randomArray(p.size, p.size, 0.3));
      const B = 3;
      const images = randomArray(B * cfg.channels * cfg.imageSize ** 2, 99, 1);
      const scope = new Scope();
      const x = fromArray(images, [B, cfg.channels, cfg.imageSize, cfg.imageSize]);
      const logits = await noGrad(() => model.forward(x)).toArray();
      scope.end();

      const ref = refVitForward(cfg, await weightsOf(model), Float64Array.from(images), B);
      // f32 through a few layers of GEMMs (K ≤ 256), LayerNorms and softmax: relative
      // error of a few 1e-6 per op compounds to about 1e-4 of the logits' scale.
      expect(logits.length).toBe(ref.length);
      expect(maxAbsDiff(logits, ref)).toBeLessThan(1e-3 * Math.max(1, maxAbs(ref)));
      model.release();
    });
  }

  it('parameter count matches the formula', () => {
    const cfg = { ...MODEL_PRESETS.tiny };
    const model = new ViT(cfg, 0);
    const n = model.parameters().reduce((s, p) => s + p.size, 0);
    expect(n).toBe(parameterCount(cfg));
    model.release();
  });

  it('parameter names follow HF ViT', () => {
    const model = new ViT({ ...MODEL_PRESETS.tiny, layers: 1 }, 0);
    const names = model.namedParameters().map(([n]) => n);
    for (const n of [
      'vit.embeddings.cls_token',
      'vit.embeddings.position_embeddings',
      'vit.embeddings.patch_embeddings.projection.weight',
      'vit.encoder.layer.0.attention.attention.query.weight',
      'vit.encoder.layer.0.attention.output.dense.bias',
      'vit.encoder.layer.0.intermediate.dense.weight',
      'vit.encoder.layer.0.output.dense.weight',
      'vit.encoder.layer.0.layernorm_before.weight',
      'vit.encoder.layer.0.layernorm_after.bias',
      'vit.layernorm.weight',
      'classifier.weight',
    ]) {
      expect(names).toContain(n);
    }
    model.release();
  });

  it('invalid config names the field', () => {
    expect(() => new ViT({ ...MODEL_PRESETS.tiny, hidden: 30, heads: 4 }, 0)).toThrow(/hidden = 30/);
    expect(() => new ViT({ ...MODEL_PRESETS.tiny, imageSize: 30 }, 0)).toThrow(/imageSize = 30/);
  });
});

describe('vit gradients', () => {
  it('every parameter gradient matches finite differences', async () => {
    const { Tape, zeroGrad } = await import('../engine/autograd.ts');
    const { crossEntropy } = await import('../engine/ops/loss.ts');
    const cfg: VitConfig = { ...MODEL_PRESETS.tiny, imageSize: 8, patchSize: 4, channels: 2, hidden: 32, heads: 2, mlpDim: 24, layers: 2, numClasses: 3 };
    const model = new ViT(cfg, 3);
    for (const p of model.parameters()) p.write(randomArray(p.size, p.size + 11, p.shape.length >= 2 ? 0.4 : 0.2));
    const B = 2;
    const images = randomArray(B * 2 * 64, 5, 1);
    const labels = [2, 0];

    const scope = new Scope();
    const x = fromArray(images, [B, 2, 8, 8]);
    const y = fromArray(labels, [B], { dtype: 'i32' });
    zeroGrad(model.parameters());
    const tape = new Tape();
    tape.backward(crossEntropy(model.forward(x), y));
    tape.end();
    scope.end();

    // Reference loss: mean cross-entropy of the float64 forward.
    const weights = await weightsOf(model);
    const img64 = Float64Array.from(images);
    const lossOf = (w: Weights) => {
      const logits = refVitForward(cfg, w, img64, B);
      let s = 0;
      for (let b = 0; b < B; b++) {
        const row = Array.from(logits.slice(b * 3, b * 3 + 3));
        const m = Math.max(...row);
        s += Math.log(row.reduce((a, v) => a + Math.exp(v - m), 0)) + m - row[labels[b]];
      }
      return s / B;
    };

    // Central differences on up to 12 entries of every parameter (step 1e-5 in float64).
    for (const [name, p] of model.namedParameters()) {
      const g = await p.grad!.toArray();
      const w = weights.get(name)!;
      const idx = Array.from({ length: Math.min(12, p.size) }, (_, i) => Math.floor((i * p.size) / Math.min(12, p.size)));
      let worst = 0;
      let scale = 0;
      for (const i of idx) {
        const keep = w[i];
        w[i] = keep + 1e-5;
        const up = lossOf(weights);
        w[i] = keep - 1e-5;
        const down = lossOf(weights);
        w[i] = keep;
        const ref = (up - down) / 2e-5;
        worst = Math.max(worst, Math.abs(ref - g[i]));
        scale = Math.max(scale, Math.abs(ref));
      }
      // f32 forward and backward through two layers: a few 1e-3 of the largest gradient.
      expect(worst, `${name}: max |g - g_ref| (max |g_ref| ${scale.toExponential(2)})`).toBeLessThan(1e-5 + 5e-3 * scale);
    }
    model.release();
  });
});
