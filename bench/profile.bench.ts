// Where a training step's time goes, per kernel: records every dispatch of one tiny-ViT
// step (batch 128, as bench/train_step.bench.ts), then replays each one alone, several
// times, and sums the time per kernel name and tag. Replayed buffers hold stale values,
// which changes no kernel's work. Run: npx tsx bench/profile.bench.ts [batch] [preset]
import { Tape, zeroGrad } from '../engine/autograd.ts';
import { crossEntropy } from '../engine/ops/loss.ts';
import { AdamW } from '../engine/optim.ts';
import { initRuntime } from '../engine/runtime.ts';
import { fromArray, persistent } from '../engine/tensor.ts';
import type { DispatchSpec } from '../kernels/runner.ts';
import { MODEL_PRESETS, type ModelPreset } from '../model/presets.ts';
import { ViT } from '../model/vit.ts';
import { machineLine } from './common.ts';

const B = Number(process.argv[2] ?? 128);
const preset = (process.argv[3] ?? 'tiny') as ModelPreset;
const r = await initRuntime({ verbose: false, unsafeNoBoundsChecks: true });
const cfg = MODEL_PRESETS[preset];
const model = new ViT(cfg, 0);
const S = cfg.imageSize;
const images = persistent(() => fromArray(Float32Array.from({ length: B * cfg.channels * S * S }, (_, i) => Math.sin(i)), [B, cfg.channels, S, S]));
const labels = persistent(() => fromArray(Array.from({ length: B }, (_, i) => i % 10), [B], { dtype: 'i32' }));
const opt = new AdamW([{ params: model.parameters(), weightDecay: 0.05 }], { maxGradNorm: 1 });

function step(): void {
  zeroGrad(opt.params());
  const tape = new Tape();
  tape.backward(crossEntropy(model.forward(images), labels));
  tape.end();
  opt.step(1e-3);
}

step();
step();
await r.sync();

const recorded: DispatchSpec[] = [];
const original = r.dispatch.bind(r);
r.dispatch = (spec: DispatchSpec) => {
  recorded.push(spec);
  original(spec);
};
step();
await r.sync();
r.dispatch = original;

const REPS = 3;
const perKernel = new Map<string, { ms: number; count: number }>();
let total = 0;
for (const spec of recorded) {
  const t0 = performance.now();
  for (let i = 0; i < REPS; i++) r.dispatch(spec);
  await r.sync();
  const ms = (performance.now() - t0) / REPS;
  const key = spec.tag ? `${spec.kernel}:${spec.tag}` : spec.kernel;
  const e = perKernel.get(key) ?? { ms: 0, count: 0 };
  e.ms += ms;
  e.count++;
  perKernel.set(key, e);
  total += ms;
}

console.log(machineLine(r));
console.log(`${preset} step, batch ${B}: ${recorded.length} dispatches, ${total.toFixed(1)} ms replayed one by one`);
for (const [k, e] of [...perKernel].sort((a, b) => b[1].ms - a[1].ms)) {
  console.log(`${k.padEnd(28)} ${e.ms.toFixed(1).padStart(8)} ms ${((100 * e.ms) / total).toFixed(1).padStart(5)}%  ×${e.count}`);
}
process.exit(0);
