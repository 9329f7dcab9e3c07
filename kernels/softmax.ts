// Softmax over the last axis, forward and backward. Rows of up to SHORT_ROW_MAX elements
// get one invocation each (kernels/reduce.ts says why), longer rows one workgroup each.
// Attention has its own fused kernel, and this one serves any [N, C] tensor.
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

export interface SoftmaxSpec {
  /** [rows, cols] logits. */
  x: GPUBuffer;
  /** [rows, cols] probabilities. */
  y: GPUBuffer;
  rows: number;
  cols: number;
}

/**
 * y = exp(x − max) / Σ exp(x − max) per row. Subtracting the row max changes nothing
 * mathematically, because the factor exp(−max) cancels. It keeps every exponent ≤ 0, so
 * exp cannot overflow to inf for logits above ~88. And the largest term is exactly 1, so
 * the sum cannot underflow to 0.
 */
export function softmaxForward(r: KernelRunner, s: SoftmaxSpec): void {
  if (isShortRow(s.cols)) softmaxForwardShort(r, s);
  else softmaxForwardLong(r, s);
}

function softmaxForwardShort(r: KernelRunner, s: SoftmaxSpec): void {
  const v = rowVector(s.cols);
  const w = v.width;
  r.dispatch({
    kernel: 'softmax',
    key: `short|${w}`,
    code: () => /* wgsl */ `
      struct U { rows: u32, cols: u32 }
      @group(0) @binding(0) var<storage, read> x: array<${v.type}>;
      @group(0) @binding(1) var<storage, read_write> y: array<${v.type}>;
      @group(0) @binding(2) var<uniform> u: U;
      @compute @workgroup_size(${ROWS_PER_WORKGROUP})
      fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u,
              @builtin(local_invocation_index) tid: u32) {
        ${SHORT_ROW_INDEX}
        if (row >= u.rows) { return; }
        let len = u.cols / ${w}u;
        let base = row * len;

        var rowMax = ${v.type}(bitcast<f32>(0xff7fffffu)); // the lowest finite f32
        for (var j = 0u; j < len; j++) { rowMax = max(rowMax, x[base + j]); }
        let m = ${v.max('rowMax')};

        var total = ${v.type}(0.0);
        for (var j0 = 0u; j0 < len; j0 += ${SERIAL_BLOCK / w}u) {
          var part = ${v.type}(0.0);
          for (var j = j0; j < min(j0 + ${SERIAL_BLOCK / w}u, len); j++) { part += exp(x[base + j] - m); }
          total += part;
        }

        let inv = 1.0 / ${v.sum('total')};
        for (var j = 0u; j < len; j++) { y[base + j] = exp(x[base + j] - m) * inv; }
      }`,
    buffers: [s.x, s.y],
    uniforms: packUniforms([{ u32: s.rows }, { u32: s.cols }]),
    workgroups: shortRowGrid(r, s.rows),
  });
}

function softmaxForwardLong(r: KernelRunner, s: SoftmaxSpec): void {
  const wg = rowWorkgroupSize(s.cols);
  r.dispatch({
    kernel: 'softmax',
    key: `${wg}`,
    code: () => /* wgsl */ `
      struct U { rows: u32, cols: u32 }
      @group(0) @binding(0) var<storage, read> x: array<f32>;
      @group(0) @binding(1) var<storage, read_write> y: array<f32>;
      @group(0) @binding(2) var<uniform> u: U;
      ${workgroupReduce('blockMax', 'f32', wg, maxOf)}
      ${workgroupReduce('blockSum', 'f32', wg, sumOf)}
      @compute @workgroup_size(${wg})
      fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u,
              @builtin(local_invocation_index) tid: u32) {
        let row = wid.x + wid.y * nw.x;
        if (row >= u.rows) { return; }
        let base = row * u.cols;

        var m = bitcast<f32>(0xff7fffffu); // the lowest finite f32
        for (var j = tid; j < u.cols; j += ${wg}u) { m = max(m, x[base + j]); }
        m = blockMax(m, tid);

        var total = 0.0;
        for (var j = tid; j < u.cols; j += ${wg}u) { total += exp(x[base + j] - m); }
        total = blockSum(total, tid);

        let inv = 1.0 / total;
        for (var j = tid; j < u.cols; j += ${wg}u) { y[base + j] = exp(x[base + j] - m) * inv; }
      }`,
    buffers: [s.x, s.y],
    uniforms: packUniforms([{ u32: s.rows }, { u32: s.cols }]),
    workgroups: grid1d(s.rows, r.maxWorkgroupsPerDim),
  });
}

export interface SoftmaxBackwardSpec {
  /** [rows, cols] forward output. */
  y: GPUBuffer;
  dy: GPUBuffer;
  dx: GPUBuffer;
  rows: number;
  cols: number;
}

/** dx = y ⊙ (dy − Σ_j dy_j·y_j) per row: the softmax Jacobian diag(y) − y·yᵀ applied to dy. */
export function softmaxBackward(r: KernelRunner, s: SoftmaxBackwardSpec): void {
  if (isShortRow(s.cols)) softmaxBackwardShort(r, s);
  else softmaxBackwardLong(r, s);
}

function softmaxBackwardShort(r: KernelRunner, s: SoftmaxBackwardSpec): void {
  const v = rowVector(s.cols);
  const w = v.width;
  r.dispatch({
    kernel: 'softmax_backward',
    key: `short|${w}`,
    code: () => /* wgsl */ `
      struct U { rows: u32, cols: u32 }
      @group(0) @binding(0) var<storage, read> y: array<${v.type}>;
      @group(0) @binding(1) var<storage, read> dy: array<${v.type}>;
      @group(0) @binding(2) var<storage, read_write> dx: array<${v.type}>;
      @group(0) @binding(3) var<uniform> u: U;
      @compute @workgroup_size(${ROWS_PER_WORKGROUP})
      fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u,
              @builtin(local_invocation_index) tid: u32) {
        ${SHORT_ROW_INDEX}
        if (row >= u.rows) { return; }
        let len = u.cols / ${w}u;
        let base = row * len;

        var total = ${v.type}(0.0);
        for (var j0 = 0u; j0 < len; j0 += ${SERIAL_BLOCK / w}u) {
          var part = ${v.type}(0.0);
          for (var j = j0; j < min(j0 + ${SERIAL_BLOCK / w}u, len); j++) { part += dy[base + j] * y[base + j]; }
          total += part;
        }
        let dot = ${v.sum('total')};

        for (var j = 0u; j < len; j++) { dx[base + j] = y[base + j] * (dy[base + j] - dot); }
      }`,
    buffers: [s.y, s.dy, s.dx],
    uniforms: packUniforms([{ u32: s.rows }, { u32: s.cols }]),
    workgroups: shortRowGrid(r, s.rows),
  });
}

function softmaxBackwardLong(r: KernelRunner, s: SoftmaxBackwardSpec): void {
  const wg = rowWorkgroupSize(s.cols);
  r.dispatch({
    kernel: 'softmax_backward',
    key: `${wg}`,
    code: () => /* wgsl */ `
      struct U { rows: u32, cols: u32 }
      @group(0) @binding(0) var<storage, read> y: array<f32>;
      @group(0) @binding(1) var<storage, read> dy: array<f32>;
      @group(0) @binding(2) var<storage, read_write> dx: array<f32>;
      @group(0) @binding(3) var<uniform> u: U;
      ${workgroupReduce('blockSum', 'f32', wg, sumOf)}
      @compute @workgroup_size(${wg})
      fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u,
              @builtin(local_invocation_index) tid: u32) {
        let row = wid.x + wid.y * nw.x;
        if (row >= u.rows) { return; }
        let base = row * u.cols;

        var dot = 0.0;
        for (var j = tid; j < u.cols; j += ${wg}u) { dot += dy[base + j] * y[base + j]; }
        dot = blockSum(dot, tid);

        for (var j = tid; j < u.cols; j += ${wg}u) { dx[base + j] = y[base + j] * (dy[base + j] - dot); }
      }`,
    buffers: [s.y, s.dy, s.dx],
    uniforms: packUniforms([{ u32: s.rows }, { u32: s.cols }]),
    workgroups: grid1d(s.rows, r.maxWorkgroupsPerDim),
  });
}
