// Softmax cross-entropy with label smoothing, fused. The forward kernel writes per-row loss
// and log-sum-exp statistics, with one invocation per row up to SHORT_ROW_MAX classes
// (kernels/reduce.ts says why) and one workgroup per row beyond. The logit gradient is one
// elementwise pass that recomputes the softmax from those statistics. The batch mean is
// left to a row sum.
//
// Labels outside [0, K) are never used as an index: such a row gets loss 0 and gradient
// 0 (it still counts in the batch size B of the mean). The data layer validates labels
// before they get here, so this is a memory-safety guard, not a feature.
import {
  ROWS_PER_WORKGROUP,
  SERIAL_BLOCK,
  SHORT_ROW_INDEX,
  isShortRow,
  maxOf,
  rowVector,
  rowWorkgroupSize,
  shortRowGrid,
  sumOf,
  workgroupReduce,
} from './reduce.ts';
import { grid1d, packUniforms, type KernelRunner } from './runner.ts';

/** Floats of per-row statistics: row max m and log Σ exp(x − m). */
export const CE_STATS = 2;

export interface CrossEntropySpec {
  /** [B, K]. */
  logits: GPUBuffer;
  /** i32 [B]. */
  labels: GPUBuffer;
  /** [B] loss per row. */
  rowLoss: GPUBuffer;
  /** [B, CE_STATS]. */
  stats: GPUBuffer;
  rows: number;
  classes: number;
  labelSmoothing: number;
}

/**
 * Row loss −Σ_j t_j·log p_j with target t = (1 − ε)·onehot(label) + ε/K, written as
 * (1 − ε)(m − x_label) + ε·mean_j(m − x_j) + log Σ exp(x − m). Each term is a difference
 * of nearby logits or a log of a sum whose largest term is 1. So logits around ±1e4 give
 * the loss to f32 precision, where (m + log s) − x_label would lose ~1e-3 to rounding.
 */
export function crossEntropyForward(r: KernelRunner, s: CrossEntropySpec): void {
  if (isShortRow(s.classes)) crossEntropyForwardShort(r, s);
  else crossEntropyForwardLong(r, s);
}

function crossEntropyForwardShort(r: KernelRunner, s: CrossEntropySpec): void {
  const v = rowVector(s.classes);
  const w = v.width;
  const labelLogit = w === 4 ? `x[base + u32(label) / 4u][u32(label) % 4u]` : `x[base + u32(label)]`;
  r.dispatch({
    kernel: 'cross_entropy',
    key: `short|${w}`,
    code: () => /* wgsl */ `
      struct U { rows: u32, classes: u32, smoothing: f32 }
      @group(0) @binding(0) var<storage, read> x: array<${v.type}>;
      @group(0) @binding(1) var<storage, read> labels: array<i32>;
      @group(0) @binding(2) var<storage, read_write> rowLoss: array<f32>;
      @group(0) @binding(3) var<storage, read_write> stats: array<f32>;
      @group(0) @binding(4) var<uniform> u: U;
      @compute @workgroup_size(${ROWS_PER_WORKGROUP})
      fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u,
              @builtin(local_invocation_index) tid: u32) {
        ${SHORT_ROW_INDEX}
        if (row >= u.rows) { return; }
        let len = u.classes / ${w}u;
        let base = row * len;

        var rowMax = ${v.type}(bitcast<f32>(0xff7fffffu)); // the lowest finite f32
        for (var j = 0u; j < len; j++) { rowMax = max(rowMax, x[base + j]); }
        let m = ${v.max('rowMax')};

        // Σ exp(x − m) and Σ (m − x).
        var sumExp = ${v.type}(0.0);
        var sumGap = ${v.type}(0.0);
        for (var j0 = 0u; j0 < len; j0 += ${SERIAL_BLOCK / w}u) {
          var partExp = ${v.type}(0.0);
          var partGap = ${v.type}(0.0);
          for (var j = j0; j < min(j0 + ${SERIAL_BLOCK / w}u, len); j++) {
            let d = m - x[base + j];
            partExp += exp(-d);
            partGap += d;
          }
          sumExp += partExp;
          sumGap += partGap;
        }

        let logSum = log(${v.sum('sumExp')});
        let label = labels[row];
        let valid = label >= 0 && u32(label) < u.classes;
        var loss = 0.0;
        if (valid) {
          let k = f32(u.classes);
          loss = (1.0 - u.smoothing) * (m - ${labelLogit}) + u.smoothing * ${v.sum('sumGap')} / k + logSum;
        }
        rowLoss[row] = loss;
        stats[row * ${CE_STATS}u] = m;
        stats[row * ${CE_STATS}u + 1u] = logSum;
      }`,
    buffers: [s.logits, s.labels, s.rowLoss, s.stats],
    uniforms: packUniforms([{ u32: s.rows }, { u32: s.classes }, { f32: s.labelSmoothing }]),
    workgroups: shortRowGrid(r, s.rows),
  });
}

function crossEntropyForwardLong(r: KernelRunner, s: CrossEntropySpec): void {
  const wg = rowWorkgroupSize(s.classes);
  r.dispatch({
    kernel: 'cross_entropy',
    key: `${wg}`,
    code: () => /* wgsl */ `
      struct U { rows: u32, classes: u32, smoothing: f32 }
      @group(0) @binding(0) var<storage, read> x: array<f32>;
      @group(0) @binding(1) var<storage, read> labels: array<i32>;
      @group(0) @binding(2) var<storage, read_write> rowLoss: array<f32>;
      @group(0) @binding(3) var<storage, read_write> stats: array<f32>;
      @group(0) @binding(4) var<uniform> u: U;
      ${workgroupReduce('blockMax', 'f32', wg, maxOf)}
      ${workgroupReduce('blockSum2', 'vec2f', wg, sumOf)}
      @compute @workgroup_size(${wg})
      fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u,
              @builtin(local_invocation_index) tid: u32) {
        let row = wid.x + wid.y * nw.x;
        if (row >= u.rows) { return; }
        let base = row * u.classes;

        var m = bitcast<f32>(0xff7fffffu); // the lowest finite f32
        for (var j = tid; j < u.classes; j += ${wg}u) { m = max(m, x[base + j]); }
        m = blockMax(m, tid);

        // Σ exp(x − m) and Σ (m − x).
        var sums = vec2f(0.0);
        for (var j = tid; j < u.classes; j += ${wg}u) {
          let d = m - x[base + j];
          sums += vec2f(exp(-d), d);
        }
        sums = blockSum2(sums, tid);

        if (tid == 0u) {
          let logSum = log(sums.x);
          let label = labels[row];
          let valid = label >= 0 && u32(label) < u.classes;
          var loss = 0.0;
          if (valid) {
            let k = f32(u.classes);
            loss = (1.0 - u.smoothing) * (m - x[base + u32(label)]) + u.smoothing * sums.y / k + logSum;
          }
          rowLoss[row] = loss;
          stats[row * ${CE_STATS}u] = m;
          stats[row * ${CE_STATS}u + 1u] = logSum;
        }
      }`,
    buffers: [s.logits, s.labels, s.rowLoss, s.stats],
    uniforms: packUniforms([{ u32: s.rows }, { u32: s.classes }, { f32: s.labelSmoothing }]),
    workgroups: grid1d(s.rows, r.maxWorkgroupsPerDim),
  });
}

export interface CrossEntropyBackwardSpec {
  logits: GPUBuffer;
  labels: GPUBuffer;
  stats: GPUBuffer;
  /** [1] gradient of the mean loss, read on the device (no readback). */
  dLoss: GPUBuffer;
  /** [B, K]. */
  dLogits: GPUBuffer;
  rows: number;
  classes: number;
  labelSmoothing: number;
}

const WG = 256;

/** dLogits = (softmax(x) − t)·dLoss/B, with p = exp((x − m) − log s) from the saved statistics. */
export function crossEntropyBackward(r: KernelRunner, s: CrossEntropyBackwardSpec): void {
  const n = s.rows * s.classes;
  r.dispatch({
    kernel: 'cross_entropy_backward',
    key: '',
    code: () => /* wgsl */ `
      struct U { n: u32, classes: u32, smoothing: f32, invRows: f32 }
      @group(0) @binding(0) var<storage, read> x: array<f32>;
      @group(0) @binding(1) var<storage, read> labels: array<i32>;
      @group(0) @binding(2) var<storage, read> stats: array<f32>;
      @group(0) @binding(3) var<storage, read> dLoss: array<f32>;
      @group(0) @binding(4) var<storage, read_write> dx: array<f32>;
      @group(0) @binding(5) var<uniform> u: U;
      @compute @workgroup_size(${WG})
      fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nw: vec3u) {
        let i = g.x + g.y * nw.x * ${WG}u;
        if (i >= u.n) { return; }
        let row = i / u.classes;
        let col = i % u.classes;
        let label = labels[row];
        if (label < 0 || u32(label) >= u.classes) {
          dx[i] = 0.0;
          return;
        }
        let p = exp((x[i] - stats[row * ${CE_STATS}u]) - stats[row * ${CE_STATS}u + 1u]);
        let t = select(0.0, 1.0 - u.smoothing, col == u32(label)) + u.smoothing / f32(u.classes);
        dx[i] = (p - t) * dLoss[0] * u.invRows;
      }`,
    buffers: [s.logits, s.labels, s.stats, s.dLoss, s.dLogits],
    uniforms: packUniforms([{ u32: n }, { u32: s.classes }, { f32: s.labelSmoothing }, { f32: 1 / s.rows }]),
    workgroups: grid1d(Math.ceil(n / WG), r.maxWorkgroupsPerDim),
  });
}
