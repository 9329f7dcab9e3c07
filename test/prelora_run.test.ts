// PreLoRA end to end on a small run whose thresholds force the switch at a known epoch:
// the phases come in order, the ranks take effect, the frozen base stays bit-identical
// and costs no weight-gradient work, resume mid-phase continues identically, and the
// exports give the same logits as the trained model.
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { noGrad } from '../engine/autograd.ts';
import type { Runtime } from '../engine/runtime.ts';
import { Scope, fromArray } from '../engine/tensor.ts';
import { readSafetensors } from '../model/safetensors.ts';
import { Rng } from '../model/init.ts';
import { ViT } from '../model/vit.ts';
import { exportRun } from '../cli/export.ts';
import { readMetrics } from '../prelora/metrics.ts';
import type { Trainer } from '../prelora/trainer.ts';
import { gpu } from './helpers/gpu.ts';
import { maxAbsDiff, randomArray } from './helpers/reference.ts';
import { maxDiff, smallConfig, smallTrainer, snapshot, tempRunDir } from './helpers/run.ts';
import { readFileSync } from 'node:fs';

let r: Runtime;
beforeAll(async () => {
  r = await gpu();
});

// k = 2 windows of 1 epoch and thresholds nothing can exceed: the test passes at the end
// of epoch 2, the warmup runs epoch 3, and the base is frozen from epoch 4 on.
const forced = {
  train: { epochs: 5 },
  prelora: { enabled: true, windows: 2, windowSize: 1, tau: 1e9, zeta: 1e9, rMin: 2, rMax: 8, warmupEpochs: 1, loraAlpha: 4 },
};

function baseParams(t: Trainer) {
  const adapters = new Set(t.model.parameters().filter((p) => p.name!.includes('.lora_')));
  return t.model.parameters().filter((p) => !adapters.has(p));
}

describe('prelora run', () => {
  it('phases, ranks, frozen base and trainable count', async () => {
    const dir = tempRunDir('phases');
    const { trainer, progress } = await smallTrainer(smallConfig(dir, { ...forced, run: { maxSteps: 16 } }));
    await trainer.run();
    const frozenBefore = await snapshot(trainer);

    // Epoch 5 alone, counting dispatches.
    trainer.cfg.run.maxSteps = 0;
    r.resetCounters();
    await trainer.run();
    const c = r.counters();
    expect(c['matmul:dW'] ?? 0).toBe(0);
    expect(c['colsum:db'] ?? 0).toBe(0);

    const m = readMetrics(join(dir, 'metrics.jsonl'));
    expect(m.map((e) => e.phase)).toEqual(['full', 'full', 'warmup', 'lora', 'lora']);
    expect(m[1].transition?.to).toBe('warmup');
    expect(m[2].transition?.to).toBe('lora');
    expect(progress.lines.some((l) => l.includes('full → warmup at epoch 2'))).toBe(true);

    // Every adapter has exactly the rank the map gives its layer.
    const ranks = trainer.phases.rankMap!;
    let adapterParams = 0;
    for (const mod of trainer.phases.targets) {
      trainer.model.targets(mod).forEach((lin, l) => {
        expect(lin.lora, `${lin.path} has an adapter`).not.toBeNull();
        expect(lin.lora!.a.shape).toEqual([ranks[mod]![l], lin.inFeatures]);
        expect(lin.lora!.b.shape).toEqual([lin.outFeatures, ranks[mod]![l]]);
        adapterParams += ranks[mod]![l] * (lin.inFeatures + lin.outFeatures);
      });
    }
    expect(m[4].trainableParams).toBe(adapterParams);
    expect(m[4].ranks).toEqual(ranks);

    // The base is bit-identical across the frozen epoch; the adapters moved.
    const after = await snapshot(trainer);
    for (const p of baseParams(trainer)) expect(after.get(p.name!), p.name).toEqual(frozenBefore.get(p.name!));
    const someB = trainer.model.layers[0].query.lora!.b.name!;
    expect(after.get(someB)).not.toEqual(frozenBefore.get(someB));
  });

  it('resume in the middle of warmup continues identically', async () => {
    const straightDir = tempRunDir('warm-straight');
    const { trainer: straight } = await smallTrainer(smallConfig(straightDir, forced));
    await straight.run();

    const dir = tempRunDir('warm-resume');
    const { trainer: first } = await smallTrainer(smallConfig(dir, { ...forced, run: { maxSteps: 10 } }));
    await first.run();
    expect(first.phases.phase).toBe('warmup');
    const { trainer: second } = await smallTrainer(smallConfig(dir, forced));
    await second.resume();
    expect(second.phases.phase).toBe('warmup');
    await second.run();

    expect(maxDiff(await snapshot(second), await snapshot(straight))).toBe(0);
    expect(readMetrics(join(dir, 'metrics.jsonl')).map((e) => e.phase)).toEqual(['full', 'full', 'warmup', 'lora', 'lora']);
  });

  it('resume in the middle of relora continues identically', async () => {
    const relora = {
      train: { epochs: 4 },
      prelora: { enabled: true, windows: 2, windowSize: 1, tau: 0, zeta: 0, relora: { enabled: true, fullEpochs: 1, rank: 4, resetEvery: 3, restartWarmup: 2 } },
    };
    const { trainer: straight } = await smallTrainer(smallConfig(tempRunDir('relora-straight'), relora));
    await straight.run();
    expect(straight.phases.reloraResets).toBeGreaterThan(0);

    const dir = tempRunDir('relora-resume');
    const { trainer: first } = await smallTrainer(smallConfig(dir, { ...relora, run: { maxSteps: 10 } }));
    await first.run();
    expect(first.phases.phase).toBe('relora');
    const { trainer: second } = await smallTrainer(smallConfig(dir, relora));
    await second.resume();
    await second.run();
    expect(second.phases.reloraResets).toBe(straight.phases.reloraResets);
    expect(maxDiff(await snapshot(second), await snapshot(straight))).toBe(0);
  });

  it('exports give the same logits as the trained model', async () => {
    const dir = tempRunDir('export');
    const { trainer } = await smallTrainer(smallConfig(dir, forced));
    await trainer.run();
    const out = await exportRun(dir, join(dir, 'export'));

    const images = randomArray(3 * 28 * 28, 5);
    const scope = new Scope();
    const x = fromArray(images, [3, 1, 28, 28]);
    const trained = await noGrad(() => trainer.model.forward(x)).toArray();

    // The merged model, loaded into a model without adapters.
    const merged = new ViT(trainer.model.cfg, 0);
    const file = await readSafetensors(out.modelPath);
    for (const p of merged.parameters()) p.write(file.tensors.get(p.name!)!.data as Float32Array);
    const mergedLogits = await noGrad(() => merged.forward(x)).toArray();
    // W + s·B·A summed in another order than the adapter path: f32 rounding only.
    expect(maxAbsDiff(mergedLogits, trained)).toBeLessThan(1e-4);

    // The PEFT adapter: base weights from the checkpoint's base plus adapter files.
    const adapter = await readSafetensors(join(out.adapterDir!, 'adapter_model.safetensors'));
    const config = JSON.parse(readFileSync(join(out.adapterDir!, 'adapter_config.json'), 'utf8'));
    const ckpt = await readSafetensors(join(dir, 'checkpoint.safetensors'));
    const peftModel = new ViT(trainer.model.cfg, 0);
    for (const p of peftModel.parameters()) p.write(ckpt.tensors.get(p.name!)!.data as Float32Array);
    for (const mod of trainer.phases.targets) {
      peftModel.targets(mod).forEach((lin) => {
        const path = lin.path;
        const a = adapter.tensors.get(`base_model.model.${path}.lora_A.weight`)!;
        const b = adapter.tensors.get(`base_model.model.${path}.lora_B.weight`)!;
        const rank = config.rank_pattern[path] ?? config.r;
        expect(a.shape).toEqual([rank, lin.inFeatures]);
        const ad = lin.attachLora({ rank, alpha: config.alpha_pattern[path] ?? config.lora_alpha }, new Rng(0));
        ad.a.write(a.data as Float32Array);
        ad.b.write(b.data as Float32Array);
      });
    }
    const peftLogits = await noGrad(() => peftModel.forward(x)).toArray();
    expect(maxAbsDiff(peftLogits, trained)).toBeLessThan(1e-5);
    scope.end();
    merged.release();
    peftModel.release();
  });
});
