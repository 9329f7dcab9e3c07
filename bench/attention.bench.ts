// Times the fused attention kernels at ViT shapes: forward alone, and forward plus the
// three backward kernels (delta, dK/dV, dQ) with every gradient requested. Kernels are
// dispatched directly, so autodiff bookkeeping and gradient accumulation are not counted.
// Each shape prints the path every kernel takes (direct or tiled) and the rows each
// invocation owns.
//
//   npx tsx bench/attention.bench.ts [--unsafe-no-bounds-checks] [--iterations N]
import { describeAdapter } from '../engine/device.ts';
import { initRuntime, type Runtime } from '../engine/runtime.ts';
import { Scope, empty, fromArray } from '../engine/tensor.ts';
import {
  attentionBackwardDelta,
  attentionBackwardKV,
  attentionBackwardQ,
  attentionForward,
  attentionPath,
  type AttentionDims,
  type AttentionKernel,
} from '../kernels/attention.ts';

const args = process.argv.slice(2);
const unsafeNoBoundsChecks = args.includes('--unsafe-no-bounds-checks');
const iterationsArg = args.indexOf('--iterations');
const iterations = iterationsArg >= 0 ? Number(args[iterationsArg + 1]) : 3;
if (!Number.isInteger(iterations) || iterations < 1) throw new Error(`--iterations must be a positive integer, got ${args[iterationsArg + 1]}`);

const shapes: Array<{ name: string; dims: AttentionDims }> = [
  { name: 'ViT-S/16 at 224²', dims: { B: 8, H: 6, T: 197, D: 64, layout: 'bthd' } },
  { name: 'ViT tiny at 28²', dims: { B: 128, H: 4, T: 17, D: 16, layout: 'bthd' } },
];

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Wall-clock and CPU milliseconds per call of `step`. CPU time covers every thread of the
 * process, lavapipe's included, so on a shared machine it moves less than wall time. The
 * queue gets every iteration at once and the host sleeps for most of the expected time
 * before it waits: a pending WebGPU promise keeps the JS thread polling, which takes a core
 * from lavapipe on a two-core machine.
 */
async function timeSteps(r: Runtime, step: () => void): Promise<{ wallMs: number; cpuMs: number }> {
  step(); // compiles the pipelines
  await r.sync();
  let start = performance.now();
  step();
  await r.sync();
  const estimate = performance.now() - start;

  start = performance.now();
  const cpuStart = process.cpuUsage();
  for (let i = 0; i < iterations; i++) step();
  r.submit();
  await sleep(0.9 * estimate * iterations);
  await r.sync();
  const cpu = process.cpuUsage(cpuStart);
  return {
    wallMs: (performance.now() - start) / iterations,
    cpuMs: (cpu.user + cpu.system) / 1000 / iterations,
  };
}

const r = await initRuntime({ verbose: false, unsafeNoBoundsChecks });
console.log(`adapter: ${describeAdapter(r.adapter)}${unsafeNoBoundsChecks ? ', bounds checks off' : ''}`);
console.log(`iterations: ${iterations} per figure, after one warm-up call`);

for (const { name, dims } of shapes) {
  const { B, H, T, D } = dims;
  const scope = new Scope();
  const n = B * T * H * D;
  const random = () => fromArray(Float32Array.from({ length: n }, () => Math.random() * 2 - 1), [n]);
  const [q, k, v, dout] = [random(), random(), random(), random()];
  const [out, dq, dk, dv] = [empty([n]), empty([n]), empty([n]), empty([n])];
  const [lse, delta] = [empty([B * H * T]), empty([B * H * T])];

  const forward = () => attentionForward(r, dims, { q: q.buffer, k: k.buffer, v: v.buffer, out: out.buffer, lse: lse.buffer });
  const backward = () => {
    attentionBackwardDelta(r, dims, { out: out.buffer, dout: dout.buffer, delta: delta.buffer });
    attentionBackwardKV(r, dims, { q: q.buffer, k: k.buffer, v: v.buffer, dout: dout.buffer, lse: lse.buffer, delta: delta.buffer, dk: dk.buffer, dv: dv.buffer });
    attentionBackwardQ(r, dims, { q: q.buffer, k: k.buffer, v: v.buffer, dout: dout.buffer, lse: lse.buffer, delta: delta.buffer, dq: dq.buffer });
  };

  const forwardTime = await timeSteps(r, forward);
  const stepTime = await timeSteps(r, () => {
    forward();
    backward();
  });

  // Matmul FLOPs by the usual count: forward Q·Kᵀ and P·V, backward 2.5× forward
  // (dV, dP, dQ, dK and the recomputed S). The kernels here recompute S and dP once more.
  const forwardFlops = 4 * B * H * T * T * D;
  const report = (label: string, flops: number, time: { wallMs: number; cpuMs: number }) =>
    `${label} ${time.wallMs.toFixed(1)} ms (${(flops / time.wallMs / 1e6).toFixed(2)} GFLOP/s, CPU ${time.cpuMs.toFixed(1)} ms)`;
  const paths = (['forward', 'dkdv', 'dq'] as AttentionKernel[]).map((kernel) => {
    const { path, rowsPerInvocation } = attentionPath(dims, kernel);
    return `${kernel} ${path}${path === 'direct' ? ` (${rowsPerInvocation} rows per invocation)` : ''}`;
  });
  console.log(`${name}  B=${B} H=${H} T=${T} D=${D}`);
  console.log(`  paths: ${paths.join(', ')}`);
  console.log(`  ${report('forward', forwardFlops, forwardTime)}`);
  console.log(`  ${report('forward+backward', 3.5 * forwardFlops, stepTime)}`);
  scope.end();
}

r.destroy();
