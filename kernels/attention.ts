// Fused multi-head attention, softmax(Q·Kᵀ/√D)·V, forward and backward. The T×T score
// matrix never reaches device memory: a workgroup keeps one tile of keys (or of queries)
// in workgroup memory and each invocation keeps one row's running state in registers.
// Backward follows FlashAttention-2 (Dao, 2023) in three dispatches: delta per query row,
// dK/dV per key block, dQ per query block. Each gradient element has exactly one writer,
// so no atomics are needed. Autodiff bookkeeping lives in engine/ops/attention.ts.
//
// Both layouts share one kernel family: element (b, h, t, d) sits at
// b·strideB + h·strideH + t·strideT + d, so only the uniforms differ between them.
//
// TODO: each invocation owns one row, so every element read from a staged tile feeds a
// single FMA. Owning 2–4 rows per invocation (register tiling, as in matmul) would reuse
// each read, at the cost of registers that D = 64 already runs short of.
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

/** Invocations (rows) per workgroup at most; a multiple of 8 so lavapipe's 8-wide SIMD stays full. */
const MAX_ROWS = 64;

/** Workgroup memory for the two staged tiles, well under WebGPU's guaranteed 16 KiB. */
const TILE_BYTES = 8192;

/**
 * Starting value of the running max in the forward: below any score, and finite so that
 * exp(m_old − m_new) is exp(−huge) = 0 rather than exp(−inf + inf) = NaN.
 */
const LOWEST_SCORE = '-3.0e38';

// ---- specialisation -------------------------------------------------------------------

interface Plan {
  /** Head size in vec4 units, D rounded up. */
  dv4: number;
  /** Rows of the staged tile (keys in forward and dQ, queries in dK/dV). */
  tile: number;
  /** Invocations per workgroup, one row each. */
  rows: number;
  /** Workgroups along T. */
  blocks: number;
  /** Whether every row starts at a multiple of 4 floats, so rows load as vec4. */
  aligned: boolean;
}

function plan(dims: AttentionDims): Plan {
  const { T, D } = dims;
  if (!(D >= 1 && D <= MAX_HEAD_SIZE)) throw new Error(`attention: head size ${D} is invalid; expected 1..${MAX_HEAD_SIZE}`);
  if (!(T >= 1)) throw new Error(`attention: token count ${T} is invalid; expected at least 1`);

  const dv4 = Math.ceil(D / 4);
  const tile = Math.min(64, Math.floor(TILE_BYTES / (2 * dv4 * 16)));

  // The fewest blocks of at most MAX_ROWS rows, each rounded up to a multiple of 8: T = 197
  // runs as 4 blocks of 56 rows (224 invocations) rather than 4 of 64 (256).
  const blocks = Math.ceil(T / MAX_ROWS);
  const rows = Math.ceil(Math.ceil(T / blocks) / 8) * 8;

  return { dv4, tile, rows, blocks: Math.ceil(T / rows), aligned: D % 4 === 0 };
}

function strides(dims: AttentionDims): { strideB: number; strideH: number; strideT: number } {
  const { H, T, D } = dims;
  if (dims.layout === 'bhtd') return { strideB: H * T * D, strideH: T * D, strideT: D };
  return { strideB: T * H * D, strideH: D, strideT: H * D };
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
    { u32: p.blocks * dims.B * dims.H },
    { f32: 1 / Math.sqrt(dims.D) },
  ]);
}

function workgroups(r: KernelRunner, dims: AttentionDims, p: Plan): [number, number, number] {
  return grid1d(p.blocks * dims.B * dims.H, r.maxWorkgroupsPerDim);
}

function planKey(dims: AttentionDims, p: Plan): string {
  return `D${dims.D}|rows${p.rows}|tile${p.tile}`;
}

// ---- shared WGSL ----------------------------------------------------------------------

/**
 * Emits one statement per c < n, joined as lines at the given indent. Loops over the head
 * size are unrolled here rather than in WGSL, so the per-row arrays are indexed only by
 * constants and can live in registers. Loops over keys stay WGSL loops: unrolling those
 * too ran no faster on lavapipe and took minutes to compile.
 */
// NOTE: the unrolled bodies are large at D = 64, and lavapipe (Mesa 25.0, LLVM 15) took
// 7–10 s to compile each of these kernels on two busy cores. Mesa's shader cache keeps
// the result for later runs.
function unroll(n: number, statement: (c: number) => string, indent = '  '): string {
  return Array.from({ length: n }, (_, c) => statement(c)).join(`\n${indent}`);
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
struct U { T: u32, H: u32, strideB: u32, strideH: u32, strideT: u32, blocks: u32, groups: u32, scale: f32 }
${declareBindings(bindings, p)}
@group(0) @binding(${bindings.length}) var<uniform> u: U;
${rowAccessors(bindings, D, p)}

// Float offset of row t of head bh = b·H + h.
fn rowOffset(bh: u32, t: u32) -> u32 {
  return (bh / u.H) * u.strideB + (bh % u.H) * u.strideH + t * u.strideT;
}`;
}

/**
 * Entry point header: one workgroup per (block of rows, head). The early return depends
 * only on the workgroup id and uniforms, so it is uniform and the barriers below stay valid.
 */
function entry(p: Plan): string {
  return /* wgsl */ `
@compute @workgroup_size(${p.rows})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nw: vec3u, @builtin(local_invocation_index) lid: u32) {
  let group = wid.x + wid.y * nw.x;
  if (group >= u.groups) { return; }
  let block = group % u.blocks;
  let bh = group / u.blocks;
  let row = block * ${p.rows}u + lid;
  let rowValid = row < u.T;`;
}

/** Stages `tile` rows from t0 of two row tensors into workgroup arrays; rows at t ≥ T are zero-filled. */
function stageTiles(p: Plan, a: [string, string], b: [string, string]): string {
  return /* wgsl */ `
    workgroupBarrier();
    for (var e = lid; e < ${p.tile * p.dv4}u; e += ${p.rows}u) {
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
  const p = plan(dims);
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

  return /* wgsl */ `
${prelude(bindings, D, p)}
var<workgroup> kTile: array<vec4f, ${tile * dv4}>;
var<workgroup> vTile: array<vec4f, ${tile * dv4}>;
${entry(p)}

  // The query row is pre-scaled by 1/√D, so q·k is already the score.
  var qRow: array<vec4f, ${dv4}>;
  var acc: array<vec4f, ${dv4}>;
  ${unroll(dv4, (c) => `qRow[${c}] = vec4f(0.0); acc[${c}] = vec4f(0.0);`)}
  let qOff = rowOffset(bh, row);
  if (rowValid) {
    ${unroll(dv4, (c) => `qRow[${c}] = load_q(qOff, ${c}u) * u.scale;`, '    ')}
  }

  // Online softmax: m is the running max of the scores seen so far, l = Σ exp(s − m), and
  // acc = Σ exp(s − m)·v. A larger max rescales both by exp(m_old − m_new) ≤ 1, so no exp
  // argument is ever positive and scores of any magnitude stay finite.
  var m = ${LOWEST_SCORE};
  var l = 0.0;
  for (var t0 = 0u; t0 < u.T; t0 += ${tile}u) {
    ${stageTiles(p, ['k', 'kTile'], ['v', 'vTile'])}

    let keys = min(${tile}u, u.T - t0);
    for (var j = 0u; j < keys; j++) {
      let base = j * ${dv4}u;
      var score = 0.0;
      ${unroll(dv4, (c) => `score += dot(qRow[${c}], kTile[base + ${c}u]);`, '      ')}

      let mNew = max(m, score);
      let rescale = exp(m - mNew);
      let weight = exp(score - mNew);
      l = l * rescale + weight;
      ${unroll(dv4, (c) => `acc[${c}] = acc[${c}] * rescale + weight * vTile[base + ${c}u];`, '      ')}
      m = mNew;
    }
  }

  // The running max is one of the scores, so l ≥ 1.
  if (rowValid) {
    ${unroll(dv4, (c) => `store_o(qOff, ${c}u, acc[${c}] / l);`, '    ')}
    lse[bh * u.T + row] = m + log(l);
  }
}`;
}

// ---- backward -------------------------------------------------------------------------

/** delta [B, H, T] = Σ_d dout·out per query row, the softmax term shared by dQ and dK. */
export function attentionBackwardDelta(
  r: KernelRunner,
  dims: AttentionDims,
  bufs: { out: GPUBuffer; dout: GPUBuffer; delta: GPUBuffer },
): void {
  const p = plan(dims);
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
  if (!rowValid) { return; }
  let off = rowOffset(bh, row);
  var sum = 0.0;
  ${unroll(p.dv4, (c) => `sum += dot(load_dO(off, ${c}u), load_o(off, ${c}u));`)}
  delta[bh * u.T + row] = sum;
}`,
    buffers: bindings.map((b) => b.buffer),
    uniforms: uniforms(dims, p),
    workgroups: workgroups(r, dims, p),
  });
}

/**
 * dK and/or dV, one invocation per key row, looping over query tiles. With S = q·kᵀ/√D and
 * P = exp(S − lse): dV = Pᵀ·dO, dS = P∘(dO·vᵀ − delta), dK = dSᵀ·q/√D. Pass null for a
 * gradient that is not needed: without dk the kernel skips dS entirely, and then v and
 * delta are not read (pass null for them too).
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
  const p = plan(dims);
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
  const zeroRow = (name: string) => unroll(dv4, (c) => `${name}[${c}] = vec4f(0.0);`);

  const dKStep = /* wgsl */ `var dWeight = 0.0;
      ${unroll(dv4, (c) => `dWeight += dot(dOTile[base + ${c}u], vRow[${c}]);`, '      ')}
      let dScore = weight * (dWeight - deltaTile[i]);
      ${unroll(dv4, (c) => `dkRow[${c}] += dScore * qTile[base + ${c}u];`, '      ')}`;
  return /* wgsl */ `
${prelude(bindings, D, p)}
var<workgroup> qTile: array<vec4f, ${tile * dv4}>;
var<workgroup> dOTile: array<vec4f, ${tile * dv4}>;
var<workgroup> lseTile: array<f32, ${tile}>;
${needDK ? `var<workgroup> deltaTile: array<f32, ${tile}>;` : ''}
${entry(p)}

  // This invocation's key row, pre-scaled by 1/√D so that q·k is the score; v is kept for dP.
  var kRow: array<vec4f, ${dv4}>;
  ${zeroRow('kRow')}
  ${needDK ? `var vRow: array<vec4f, ${dv4}>;\n  var dkRow: array<vec4f, ${dv4}>;\n  ${zeroRow('vRow')}\n  ${zeroRow('dkRow')}` : ''}
  ${needDV ? `var dvRow: array<vec4f, ${dv4}>;\n  ${zeroRow('dvRow')}` : ''}
  let kOff = rowOffset(bh, row);
  if (rowValid) {
    ${unroll(dv4, (c) => `kRow[${c}] = load_k(kOff, ${c}u) * u.scale;`, '    ')}
    ${needDK ? unroll(dv4, (c) => `vRow[${c}] = load_v(kOff, ${c}u);`, '    ') : ''}
  }

  for (var t0 = 0u; t0 < u.T; t0 += ${tile}u) {
    ${stageTiles(p, ['q', 'qTile'], ['dO', 'dOTile'])}
    for (var e = lid; e < ${tile}u; e += ${p.rows}u) {
      if (t0 + e < u.T) {
        lseTile[e] = lse[bh * u.T + t0 + e];
        ${needDK ? 'deltaTile[e] = delta[bh * u.T + t0 + e];' : ''}
      }
    }
    workgroupBarrier();

    let queries = min(${tile}u, u.T - t0);
    for (var i = 0u; i < queries; i++) {
      let base = i * ${dv4}u;
      var score = 0.0;
      ${unroll(dv4, (c) => `score += dot(qTile[base + ${c}u], kRow[${c}]);`, '      ')}
      // P = exp(S − lse) recomputes the forward softmax weight; S ≤ lse, so it is at most 1.
      let weight = exp(score - lseTile[i]);
      ${needDV ? unroll(dv4, (c) => `dvRow[${c}] += weight * dOTile[base + ${c}u];`, '      ') : ''}
      ${needDK ? dKStep : ''}
    }
  }

  if (rowValid) {
    ${needDK ? unroll(dv4, (c) => `store_dk(kOff, ${c}u, dkRow[${c}] * u.scale);`, '    ') : ''}
    ${needDV ? unroll(dv4, (c) => `store_dv(kOff, ${c}u, dvRow[${c}]);`, '    ') : ''}
  }
}`;
}

/** dQ = dS·k/√D, one invocation per query row, looping over key tiles (see attentionBackwardKV). */
export function attentionBackwardQ(
  r: KernelRunner,
  dims: AttentionDims,
  bufs: { q: GPUBuffer; k: GPUBuffer; v: GPUBuffer; dout: GPUBuffer; lse: GPUBuffer; delta: GPUBuffer; dq: GPUBuffer },
): void {
  const p = plan(dims);
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

  return /* wgsl */ `
${prelude(bindings, D, p)}
var<workgroup> kTile: array<vec4f, ${tile * dv4}>;
var<workgroup> vTile: array<vec4f, ${tile * dv4}>;
${entry(p)}

  var qRow: array<vec4f, ${dv4}>;
  var dORow: array<vec4f, ${dv4}>;
  var dqRow: array<vec4f, ${dv4}>;
  ${unroll(dv4, (c) => `qRow[${c}] = vec4f(0.0); dORow[${c}] = vec4f(0.0); dqRow[${c}] = vec4f(0.0);`)}
  var rowLse = 0.0;
  var rowDelta = 0.0;
  let qOff = rowOffset(bh, row);
  if (rowValid) {
    ${unroll(dv4, (c) => `qRow[${c}] = load_q(qOff, ${c}u) * u.scale;`, '    ')}
    ${unroll(dv4, (c) => `dORow[${c}] = load_dO(qOff, ${c}u);`, '    ')}
    rowLse = lse[bh * u.T + row];
    rowDelta = delta[bh * u.T + row];
  }

  for (var t0 = 0u; t0 < u.T; t0 += ${tile}u) {
    ${stageTiles(p, ['k', 'kTile'], ['v', 'vTile'])}

    let keys = min(${tile}u, u.T - t0);
    for (var j = 0u; j < keys; j++) {
      let base = j * ${dv4}u;
      var score = 0.0;
      var dWeight = 0.0;
      ${unroll(dv4, (c) => `score += dot(qRow[${c}], kTile[base + ${c}u]);`, '      ')}
      ${unroll(dv4, (c) => `dWeight += dot(dORow[${c}], vTile[base + ${c}u]);`, '      ')}
      let dScore = exp(score - rowLse) * (dWeight - rowDelta);
      ${unroll(dv4, (c) => `dqRow[${c}] += dScore * kTile[base + ${c}u];`, '      ')}
    }
  }

  if (rowValid) {
    ${unroll(dv4, (c) => `store_dq(qOff, ${c}u, dqRow[${c}] * u.scale);`, '    ')}
  }
}`;
}
