// One training step of a ViT-S-sized encoder block (width 384, 6 heads, 197 tokens, MLP 4×)
// in three modes, side by side in one process:
//   full    every weight trains (no adapters);
//   joint   base and rank-16 adapters on q, k, v, attention output and MLP output train;
//   frozen  only the adapters train (the PreLoRA phase after the freeze).
// Prints per mode the median step time and device CPU time, the peak device bytes of a
// step, the bytes of gradients and AdamW state held between steps, and the full/frozen
// ratios.
//
// Timed steps take turns (full, joint, frozen, full, ...), so a change in the load of a
// shared machine reaches every mode alike. Device CPU time is the on-CPU time of every
// thread of this process except the main JavaScript thread (on lavapipe, its worker
// threads: the GPU work), read from Linux's /proc/self/task/*/schedstat. It moves far less
// than the wall time when other processes share the cores.
//
// With --profile it then replays every dispatch of one full and one frozen step alone and
// prints the device CPU time per kernel and tag. Replayed buffers hold stale values, which
// changes no kernel's work.
// Run: npx tsx bench/block_modes.bench.ts [batch] [--profile]
import { readFileSync, readdirSync } from 'node:fs';
import { loadavg } from 'node:os';
import { Tape, zeroGrad } from '../engine/autograd.ts';
import { mean } from '../engine/ops/reduce.ts';
import { AdamW } from '../engine/optim.ts';
import { initRuntime } from '../engine/runtime.ts';
import type { DispatchSpec } from '../kernels/runner.ts';
import { fromArray, persistent, type Tensor } from '../engine/tensor.ts';
import { Rng } from '../model/init.ts';
import { MODEL_PRESETS } from '../model/presets.ts';
import { EncoderLayer, type TargetModule } from '../model/vit.ts';
import { setTrainable } from '../prelora/phases.ts';
import { formatBytes } from '../prelora/progress.ts';
import { machineLine } from './common.ts';

const args = process.argv.slice(2);
const profile = args.includes('--profile');
const B = Number(args.find((a) => !a.startsWith('--')) ?? 8);
const T = 197;
const cfg = { ...MODEL_PRESETS['vit-s16'] };
const C = cfg.hidden;
const r = await initRuntime({ verbose: false, unsafeNoBoundsChecks: true });
const x = persistent(() => fromArray(Float32Array.from({ length: B * T * C }, (_, i) => Math.sin(i * 0.37)), [B, T, C]));
const TARGETS: TargetModule[] = ['q', 'k', 'v', 'd', 'o'];

type Mode = 'full' | 'joint' | 'frozen';
const MODES: Mode[] = ['full', 'joint', 'frozen'];

/** Timed steps per mode; each mode's steps are spread over as many rounds. */
const ROUNDS = 7;

/** Milliseconds on a CPU of every thread but the main one, or NaN where schedstat is missing (not Linux). */
function deviceCpuMs(): number {
  let ns = 0;
  try {
    for (const tid of readdirSync('/proc/self/task')) {
      if (Number(tid) === process.pid) continue;
      try {
        ns += Number(readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
      } catch {
        // The thread ended between the listing and the read; its time is lost either way.
      }
    }
  } catch {
    return NaN;
  }
  return ns / 1e6;
}

const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

interface Block {
  mode: Mode;
  layer: EncoderLayer;
  opt: AdamW;
  step: () => void;
}

function buildBlock(mode: Mode): Block {
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
  return { mode, layer, opt, step };
}

function releaseBlock(block: Block): void {
  block.opt.dispose();
  for (const p of block.layer.parameters()) {
    p.grad?.release();
    p.grad = null;
  }
  block.layer.release();
}

/** Peak device bytes of one step, bytes held between steps, and the dW GEMMs of a step; one mode alone on the device. */
async function measureMemory(mode: Mode) {
  const block = buildBlock(mode);
  const { layer, opt, step } = block;
  step();
  await r.sync();

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
  releaseBlock(block);
  return { peak, grads, state, trainable, dW };
}

/**
 * Wall and device CPU milliseconds of single steps, the modes taking turns. The host
 * sleeps through most of a step before it awaits the queue: while a WebGPU promise is
 * pending, Dawn's Node bindings poll and take a core from a software GPU.
 */
async function timeInterleaved(blocks: Block[]): Promise<Map<Mode, { wall: number[]; cpu: number[] }>> {
  const times = new Map(blocks.map((b) => [b.mode, { wall: [] as number[], cpu: [] as number[] }]));
  for (const b of blocks) b.step();
  for (const b of blocks) b.step();
  await r.sync();

  for (let round = 0; round < ROUNDS; round++) {
    for (const b of blocks) {
      const t = times.get(b.mode)!;
      const estimate = t.wall.length > 0 ? median(t.wall) : 0;
      const t0 = performance.now();
      const cpu0 = deviceCpuMs();
      b.step();
      r.submit();
      await sleep(0.85 * estimate);
      await r.sync();
      t.wall.push(performance.now() - t0);
      t.cpu.push(deviceCpuMs() - cpu0);
    }
  }
  return times;
}

/** Replays each dispatch of one step alone; returns device CPU ms per kernel (and tag), largest first. */
async function profileStep(mode: Mode): Promise<Array<[string, number]>> {
  const REPLAYS = 3;
  const block = buildBlock(mode);
  block.step();
  block.step();
  await r.sync();

  const recorded: DispatchSpec[] = [];
  const dispatch = r.dispatch.bind(r);
  r.dispatch = (spec: DispatchSpec) => {
    recorded.push(spec);
    dispatch(spec);
  };
  block.step();
  await r.sync();
  r.dispatch = dispatch;

  const perKernel = new Map<string, number>();
  for (const spec of recorded) {
    const samples: number[] = [];
    for (let i = 0; i < REPLAYS; i++) {
      const cpu0 = deviceCpuMs();
      r.dispatch(spec);
      await r.sync();
      samples.push(deviceCpuMs() - cpu0);
    }
    const key = spec.tag ? `${spec.kernel}:${spec.tag}` : spec.kernel;
    perKernel.set(key, (perKernel.get(key) ?? 0) + median(samples));
  }
  releaseBlock(block);
  return [...perKernel].sort((a, b) => b[1] - a[1]);
}

const loadBefore = loadavg()[0];
const memory = new Map<Mode, Awaited<ReturnType<typeof measureMemory>>>();
for (const mode of MODES) memory.set(mode, await measureMemory(mode));
const blocks = MODES.map(buildBlock);
const times = await timeInterleaved(blocks);
blocks.forEach(releaseBlock);

const rows = MODES.map((mode) => ({
  mode,
  wall: median(times.get(mode)!.wall),
  cpu: median(times.get(mode)!.cpu),
  ...memory.get(mode)!,
}));

console.log(machineLine(r));
console.log(`ViT-S block: width ${C}, ${cfg.heads} heads, ${T} tokens, MLP ${cfg.mlpDim}, batch ${B}; adapters rank 16 on q, k, v, d, o`);
console.log(`${ROUNDS} timed steps per mode, taking turns; load average ${loadBefore.toFixed(2)} at start, ${loadavg()[0].toFixed(2)} at end`);
console.log('| mode | step ms | device CPU ms per step | peak device bytes in a step | gradients held | AdamW state | trainable params | dW GEMMs |');
console.log('|---|---|---|---|---|---|---|---|');
for (const row of rows) {
  console.log(`| ${row.mode} | ${row.wall.toFixed(0)} | ${row.cpu.toFixed(0)} | ${formatBytes(row.peak)} | ${formatBytes(row.grads)} | ${formatBytes(row.state)} | ${row.trainable.toLocaleString('en-US')} | ${row.dW} |`);
}
const [full, , frozen] = rows;
console.log(`full/frozen step time: ${(full.wall / frozen.wall).toFixed(2)}×; device CPU time: ${(full.cpu / frozen.cpu).toFixed(2)}×; peak memory: ${(full.peak / frozen.peak).toFixed(2)}×; gradients + AdamW state: ${((full.grads + full.state) / (frozen.grads + frozen.state)).toFixed(1)}×`);

if (profile) {
  for (const mode of ['full', 'frozen'] as Mode[]) {
    const kernels = await profileStep(mode);
    const total = kernels.reduce((s, [, ms]) => s + ms, 0);
    console.log(`\n${mode} step, each dispatch replayed alone: ${total.toFixed(0)} device CPU ms`);
    console.log('| kernel | device CPU ms | share |');
    console.log('|---|---:|---:|');
    for (const [kernel, ms] of kernels) {
      if (ms < 0.002 * total) continue;
      console.log(`| ${kernel} | ${ms.toFixed(1)} | ${((100 * ms) / total).toFixed(1)}% |`);
    }
  }
}
process.exit(0);
