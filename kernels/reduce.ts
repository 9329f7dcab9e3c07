// Sum reductions: along rows (the last axis, or fixed-size chunks of a flat buffer) with one
// workgroup per row, and down columns (over every leading axis) with a tiled multi-pass
// scheme. Multi-pass orchestration and scratch buffers belong to the ops (engine/ops/reduce.ts).
// The shared-memory tree reduction snippet here is reused by the softmax, LayerNorm and
// cross-entropy kernels.
import { grid1d, packUniforms, type KernelRunner } from './runner.ts';

/** Smallest and largest workgroup of a row kernel. Rows longer than the workgroup are looped over. */
const MIN_ROW_WG = 32;
const MAX_ROW_WG = 256;
/** Elements each invocation of a row kernel should cover before the workgroup grows. */
const ROW_ELEMENTS_PER_INVOCATION = 32;

/**
 * Workgroup size for a kernel that gives one workgroup to each row of `len` elements: the
 * largest power of two with at least 32 elements per invocation, clamped to [32, 256].
 * A wider workgroup adds tree levels (barriers) without adding bandwidth once rows are
 * many. On lavapipe a barrier costs time per invocation: LayerNorm over [25088, 768] ran
 * 3 to 7 times faster with 32 invocations per row than with 256 (Mesa 25 lavapipe on two
 * shared CPU cores, several runs). 32 is one warp on NVIDIA and half a wave on AMD.
 * NOTE: tuned on lavapipe only; a GPU may prefer wider workgroups for long rows.
 */
export function rowWorkgroupSize(len: number): number {
  let wg = MIN_ROW_WG;
  while (wg * 2 * ROW_ELEMENTS_PER_INVOCATION <= len && wg < MAX_ROW_WG) wg *= 2;
  return wg;
}

/**
 * WGSL for `fn NAME(v: TYPE, tid: u32) -> TYPE`: a shared-memory tree reduction over a
 * workgroup of `wg` invocations (a power of two). Every invocation receives the result.
 * It must be called from uniform control flow. No subgroup operations, so it is correct
 * for any subgroup size (8 on lavapipe, 32 or 64 on GPUs).
 */
export function workgroupReduce(name: string, type: string, wg: number, combine: (a: string, b: string) => string): string {
  return /* wgsl */ `
    var<workgroup> ${name}_buf: array<${type}, ${wg}>;
    fn ${name}(v: ${type}, tid: u32) -> ${type} {
      ${name}_buf[tid] = v;
      workgroupBarrier();
      ${treeStrides(wg).map((stride) => `
      if (tid < ${stride}u) {
        ${name}_buf[tid] = ${combine(`${name}_buf[tid]`, `${name}_buf[tid + ${stride}u]`)};
      }
      workgroupBarrier();`).join('')}
      let total = ${name}_buf[0];
      // Every invocation reads the total before a later call overwrites the buffer.
      workgroupBarrier();
      return total;
    }`;
}

/** Strides of the tree levels, wg/2 down to 1, unrolled in the WGSL. */
function treeStrides(wg: number): number[] {
  const strides: number[] = [];
  for (let stride = wg / 2; stride >= 1; stride /= 2) strides.push(stride);
  return strides;
}

export const sumOf = (a: string, b: string) => `${a} + ${b}`;
export const maxOf = (a: string, b: string) => `max(${a}, ${b})`;

// ---- row reduction ----------------------------------------------------------------------

export interface ReduceRowsSpec {
  /** "sum" adds the elements, "sumsq" adds their squares. */
  kernel: 'sum' | 'sumsq';
  x: GPUBuffer;
  out: GPUBuffer;
  rows: number;
  rowLen: number;
  /** Elements of x (after inOffset) that exist; the last row may be cut short. Default rows·rowLen. */
  n?: number;
  /** First element of x read, in elements. */
  inOffset?: number;
  /** Row r writes out[outOffset + r]. */
  outOffset?: number;
  /** Multiplies each row's total (1/rowLen gives a mean). */
  scale?: number;
  tag?: string;
}

/** out[outOffset + r] = scale · Σ_j f(x[inOffset + r·rowLen + j]) with f(v) = v or v². One workgroup per row. */
export function reduceRows(r: KernelRunner, s: ReduceRowsSpec): void {
  const wg = rowWorkgroupSize(s.rowLen);
  const term = s.kernel === 'sumsq' ? 'v * v' : 'v';
  r.dispatch({
    kernel: s.kernel,
    key: `rows|${wg}`,
    code: () => /* wgsl */ `
      struct U { rows: u32, rowLen: u32, n: u32, inOffset: u32, outOffset: u32, scale: f32 }
      @group(0) @binding(0) var<storage, read> x: array<f32>;
      @group(0) @binding(1) var<storage, read_write> out: array<f32>;
      @group(0) @binding(2) var<uniform> u: U;
      ${workgroupReduce('blockSum', 'f32', wg, sumOf)}
      @compute @workgroup_size(${wg})
      fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u,
              @builtin(local_invocation_index) tid: u32) {
        let row = wid.x + wid.y * nw.x;
        if (row >= u.rows) { return; }
        let start = row * u.rowLen;
        let end = min(start + u.rowLen, u.n);
        var acc = 0.0;
        for (var k = start + tid; k < end; k += ${wg}u) {
          let v = x[u.inOffset + k];
          acc += ${term};
        }
        let total = blockSum(acc, tid);
        if (tid == 0u) { out[u.outOffset + row] = total * u.scale; }
      }`,
    buffers: [s.x, s.out],
    uniforms: packUniforms([
      { u32: s.rows },
      { u32: s.rowLen },
      { u32: s.n ?? s.rows * s.rowLen },
      { u32: s.inOffset ?? 0 },
      { u32: s.outOffset ?? 0 },
      { f32: s.scale ?? 1 },
    ]),
    workgroups: grid1d(s.rows, r.maxWorkgroupsPerDim),
    tag: s.tag,
  });
}

// ---- column reduction -------------------------------------------------------------------

/** Columns per column-sum workgroup; consecutive invocations read consecutive columns. */
const COL_TILE = 64;
/** Invocations per column that split a row block between them. */
const COL_LANES = 4;
/** Rows one column-sum workgroup covers, so each pass divides the row count by this. */
export const COL_BLOCK_ROWS = 256;

export interface ColumnSumSpec {
  /** [rows, cols], row-major. */
  x: GPUBuffer;
  /** When given, sums x ⊙ y (same shape) instead of x, without materialising the product. */
  y?: GPUBuffer;
  /** [ceil(rows / COL_BLOCK_ROWS), cols]: one partial row per block of rows. */
  out: GPUBuffer;
  rows: number;
  cols: number;
  scale?: number;
  tag?: string;
}

/**
 * Runs one pass of a column sum: out[b, c] = scale · Σ over rows r of block b of x[r, c]
 * (times y[r, c]). Returns the number of blocks (rows of out). When it is more than one,
 * the caller runs another pass over out. Each pass divides the rows by COL_BLOCK_ROWS, so
 * 100k rows take three passes, not one invocation per column looping over 100k rows.
 */
export function columnSumPass(r: KernelRunner, s: ColumnSumSpec): number {
  const rowBlocks = Math.max(1, Math.ceil(s.rows / COL_BLOCK_ROWS));
  const colBlocks = Math.max(1, Math.ceil(s.cols / COL_TILE));
  const blocks = rowBlocks * colBlocks;
  const product = s.y !== undefined;
  const term = product ? 'x[k] * y[k]' : 'x[k]';

  r.dispatch({
    kernel: 'colsum',
    key: product ? 'product' : 'plain',
    code: () => /* wgsl */ `
      struct U { rows: u32, cols: u32, colBlocks: u32, blocks: u32, scale: f32 }
      @group(0) @binding(0) var<storage, read> x: array<f32>;
      ${product ? '@group(0) @binding(1) var<storage, read> y: array<f32>;' : ''}
      @group(0) @binding(${product ? 2 : 1}) var<storage, read_write> out: array<f32>;
      @group(0) @binding(${product ? 3 : 2}) var<uniform> u: U;
      var<workgroup> lanes: array<f32, ${COL_TILE * COL_LANES}>;
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

        var acc = 0.0;
        if (col < u.cols) {
          for (var row = r0 + lid.y; row < r1; row += ${COL_LANES}u) {
            let k = row * u.cols + col;
            acc += ${term};
          }
        }
        lanes[lid.y * ${COL_TILE}u + lid.x] = acc;
        workgroupBarrier();

        if (lid.y == 0u && col < u.cols) {
          var total = 0.0;
          for (var lane = 0u; lane < ${COL_LANES}u; lane++) { total += lanes[lane * ${COL_TILE}u + lid.x]; }
          out[rowBlock * u.cols + col] = total * u.scale;
        }
      }`,
    buffers: product ? [s.x, s.y!, s.out] : [s.x, s.out],
    uniforms: packUniforms([{ u32: s.rows }, { u32: s.cols }, { u32: colBlocks }, { u32: blocks }, { f32: s.scale ?? 1 }]),
    workgroups: grid1d(blocks, r.maxWorkgroupsPerDim),
    tag: s.tag,
  });
  return rowBlocks;
}
