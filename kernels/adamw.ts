// The optimizer's kernels: the global gradient norm with its clipping coefficient, and the
// fused AdamW update of one parameter tensor. The clipping coefficient stays on the device
// (in a small "grad stats" buffer) so a step never waits for a readback. The optimizer
// (engine/optim.ts) owns the state tensors and decides what to dispatch.
import { grid1d, packUniforms, type KernelRunner } from './runner.ts';

const WG = 256;
/**
 * Upper bound on workgroups (and so partial sums) per tensor in sumOfSquaresPartials. Each
 * invocation loops over a strided range, so the bound only limits parallelism, and the final
 * reduction stays one workgroup reading a few thousand partials.
 * NOTE: 256 workgroups is an estimate of what fills a GPU; it was tuned on lavapipe only.
 */
export const MAX_PARTIALS_PER_TENSOR = 256;
/**
 * Minimum elements per workgroup of sumOfSquaresPartials (64 per invocation), so a tensor of
 * n elements gets ceil(n / 16384) workgroups up to the bound above. On lavapipe each
 * workgroup of this reduction has a large fixed cost. With one workgroup per 256 elements,
 * an optimizer step over 5.3M parameters in 144 ViT-shaped tensors measured ~470 ms, and
 * with this value ~90-130 ms (2 shared CPU cores under load, so the figures are rough).
 */
const MIN_ELEMENTS_PER_PARTIAL = WG * 64;

/** Layout of the grad stats buffer (f32): [sum of squares, norm, clipping coefficient, unused]. */
export const GRAD_STATS_ELEMENTS = 4;
export const GRAD_STATS_NORM = 1;
export const GRAD_STATS_CLIP_COEF = 2;

/** Number of partial sums sumOfSquaresPartials writes for a tensor of n elements. */
export function partialCount(n: number): number {
  return Math.min(MAX_PARTIALS_PER_TENSOR, Math.max(1, Math.ceil(n / MIN_ELEMENTS_PER_PARTIAL)));
}

/**
 * Writes the sum of squares of x[0..n) as partialCount(n) partial sums into
 * partials[offset ..]. Partial sums of several tensors share one buffer; gradStats()
 * reduces them.
 */
export function sumOfSquaresPartials(r: KernelRunner, x: GPUBuffer, n: number, partials: GPUBuffer, offset: number): void {
  const groups = partialCount(n);
  r.dispatch({
    kernel: 'sumsq',
    key: 'partials',
    code: () => /* wgsl */ `
      struct U { n: u32, offset: u32, groups: u32 }
      @group(0) @binding(0) var<storage, read> x: array<f32>;
      @group(0) @binding(1) var<storage, read_write> partials: array<f32>;
      @group(0) @binding(2) var<uniform> u: U;
      var<workgroup> acc: array<f32, ${WG}>;
      @compute @workgroup_size(${WG})
      fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u) {
        var s = 0.0;
        for (var i = wid.x * ${WG}u + lid; i < u.n; i += u.groups * ${WG}u) {
          s += x[i] * x[i];
        }
        acc[lid] = s;
        workgroupBarrier();
        for (var stride = ${WG / 2}u; stride > 0u; stride >>= 1u) {
          if (lid < stride) { acc[lid] += acc[lid + stride]; }
          workgroupBarrier();
        }
        if (lid == 0u) { partials[u.offset + wid.x] = acc[0]; }
      }`,
    buffers: [x, partials],
    uniforms: packUniforms([{ u32: n }, { u32: offset }, { u32: groups }]),
    workgroups: [groups, 1, 1],
    tag: 'grad',
  });
}

/**
 * Reduces `count` partial sums into stats = [Σ, ‖g‖ = √Σ, c, 0] with the clipping coefficient
 * c = min(1, maxNorm / (‖g‖ + 1e-6)) (the epsilon of torch.nn.utils.clip_grad_norm_), or
 * c = 1 when maxNorm is undefined (no clipping).
 */
export function gradStats(r: KernelRunner, partials: GPUBuffer, count: number, stats: GPUBuffer, maxNorm: number | undefined): void {
  r.dispatch({
    kernel: 'gradstats',
    key: 'f32',
    code: () => /* wgsl */ `
      struct U { count: u32, clip: u32, maxNorm: f32 }
      @group(0) @binding(0) var<storage, read> partials: array<f32>;
      @group(0) @binding(1) var<storage, read_write> stats: array<f32, ${GRAD_STATS_ELEMENTS}>;
      @group(0) @binding(2) var<uniform> u: U;
      var<workgroup> acc: array<f32, ${WG}>;
      @compute @workgroup_size(${WG})
      fn main(@builtin(local_invocation_index) lid: u32) {
        var s = 0.0;
        for (var i = lid; i < u.count; i += ${WG}u) { s += partials[i]; }
        acc[lid] = s;
        workgroupBarrier();
        for (var stride = ${WG / 2}u; stride > 0u; stride >>= 1u) {
          if (lid < stride) { acc[lid] += acc[lid + stride]; }
          workgroupBarrier();
        }
        if (lid == 0u) {
          let norm = sqrt(acc[0]);
          var coef = 1.0;
          if (u.clip != 0u) { coef = min(1.0, u.maxNorm / (norm + 1e-6)); }
          stats[0] = acc[0];
          stats[${GRAD_STATS_NORM}] = norm;
          stats[${GRAD_STATS_CLIP_COEF}] = coef;
          stats[3] = 0.0;
        }
      }`,
    buffers: [partials, stats],
    uniforms: packUniforms([{ u32: count }, { u32: maxNorm === undefined ? 0 : 1 }, { f32: maxNorm ?? 0 }]),
    workgroups: [1, 1, 1],
  });
}

export interface AdamWStep {
  /** Learning rate of this parameter for this step (scheduled LR times the group's scale). */
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** This parameter's step count, 1 on its first update. */
  step: number;
}

/**
 * Records one fused AdamW update of n elements, with g scaled by the clipping coefficient c read
 * from stats:
 *   m ← β1·m + (1−β1)·g·c,  v ← β2·v + (1−β2)·(g·c)²,
 *   p ← p − lr·(m̂ / (√v̂ + ε) + wd·p),  m̂ = m / (1−β1^t),  v̂ = v / (1−β2^t).
 * Weight decay is decoupled from the gradient, as in torch.optim.AdamW.
 */
export function adamw(
  r: KernelRunner,
  bufs: { param: GPUBuffer; grad: GPUBuffer; m: GPUBuffer; v: GPUBuffer; stats: GPUBuffer },
  n: number,
  s: AdamWStep,
): void {
  // 1−β and the bias corrections are formed in float64 on the host: 1 − 0.999 in f32 is off
  // by 1e-5 relative, and 1 − β2^t at t = 1 is exactly the case that matters most.
  const bias1 = 1 - s.beta1 ** s.step;
  const bias2 = 1 - s.beta2 ** s.step;
  r.dispatch({
    kernel: 'adamw',
    key: 'f32',
    code: () => /* wgsl */ `
      struct U {
        n: u32, lr: f32, beta1: f32, oneMinusBeta1: f32,
        beta2: f32, oneMinusBeta2: f32, eps: f32, weightDecay: f32,
        bias1: f32, bias2: f32,
      }
      @group(0) @binding(0) var<storage, read_write> param: array<f32>;
      @group(0) @binding(1) var<storage, read> grad: array<f32>;
      @group(0) @binding(2) var<storage, read_write> m: array<f32>;
      @group(0) @binding(3) var<storage, read_write> v: array<f32>;
      @group(0) @binding(4) var<storage, read> stats: array<f32, ${GRAD_STATS_ELEMENTS}>;
      @group(0) @binding(5) var<uniform> u: U;
      @compute @workgroup_size(${WG})
      fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nw: vec3u) {
        let i = gid.x + gid.y * nw.x * ${WG}u;
        if (i >= u.n) { return; }

        let g = grad[i] * stats[${GRAD_STATS_CLIP_COEF}];
        let mi = u.beta1 * m[i] + u.oneMinusBeta1 * g;
        let vi = u.beta2 * v[i] + u.oneMinusBeta2 * g * g;
        m[i] = mi;
        v[i] = vi;

        let mHat = mi / u.bias1;
        let vHat = vi / u.bias2;
        let p = param[i];
        param[i] = p - u.lr * (mHat / (sqrt(vHat) + u.eps) + u.weightDecay * p);
      }`,
    buffers: [bufs.param, bufs.grad, bufs.m, bufs.v, bufs.stats],
    uniforms: packUniforms([
      { u32: n },
      { f32: s.lr },
      { f32: s.beta1 },
      { f32: 1 - s.beta1 },
      { f32: s.beta2 },
      { f32: 1 - s.beta2 },
      { f32: s.eps },
      { f32: s.weightDecay },
      { f32: bias1 },
      { f32: bias2 },
    ]),
    workgroups: grid1d(Math.ceil(n / WG), r.maxWorkgroupsPerDim),
  });
}
