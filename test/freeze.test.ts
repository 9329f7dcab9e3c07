// The defining property of the product, counted exactly: with the base frozen, a training
// step dispatches no weight-gradient GEMM and no AdamW update for base weights, and their
// gradient and optimizer buffers go back to the pool.
import { beforeAll, describe, expect, it } from 'vitest';
import { Tape, zeroGrad } from '../engine/autograd.ts';
import { crossEntropy } from '../engine/ops/loss.ts';
import { AdamW } from '../engine/optim.ts';
import type { Runtime } from '../engine/runtime.ts';
import { fromArray, persistent, type Tensor } from '../engine/tensor.ts';
import { Rng } from '../model/init.ts';
import { MODEL_PRESETS } from '../model/presets.ts';
import { ViT, type TargetModule } from '../model/vit.ts';
import { setTrainable } from '../prelora/phases.ts';
import { gpu } from './helpers/gpu.ts';
import { randomArray } from './helpers/reference.ts';

let r: Runtime;
beforeAll(async () => {
  r = await gpu();
});

const TARGETS: TargetModule[] = ['q', 'k', 'v', 'd', 'o'];
const cfg = { ...MODEL_PRESETS.tiny, layers: 1 };
const B = 4;

function setup() {
  const model = new ViT(cfg, 1);
  const images = persistent(() => fromArray(randomArray(B * 28 * 28, 3), [B, 1, 28, 28]));
  const labels = persistent(() => fromArray([1, 2, 3, 4], [B], { dtype: 'i32' }));
  const optimizer = new AdamW([{ params: model.parameters(), weightDecay: 0.01 }]);
  return { model, images, labels, optimizer };
}

function step(model: ViT, optimizer: AdamW, images: Tensor, labels: Tensor): void {
  zeroGrad(optimizer.params());
  const tape = new Tape();
  const loss = crossEntropy(model.forward(images), labels);
  tape.backward(loss);
  tape.end();
  optimizer.step(1e-3);
}

function attachAdapters(model: ViT, optimizer: AdamW): Tensor[] {
  const added = TARGETS.flatMap((m) => model.targets(m).map((lin, l) => lin.attachLora({ rank: 4 + l, alpha: 8 }, new Rng(l))))
    .flatMap((a) => [a.a, a.b]);
  optimizer.addParams({ weightDecay: 0 }, added);
  return added;
}

function freezeBase(model: ViT, optimizer: AdamW, adapters: Tensor[]): void {
  const keep = new Set(adapters);
  for (const p of model.parameters()) if (!keep.has(p)) setTrainable(p, false, optimizer);
}

describe('frozen step', () => {
  it('full step does one dW GEMM per linear layer', async () => {
    const { model, images, labels, optimizer } = setup();
    step(model, optimizer, images, labels); // warm: state allocated
    r.resetCounters();
    step(model, optimizer, images, labels);
    const c = r.counters();
    // patch embedding, q, k, v, attention output, intermediate, output, classifier
    expect(c['matmul:dW']).toBe(8);
    expect(c['adamw']).toBe(model.parameters().length);
    model.release();
  });

  it('frozen base: zero dW GEMMs and zero AdamW dispatches for base weights', async () => {
    const { model, images, labels, optimizer } = setup();
    const adapters = attachAdapters(model, optimizer);
    freezeBase(model, optimizer, adapters);
    step(model, optimizer, images, labels);
    r.resetCounters();
    step(model, optimizer, images, labels);
    const c = r.counters();
    expect(c['matmul:dW'] ?? 0).toBe(0);
    expect(c['colsum:db'] ?? 0).toBe(0);
    expect(c['matmul:dA']).toBe(TARGETS.length);
    expect(c['matmul:dB']).toBe(TARGETS.length);
    expect(c['adamw']).toBe(adapters.length);
    for (const p of model.parameters()) {
      if (adapters.includes(p)) continue;
      expect(p.grad, `${p.name} keeps no gradient`).toBeNull();
      expect(optimizer.hasState(p), `${p.name} keeps no AdamW state`).toBe(false);
    }
    model.release();
  });

  it('frozen base weights do not change', async () => {
    const { model, images, labels, optimizer } = setup();
    const adapters = attachAdapters(model, optimizer);
    freezeBase(model, optimizer, adapters);
    const before = await model.layers[0].query.weight.toArray();
    step(model, optimizer, images, labels);
    step(model, optimizer, images, labels);
    expect(await model.layers[0].query.weight.toArray()).toEqual(before);
    expect(await adapters[1].toArray()).not.toEqual(new Float32Array(adapters[1].size));
    model.release();
  });
});

describe('frozen memory', () => {
  it('freeze releases gradients and state; unfreeze re-allocates them', async () => {
    const { model, images, labels, optimizer } = setup();
    const adapters = attachAdapters(model, optimizer);
    step(model, optimizer, images, labels);
    await r.sync();
    const liveJoint = r.pool.liveBytes;
    const stateJoint = optimizer.stateBytes();

    const base = model.parameters().filter((p) => !adapters.includes(p));
    // Each trained parameter has a gradient and two AdamW moments, each one pool bucket.
    const perParam = (p: Tensor) => r.pool.sizeOf(p.buffer);
    const baseGradAndState = base.reduce((s, p) => s + 3 * perParam(p), 0);
    const adapterState = adapters.reduce((s, p) => s + 2 * perParam(p), 0);
    expect(stateJoint).toBe(adapterState + base.reduce((s, p) => s + 2 * perParam(p), 0));

    freezeBase(model, optimizer, adapters);
    expect(optimizer.stateBytes()).toBe(adapterState);
    expect(liveJoint - r.pool.liveBytes).toBe(baseGradAndState);

    step(model, optimizer, images, labels);
    await r.sync();
    expect(r.pool.liveBytes).toBe(liveJoint - baseGradAndState);

    for (const p of base) setTrainable(p, true, optimizer);
    step(model, optimizer, images, labels);
    await r.sync();
    expect(optimizer.stateBytes()).toBe(stateJoint);
    expect(r.pool.liveBytes).toBe(liveJoint);
    model.release();
  });
});
