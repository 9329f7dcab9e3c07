// LayerNorm over the last axis: forward (one workgroup per row, saving per-row statistics),
// the input gradient (one workgroup per row) and the gamma/beta gradients (column tiles,
// like the column sum, leaving partial rows for the caller to fold).
//
// Per-row statistics are 3 floats: the mean as an unevaluated sum hi + lo, and rstd.
// hi is the f32 mean of a first pass. For rows whose values share a large offset (mean
// 1e4, std 1e-2) the f32 spacing near hi (~1e-3) is a tenth of the std, so hi alone is
// not precise enough: x − hi is exact there (Sterbenz: x and hi within a factor of 2), and
// lo = mean(x − hi) is the small correction, kept separately instead of being rounded away.
import { COL_BLOCK_ROWS, rowWorkgroupSize, sumOf, workgroupReduce } from './reduce.ts';
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
 * normalised input: the gradient through the row's mean and variance, in one workgroup.
 */
export function layerNormBackwardInput(r: KernelRunner, s: LayerNormBackwardSpec): void {
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

/** Columns per parameter-gradient workgroup, and invocations splitting each column's rows. */
const COL_TILE = 64;
const COL_LANES = 4;

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
 * of partial rows. Both are computed together because they share every load.
 */
export function layerNormBackwardParams(r: KernelRunner, s: LayerNormParamGradSpec): number {
  const rowBlocks = Math.max(1, Math.ceil(s.rows / COL_BLOCK_ROWS));
  const colBlocks = Math.max(1, Math.ceil(s.cols / COL_TILE));
  const blocks = rowBlocks * colBlocks;
  r.dispatch({
    kernel: 'layernorm_dparams',
    key: '',
    code: () => /* wgsl */ `
      struct U { rows: u32, cols: u32, colBlocks: u32, blocks: u32 }
      @group(0) @binding(0) var<storage, read> x: array<f32>;
      @group(0) @binding(1) var<storage, read> stats: array<f32>;
      @group(0) @binding(2) var<storage, read> dy: array<f32>;
      @group(0) @binding(3) var<storage, read_write> dgamma: array<f32>;
      @group(0) @binding(4) var<storage, read_write> dbeta: array<f32>;
      @group(0) @binding(5) var<uniform> u: U;
      var<workgroup> lanes: array<vec2f, ${COL_TILE * COL_LANES}>;
      @compute @workgroup_size(${COL_TILE}, ${COL_LANES})
      fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u,
              @builtin(local_invocation_id) lid: vec3u) {
        let block = wid.x + wid.y * nw.x;
        if (block >= u.blocks) { return; }
        let colBlock = block % u.colBlocks;
        let rowBlock = block / u.colBlocks;
        let col = colBlock * ${COL_TILE}u + lid.x;
        let r0 = rowBlock * ${COL_BLOCK_ROWS}u;
        let r1 = min(r0 + ${COL_BLOCK_ROWS}u, u.rows);

        var acc = vec2f(0.0);
        if (col < u.cols) {
          for (var row = r0 + lid.y; row < r1; row += ${COL_LANES}u) {
            let k = row * u.cols + col;
            let s = row * ${LN_STATS}u;
            acc += vec2f(dy[k] * ${XHAT}, dy[k]);
          }
        }
        lanes[lid.y * ${COL_TILE}u + lid.x] = acc;
        workgroupBarrier();

        if (lid.y == 0u && col < u.cols) {
          var total = vec2f(0.0);
          for (var lane = 0u; lane < ${COL_LANES}u; lane++) { total += lanes[lane * ${COL_TILE}u + lid.x]; }
          dgamma[rowBlock * u.cols + col] = total.x;
          dbeta[rowBlock * u.cols + col] = total.y;
        }
      }`,
    buffers: [s.x, s.stats, s.dy, s.dgamma, s.dbeta],
    uniforms: packUniforms([{ u32: s.rows }, { u32: s.cols }, { u32: colBlocks }, { u32: blocks }]),
    workgroups: grid1d(blocks, r.maxWorkgroupsPerDim),
  });
  return rowBlocks;
}
