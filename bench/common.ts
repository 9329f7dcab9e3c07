// Shared benchmark plumbing: timing that keeps the GPU queue fed, and the machine line
// every result carries.
import { cpus } from 'node:os';
import { describeAdapter } from '../engine/device.ts';
import type { Runtime } from '../engine/runtime.ts';

/** "2 × AMD EPYC … | llvmpipe …" — the machine and adapter a figure was measured on. */
export function machineLine(r: Runtime): string {
  const c = cpus();
  return `${c.length} × ${c[0]?.model.trim() ?? 'unknown CPU'} | ${describeAdapter(r.adapter)}${r.unsafeNoBoundsChecks ? ' | bounds checks off' : ''}`;
}

const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));

/**
 * Median milliseconds per call of `step` over `repeats` groups of `group` calls. Each group
 * is recorded back to back and awaited once; while a WebGPU promise is pending Dawn's Node
 * bindings poll and take a core from a software driver, so the host first sleeps for most
 * of the group's expected time and only then awaits the (nearly finished) queue.
 */
export async function timeSteps(r: Runtime, step: () => void, opts: { warmup?: number; group?: number; repeats?: number } = {}): Promise<{ median: number; all: number[] }> {
  const { warmup = 2, group = 3, repeats = 5 } = opts;
  for (let i = 0; i < warmup; i++) step();
  await r.sync();

  const all: number[] = [];
  let estimate = 0;
  for (let k = 0; k < repeats; k++) {
    const t0 = performance.now();
    for (let i = 0; i < group; i++) step();
    r.submit();
    if (estimate > 0) await sleep(0.85 * estimate * group);
    await r.sync();
    const per = (performance.now() - t0) / group;
    all.push(per);
    estimate = per;
  }
  const sorted = [...all].sort((a, b) => a - b);
  return { median: sorted[Math.floor(sorted.length / 2)], all };
}
