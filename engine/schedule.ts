// Learning-rate schedules as pure functions of the optimizer step (0-based: step s is the
// s-th call of AdamW.step). The trainer evaluates one per step and passes the result to
// AdamW.step; nothing here touches the device.

/** LR to use for the optimizer step with this 0-based index. */
export type LrSchedule = (step: number) => number;

export interface WarmupCosineOptions {
  /** Peak LR, reached at the end of warmup. */
  baseLr: number;
  /** Steps of linear warmup; 0 starts the cosine at step 0. */
  warmupSteps: number;
  /** Step at which the cosine reaches minLr; the LR stays at minLr from there on. */
  totalSteps: number;
  /** Final LR (default 0). */
  minLr?: number;
}

export interface JaggedCosineOptions extends WarmupCosineOptions {
  /** Steps at which the LR restarts (e.g. ReLoRA resets), strictly increasing, each ≥ warmupSteps. */
  restarts: number[];
  /** Steps of the linear ramp after each restart (≥ 1). */
  restartWarmup: number;
}

/**
 * Linear warmup, then cosine decay:
 *   lr(s) = baseLr·s/W                                        for s < W,
 *   lr(s) = minLr + (baseLr − minLr)·(1 + cos(π·(s − W)/(N − W)))/2   for W ≤ s ≤ N,
 *   lr(s) = minLr                                              for s > N,
 * with W = warmupSteps and N = totalSteps. As in Hugging Face's cosine schedule, step 0 has
 * LR 0 when W > 0, and the LR is baseLr exactly at s = W.
 *
 * @example
 *   const lr = warmupCosine({ baseLr: 1e-3, warmupSteps: 100, totalSteps: 1000 });
 *   lr(50); // 5e-4
 */
export function warmupCosine(options: WarmupCosineOptions): LrSchedule {
  const { baseLr, warmupSteps, totalSteps } = options;
  const minLr = options.minLr ?? 0;
  checkWarmupCosine(baseLr, warmupSteps, totalSteps, minLr);

  return (step: number) => {
    checkStep(step);
    if (step < warmupSteps) return (baseLr * step) / warmupSteps;
    if (step >= totalSteps) return minLr;
    const progress = (step - warmupSteps) / (totalSteps - warmupSteps);
    return minLr + ((baseLr - minLr) * (1 + Math.cos(Math.PI * progress))) / 2;
  };
}

/**
 * ReLoRA's jagged schedule: the warmupCosine curve over the whole run, multiplied after each
 * restart step r by a linear ramp (s − r)/restartWarmup, so the LR is 0 at the restart and
 * back on the cosine restartWarmup steps later. The LR restarts from zero because the
 * optimizer state was just reset or pruned, and full-size updates on fresh state are
 * unstable.
 *
 * @example
 *   const lr = jaggedCosine({ baseLr: 1e-3, warmupSteps: 100, totalSteps: 1000, restarts: [400], restartWarmup: 50 });
 *   lr(425); // half of warmupCosine's LR at step 425
 */
export function jaggedCosine(options: JaggedCosineOptions): LrSchedule {
  const cosine = warmupCosine(options);
  const { restartWarmup, warmupSteps } = options;
  // A copy, so a caller that later edits its array cannot change the schedule.
  const restarts = [...options.restarts];
  if (!Number.isInteger(restartWarmup) || restartWarmup < 1) {
    throw new Error(`invalid restartWarmup ${restartWarmup}: expected an integer number of steps >= 1`);
  }
  restarts.forEach((r, i) => {
    if (!Number.isInteger(r) || r < warmupSteps) {
      throw new Error(`invalid restart step ${r} at index ${i}: expected an integer >= warmupSteps (${warmupSteps})`);
    }
    if (i > 0 && r <= restarts[i - 1]) {
      throw new Error(`invalid restarts: step ${r} at index ${i} is not after ${restarts[i - 1]}; list them in increasing order`);
    }
  });

  return (step: number) => {
    const lr = cosine(step);
    const last = lastAtOrBefore(restarts, step);
    if (last === undefined) return lr;
    return lr * Math.min(1, (step - last) / restartWarmup);
  };
}

/** Returns the largest value of the increasing list `xs` that is ≤ x, or undefined. */
function lastAtOrBefore(xs: number[], x: number): number | undefined {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo > 0 ? xs[lo - 1] : undefined;
}

function checkWarmupCosine(baseLr: number, warmupSteps: number, totalSteps: number, minLr: number): void {
  if (!(baseLr > 0) || !Number.isFinite(baseLr)) throw new Error(`invalid baseLr ${baseLr}: expected a finite value > 0`);
  if (!(minLr >= 0 && minLr <= baseLr)) throw new Error(`invalid minLr ${minLr}: expected a value in [0, baseLr = ${baseLr}]`);
  if (!Number.isInteger(warmupSteps) || warmupSteps < 0) {
    throw new Error(`invalid warmupSteps ${warmupSteps}: expected an integer >= 0`);
  }
  if (!Number.isInteger(totalSteps) || totalSteps <= warmupSteps) {
    throw new Error(`invalid totalSteps ${totalSteps}: expected an integer > warmupSteps (${warmupSteps})`);
  }
}

function checkStep(step: number): void {
  if (!Number.isInteger(step) || step < 0) throw new Error(`invalid step ${step}: expected an integer >= 0`);
}
