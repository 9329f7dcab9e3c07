// Fused multi-head attention, softmax(Q·Kᵀ/√D)·V, forward and backward. The T×T score
// matrix never reaches device memory: each invocation keeps the running state of its own
// rows in registers. Backward follows FlashAttention-2 (Dao, 2023) in three dispatches:
// delta per query row, dK/dV per key row, dQ per query row. Each gradient element has
// exactly one writer, so no atomics are needed. Autodiff bookkeeping lives in
// engine/ops/attention.ts.
//
// Two paths share the arithmetic and differ in how an invocation reaches the rows of the
// other side (keys for a query row, queries for a key row):
// - direct: each invocation owns up to 3 rows of one head and reads the other side straight
//   from the storage buffer, once for all its rows. Workgroups of 64 invocations cover any
//   mix of heads, with no workgroup memory and no barriers.
// - tiled: one workgroup per block of at most 64 rows of one head, one row per invocation.
//   The workgroup stages tiles of the other side in workgroup memory, so each of those
//   rows is loaded from storage once per workgroup instead of once per invocation.
// plan() takes the direct path for short sequences, and at any length when the head is
// small enough for an invocation to own several rows. On lavapipe a workgroup runs as one
// CPU thread looping over 8-wide SIMD vectors, barriers split that loop, and each lane
// loads a non-constant address on its own, so reusing loaded rows across owned rows is
// what pays (bench/attention.bench.ts has the figures).
//
// Both layouts share one kernel family: element (b, h, t, d) sits at
// b·strideB + h·strideH + t·strideT + d, so only the uniforms differ between them.
import { grid1d, packUniforms, type KernelRunner } from './runner.ts';

/** 'bhtd': [B, H, T, D]. 'bthd': [B, T, H·D], the output of a linear layer with heads interleaved as [H, D]. */
export type AttentionLayout = 'bhtd' | 'bthd';

export interface AttentionDims {
  B: number;
  H: number;
  T: number;
  D: number;
  layout: AttentionLayout;
}

/** Largest head size the kernels accept; registers and tiles grow linearly with D. */
export const MAX_HEAD_SIZE = 256;

/**
 * Sequences up to this length run direct even when an invocation owns one row. Longer ones
 * run direct only when each invocation owns several rows (small heads). With one row each,
 * both paths measured within noise of each other on lavapipe from T = 33 to 197 at D = 40
 * and 64, so long sequences keep the tiled path, which loads each row of the other side
 * once per workgroup rather than once per invocation.
 */
const DIRECT_MAX_TOKENS = 32;

/** Invocations per workgroup on the direct path: eight of lavapipe's 8-wide SIMD vectors. */
const DIRECT_WORKGROUP = 64;

/** Invocations (rows) per workgroup at most on the tiled path; a multiple of 8 so lavapipe's SIMD stays full. */
const MAX_ROWS = 64;

/** Workgroup memory for the two staged tiles, well under WebGPU's guaranteed 16 KiB. */
const TILE_BYTES = 8192;

/**
 * Starting value of the running max in the forward: below any score, and finite so that
 * exp(m_old − m_new) is exp(−huge) = 0 rather than exp(−inf + inf) = NaN.
 */
const LOWEST_SCORE = '-3.0e38';

/** The four attention kernels. delta is the backward's per-row dot product dout·out. */
export type AttentionKernel = 'forward' | 'delta' | 'dkdv' | 'dq';

/** Per-row vec4 arrays each kernel keeps in registers: the row itself and its accumulators. */
const ROW_ARRAYS: Record<AttentionKernel, number> = { forward: 2, delta: 0, dq: 3, dkdv: 4 };

/**
 * Registers, in vec4 per invocation, for the arrays of all owned rows together. Past this,
 * spills and compile time grow faster than the loads saved. At D = 16 the dK/dV kernel
 * with 3 rows (48 vec4) ran 5–25% faster than with 2 (32 vec4) on lavapipe but took about
 * twice as long to compile.
 */
const ROW_STATE_BUDGET = 36;

/** Most rows one invocation owns on the direct path. */
const MAX_ROWS_PER_INVOCATION = 3;

// ---- specialisation -------------------------------------------------------------------

interface Plan {
  /** Head size in vec4 units, D rounded up. */
  dv4: number;
  /** Whether every row starts at a multiple of 4 floats, so rows load as vec4. */
  aligned: boolean;
  /** Direct path (rows of the other side read from storage) rather than staged tiles. */
  direct: boolean;
  /** Rows owned by each invocation: R on the direct path, 1 on the tiled path. */
  rowsPerInvocation: number;
  /** Invocations per workgroup. */
  workgroupSize: number;
  /** Rows of the staged tile on the tiled path (keys in forward and dQ, queries in dK/dV). */
  tile: number;
  /** Row blocks per head: one per workgroup on the tiled path, one per invocation on the direct path. */
  blocks: number;
}

/**
 * Returns the rows per invocation on the direct path. Each row of the other side is loaded
 * once per invocation and used for every owned row, so owning more rows divides the loads.
 * Loads dominate on lavapipe because it loads a non-constant address lane by lane.
 */
function directRowsPerInvocation(kernel: AttentionKernel, dv4: number): number {
  if (kernel === 'delta') return 1;
  const fit = Math.floor(ROW_STATE_BUDGET / (ROW_ARRAYS[kernel] * dv4));
  return Math.max(1, Math.min(MAX_ROWS_PER_INVOCATION, fit));
}

// TODO: the tiled path owns one row per invocation. At T = 197, D = 64 the direct path with
// two rows per invocation ran about 1.6× faster on lavapipe, but its kernels took 15–36 s
// each to compile (7–25 s tiled, two cores shared with other jobs), and 64 vec4 of row
// state per invocation would spill on GPUs.
function plan(dims: AttentionDims, kernel: AttentionKernel): Plan {
  const { T, D } = dims;
  if (!(D >= 1 && D <= MAX_HEAD_SIZE)) throw new Error(`attention: head size ${D} is invalid; expected 1..${MAX_HEAD_SIZE}`);
  if (!(T >= 1)) throw new Error(`attention: token count ${T} is invalid; expected at least 1`);
  const dv4 = Math.ceil(D / 4);
  const aligned = D % 4 === 0;

  // delta is one dot product per row with nothing to stage, so it always runs direct.
  const R = directRowsPerInvocation(kernel, dv4);
  if (R > 1 || T <= DIRECT_MAX_TOKENS || kernel === 'delta') {
    return { dv4, aligned, direct: true, rowsPerInvocation: R, workgroupSize: DIRECT_WORKGROUP, tile: 0, blocks: Math.ceil(T / R) };
  }

  // The fewest blocks of at most MAX_ROWS rows, each rounded up to a multiple of 8: T = 197
  // runs as 4 blocks of 56 rows (224 invocations) rather than 4 of 64 (256).
  const tile = Math.min(64, Math.floor(TILE_BYTES / (2 * dv4 * 16)));
  const minBlocks = Math.ceil(T / MAX_ROWS);
  const rows = Math.ceil(Math.ceil(T / minBlocks) / 8) * 8;
  return { dv4, aligned, direct: false, rowsPerInvocation: 1, workgroupSize: rows, tile, blocks: Math.ceil(T / rows) };
}

/** Returns the path a kernel takes for these dims and the rows each invocation owns (for tests and benchmarks). */
export function attentionPath(dims: AttentionDims, kernel: AttentionKernel): { path: 'direct' | 'tiled'; rowsPerInvocation: number } {
  const p = plan(dims, kernel);
  return { path: p.direct ? 'direct' : 'tiled', rowsPerInvocation: p.rowsPerInvocation };
}

function strides(dims: AttentionDims): { strideB: number; strideH: number; strideT: number } {
  const { H, T, D } = dims;
  if (dims.layout === 'bhtd') return { strideB: H * T * D, strideH: T * D, strideT: D };
  return { strideB: T * H * D, strideH: D, strideT: H * D };
}

/** Workgroups on the tiled path, invocations on the direct path. */
function items(dims: AttentionDims, p: Plan): number {
  return p.blocks * dims.B * dims.H;
}

function uniforms(dims: AttentionDims, p: Plan): ArrayBuffer {
  const s = strides(dims);
  return packUniforms([
    { u32: dims.T },
    { u32: dims.H },
    { u32: s.strideB },
    { u32: s.strideH },
    { u32: s.strideT },
    { u32: p.blocks },
    { u32: items(dims, p) },
    { f32: 1 / Math.sqrt(dims.D) },
  ]);
}

function workgroups(r: KernelRunner, dims: AttentionDims, p: Plan): [number, number, number] {
  const n = p.direct ? Math.ceil(items(dims, p) / p.workgroupSize) : items(dims, p);
  return grid1d(n, r.maxWorkgroupsPerDim);
}

function planKey(dims: AttentionDims, p: Plan): string {
  if (p.direct) return `D${dims.D}|direct|R${p.rowsPerInvocation}`;
  return `D${dims.D}|rows${p.workgroupSize}|tile${p.tile}`;
}

// ---- shared WGSL ----------------------------------------------------------------------

/**
 * Emits one statement per c < n, joined as lines at the given indent. Loops over the head
 * size and the owned rows are unrolled here rather than in WGSL, so the per-row arrays are
 * indexed only by constants and can live in registers. Loops over the other side's rows
 * stay WGSL loops: unrolling those too ran no faster on lavapipe and took minutes to compile.
 */
// NOTE: the unrolled bodies are large at D = 64 and with several rows per invocation.
// lavapipe (Mesa 25.0, LLVM 15) took 1–25 s to compile each kernel at D = 64, and 1–3 s
// each direct kernel at D = 16, on two cores shared with other jobs. Mesa's shader cache
// keeps the result for later runs.
function unroll(n: number, statement: (c: number) => string, indent = '  '): string {
  return Array.from({ length: n }, (_, c) => statement(c)).join(`\n${indent}`);
}

/** Unrolls over the owned rows r and the vec4 columns c. Element (r, c) of a per-row array is at r·dv4 + c. */
function unrollRows(p: Plan, statement: (r: number, c: number, rc: number) => string, indent = '  '): string {
  return unroll(p.rowsPerInvocation, (r) => unroll(p.dv4, (c) => statement(r, c, r * p.dv4 + c), indent), indent);
}

interface Binding {
  name: string;
  /** Per-row tensors are read and written as vec4 rows; lse and delta are flat f32. */
  kind: 'rows' | 'flat';
  write: boolean;
  buffer: GPUBuffer;
}

function declareBindings(bindings: Binding[], p: Plan): string {
  return bindings
    .map((b, i) => {
      const element = b.kind === 'rows' && p.aligned ? 'vec4f' : 'f32';
      const access = b.write ? 'read_write' : 'read';
      return `@group(0) @binding(${i}) var<storage, ${access}> ${b.name}: array<${element}>;`;
    })
    .join('\n');
}

/**
 * Emits load_NAME(row, c) → vec4 (elements 4c..4c+3 of the row starting at float offset
 * `row`) and, for outputs, store_NAME(row, c, value). When D is not a multiple of 4 the
 * elements at d ≥ D read as 0 and are never written.
 */
function rowAccessors(bindings: Binding[], D: number, p: Plan): string {
  const out: string[] = [];
  for (const b of bindings) {
    if (b.kind !== 'rows') continue;
    if (p.aligned) {
      out.push(`fn load_${b.name}(row: u32, c: u32) -> vec4f { return ${b.name}[row / 4u + c]; }`);
      if (b.write) out.push(`fn store_${b.name}(row: u32, c: u32, value: vec4f) { ${b.name}[row / 4u + c] = value; }`);
      continue;
    }
    const lanes = ['x', 'y', 'z', 'w'];
    const loads = lanes.map((lane, e) => `if (4u * c + ${e}u < ${D}u) { packed.${lane} = ${b.name}[row + 4u * c + ${e}u]; }`);
    out.push(`fn load_${b.name}(row: u32, c: u32) -> vec4f {\n  var packed = vec4f(0.0);\n  ${loads.join('\n  ')}\n  return packed;\n}`);
    if (b.write) {
      const stores = lanes.map((lane, e) => `if (4u * c + ${e}u < ${D}u) { ${b.name}[row + 4u * c + ${e}u] = value.${lane}; }`);
      out.push(`fn store_${b.name}(row: u32, c: u32, value: vec4f) {\n  ${stores.join('\n  ')}\n}`);
    }
  }
  return out.join('\n');
}

/** Uniforms, bindings, accessors and the row-offset helper every attention kernel starts with. */
function prelude(bindings: Binding[], D: number, p: Plan): string {
  return /* wgsl */ `
struct U { T: u32, H: u32, strideB: u32, strideH: u32, strideT: u32, blocks: u32, items: u32, scale: f32 }
${declareBindings(bindings, p)}
@group(0) @binding(${bindings.length}) var<uniform> u: U;
${rowAccessors(bindings, D, p)}

// Float offset of row t of head bh = b·H + h.
fn rowOffset(bh: u32, t: u32) -> u32 {
  return (bh / u.H) * u.strideB + (bh % u.H) * u.strideH + t * u.strideT;
}`;
}

/**
 * Entry point header. It defines bh (the head), and for each owned row r: row_r, clamped
 * to T − 1 so that every load stays in bounds, valid_r (whether the row exists and may be
 * stored), and off_r (its float offset).
 *
 * Tiled: one workgroup per (block of rows, head), one row per invocation. The early return
 * depends only on the workgroup id and uniforms, so it is uniform and the barriers below
 * stay valid. Direct: one invocation per (block of R rows, head), packed 64 to a workgroup.
 */
function entry(p: Plan): string {
  const R = p.rowsPerInvocation;
  const firstRow = p.direct
    ? /* wgsl */ `let item = (wid.x + wid.y * nw.x) * ${p.workgroupSize}u + lid;
  if (item >= u.items) { return; }
  let bh = item / u.blocks;
  let firstRow = (item % u.blocks) * ${R}u;`
    : /* wgsl */ `let item = wid.x + wid.y * nw.x;
  if (item >= u.items) { return; }
  let bh = item / u.blocks;
  let firstRow = (item % u.blocks) * ${p.workgroupSize}u + lid;`;
  const rows = unroll(R, (r) => `let row_${r} = min(firstRow + ${r}u, u.T - 1u);
  let valid_${r} = firstRow + ${r}u < u.T;
  let off_${r} = rowOffset(bh, row_${r});`);

  return /* wgsl */ `
@compute @workgroup_size(${p.workgroupSize})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u, @builtin(local_invocation_index) lid: u32) {
  ${firstRow}
  ${rows}`;
}

/** Stages `tile` rows from t0 of two row tensors into workgroup arrays; rows at t ≥ T are zero-filled. */
function stageTiles(p: Plan, a: [string, string], b: [string, string]): string {
  return /* wgsl */ `
    workgroupBarrier();
    for (var e = lid; e < ${p.tile * p.dv4}u; e += ${p.workgroupSize}u) {
      let t = t0 + e / ${p.dv4}u;
      let c = e % ${p.dv4}u;
      var va = vec4f(0.0);
      var vb = vec4f(0.0);
      if (t < u.T) {
        let off = rowOffset(bh, t);
        va = load_${a[0]}(off, c);
        vb = load_${b[0]}(off, c);
      }
      ${a[1]}[e] = va;
      ${b[1]}[e] = vb;
    }
    workgroupBarrier();`;
}

/** Reads vec4 c of the other side's current row j in the loop body. */
type RowRead = (c: number) => string;

/**
 * Emits the loop over every row j of the other side (the T keys, or the T queries) of head
 * bh, reading two row tensors a and b. body receives readers for the current row of a and
 * b. Direct: the rows are loaded from storage into registers, once per invocation. Tiled:
 * they are staged tile by tile in workgroup memory, named by the second entry of a and b.
 */
function otherRowsLoop(p: Plan, a: [string, string], b: [string, string], body: (readA: RowRead, readB: RowRead) => string, extraStaging = ''): string {
  const { dv4 } = p;
  if (p.direct) {
    return /* wgsl */ `
  let headOff = rowOffset(bh, 0u);
  for (var j = 0u; j < u.T; j++) {
    let jOff = headOff + j * u.strideT;
    var rowA: array<vec4f, ${dv4}>;
    var rowB: array<vec4f, ${dv4}>;
    ${unroll(dv4, (c) => `rowA[${c}] = load_${a[0]}(jOff, ${c}u); rowB[${c}] = load_${b[0]}(jOff, ${c}u);`, '    ')}
    ${body((c) => `rowA[${c}]`, (c) => `rowB[${c}]`)}
  }`;
  }
  return /* wgsl */ `
  for (var t0 = 0u; t0 < u.T; t0 += ${p.tile}u) {
    ${stageTiles(p, a, b)}
    ${extraStaging}
    let count = min(${p.tile}u, u.T - t0);
    // j is the row of the other side, i its place in the tile.
    for (var i = 0u; i < count; i++) {
      let j = t0 + i;
      let base = i * ${dv4}u;
      ${body((c) => `${a[1]}[base + ${c}u]`, (c) => `${b[1]}[base + ${c}u]`)}
    }
  }`;
}

// ---- forward --------------------------------------------------------------------------

/**
 * out = softmax(q·kᵀ/√D)·v, and lse [B, H, T] = log Σ_j exp(q·k_j/√D) per query row.
 * q, k, v, out: [B, H, T, D] or [B, T, H·D] per dims.layout.
 */
export function attentionForward(
  r: KernelRunner,
  dims: AttentionDims,
  bufs: { q: GPUBuffer; k: GPUBuffer; v: GPUBuffer; out: GPUBuffer; lse: GPUBuffer },
): void {
  const p = plan(dims, 'forward');
  const bindings: Binding[] = [
    { name: 'q', kind: 'rows', write: false, buffer: bufs.q },
    { name: 'k', kind: 'rows', write: false, buffer: bufs.k },
    { name: 'v', kind: 'rows', write: false, buffer: bufs.v },
    { name: 'o', kind: 'rows', write: true, buffer: bufs.out },
    { name: 'lse', kind: 'flat', write: true, buffer: bufs.lse },
  ];

  r.dispatch({
    kernel: 'attention_fwd',
    key: planKey(dims, p),
    code: () => forwardSource(bindings, dims.D, p),
    buffers: bindings.map((b) => b.buffer),
    uniforms: uniforms(dims, p),
    workgroups: workgroups(r, dims, p),
  });
}

function forwardSource(bindings: Binding[], D: number, p: Plan): string {
  const { dv4, tile } = p;
  const R = p.rowsPerInvocation;

  // Online softmax: m is the running max of the scores seen so far, l = Σ exp(s − m), and
  // acc = Σ exp(s − m)·v. A larger max rescales both by exp(m_old − m_new) ≤ 1, so no exp
  // argument is ever positive and scores of any magnitude stay finite.
  const keyStep = (readK: RowRead, readV: RowRead) => /* wgsl */ `
    ${unroll(R, (r) => `var weight_${r}: f32;\n    var rescale_${r}: f32;`, '    ')}
    ${unroll(R, (r) => `{
      var score = 0.0;
      ${unroll(dv4, (c) => `score += dot(qRow[${r * dv4 + c}], ${readK(c)});`, '      ')}
      let mNew = max(m[${r}], score);
      rescale_${r} = exp(m[${r}] - mNew);
      weight_${r} = exp(score - mNew);
      l[${r}] = l[${r}] * rescale_${r} + weight_${r};
      m[${r}] = mNew;
    }`, '    ')}
    ${unrollRows(p, (r, c, rc) => `acc[${rc}] = acc[${rc}] * rescale_${r} + weight_${r} * ${readV(c)};`, '    ')}`;

  return /* wgsl */ `
${prelude(bindings, D, p)}
${p.direct ? '' : `var<workgroup> kTile: array<vec4f, ${tile * dv4}>;\nvar<workgroup> vTile: array<vec4f, ${tile * dv4}>;`}
${entry(p)}

  // Query rows pre-scaled by 1/√D, so q·k is already the score.
  var qRow: array<vec4f, ${R * dv4}>;
  var acc: array<vec4f, ${R * dv4}>;
  var m: array<f32, ${R}>;
  var l: array<f32, ${R}>;
  ${unrollRows(p, (r, c, rc) => `qRow[${rc}] = load_q(off_${r}, ${c}u) * u.scale; acc[${rc}] = vec4f(0.0);`)}
  ${unroll(R, (r) => `m[${r}] = ${LOWEST_SCORE}; l[${r}] = 0.0;`)}
  ${otherRowsLoop(p, ['k', 'kTile'], ['v', 'vTile'], keyStep)}

  // The running max is one of the scores, so l ≥ 1.
  ${unroll(R, (r) => `if (valid_${r}) {
    ${unroll(dv4, (c) => `store_o(off_${r}, ${c}u, acc[${r * dv4 + c}] / l[${r}]);`, '    ')}
    lse[bh * u.T + row_${r}] = m[${r}] + log(l[${r}]);
  }`)}
}`;
}

// ---- backward -------------------------------------------------------------------------

/** delta [B, H, T] = Σ_d dout·out per query row, the softmax term shared by dQ and dK. */
export function attentionBackwardDelta(
  r: KernelRunner,
  dims: AttentionDims,
  bufs: { out: GPUBuffer; dout: GPUBuffer; delta: GPUBuffer },
): void {
  const p = plan(dims, 'delta');
  const bindings: Binding[] = [
    { name: 'o', kind: 'rows', write: false, buffer: bufs.out },
    { name: 'dO', kind: 'rows', write: false, buffer: bufs.dout },
    { name: 'delta', kind: 'flat', write: true, buffer: bufs.delta },
  ];

  r.dispatch({
    kernel: 'attention_bwd_delta',
    key: planKey(dims, p),
    code: () => /* wgsl */ `
${prelude(bindings, dims.D, p)}
${entry(p)}
  ${unroll(p.rowsPerInvocation, (r) => `if (valid_${r}) {
    var sum = 0.0;
    ${unroll(p.dv4, (c) => `sum += dot(load_dO(off_${r}, ${c}u), load_o(off_${r}, ${c}u));`, '    ')}
    delta[bh * u.T + row_${r}] = sum;
  }`)}
}`,
    buffers: bindings.map((b) => b.buffer),
    uniforms: uniforms(dims, p),
    workgroups: workgroups(r, dims, p),
  });
}

/**
 * dK and/or dV, one invocation per key row (or few), looping over all query rows. With
 * S = q·kᵀ/√D and P = exp(S − lse): dV = Pᵀ·dO, dS = P∘(dO·vᵀ − delta), dK = dSᵀ·q/√D.
 * Pass null for a gradient that is not needed: without dk the kernel skips dS entirely,
 * and then v and delta are not read (pass null for them too).
 */
export function attentionBackwardKV(
  r: KernelRunner,
  dims: AttentionDims,
  bufs: {
    q: GPUBuffer;
    k: GPUBuffer;
    v: GPUBuffer | null;
    dout: GPUBuffer;
    lse: GPUBuffer;
    delta: GPUBuffer | null;
    dk: GPUBuffer | null;
    dv: GPUBuffer | null;
  },
): void {
  const p = plan(dims, 'dkdv');
  const needDK = bufs.dk !== null;
  const needDV = bufs.dv !== null;
  if (!needDK && !needDV) throw new Error('attentionBackwardKV: neither dk nor dv was requested');
  if (needDK && (!bufs.v || !bufs.delta)) throw new Error('attentionBackwardKV: v or delta is missing, and dk requires both');

  const bindings: Binding[] = [
    { name: 'q', kind: 'rows', write: false, buffer: bufs.q },
    { name: 'k', kind: 'rows', write: false, buffer: bufs.k },
    { name: 'dO', kind: 'rows', write: false, buffer: bufs.dout },
    { name: 'lse', kind: 'flat', write: false, buffer: bufs.lse },
  ];
  if (needDK) {
    bindings.push({ name: 'v', kind: 'rows', write: false, buffer: bufs.v! });
    bindings.push({ name: 'delta', kind: 'flat', write: false, buffer: bufs.delta! });
    bindings.push({ name: 'dk', kind: 'rows', write: true, buffer: bufs.dk! });
  }
  if (needDV) bindings.push({ name: 'dv', kind: 'rows', write: true, buffer: bufs.dv! });

  let tag = 'dK+dV';
  if (!needDV) tag = 'dK';
  if (!needDK) tag = 'dV';
  r.dispatch({
    kernel: 'attention_bwd_dkdv',
    key: `${planKey(dims, p)}|${tag}`,
    code: () => backwardKVSource(bindings, dims.D, p, needDK, needDV),
    buffers: bindings.map((b) => b.buffer),
    uniforms: uniforms(dims, p),
    workgroups: workgroups(r, dims, p),
    tag,
  });
}

function backwardKVSource(bindings: Binding[], D: number, p: Plan, needDK: boolean, needDV: boolean): string {
  const { dv4, tile } = p;
  const R = p.rowsPerInvocation;
  const zeroRows = (name: string) => unrollRows(p, (_r, _c, rc) => `${name}[${rc}] = vec4f(0.0);`);

  // One query row j against each owned key row r.
  const queryStep = (readQ: RowRead, readDO: RowRead) => {
    const rowLse = p.direct ? 'lse[bh * u.T + j]' : 'lseTile[i]';
    const rowDelta = p.direct ? 'delta[bh * u.T + j]' : 'deltaTile[i]';
    const dKStep = (r: number) => /* wgsl */ `var dWeight = 0.0;
      ${unroll(dv4, (c) => `dWeight += dot(${readDO(c)}, vRow[${r * dv4 + c}]);`, '      ')}
      let dScore = weight * (dWeight - queryDelta);
      ${unroll(dv4, (c) => `dkRow[${r * dv4 + c}] += dScore * ${readQ(c)};`, '      ')}`;
    const perKey = (r: number) => /* wgsl */ `{
      var score = 0.0;
      ${unroll(dv4, (c) => `score += dot(${readQ(c)}, kRow[${r * dv4 + c}]);`, '      ')}
      // P = exp(S − lse) recomputes the forward softmax weight; S ≤ lse, so it is at most 1.
      let weight = exp(score - queryLse);
      ${needDV ? unroll(dv4, (c) => `dvRow[${r * dv4 + c}] += weight * ${readDO(c)};`, '      ') : ''}
      ${needDK ? dKStep(r) : ''}
    }`;
    return /* wgsl */ `
    let queryLse = ${rowLse};
    ${needDK ? `let queryDelta = ${rowDelta};` : ''}
    ${unroll(R, perKey, '    ')}`;
  };

  const tileDecls = /* wgsl */ `
var<workgroup> qTile: array<vec4f, ${tile * dv4}>;
var<workgroup> dOTile: array<vec4f, ${tile * dv4}>;
var<workgroup> lseTile: array<f32, ${tile}>;
${needDK ? `var<workgroup> deltaTile: array<f32, ${tile}>;` : ''}`;
  const stageScalars = /* wgsl */ `for (var e = lid; e < ${tile}u; e += ${p.workgroupSize}u) {
      if (t0 + e < u.T) {
        lseTile[e] = lse[bh * u.T + t0 + e];
        ${needDK ? 'deltaTile[e] = delta[bh * u.T + t0 + e];' : ''}
      }
    }
    workgroupBarrier();`;

  return /* wgsl */ `
${prelude(bindings, D, p)}
${p.direct ? '' : tileDecls}
${entry(p)}

  // The owned key rows, pre-scaled by 1/√D so that q·k is the score; v is kept for dP.
  var kRow: array<vec4f, ${R * dv4}>;
  ${unrollRows(p, (r, c, rc) => `kRow[${rc}] = load_k(off_${r}, ${c}u) * u.scale;`)}
  ${needDK ? `var vRow: array<vec4f, ${R * dv4}>;\n  var dkRow: array<vec4f, ${R * dv4}>;\n  ${zeroRows('dkRow')}` : ''}
  ${needDK ? unrollRows(p, (r, c, rc) => `vRow[${rc}] = load_v(off_${r}, ${c}u);`) : ''}
  ${needDV ? `var dvRow: array<vec4f, ${R * dv4}>;\n  ${zeroRows('dvRow')}` : ''}
  ${otherRowsLoop(p, ['q', 'qTile'], ['dO', 'dOTile'], queryStep, stageScalars)}

  ${unroll(R, (r) => `if (valid_${r}) {
    ${needDK ? unroll(dv4, (c) => `store_dk(off_${r}, ${c}u, dkRow[${r * dv4 + c}] * u.scale);`, '    ') : ''}
    ${needDV ? unroll(dv4, (c) => `store_dv(off_${r}, ${c}u, dvRow[${r * dv4 + c}]);`, '    ') : ''}
  }`)}
}`;
}

/** dQ = dS·k/√D, one invocation per query row (or few), looping over all key rows (see attentionBackwardKV). */
export function attentionBackwardQ(
  r: KernelRunner,
  dims: AttentionDims,
  bufs: { q: GPUBuffer; k: GPUBuffer; v: GPUBuffer; dout: GPUBuffer; lse: GPUBuffer; delta: GPUBuffer; dq: GPUBuffer },
): void {
  const p = plan(dims, 'dq');
  const bindings: Binding[] = [
    { name: 'q', kind: 'rows', write: false, buffer: bufs.q },
    { name: 'k', kind: 'rows', write: false, buffer: bufs.k },
    { name: 'v', kind: 'rows', write: false, buffer: bufs.v },
    { name: 'dO', kind: 'rows', write: false, buffer: bufs.dout },
    { name: 'lse', kind: 'flat', write: false, buffer: bufs.lse },
    { name: 'delta', kind: 'flat', write: false, buffer: bufs.delta },
    { name: 'dq', kind: 'rows', write: true, buffer: bufs.dq },
  ];

  r.dispatch({
    kernel: 'attention_bwd_dq',
    key: planKey(dims, p),
    code: () => backwardQSource(bindings, dims.D, p),
    buffers: bindings.map((b) => b.buffer),
    uniforms: uniforms(dims, p),
    workgroups: workgroups(r, dims, p),
  });
}

function backwardQSource(bindings: Binding[], D: number, p: Plan): string {
  const { dv4, tile } = p;
  const R = p.rowsPerInvocation;

  // One key row j against each owned query row r.
  const keyStep = (readK: RowRead, readV: RowRead) =>
    unroll(
      R,
      (r) => /* wgsl */ `{
      var score = 0.0;
      var dWeight = 0.0;
      ${unroll(dv4, (c) => `score += dot(qRow[${r * dv4 + c}], ${readK(c)});`, '      ')}
      ${unroll(dv4, (c) => `dWeight += dot(dORow[${r * dv4 + c}], ${readV(c)});`, '      ')}
      let dScore = exp(score - rowLse[${r}]) * (dWeight - rowDelta[${r}]);
      ${unroll(dv4, (c) => `dqRow[${r * dv4 + c}] += dScore * ${readK(c)};`, '      ')}
    }`,
      '    ',
    );

  return /* wgsl */ `
${prelude(bindings, D, p)}
${p.direct ? '' : `var<workgroup> kTile: array<vec4f, ${tile * dv4}>;\nvar<workgroup> vTile: array<vec4f, ${tile * dv4}>;`}
${entry(p)}

  var qRow: array<vec4f, ${R * dv4}>;
  var dORow: array<vec4f, ${R * dv4}>;
  var dqRow: array<vec4f, ${R * dv4}>;
  var rowLse: array<f32, ${R}>;
  var rowDelta: array<f32, ${R}>;
  ${unrollRows(p, (r, c, rc) => `qRow[${rc}] = load_q(off_${r}, ${c}u) * u.scale; dORow[${rc}] = load_dO(off_${r}, ${c}u); dqRow[${rc}] = vec4f(0.0);`)}
  ${unroll(R, (r) => `rowLse[${r}] = lse[bh * u.T + row_${r}]; rowDelta[${r}] = delta[bh * u.T + row_${r}];`)}
  ${otherRowsLoop(p, ['k', 'kTile'], ['v', 'vTile'], keyStep)}

  ${unroll(R, (r) => `if (valid_${r}) {
    ${unroll(dv4, (c) => `store_dq(off_${r}, ${c}u, dqRow[${r * dv4 + c}] * u.scale);`, '    ')}
  }`)}
}`;
}
