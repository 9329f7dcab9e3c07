// Sum reductions: along rows (the last axis, or fixed-size chunks of a flat buffer) and
// down columns (over every leading axis, in passes). Multi-pass orchestration and scratch
// buffers belong to the ops (engine/ops/reduce.ts). The row-kernel helpers here (the short
// row layout, vector loads, the shared-memory tree reduction) are reused by the softmax,
// LayerNorm and cross-entropy kernels.
//
// Rows of up to SHORT_ROW_MAX elements get one invocation each, summing serially with no
// barrier. On lavapipe a workgroup runs as one CPU thread that steps through its
// invocations 8 at a time, so every workgroupBarrier() costs a pass over all of them, and
// a tree reduction over a short row is mostly barriers. LayerNorm over [2176, 64] took
// 0.25 ms this way (with vec4 loads) and 2.8 ms with one 32-invocation workgroup per row
// (CPU time per thread, Mesa 25.0 lavapipe on 2 shared CPU cores). Longer rows keep one
// workgroup per row, which is what a GPU needs there.
import { grid1d, packUniforms, type KernelRunner } from './runner.ts';

// ---- short rows: one invocation per row ------------------------------------------------

/**
 * Maximum row length given one invocation. Covers every ViT width up to ViT-L (1024).
 * On lavapipe the serial LayerNorm kernels were still 1.5 to 4 times faster than the
 * workgroup ones at rows of 2048 to 8192 (128 rows or more). A GPU, though, wants many
 * invocations per long row, so longer rows keep one workgroup each.
 * NOTE: the limit and the layout were measured on lavapipe only. On a GPU, neighbouring
 * invocations read addresses a row apart, which coalesces poorly; a lower limit may pay.
 */
export const SHORT_ROW_MAX = 1024;
/** Invocations (and rows) per workgroup of a short-row kernel. LayerNorm ran the same with 8 to 256 on lavapipe. */
export const ROWS_PER_WORKGROUP = 64;
/**
 * Elements a serial loop adds into a partial sum before adding the partial to the total,
 * so the longest chain of f32 additions over a row of len is SERIAL_BLOCK + ⌈len / SERIAL_BLOCK⌉
 * (64 at 1024) instead of len.
 */
export const SERIAL_BLOCK = 32;

/** True when rows of `len` elements take the one-invocation-per-row kernels. */
export function isShortRow(len: number): boolean {
  return len <= SHORT_ROW_MAX;
}

/** Workgroup grid of a short-row kernel over `rows` rows. */
export function shortRowGrid(r: KernelRunner, rows: number): [number, number, number] {
  return grid1d(Math.ceil(rows / ROWS_PER_WORKGROUP), r.maxWorkgroupsPerDim);
}

/** WGSL: `row`, the row of this invocation in a short-row kernel. Needs `wid`, `nw` and `tid` in scope. */
export const SHORT_ROW_INDEX = `let row = (wid.x + wid.y * nw.x) * ${ROWS_PER_WORKGROUP}u + tid;`;

/**
 * Load type of a row kernel: vec4f when every row starts 16-byte aligned, else f32. On
 * lavapipe vec4 loads made the short-row LayerNorm forward 1.2 to 1.7 times faster (Mesa
 * 25.0, 2 CPU cores).
 */
export interface RowVector {
  /** Floats per load: 4 or 1. */
  width: 1 | 4;
  /** WGSL element type of the row arrays: "vec4f" or "f32". */
  type: 'vec4f' | 'f32';
  /** WGSL: the f32 sum of the components of expression `e`. */
  sum: (e: string) => string;
  /** WGSL: the f32 max of the components of expression `e`. */
  max: (e: string) => string;
}

/** Picks the load type for rows of `len` floats: vec4f when len is a multiple of 4. */
export function rowVector(len: number): RowVector {
  return vectorOf(len % 4 === 0 ? 4 : 1);
}

function vectorOf(width: 1 | 4): RowVector {
  if (width === 4) {
    return {
      width: 4,
      type: 'vec4f',
      sum: (e) => `dot(${e}, vec4f(1.0))`,
      max: (e) => `max(max((${e}).x, (${e}).y), max((${e}).z, (${e}).w))`,
    };
  }
  return { width: 1, type: 'f32', sum: (e) => e, max: (e) => e };
}

// ---- long rows: one workgroup per row ---------------------------------------------------

/** Smallest and largest workgroup of a long-row kernel. Rows longer than the workgroup are looped over. */
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

/**
 * out[outOffset + r] = scale · Σ_j f(x[inOffset + r·rowLen + j]) with f(v) = v or v².
 * One invocation per row up to SHORT_ROW_MAX elements, one workgroup per row beyond.
 */
export function reduceRows(r: KernelRunner, s: ReduceRowsSpec): void {
  if (isShortRow(s.rowLen)) reduceShortRows(r, s);
  else reduceLongRows(r, s);
}

function rowUniforms(s: ReduceRowsSpec): ArrayBuffer {
  return packUniforms([
    { u32: s.rows },
    { u32: s.rowLen },
    { u32: s.n ?? s.rows * s.rowLen },
    { u32: s.inOffset ?? 0 },
    { u32: s.outOffset ?? 0 },
    { f32: s.scale ?? 1 },
  ]);
}

function reduceShortRows(r: KernelRunner, s: ReduceRowsSpec): void {
  // vec4 loads only when every row, the cut-off end and the offset fall on 16-byte boundaries.
  const aligned = s.rowLen % 4 === 0 && (s.n ?? 0) % 4 === 0 && (s.inOffset ?? 0) % 4 === 0;
  const v = vectorOf(aligned ? 4 : 1);
  const w = v.width;
  const term = s.kernel === 'sumsq' ? 'v * v' : 'v';
  r.dispatch({
    kernel: s.kernel,
    key: `short|${w}`,
    code: () => /* wgsl */ `
      struct U { rows: u32, rowLen: u32, n: u32, inOffset: u32, outOffset: u32, scale: f32 }
      @group(0) @binding(0) var<storage, read> x: array<${v.type}>;
      @group(0) @binding(1) var<storage, read_write> out: array<f32>;
      @group(0) @binding(2) var<uniform> u: U;
      @compute @workgroup_size(${ROWS_PER_WORKGROUP})
      fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u,
              @builtin(local_invocation_index) tid: u32) {
        ${SHORT_ROW_INDEX}
        if (row >= u.rows) { return; }
        let offset = u.inOffset / ${w}u;
        let start = row * (u.rowLen / ${w}u);
        let end = min(start + u.rowLen / ${w}u, u.n / ${w}u);

        var total = ${v.type}(0.0);
        for (var k0 = start; k0 < end; k0 += ${SERIAL_BLOCK / w}u) {
          var part = ${v.type}(0.0);
          for (var k = k0; k < min(k0 + ${SERIAL_BLOCK / w}u, end); k++) {
            let v = x[offset + k];
            part += ${term};
          }
          total += part;
        }
        out[u.outOffset + row] = ${v.sum('total')} * u.scale;
      }`,
    buffers: [s.x, s.out],
    uniforms: rowUniforms(s),
    workgroups: shortRowGrid(r, s.rows),
    tag: s.tag,
  });
}

function reduceLongRows(r: KernelRunner, s: ReduceRowsSpec): void {
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
    uniforms: rowUniforms(s),
    workgroups: grid1d(s.rows, r.maxWorkgroupsPerDim),
    tag: s.tag,
  });
}

// ---- column reduction -------------------------------------------------------------------

/** Column sums per workgroup: each invocation owns one column, or 4 adjacent columns as a vec4. */
export const COL_TILE = 64;
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
 *
 * Every invocation walks the rows of its block serially, all invocations of a workgroup on
 * the same row at once, so neighbouring invocations read neighbouring addresses and no
 * barrier is needed. The maximum chain of f32 additions per pass is SERIAL_BLOCK + 8.
 */
export function columnSumPass(r: KernelRunner, s: ColumnSumSpec): number {
  const v = rowVector(s.cols);
  const w = v.width;
  const rowBlocks = Math.max(1, Math.ceil(s.rows / COL_BLOCK_ROWS));
  const colBlocks = Math.max(1, Math.ceil(s.cols / w / COL_TILE));
  const blocks = rowBlocks * colBlocks;
  const product = s.y !== undefined;
  const term = product ? 'x[k] * y[k]' : 'x[k]';

  r.dispatch({
    kernel: 'colsum',
    key: `${product ? 'product' : 'plain'}|${w}`,
    code: () => /* wgsl */ `
      struct U { rows: u32, cols: u32, colBlocks: u32, blocks: u32, scale: f32 }
      @group(0) @binding(0) var<storage, read> x: array<${v.type}>;
      ${product ? `@group(0) @binding(1) var<storage, read> y: array<${v.type}>;` : ''}
      @group(0) @binding(${product ? 2 : 1}) var<storage, read_write> out: array<${v.type}>;
      @group(0) @binding(${product ? 3 : 2}) var<uniform> u: U;
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

        var total = ${v.type}(0.0);
        for (var q0 = r0; q0 < r1; q0 += ${SERIAL_BLOCK}u) {
          var part = ${v.type}(0.0);
          for (var row = q0; row < min(q0 + ${SERIAL_BLOCK}u, r1); row++) {
            let k = row * len + col;
            part += ${term};
          }
          total += part;
        }
        out[rowBlock * len + col] = total * u.scale;
      }`,
    buffers: product ? [s.x, s.y!, s.out] : [s.x, s.out],
    uniforms: packUniforms([{ u32: s.rows }, { u32: s.cols }, { u32: colBlocks }, { u32: blocks }, { f32: s.scale ?? 1 }]),
    workgroups: grid1d(blocks, r.maxWorkgroupsPerDim),
    tag: s.tag,
  });
  return rowBlocks;
}
