// A whole ViT training step, full vs frozen base + adapters, side by side in one process.
// Default: ViT-S/16 at 224×224 (12 layers, width 384, 197 tokens), batch 2, adapters of
// rank 16 on q, k, v, attention output and MLP output of every layer.
// Run: npx tsx bench/model_modes.bench.ts [preset] [batch] [rank]
import { Tape, zeroGrad } from '../engine/autograd.ts';
import { crossEntropy } from '../engine/ops/loss.ts';
import { AdamW } from '../engine/optim.ts';
import { initRuntime } from '../engine/runtime.ts';
import { fromArray, persistent, type Tensor } from '../engine/tensor.ts';
import { Rng } from '../model/init.ts';
import { MODEL_PRESETS, type ModelPreset } from '../model/presets.ts';
import { ViT, type TargetModule } from '../model/vit.ts';
import { setTrainable } from '../prelora/phases.ts';
import { formatBytes } from '../prelora/progress.ts';
import { machineLine, timeSteps } from './common.ts';

const preset = (process.argv[2] ?? 'vit-s16') as ModelPreset;
const B = Number(process.argv[3] ?? 2);
const rank = Number(process.argv[4] ?? 16);
const cfg = MODEL_PRESETS[preset];
const S = cfg.imageSize;
const r = await initRuntime({ verbose: false });
const images = persistent(() => fromArray(Float32Array.from({ length: B * cfg.channels * S * S }, (_, i) => Math.sin(i * 0.01)), [B, cfg.channels, S, S]));
const labels = persistent(() => fromArray(Array.from({ length: B }, (_, i) => i % cfg.numClasses), [B], { dtype: 'i32' }));
const TARGETS: TargetModule[] = ['q', 'k', 'v', 'd', 'o'];

async function measure(mode: 'full' | 'frozen') {
  const model = new ViT(cfg, 0);
  const adapters: Tensor[] = [];
  if (mode === 'frozen') {
    for (const m of TARGETS) for (const lin of model.targets(m)) {
      const a = lin.attachLora({ rank, alpha: rank }, new Rng(1));
      adapters.push(a.a, a.b);
    }
  }
  const opt = new AdamW([{ params: model.parameters(), weightDecay: 0.05 }], { maxGradNorm: 1 });
  if (mode === 'frozen') for (const p of model.parameters()) if (!adapters.includes(p)) setTrainable(p, false, opt);
  const step = () => {
    zeroGrad(opt.params());
    const tape = new Tape();
    tape.backward(crossEntropy(model.forward(images), labels));
    tape.end();
    opt.step(1e-4);
  };
  const { median } = await timeSteps(r, step, { warmup: 1, group: 2, repeats: 3 });
  r.pool.resetPeak();
  step();
  await r.sync();
  const peak = r.pool.peakBytes;
  const held = r.pool.liveBytes;
  const trainable = model.parameters().filter((p) => p.requiresGrad).reduce((s, p) => s + p.size, 0);
  opt.dispose();
  model.release();
  return { mode, median, peak, held, trainable };
}

const full = await measure('full');
const frozen = await measure('frozen');
console.log(machineLine(r));
console.log(`${preset} (${S}×${S}), batch ${B}; frozen = base frozen, rank-${rank} adapters on q, k, v, d, o`);
console.log('| mode | step ms | peak device bytes | held between steps | trainable params |');
console.log('|---|---|---|---|---|');
for (const x of [full, frozen]) console.log(`| ${x.mode} | ${x.median.toFixed(0)} | ${formatBytes(x.peak)} | ${formatBytes(x.held)} | ${x.trainable.toLocaleString('en-US')} |`);
console.log(`full/frozen: step time ${(full.median / frozen.median).toFixed(2)}×, peak memory ${(full.peak / frozen.peak).toFixed(2)}×`);
process.exit(0);
