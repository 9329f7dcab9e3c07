// Matmul kernel throughput in GFLOP/s (2·M·N·K per product), with Dawn's robustness
// transform on and off. Two runtimes cannot share a process, so by default this script
// runs itself once per mode in a child process:
//
//   npx tsx bench/matmul.bench.ts                   # both modes
//   npx tsx bench/matmul.bench.ts --robustness off  # one mode, in this process
//
// Method: one tinybench iteration enqueues REPS products into one command buffer, submits,
// sleeps for 85% of the fastest batch seen so far, then awaits the queue. While a WebGPU
// promise is pending, Dawn's Node bindings poll and take a core from a software GPU, so
// the sleep keeps that poll short. "wall" is REPS products per mean iteration time. "cpu"
// divides by half the process CPU time of the fastest iteration instead: an estimate of
// what two device threads reach with both cores to themselves, which stays meaningful
// while other processes share the cores.
import { spawnSync } from 'node:child_process';
import { cpus, loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Bench } from 'tinybench';
import { describeAdapter } from '../engine/device.ts';
import { initRuntime, type Runtime } from '../engine/runtime.ts';
import { matmul } from '../kernels/matmul.ts';

interface Shape {
  name: string;
  M: number;
  N: number;
  K: number;
  transA?: boolean;
  transB?: boolean;
}

const SHAPES: Shape[] = [
  { name: '256² A·B', M: 256, N: 256, K: 256 },
  { name: '512² A·B', M: 512, N: 512, K: 512 },
  { name: '1024² A·B', M: 1024, N: 1024, K: 1024 },
  { name: '1024² Aᵀ·B (dW)', M: 1024, N: 1024, K: 1024, transA: true },
  { name: '1024² A·Bᵀ (X·Wᵀ)', M: 1024, N: 1024, K: 1024, transB: true },
  { name: '8192×256·(768×256)ᵀ', M: 8192, N: 768, K: 256, transB: true },
];
/** Products per tinybench iteration. */
const REPS = 4;
/** Fraction of the expected batch time spent asleep before awaiting the queue. */
const SLEEP_FRACTION = 0.85;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function benchMode(noBoundsChecks: boolean): Promise<void> {
  const r = await initRuntime({ verbose: false, unsafeNoBoundsChecks: noBoundsChecks });
  console.log(`adapter: ${describeAdapter(r.adapter)}`);
  console.log(`robustness transform: ${noBoundsChecks ? 'off (unsafeNoBoundsChecks)' : 'on'}; ${cpus().length} CPUs, load average ${loadavg()[0].toFixed(2)} at start`);
  console.log(
    `method: ${REPS} products per command buffer, submit, sleep ${SLEEP_FRACTION * 100}% of the fastest batch, await the queue; ` +
      'wall = mean iteration time, cpu = process CPU time of the fastest iteration / 2',
  );

  const bench = new Bench({ time: 1500, iterations: 4, warmup: false, throws: true });
  /** Fastest iteration's process CPU time per product, per task (ms). */
  const cpuMs = new Map<string, number>();
  for (const shape of SHAPES) addTask(bench, r, shape, cpuMs);
  await bench.run();

  console.log('shape                    ms/product    wall GFLOP/s    cpu GFLOP/s (best)');
  for (const task of bench.tasks) {
    const result = task.result;
    if (result.state !== 'completed') throw new Error(`bench task ${task.name} did not complete: ${result.state}`);
    const shape = SHAPES.find((s) => s.name === task.name)!;
    const gflop = (2 * shape.M * shape.N * shape.K) / 1e9;
    const msPerProduct = result.latency.mean / REPS;
    const cpuPerProduct = cpuMs.get(task.name)! / 2;
    const row = [task.name.padEnd(24), msPerProduct.toFixed(2).padStart(10), (gflop / (msPerProduct / 1000)).toFixed(1).padStart(15), (gflop / (cpuPerProduct / 1000)).toFixed(1).padStart(14)];
    console.log(row.join(' '));
  }
  console.log(`load average ${loadavg()[0].toFixed(2)} at end`);
  r.destroy();
}

function addTask(bench: Bench, r: Runtime, shape: Shape, cpuMs: Map<string, number>): void {
  const { M, N, K } = shape;
  let a: GPUBuffer, b: GPUBuffer, c: GPUBuffer;
  let expectedMs = 0;
  const enqueue = () => {
    for (let i = 0; i < REPS; i++) matmul(r, { a, b, c, M, N, K, transA: shape.transA, transB: shape.transB });
    r.submit();
  };

  bench.add(
    shape.name,
    async () => {
      const t0 = performance.now();
      const cpu0 = process.cpuUsage();
      enqueue();
      await sleep(SLEEP_FRACTION * expectedMs);
      await r.sync();
      const cpu = process.cpuUsage(cpu0);
      expectedMs = Math.min(expectedMs, performance.now() - t0);
      const cpuPerProduct = (cpu.user + cpu.system) / 1000 / REPS;
      cpuMs.set(shape.name, Math.min(cpuMs.get(shape.name) ?? Infinity, cpuPerProduct));
    },
    {
      beforeAll: async () => {
        a = r.pool.acquire(M * K * 4);
        b = r.pool.acquire(K * N * 4);
        c = r.pool.acquire(M * N * 4);
        // Compile the pipeline, then time one batch awaited at once as the first estimate.
        enqueue();
        await r.sync();
        const t0 = performance.now();
        enqueue();
        await r.sync();
        expectedMs = performance.now() - t0;
      },
      afterAll: () => {
        r.pool.release(a);
        r.pool.release(b);
        r.pool.release(c);
      },
    },
  );
}

function modeArgument(): 'on' | 'off' | null {
  const i = process.argv.indexOf('--robustness');
  if (i < 0) return null;
  const mode = process.argv[i + 1];
  if (mode !== 'on' && mode !== 'off') throw new Error(`invalid --robustness "${mode}"; expected on or off`);
  return mode;
}

const mode = modeArgument();
if (mode) {
  await benchMode(mode === 'off');
} else {
  const script = fileURLToPath(import.meta.url);
  for (const m of ['on', 'off']) {
    const child = spawnSync(process.execPath, [...process.execArgv, script, '--robustness', m], { stdio: 'inherit' });
    if (child.status !== 0) throw new Error(`bench with robustness ${m} failed with exit status ${child.status}`);
    console.log('');
  }
}
