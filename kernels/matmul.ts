// Batched matrix multiply C = alpha·op(A)·op(B) (+ C) (+ bias), then optionally GELU, in
// one dispatch per call. Shapes, strides and buffer sizes are validated here on the host;
// autodiff, tensors and the choice of which products to run live in engine/ops/matmul.ts.
//
// The tiling was chosen by measurement on lavapipe (Mesa 25.0, LLVM 15; bench/RESULTS.md).
// lavapipe runs 8 invocations per 256-bit vector. It turns every storage-buffer load whose
// address is not a compile-time constant into a loop over the 8 lanes, each lane
// bounds-checked and branched, so loads, not FMAs, bound a matmul there. The kernel
// therefore loads each value into as few lanes as it can:
//  - a workgroup is 8 invocations computing a TM×32 tile of C, and each invocation owns 4
//    adjacent columns (one vec4) of all TM rows;
//  - per step of 4 k, each invocation loads its own B values (4 vec4) and one vec4 of A per
//    8 rows. subgroupBroadcast hands every A value to the other 7 lanes, so A costs 1/8 of
//    the lane loads of reading it directly;
//  - each accumulator is written once per step (a chain of 4 fma), because lavapipe blends
//    every write to a loop-carried variable with the execution mask.
// The broadcast needs the 8 invocations to form one subgroup, so it is used only on devices
// whose subgroup size is always 8 (lavapipe). Elsewhere every invocation loads its own A.
//
// Tails: row, column and k indices are clamped where they can pass the edge, so every load
// is in bounds. k values past K are zeroed, and rows or columns past the edge compute
// values that are never stored. Whether M, N and K are tile multiples is part of the
// specialisation key, so the aligned variant has no clamps, masks or store guards.
import { GELU_WGSL } from './gelu.ts';
import { packUniforms, type KernelRunner } from './runner.ts';

export interface MatmulArgs {
  a: GPUBuffer; b: GPUBuffer; c: GPUBuffer;
  M: number; N: number; K: number;   // C[M,N] = alpha * op(A)[M,K] · op(B)[K,N] (+ C if accumulate) (+ bias[N]); then optional GELU
  batch?: number;                     // default 1
  strideA?: number; strideB?: number; strideC?: number; // element strides between batch items; default M*K, K*N, M*N; 0 broadcasts that operand
  transA?: boolean;                   // A stored as [K, M]
  transB?: boolean;                   // B stored as [N, K]  (so X·Wᵀ with W [out,in] is transB)
  alpha?: number;                     // default 1
  accumulate?: boolean;               // C += result instead of C = result
  bias?: GPUBuffer;                   // [N], added after alpha·AB (+C_old)
  gelu?: boolean;                     // y = gelu_tanh(z) where z = alpha·AB (+C_old) (+bias)
  preact?: GPUBuffer;                 // with gelu: z is also written here (needed by backward)
  tag?: string;                       // counter tag, e.g. 'dW' for weight gradients
}

/** Rows of C per workgroup, a multiple of 8 (each lane loads A for one row in 8). */
const TM = 16;
/** Invocations per workgroup; each owns 4 adjacent columns, so a tile is TM × 32. */
const LANES = 8;
const TILE_N = LANES * 4;

type Path = 'broadcast' | 'direct';

/** Specialisation of the WGSL; the dispatch key is built from it. */
interface Variant {
  path: Path;
  transA: boolean;
  transB: boolean;
  /** The kernel computes Cᵀ (rows of the tile are columns of C) and stores it transposed. */
  swap: boolean;
  /** Bound as array<vec4<f32>>: the operand's contiguous extent and batch stride are multiples of 4. vecC covers bias and preact. */
  vecA: boolean;
  vecB: boolean;
  vecC: boolean;
  fullM: boolean; // M % TM == 0
  fullN: boolean; // N % 32 == 0
  fullK: boolean; // K % 4 == 0
  accumulate: boolean;
  bias: boolean;
  gelu: boolean;
  preact: boolean;
}

/** C[M,N] (+)= alpha·op(A)·op(B) (+ bias), optional GELU; one "matmul" dispatch. c must not alias a or b. */
export function matmul(r: KernelRunner, args: MatmulArgs): void {
  const { M, N, K } = args;
  const batch = args.batch ?? 1;
  const strideA = args.strideA ?? M * K;
  const strideB = args.strideB ?? K * N;
  const strideC = args.strideC ?? M * N;
  const transA = args.transA ?? false;
  const transB = args.transB ?? false;
  validate(args, batch, strideA, strideB, strideC);

  // A·B with neither operand transposed measured about 20% slower than the other three
  // layouts on lavapipe, so it runs as Cᵀ = Bᵀ·Aᵀ (both operands read transposed), and the
  // epilogue stores the tile transposed. `view` is the kernel's M, N, A and B.
  const swap = !transA && !transB;
  const view = swap
    ? { M: N, N: M, a: args.b, b: args.a, strideA: strideB, strideB: strideA, transA: true, transB: true }
    : { M, N, a: args.a, b: args.b, strideA, strideB, transA, transB };

  const v: Variant = {
    path: hasSubgroupsOf8(r) ? 'broadcast' : 'direct',
    transA: view.transA,
    transB: view.transB,
    swap,
    vecA: (view.transA ? view.M : K) % 4 === 0 && view.strideA % 4 === 0,
    vecB: (view.transB ? K : view.N) % 4 === 0 && view.strideB % 4 === 0,
    vecC: N % 4 === 0 && strideC % 4 === 0,
    fullM: view.M % TM === 0,
    fullN: view.N % TILE_N === 0,
    fullK: K % 4 === 0,
    accumulate: args.accumulate ?? false,
    bias: args.bias !== undefined,
    gelu: args.gelu ?? false,
    preact: args.preact !== undefined,
  };

  // Row blocks and batch items share the y and z grid dimensions so neither passes the limit.
  const rowBlocks = Math.ceil(view.M / TM);
  const tiles = rowBlocks * batch;
  const gridX = Math.ceil(view.N / TILE_N);
  const gridY = Math.min(tiles, r.maxWorkgroupsPerDim);
  const gridZ = Math.ceil(tiles / gridY);
  if (gridX > r.maxWorkgroupsPerDim || gridZ > r.maxWorkgroupsPerDim) {
    throw new Error(`matmul: grid ${gridX}×${gridY}×${gridZ} exceeds the device limit of ${r.maxWorkgroupsPerDim} workgroups per dimension (M=${M}, N=${N}, batch=${batch})`);
  }

  const buffers = [view.a, view.b, args.c];
  if (args.bias) buffers.push(args.bias);
  if (args.preact) buffers.push(args.preact);

  r.dispatch({
    kernel: 'matmul',
    key: variantKey(v),
    code: () => matmulWgsl(v),
    buffers,
    uniforms: packUniforms([
      { u32: view.M }, { u32: view.N }, { u32: K }, { u32: tiles }, { u32: rowBlocks }, { u32: gridY },
      { u32: view.strideA }, { u32: view.strideB }, { u32: strideC }, { f32: args.alpha ?? 1 },
    ]),
    workgroups: [gridX, gridY, gridZ],
    tag: args.tag,
  });
}

function validate(args: MatmulArgs, batch: number, strideA: number, strideB: number, strideC: number): void {
  const { M, N, K } = args;
  const counts: Array<[string, number, number]> = [
    ['M', M, 1], ['N', N, 1], ['K', K, 1], ['batch', batch, 1],
    ['strideA', strideA, 0], ['strideB', strideB, 0], ['strideC', strideC, 0],
  ];
  for (const [name, value, min] of counts) {
    if (!Number.isInteger(value) || value < min) throw new Error(`matmul: invalid ${name} = ${value}; expected an integer ≥ ${min}`);
  }
  if (args.c === args.a || args.c === args.b) throw new Error('matmul: output buffer c must not alias input a or b');
  if (args.preact && !args.gelu) throw new Error('matmul: preact is only written with gelu: true');
  if (strideC === 0 && batch > 1) throw new Error('matmul: strideC = 0 would make every batch item write the same output');

  const need = (name: string, buf: GPUBuffer, elements: number) => {
    if (buf.size < elements * 4) throw new Error(`matmul: buffer ${name} has ${buf.size} bytes, needs ${elements * 4} (M=${M}, N=${N}, K=${K}, batch=${batch})`);
  };
  need('a', args.a, (batch - 1) * strideA + M * K);
  need('b', args.b, (batch - 1) * strideB + K * N);
  need('c', args.c, (batch - 1) * strideC + M * N);
  if (args.bias) need('bias', args.bias, N);
  if (args.preact) need('preact', args.preact, (batch - 1) * strideC + M * N);
}

/**
 * Reports whether the device has WGSL subgroups of size always 8, so that one workgroup of
 * 8 invocations is one subgroup. KernelRunner declares neither fact, so this reads the
 * `features` set and `device` of the engine runtime. A runner without them gets the direct path.
 * NOTE: the direct path keeps the 8-invocation workgroup, which leaves most of a GPU's
 * SIMD width idle. It is correct on every device but tuned for none.
 */
function hasSubgroupsOf8(r: KernelRunner): boolean {
  return r.features.has('subgroups') && r.subgroupMinSize === LANES && r.subgroupMaxSize === LANES;
}

function variantKey(v: Variant): string {
  const flags = Object.entries(v).filter(([, value]) => value === true).map(([name]) => name);
  return `tm${TM} ${v.path} ${flags.join(' ')}`;
}

// ---- WGSL generation -------------------------------------------------------------------
//
// Names in the generated code: m0 is the tile's first row, n0 the first of this
// invocation's 4 columns, aBase/bBase/cBase the batch item's offsets (elements), acc<i> the
// vec4 accumulator of row m0+i, and lane the subgroup invocation id (broadcast path).

function matmulWgsl(v: Variant): string {
  const array = (vec: boolean) => (vec ? 'array<vec4<f32>>' : 'array<f32>');
  const bindings = [
    `@group(0) @binding(0) var<storage, read> A: ${array(v.vecA)};`,
    `@group(0) @binding(1) var<storage, read> B: ${array(v.vecB)};`,
    `@group(0) @binding(2) var<storage, read_write> C: ${array(v.vecC)};`,
  ];
  if (v.bias) bindings.push(`@group(0) @binding(${bindings.length}) var<storage, read> bias: ${array(v.vecC)};`);
  if (v.preact) bindings.push(`@group(0) @binding(${bindings.length}) var<storage, read_write> preact: ${array(v.vecC)};`);
  bindings.push(`@group(0) @binding(${bindings.length}) var<uniform> u: U;`);

  const broadcast = v.path === 'broadcast';
  const a = aLoads(v);
  const b = bLoads(v);
  const body = [...b.loads, ...a.loads];
  for (let i = 0; i < TM; i++) {
    let chain = `acc${i}`;
    for (let kk = 0; kk < 4; kk++) chain = `fma(vec4<f32>(${a.value(i, kk)}), b${kk}, ${chain})`;
    body.push(`acc${i} = ${chain};`);
  }
  const accs = Array.from({ length: TM }, (_, i) => `var acc${i} = vec4<f32>();`);

  return /* wgsl */ `
${broadcast ? 'enable subgroups;' : ''}
${v.gelu ? GELU_WGSL : ''}
struct U { M: u32, N: u32, K: u32, tiles: u32, rowBlocks: u32, gridY: u32, strideA: u32, strideB: u32, strideC: u32, alpha: f32 }
${bindings.join('\n')}

@compute @workgroup_size(${LANES})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32${broadcast ? ', @builtin(subgroup_invocation_id) lane: u32' : ''}) {
  let tile = wg.y + wg.z * u.gridY;
  if (tile >= u.tiles) { return; }
  let item = tile / u.rowBlocks;
  let m0 = (tile % u.rowBlocks) * ${TM}u;
  let n0 = wg.x * ${TILE_N}u + li * 4u;
  let aBase = item * u.strideA;
  let bBase = item * u.strideB;
  let cBase = item * u.strideC;
  ${[...a.setup, ...b.setup].join('\n  ')}
  ${accs.join('\n  ')}

  for (var k = 0u; k < ${v.fullK ? 'u.K' : '((u.K + 3u) & ~3u)'}; k += 4u) {
    ${body.join('\n    ')}
  }

${v.swap ? epilogueTransposed(v) : epilogue(v)}
}`;
}

/** Clamps a row or column index to the last valid one when the tile can pass the edge. */
function clampIf(full: boolean, index: string, last: string): string {
  return full ? `(${index})` : `min(${index}, ${last})`;
}

/** Builds the index k + kk, clamped to K - 1 in a tail variant (its last step can pass K). */
function kAt(v: Variant, kk: number): string {
  if (kk === 0) return 'k';
  return v.fullK ? `(k + ${kk}u)` : `min(k + ${kk}u, u.K - 1u)`;
}

/** Zeroes a loaded value whose k (k + kk) is past K, in tail variants only. */
function maskK(v: Variant, value: string, kk: number | string, zero = 'vec4<f32>()'): string {
  if (v.fullK || kk === 0) return value;
  const offset = typeof kk === 'number' ? `${kk}u` : kk;
  return `select(${zero}, ${value}, k + ${offset} < u.K)`;
}

/** Zeroes the components of a vec4 over k..k+3 that are past K, in tail variants only. */
function maskK4(v: Variant, value: string): string {
  return v.fullK ? value : `select(vec4<f32>(), ${value}, vec4<bool>(true, k + 1u < u.K, k + 2u < u.K, k + 3u < u.K))`;
}

interface OperandCode {
  /** Statements before the k loop (offsets, clamped once). */
  setup: string[];
  /** Loads for one step of 4 k. */
  loads: string[];
}

/** A's loads, and value(i, kk): the expression for A[m0+i, k+kk] inside the step. */
function aLoads(v: Variant): OperandCode & { value: (i: number, kk: number) => string } {
  const setup: string[] = [];
  const loads: string[] = [];
  const lastRow = 'u.M - 1u';
  const quads = TM / 4;

  if (v.path === 'direct') {
    // Every invocation loads all TM rows itself (the same addresses in every lane).
    if (!v.transA) {
      for (let i = 0; i < TM; i++) {
        setup.push(`let aRow${i} = aBase + ${clampIf(v.fullM, `m0 + ${i}u`, lastRow)} * u.K;`);
        const load = v.vecA ? `A[(aRow${i} + k) >> 2u]` : `vec4<f32>(${[0, 1, 2, 3].map((kk) => `A[aRow${i} + ${kAt(v, kk)}]`).join(', ')})`;
        loads.push(`let a${i} = ${maskK4(v, load)};`);
      }
      return { setup, loads, value: (i, kk) => `a${i}[${kk}]` };
    }
    if (v.vecA) {
      // M % 4 == 0: rows m0+4q..m0+4q+3 at one k are one vec4, wholly inside or past the edge.
      for (let q = 0; q < quads; q++) setup.push(`let aQuad${q} = aBase + ${clampIf(v.fullM, `m0 + ${4 * q}u`, 'u.M - 4u')};`);
      for (let kk = 0; kk < 4; kk++) {
        for (let q = 0; q < quads; q++) loads.push(`let a${kk}_${q} = ${maskK(v, `A[(aQuad${q} + ${kAt(v, kk)} * u.M) >> 2u]`, kk)};`);
      }
      return { setup, loads, value: (i, kk) => `a${kk}_${Math.floor(i / 4)}[${i % 4}]` };
    }
    for (let i = 0; i < TM; i++) setup.push(`let aCol${i} = aBase + ${clampIf(v.fullM, `m0 + ${i}u`, lastRow)};`);
    for (let kk = 0; kk < 4; kk++) {
      for (let i = 0; i < TM; i++) loads.push(`let a${kk}_${i} = ${maskK(v, `A[aCol${i} + ${kAt(v, kk)} * u.M]`, kk, '0.0')};`);
    }
    return { setup, loads, value: (i, kk) => `a${kk}_${i}` };
  }

  // Broadcast path: the lanes share the step's 4·TM values of A, 4 per lane per load.
  if (!v.transA) {
    // A[m0+i, k..k+3] is one vec4: load i / 8 of lane i % 8.
    for (let r = 0; r < TM / LANES; r++) {
      setup.push(`let aLaneRow${r} = aBase + ${clampIf(v.fullM, `m0 + ${r * LANES}u + lane`, lastRow)} * u.K;`);
      const load = v.vecA ? `A[(aLaneRow${r} + k) >> 2u]` : `vec4<f32>(${[0, 1, 2, 3].map((kk) => `A[aLaneRow${r} + ${kAt(v, kk)}]`).join(', ')})`;
      loads.push(`let a${r} = ${maskK4(v, load)};`);
    }
    return { setup, loads, value: (i, kk) => `subgroupBroadcast(a${Math.floor(i / LANES)}[${kk}], ${i % LANES}u)` };
  }

  // Transposed A ([K, M]): rows m0+4q..m0+4q+3 at k+kk form unit w = kk·(TM/4) + q, which
  // is load w / 8 of lane w % 8.
  for (let r = 0; r < TM / LANES; r++) {
    setup.push(`let aUnit${r} = ${r * LANES}u + lane;`);
    setup.push(`let aUnitK${r} = aUnit${r} / ${quads}u;`);
    const quadRow = `m0 + (aUnit${r} % ${quads}u) * 4u`;
    const kRow = v.fullK ? `(k + aUnitK${r})` : `min(k + aUnitK${r}, u.K - 1u)`;
    let load: string;
    if (v.vecA) {
      setup.push(`let aUnitRow${r} = aBase + ${clampIf(v.fullM, quadRow, 'u.M - 4u')};`);
      load = `A[(aUnitRow${r} + ${kRow} * u.M) >> 2u]`;
    } else {
      for (let c = 0; c < 4; c++) setup.push(`let aUnitRow${r}_${c} = aBase + ${clampIf(v.fullM, `${quadRow} + ${c}u`, lastRow)};`);
      load = `vec4<f32>(${[0, 1, 2, 3].map((c) => `A[aUnitRow${r}_${c} + ${kRow} * u.M]`).join(', ')})`;
    }
    loads.push(`let a${r} = ${maskK(v, load, `aUnitK${r}`)};`);
  }
  const value = (i: number, kk: number) => {
    const unit = kk * quads + Math.floor(i / 4);
    return `subgroupBroadcast(a${Math.floor(unit / LANES)}[${i % 4}], ${unit % LANES}u)`;
  };
  return { setup, loads, value };
}

/**
 * B's loads: b0..b3 hold this invocation's columns n0..n0+3 at k..k+3. Each invocation
 * loads only its own columns, so nothing is shared across lanes.
 */
function bLoads(v: Variant): OperandCode {
  const setup: string[] = [];
  const loads: string[] = [];

  if (!v.transB) {
    if (v.vecB) {
      // N % 4 == 0: the 4 columns are one vec4, wholly inside or past the edge.
      setup.push(`let bCols = bBase + ${clampIf(v.fullN, 'n0', 'u.N - 4u')};`);
      for (let kk = 0; kk < 4; kk++) loads.push(`let b${kk} = ${maskK(v, `B[(bCols + ${kAt(v, kk)} * u.N) >> 2u]`, kk)};`);
      return { setup, loads };
    }
    for (let c = 0; c < 4; c++) setup.push(`let bCol${c} = bBase + ${clampIf(v.fullN, `n0 + ${c}u`, 'u.N - 1u')};`);
    for (let kk = 0; kk < 4; kk++) {
      const load = `vec4<f32>(${[0, 1, 2, 3].map((c) => `B[bCol${c} + ${kAt(v, kk)} * u.N]`).join(', ')})`;
      loads.push(`let b${kk} = ${maskK(v, load, kk)};`);
    }
    return { setup, loads };
  }

  // Transposed B ([N, K]): each column is a row of B, read 4 k at a time and regrouped.
  for (let c = 0; c < 4; c++) {
    setup.push(`let bRow${c} = bBase + ${clampIf(v.fullN, `n0 + ${c}u`, 'u.N - 1u')} * u.K;`);
    const load = v.vecB ? `B[(bRow${c} + k) >> 2u]` : `vec4<f32>(${[0, 1, 2, 3].map((kk) => `B[bRow${c} + ${kAt(v, kk)}]`).join(', ')})`;
    loads.push(`let t${c} = ${maskK4(v, load)};`);
  }
  for (let kk = 0; kk < 4; kk++) loads.push(`let b${kk} = vec4<f32>(t0[${kk}], t1[${kk}], t2[${kk}], t3[${kk}]);`);
  return { setup, loads };
}

/**
 * z = alpha·acc (+ C) (+ bias); preact = z; C = gelu(z) or z. A loop over the rows, so the
 * shader carries one copy of this code: lavapipe's compile time grows with shader size.
 */
function epilogue(v: Variant): string {
  const rows = Array.from({ length: TM }, (_, i) => `acc${i}`).join(', ');
  const lines = [`  var rows = array<vec4<f32>, ${TM}>(${rows});`];
  if (v.bias) {
    const load = v.vecC
      ? `bias[${clampIf(v.fullN, 'n0', 'u.N - 4u')} >> 2u]`
      : `vec4<f32>(${[0, 1, 2, 3].map((c) => `bias[${clampIf(v.fullN, `n0 + ${c}u`, 'u.N - 1u')}]`).join(', ')})`;
    lines.push(`  let biasCols = ${load};`);
  }

  const row: string[] = ['let cRow = cBase + row * u.N + n0;', 'var z = u.alpha * rows[row - m0];'];
  if (v.vecC) {
    if (v.accumulate) row.push('z += C[cRow >> 2u];');
    if (v.bias) row.push('z += biasCols;');
    if (v.preact) row.push('preact[cRow >> 2u] = z;');
    row.push(v.gelu ? 'C[cRow >> 2u] = vec4<f32>(gelu_tanh(z.x), gelu_tanh(z.y), gelu_tanh(z.z), gelu_tanh(z.w));' : 'C[cRow >> 2u] = z;');
  } else {
    // Scalar stores, one column at a time, each guarded at the right edge.
    if (v.bias) row.push('z += biasCols;');
    row.push('for (var c = 0u; c < 4u; c += 1u) {');
    if (!v.fullN) row.push('  if (n0 + c >= u.N) { break; }');
    row.push('  var zc = z[c];');
    if (v.accumulate) row.push('  zc += C[cRow + c];');
    if (v.preact) row.push('  preact[cRow + c] = zc;');
    row.push(v.gelu ? '  C[cRow + c] = gelu_tanh(zc);' : '  C[cRow + c] = zc;');
    row.push('}');
  }

  // The loop runs over absolute rows from m0, whose trip count the shader compiler cannot
  // bound, so it keeps one copy of the body instead of unrolling it TM times.
  const loop = `for (var row = m0; row < min(m0 + ${TM}u, u.M); row += 1u) {\n    ${row.join('\n    ')}\n  }`;
  // With vec4 stores the 4 columns are wholly inside or past the edge (N % 4 == 0).
  lines.push(v.vecC && !v.fullN ? `  if (n0 < u.N) {\n  ${loop}\n  }` : `  ${loop}`);
  return lines.join('\n');
}

/**
 * Builds the epilogue of a swapped call. The tile is Cᵀ: kernel columns n0..n0+3 are rows
 * of C, kernel rows from m0 are its columns, and bias is indexed by kernel row. u.M is the
 * length of a row of C. With vec4 stores, 4 kernel rows at one column are one vec4 of C.
 */
function epilogueTransposed(v: Variant): string {
  const rows = Array.from({ length: TM }, (_, i) => `acc${i}`).join(', ');
  const step = v.vecC ? 4 : 1;
  const body: string[] = ['let i = row - m0;'];
  if (v.vecC) {
    body.push('let cAt = (cBase + col * u.M + row) >> 2u;');
    body.push('var z = u.alpha * vec4<f32>(rows[i][c], rows[i + 1u][c], rows[i + 2u][c], rows[i + 3u][c]);');
    if (v.accumulate) body.push('z += C[cAt];');
    if (v.bias) body.push('z += bias[row >> 2u];');
    if (v.preact) body.push('preact[cAt] = z;');
    body.push(v.gelu ? 'C[cAt] = vec4<f32>(gelu_tanh(z.x), gelu_tanh(z.y), gelu_tanh(z.z), gelu_tanh(z.w));' : 'C[cAt] = z;');
  } else {
    body.push('let cAt = cBase + col * u.M + row;');
    body.push('var z = u.alpha * rows[i][c];');
    if (v.accumulate) body.push('z += C[cAt];');
    if (v.bias) body.push('z += bias[row];');
    if (v.preact) body.push('preact[cAt] = z;');
    body.push(v.gelu ? 'C[cAt] = gelu_tanh(z);' : 'C[cAt] = z;');
  }
  // Both loops start from run-time values, so the compiler keeps one copy of the body.
  return `  var rows = array<vec4<f32>, ${TM}>(${rows});
  for (var col = n0; col < min(n0 + 4u, u.N); col += 1u) {
    let c = col - n0;
    for (var row = m0; row < min(m0 + ${TM}u, u.M); row += ${step}u) {
      ${body.join('\n      ')}
    }
  }`;
}
