// LayerNorm over the last axis: forward (saving per-row statistics), the input gradient,
// and the gamma/beta gradients (column blocks, like the column sum, leaving partial rows
// for the caller to fold). Rows of up to SHORT_ROW_MAX elements get one invocation each,
// which loops over the row serially (kernels/reduce.ts says why). Longer rows get one
// workgroup each with a shared-memory tree reduction.
//
// Per-row statistics are 3 floats: the mean as an unevaluated sum hi + lo, and rstd.
// hi is the f32 mean of a first pass. For rows whose values share a large offset (mean
// 1e4, std 1e-2) the f32 spacing near hi (~1e-3) is a tenth of the std, so hi alone is
// not precise enough: x − hi is exact there (Sterbenz: x and hi within a factor of 2), and
// lo = mean(x − hi) is the small correction, kept separately instead of being rounded away.
import {
  COL_BLOCK_ROWS,
  COL_TILE,
  ROWS_PER_WORKGROUP,
  SERIAL_BLOCK,
  SHORT_ROW_INDEX,
  isShortRow,
  rowVector,
  rowWorkgroupSize,
  shortRowGrid,
  sumOf,
  workgroupReduce,
} from './reduce.ts';
import { grid1d, packUniforms, type KernelRunner } from './runner.ts';

/** Floats of per-row statistics: mean hi, mean lo, rstd. */
export const LN_STATS = 3;

/** WGSL: x̂ for element k of a row whose statistics start at stats[s]. */
const XHAT = '((x[k] - stats[s]) - stats[s + 1u]) * stats[s + 2u]';

export interface LayerNormSpec {
  x: GPUBuffer;
  gamma: GPUBuffer;
  beta: GPUBuffer;
  y: GPUBuffer;
  /** [rows, LN_STATS]. */
  stats: GPUBuffer;
  rows: number;
  cols: number;
  eps: number;
}

/**
 * y = (x − mean)·rstd·gamma + beta per row, rstd = 1/√(var + eps). The variance is
 * E[(x − hi)²] − lo² from a second pass over the row: the two-pass variance, corrected for
 * the rounding error lo of the first-pass mean. E[x²] − mean² is not used because it
 * cancels to 0 or below for rows with mean 1e4 and std 1e-2.
 */
export function layerNormForward(r: KernelRunner, s: LayerNormSpec): void {
  if (isShortRow(s.cols)) layerNormForwardShort(r, s);
  else layerNormForwardLong(r, s);
}

function layerNormForwardShort(r: KernelRunner, s: LayerNormSpec): void {
  const v = rowVector(s.cols);
  const w = v.width;
  r.dispatch({
    kernel: 'layernorm',
    key: `short|${w}`,
    code: () => /* wgsl */ `
      struct U { rows: u32, cols: u32, eps: f32 }
      @group(0) @binding(0) var<storage, read> x: array<${v.type}>;
      @group(0) @binding(1) var<storage, read> gamma: array<${v.type}>;
      @group(0) @binding(2) var<storage, read> beta: array<${v.type}>;
      @group(0) @binding(3) var<storage, read_write> y: array<${v.type}>;
      @group(0) @binding(4) var<storage, read_write> stats: array<f32>;
      @group(0) @binding(5) var<uniform> u: U;
      @compute @workgroup_size(${ROWS_PER_WORKGROUP})
      fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u,
              @builtin(local_invocation_index) tid: u32) {
        ${SHORT_ROW_INDEX}
        if (row >= u.rows) { return; }
        let len = u.cols / ${w}u;
        let base = row * len;
        let n = f32(u.cols);

        var total = ${v.type}(0.0);
        for (var j0 = 0u; j0 < len; j0 += ${SERIAL_BLOCK / w}u) {
          var part = ${v.type}(0.0);
          for (var j = j0; j < min(j0 + ${SERIAL_BLOCK / w}u, len); j++) { part += x[base + j]; }
          total += part;
        }
        let hi = ${v.sum('total')} / n;

        // With d = x − hi, Σd/C is the rounding error of hi and Σd²/C the variance plus its square.
        var sumD = ${v.type}(0.0);
        var sumD2 = ${v.type}(0.0);
        for (var j0 = 0u; j0 < len; j0 += ${SERIAL_BLOCK / w}u) {
          var partD = ${v.type}(0.0);
          var partD2 = ${v.type}(0.0);
          for (var j = j0; j < min(j0 + ${SERIAL_BLOCK / w}u, len); j++) {
            let d = x[base + j] - hi;
            partD += d;
            partD2 += d * d;
          }
          sumD += partD;
          sumD2 += partD2;
        }
        let lo = ${v.sum('sumD')} / n;
        let variance = max(${v.sum('sumD2')} / n - lo * lo, 0.0);
        let rstd = inverseSqrt(variance + u.eps);

        for (var j = 0u; j < len; j++) {
          let xhat = ((x[base + j] - hi) - lo) * rstd;
          y[base + j] = xhat * gamma[j] + beta[j];
        }
        stats[row * ${LN_STATS}u] = hi;
        stats[row * ${LN_STATS}u + 1u] = lo;
        stats[row * ${LN_STATS}u + 2u] = rstd;
      }`,
    buffers: [s.x, s.gamma, s.beta, s.y, s.stats],
    uniforms: packUniforms([{ u32: s.rows }, { u32: s.cols }, { f32: s.eps }]),
    workgroups: shortRowGrid(r, s.rows),
  });
}

function layerNormForwardLong(r: KernelRunner, s: LayerNormSpec): void {
  const wg = rowWorkgroupSize(s.cols);
  r.dispatch({
    kernel: 'layernorm',
    key: `${wg}`,
    code: () => /* wgsl */ `
      struct U { rows: u32, cols: u32, eps: f32 }
      @group(0) @binding(0) var<storage, read> x: array<f32>;
      @group(0) @binding(1) var<storage, read> gamma: array<f32>;
      @group(0) @binding(2) var<storage, read> beta: array<f32>;
      @group(0) @binding(3) var<storage, read_write> y: array<f32>;
      @group(0) @binding(4) var<storage, read_write> stats: array<f32>;
      @group(0) @binding(5) var<uniform> u: U;
      ${workgroupReduce('blockSum', 'f32', wg, sumOf)}
      ${workgroupReduce('blockSum2', 'vec2f', wg, sumOf)}
      @compute @workgroup_size(${wg})
      fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u,
              @builtin(local_invocation_index) tid: u32) {
        let row = wid.x + wid.y * nw.x;
        if (row >= u.rows) { return; }
        let base = row * u.cols;
        let n = f32(u.cols);

        var total = 0.0;
        for (var j = tid; j < u.cols; j += ${wg}u) { total += x[base + j]; }
        let hi = blockSum(total, tid) / n;

        // With d = x − hi, Σd/C is the rounding error of hi and Σd²/C the variance plus its square.
        var moments = vec2f(0.0);
        for (var j = tid; j < u.cols; j += ${wg}u) {
          let d = x[base + j] - hi;
          moments += vec2f(d, d * d);
        }
        moments = blockSum2(moments, tid);
        let lo = moments.x / n;
        let variance = max(moments.y / n - lo * lo, 0.0);
        let rstd = inverseSqrt(variance + u.eps);

        for (var j = tid; j < u.cols; j += ${wg}u) {
          let xhat = ((x[base + j] - hi) - lo) * rstd;
          y[base + j] = xhat * gamma[j] + beta[j];
        }
        if (tid == 0u) {
          stats[row * ${LN_STATS}u] = hi;
          stats[row * ${LN_STATS}u + 1u] = lo;
          stats[row * ${LN_STATS}u + 2u] = rstd;
        }
      }`,
    buffers: [s.x, s.gamma, s.beta, s.y, s.stats],
    uniforms: packUniforms([{ u32: s.rows }, { u32: s.cols }, { f32: s.eps }]),
    workgroups: grid1d(s.rows, r.maxWorkgroupsPerDim),
  });
}

export interface LayerNormBackwardSpec {
  x: GPUBuffer;
  gamma: GPUBuffer;
  stats: GPUBuffer;
  dy: GPUBuffer;
  dx: GPUBuffer;
  rows: number;
  cols: number;
}

/**
 * dx = rstd·(g − mean(g) − x̂·mean(g ⊙ x̂)) per row, with g = dy ⊙ gamma and x̂ the
 * normalised input: the gradient through the row's mean and variance.
 */
export function layerNormBackwardInput(r: KernelRunner, s: LayerNormBackwardSpec): void {
  if (isShortRow(s.cols)) layerNormBackwardInputShort(r, s);
  else layerNormBackwardInputLong(r, s);
}

function layerNormBackwardInputShort(r: KernelRunner, s: LayerNormBackwardSpec): void {
  const v = rowVector(s.cols);
  const w = v.width;
  r.dispatch({
    kernel: 'layernorm_dx',
    key: `short|${w}`,
    code: () => /* wgsl */ `
      struct U { rows: u32, cols: u32 }
      @group(0) @binding(0) var<storage, read> x: array<${v.type}>;
      @group(0) @binding(1) var<storage, read> gamma: array<${v.type}>;
      @group(0) @binding(2) var<storage, read> stats: array<f32>;
      @group(0) @binding(3) var<storage, read> dy: array<${v.type}>;
      @group(0) @binding(4) var<storage, read_write> dx: array<${v.type}>;
      @group(0) @binding(5) var<uniform> u: U;
      @compute @workgroup_size(${ROWS_PER_WORKGROUP})
      fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u,
              @builtin(local_invocation_index) tid: u32) {
        ${SHORT_ROW_INDEX}
        if (row >= u.rows) { return; }
        let len = u.cols / ${w}u;
        let base = row * len;
        let n = f32(u.cols);
        let hi = stats[row * ${LN_STATS}u];
        let lo = stats[row * ${LN_STATS}u + 1u];
        let rstd = stats[row * ${LN_STATS}u + 2u];

        var sumG = ${v.type}(0.0);
        var sumGX = ${v.type}(0.0);
        for (var j0 = 0u; j0 < len; j0 += ${SERIAL_BLOCK / w}u) {
          var partG = ${v.type}(0.0);
          var partGX = ${v.type}(0.0);
          for (var j = j0; j < min(j0 + ${SERIAL_BLOCK / w}u, len); j++) {
            let g = dy[base + j] * gamma[j];
            partG += g;
            partGX += g * (((x[base + j] - hi) - lo) * rstd);
          }
          sumG += partG;
          sumGX += partGX;
        }
        let meanG = ${v.sum('sumG')} / n;
        let meanGX = ${v.sum('sumGX')} / n;

        for (var j = 0u; j < len; j++) {
          let g = dy[base + j] * gamma[j];
          let xhat = ((x[base + j] - hi) - lo) * rstd;
          dx[base + j] = rstd * (g - meanG - xhat * meanGX);
        }
      }`,
    buffers: [s.x, s.gamma, s.stats, s.dy, s.dx],
    uniforms: packUniforms([{ u32: s.rows }, { u32: s.cols }]),
    workgroups: shortRowGrid(r, s.rows),
  });
}

function layerNormBackwardInputLong(r: KernelRunner, s: LayerNormBackwardSpec): void {
  const wg = rowWorkgroupSize(s.cols);
  r.dispatch({
    kernel: 'layernorm_dx',
    key: `${wg}`,
    code: () => /* wgsl */ `
      struct U { rows: u32, cols: u32 }
      @group(0) @binding(0) var<storage, read> x: array<f32>;
      @group(0) @binding(1) var<storage, read> gamma: array<f32>;
      @group(0) @binding(2) var<storage, read> stats: array<f32>;
      @group(0) @binding(3) var<storage, read> dy: array<f32>;
      @group(0) @binding(4) var<storage, read_write> dx: array<f32>;
      @group(0) @binding(5) var<uniform> u: U;
      ${workgroupReduce('blockSum2', 'vec2f', wg, sumOf)}
      @compute @workgroup_size(${wg})
      fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u,
              @builtin(local_invocation_index) tid: u32) {
        let row = wid.x + wid.y * nw.x;
        if (row >= u.rows) { return; }
        let base = row * u.cols;
        let s = row * ${LN_STATS}u;
        let n = f32(u.cols);

        var sums = vec2f(0.0);
        for (var j = tid; j < u.cols; j += ${wg}u) {
          let k = base + j;
          let g = dy[k] * gamma[j];
          sums += vec2f(g, g * ${XHAT});
        }
        sums = blockSum2(sums, tid) / n;

        for (var j = tid; j < u.cols; j += ${wg}u) {
          let k = base + j;
          let g = dy[k] * gamma[j];
          dx[k] = stats[s + 2u] * (g - sums.x - ${XHAT} * sums.y);
        }
      }`,
    buffers: [s.x, s.gamma, s.stats, s.dy, s.dx],
    uniforms: packUniforms([{ u32: s.rows }, { u32: s.cols }]),
    workgroups: grid1d(s.rows, r.maxWorkgroupsPerDim),
  });
}

export interface LayerNormParamGradSpec {
  x: GPUBuffer;
  stats: GPUBuffer;
  dy: GPUBuffer;
  /** [ceil(rows / COL_BLOCK_ROWS), cols] partial Σ dy ⊙ x̂. */
  dgamma: GPUBuffer;
  /** [ceil(rows / COL_BLOCK_ROWS), cols] partial Σ dy. */
  dbeta: GPUBuffer;
  rows: number;
  cols: number;
}

/**
 * dgamma = Σ_rows dy ⊙ x̂ and dbeta = Σ_rows dy, one partial row per COL_BLOCK_ROWS rows
 * (the caller folds them with a column sum when there is more than one). Returns the number
 * of partial rows. Both are computed together because they share every load. As in the
 * column sum, each invocation owns one column (or a vec4 of columns) and walks the rows of
 * its block serially, with no barrier. All invocations of a workgroup read the same row's
 * statistics at the same time.
 */
export function layerNormBackwardParams(r: KernelRunner, s: LayerNormParamGradSpec): number {
  const v = rowVector(s.cols);
  const w = v.width;
  const rowBlocks = Math.max(1, Math.ceil(s.rows / COL_BLOCK_ROWS));
  const colBlocks = Math.max(1, Math.ceil(s.cols / w / COL_TILE));
  const blocks = rowBlocks * colBlocks;
  r.dispatch({
    kernel: 'layernorm_dparams',
    key: `${w}`,
    code: () => /* wgsl */ `
      struct U { rows: u32, cols: u32, colBlocks: u32, blocks: u32 }
      @group(0) @binding(0) var<storage, read> x: array<${v.type}>;
      @group(0) @binding(1) var<storage, read> stats: array<f32>;
      @group(0) @binding(2) var<storage, read> dy: array<${v.type}>;
      @group(0) @binding(3) var<storage, read_write> dgamma: array<${v.type}>;
      @group(0) @binding(4) var<storage, read_write> dbeta: array<${v.type}>;
      @group(0) @binding(5) var<uniform> u: U;
      @compute @workgroup_size(${COL_TILE})
      fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u,
              @builtin(local_invocation_index) tid: u32) {
        let block = wid.x + wid.y * nw.x;
        let len = u.cols / ${w}u;
        let col = (block % u.colBlocks) * ${COL_TILE}u + tid;
        if (block >= u.blocks || col >= len) { return; }
        let rowBlock = block / u.colBlocks;
        let r0 = rowBlock * ${COL_BLOCK_ROWS}u;
        let r1 = min(r0 + ${COL_BLOCK_ROWS}u, u.rows);

        var sumGamma = ${v.type}(0.0);
        var sumBeta = ${v.type}(0.0);
        for (var q0 = r0; q0 < r1; q0 += ${SERIAL_BLOCK}u) {
          var partGamma = ${v.type}(0.0);
          var partBeta = ${v.type}(0.0);
          for (var row = q0; row < min(q0 + ${SERIAL_BLOCK}u, r1); row++) {
            let k = row * len + col;
            let s = row * ${LN_STATS}u;
            partGamma += dy[k] * (${XHAT});
            partBeta += dy[k];
          }
          sumGamma += partGamma;
          sumBeta += partBeta;
        }
        dgamma[rowBlock * len + col] = sumGamma;
        dbeta[rowBlock * len + col] = sumBeta;
      }`,
    buffers: [s.x, s.stats, s.dy, s.dgamma, s.dbeta],
    uniforms: packUniforms([{ u32: s.rows }, { u32: s.cols }, { u32: colBlocks }, { u32: blocks }]),
    workgroups: grid1d(blocks, r.maxWorkgroupsPerDim),
  });
  return rowBlocks;
}
