// One training step of the tiny preset (28×28, patch 7, width 64, depth 4, 4 heads, MLP 4×,
// batch 128): forward, backward and AdamW, median over repeated groups of steps.
// Run: npx tsx bench/train_step.bench.ts [--bounds-checks]
import { Tape, zeroGrad } from '../engine/autograd.ts';
import { crossEntropy } from '../engine/ops/loss.ts';
import { AdamW } from '../engine/optim.ts';
import { initRuntime } from '../engine/runtime.ts';
import { fromArray, persistent } from '../engine/tensor.ts';
import { MODEL_PRESETS } from '../model/presets.ts';
import { ViT } from '../model/vit.ts';
import { machineLine, timeSteps } from './common.ts';

const boundsChecks = process.argv.includes('--bounds-checks');
const r = await initRuntime({ verbose: false, unsafeNoBoundsChecks: !boundsChecks });
const B = 128;
const model = new ViT(MODEL_PRESETS.tiny, 0);
const images = persistent(() => fromArray(Float32Array.from({ length: B * 784 }, (_, i) => Math.sin(i)), [B, 1, 28, 28]));
const labels = persistent(() => fromArray(Array.from({ length: B }, (_, i) => i % 10), [B], { dtype: 'i32' }));
const opt = new AdamW([{ params: model.parameters(), weightDecay: 0.05 }], { maxGradNorm: 1 });

function step(): void {
  zeroGrad(opt.params());
  const tape = new Tape();
  tape.backward(crossEntropy(model.forward(images), labels, { labelSmoothing: 0.1 }));
  tape.end();
  opt.step(1e-3);
}

const { median, all } = await timeSteps(r, step, { warmup: 3, group: 4, repeats: 5 });
console.log(machineLine(r));
console.log(`tiny ViT train step (batch ${B}): median ${median.toFixed(1)} ms (${all.map((x) => x.toFixed(0)).join(', ')}), ${(B / (median / 1000)).toFixed(0)} images/s`);

r.resetCounters();
step();
await r.sync();
const c = r.counters();
const total = Object.entries(c).filter(([k]) => !k.includes(':')).reduce((s, [, v]) => s + v, 0);
console.log(`dispatches per step: ${total} (${Object.entries(c).filter(([k]) => !k.includes(':')).map(([k, v]) => `${k} ${v}`).join(', ')})`);
process.exit(0);
