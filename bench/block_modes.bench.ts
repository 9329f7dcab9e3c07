// One training step of a ViT-S-sized encoder block (width 384, 6 heads, 197 tokens, MLP 4×)
// in three modes, side by side in one process:
//   full    every weight trains (no adapters);
//   joint   base and rank-16 adapters on q, k, v, attention output and MLP output train;
//   frozen  only the adapters train (the PreLoRA phase after the freeze).
// Prints the median step time, the peak device bytes of a step, the bytes of gradients
// and AdamW state held between steps, and the full/frozen ratios.
// Run: npx tsx bench/block_modes.bench.ts [batch]
import { Tape, zeroGrad } from '../engine/autograd.ts';
import { mean } from '../engine/ops/reduce.ts';
import { AdamW } from '../engine/optim.ts';
import { initRuntime } from '../engine/runtime.ts';
import { fromArray, persistent, type Tensor } from '../engine/tensor.ts';
import { Rng } from '../model/init.ts';
import { MODEL_PRESETS } from '../model/presets.ts';
import { EncoderLayer, type TargetModule } from '../model/vit.ts';
import { setTrainable } from '../prelora/phases.ts';
import { formatBytes } from '../prelora/progress.ts';
import { machineLine, timeSteps } from './common.ts';

const B = Number(process.argv[2] ?? 8);
const T = 197;
const cfg = { ...MODEL_PRESETS['vit-s16'] };
const C = cfg.hidden;
const r = await initRuntime({ verbose: false, unsafeNoBoundsChecks: true });
const x = persistent(() => fromArray(Float32Array.from({ length: B * T * C }, (_, i) => Math.sin(i * 0.37)), [B, T, C]));
const TARGETS: TargetModule[] = ['q', 'k', 'v', 'd', 'o'];

type Mode = 'full' | 'joint' | 'frozen';

async function measure(mode: Mode) {
  const layer = new EncoderLayer('vit.encoder.layer.0', cfg, new Rng(1));
  const adapters: Tensor[] = [];
  if (mode !== 'full') {
    for (const m of TARGETS) {
      const a = layer.linear(m).attachLora({ rank: 16, alpha: 16 }, new Rng(2));
      a.b.write(new Float32Array(a.b.size).fill(0.01));
      adapters.push(a.a, a.b);
    }
  }
  const opt = new AdamW([{ params: layer.parameters(), weightDecay: 0.05 }], { maxGradNorm: 1 });
  if (mode === 'frozen') for (const p of layer.parameters()) if (!adapters.includes(p)) setTrainable(p, false, opt);

  const step = () => {
    zeroGrad(opt.params());
    const tape = new Tape();
    tape.backward(mean(layer.forward(x)));
    tape.end();
    opt.step(1e-4);
  };
  const { median } = await timeSteps(r, step, { warmup: 2, group: 2, repeats: 5 });

  const held = r.pool.liveBytes;
  r.pool.resetPeak();
  step();
  await r.sync();
  const peak = r.pool.peakBytes;
  const grads = layer.parameters().reduce((s, p) => s + (p.grad ? r.pool.sizeOf(p.grad.buffer) : 0), 0);
  const state = opt.stateBytes();
  const trainable = layer.parameters().filter((p) => p.requiresGrad).reduce((s, p) => s + p.size, 0);
  r.resetCounters();
  step();
  const dW = r.counters()['matmul:dW'] ?? 0;
  await r.sync();
  opt.dispose();
  for (const p of layer.parameters()) {
    p.grad?.release();
    p.grad = null;
  }
  layer.release();
  void held;
  return { mode, median, peak, grads, state, trainable, dW };
}

const rows = [];
for (const mode of ['full', 'joint', 'frozen'] as Mode[]) rows.push(await measure(mode));

console.log(machineLine(r));
console.log(`ViT-S block: width ${C}, ${cfg.heads} heads, ${T} tokens, MLP ${cfg.mlpDim}, batch ${B}; adapters rank 16 on q, k, v, d, o`);
console.log('| mode | step ms | peak device bytes in a step | gradients held | AdamW state | trainable params | dW GEMMs |');
console.log('|---|---|---|---|---|---|---|');
for (const x of rows) {
  console.log(`| ${x.mode} | ${x.median.toFixed(0)} | ${formatBytes(x.peak)} | ${formatBytes(x.grads)} | ${formatBytes(x.state)} | ${x.trainable.toLocaleString('en-US')} | ${x.dW} |`);
}
const [full, , frozen] = rows;
console.log(`full/frozen step time: ${(full.median / frozen.median).toFixed(2)}×; peak memory: ${(full.peak / frozen.peak).toFixed(2)}×; gradients + AdamW state: ${((full.grads + full.state) / (frozen.grads + frozen.state)).toFixed(1)}×`);
process.exit(0);
