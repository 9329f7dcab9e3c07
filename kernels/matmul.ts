// Batched matrix multiply C = alpha·op(A)·op(B) (+ alpha2·op(A2)·op(B2)) (+ C) (+ bias),
// then optionally GELU, in one dispatch per call. The optional second product is a GEMM over
// the concatenated K range [K | K2] whose second part comes from other buffers: the LoRA
// linear layer computes Y = X·Wᵀ + s·U·Bᵀ + b and dX = dZ·W + dU·A with it, in one pass
// over Y and dX each. Shapes, strides and buffer sizes are validated here on the host;
// autodiff, tensors and the choice of which products to run live in engine/ops/.
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
// A thin C (N = 16, a LoRA rank) would leave half of the 32 columns of a tile idle, so the
// kernel then computes Cᵀ = op(B)ᵀ·op(A)ᵀ and stores it transposed (see chooseSwap).
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
  // Optional second product, added before the epilogue: all of a2, b2 and K2, or none.
  a2?: GPUBuffer;                     // op(A2) [M, K2]
  b2?: GPUBuffer;                     // op(B2) [K2, N]
  K2?: number;
  transA2?: boolean;                  // A2 stored as [K2, M]
  transB2?: boolean;                  // B2 stored as [N, K2]
  alpha2?: number;                    // default 1
  strideA2?: number; strideB2?: number; // batch strides of A2 and B2; default M*K2, K2*N
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
  /** A second product A2·B2 over K2; the flags below describe it as the kernel reads it. */
  two: boolean;
  transA2: boolean;
  transB2: boolean;
  vecA2: boolean;
  vecB2: boolean;
  fullK2: boolean; // K2 % 4 == 0
  accumulate: boolean;
  bias: boolean;
  gelu: boolean;
  preact: boolean;
}

/** One product's operands, op(a) [M, K] · op(b) [K, N], and their batch strides. */
interface Operands {
  a: GPUBuffer;
  b: GPUBuffer;
  strideA: number;
  strideB: number;
  transA: boolean;
  transB: boolean;
}

/** Returns the operands of the transposed product op(B)ᵀ·op(A)ᵀ: b becomes the left operand, and each flips its transpose. */
function transposed(p: Operands): Operands {
  return { a: p.b, b: p.a, strideA: p.strideB, strideB: p.strideA, transA: !p.transB, transB: !p.transA };
}

/**
 * C[M,N] (+)= alpha·op(A)·op(B) (+ alpha2·op(A2)·op(B2)) (+ bias), optional GELU; one
 * "matmul" dispatch. c must not alias a, b, a2 or b2.
 */
export function matmul(r: KernelRunner, args: MatmulArgs): void {
  const { M, N, K } = args;
  const batch = args.batch ?? 1;
  const strideC = args.strideC ?? M * N;
  const first: Operands = {
    a: args.a, b: args.b,
    strideA: args.strideA ?? M * K, strideB: args.strideB ?? K * N,
    transA: args.transA ?? false, transB: args.transB ?? false,
  };
  const K2 = args.K2 ?? 0;
  const second: Operands | null = args.a2 && args.b2 && args.K2 !== undefined
    ? {
      a: args.a2, b: args.b2,
      strideA: args.strideA2 ?? M * K2, strideB: args.strideB2 ?? K2 * N,
      transA: args.transA2 ?? false, transB: args.transB2 ?? false,
    }
    : null;
  validate(args, batch, first, second, strideC);

  // The kernel's M, N and operands: C's own, or those of Cᵀ = op(B)ᵀ·op(A)ᵀ (both products).
  const swap = chooseSwap(M, N, first.transA, first.transB);
  const viewM = swap ? N : M;
  const viewN = swap ? M : N;
  const view = swap ? transposed(first) : first;
  const view2 = second && swap ? transposed(second) : second;

  const v: Variant = {
    path: hasSubgroupsOf8(r) ? 'broadcast' : 'direct',
    transA: view.transA,
    transB: view.transB,
    swap,
    vecA: (view.transA ? viewM : K) % 4 === 0 && view.strideA % 4 === 0,
    vecB: (view.transB ? K : viewN) % 4 === 0 && view.strideB % 4 === 0,
    vecC: N % 4 === 0 && strideC % 4 === 0,
    fullM: viewM % TM === 0,
    fullN: viewN % TILE_N === 0,
    fullK: K % 4 === 0,
    two: view2 !== null,
    transA2: view2?.transA ?? false,
    transB2: view2?.transB ?? false,
    vecA2: view2 !== null && (view2.transA ? viewM : K2) % 4 === 0 && view2.strideA % 4 === 0,
    vecB2: view2 !== null && (view2.transB ? K2 : viewN) % 4 === 0 && view2.strideB % 4 === 0,
    fullK2: view2 !== null && K2 % 4 === 0,
    accumulate: args.accumulate ?? false,
    bias: args.bias !== undefined,
    gelu: args.gelu ?? false,
    preact: args.preact !== undefined,
  };

  // Row blocks and batch items share the y and z grid dimensions so neither passes the limit.
  const rowBlocks = Math.ceil(viewM / TM);
  const tiles = rowBlocks * batch;
  const gridX = Math.ceil(viewN / TILE_N);
  const gridY = Math.min(tiles, r.maxWorkgroupsPerDim);
  const gridZ = Math.ceil(tiles / gridY);
  if (gridX > r.maxWorkgroupsPerDim || gridZ > r.maxWorkgroupsPerDim) {
    throw new Error(`matmul: grid ${gridX}×${gridY}×${gridZ} exceeds the device limit of ${r.maxWorkgroupsPerDim} workgroups per dimension (M=${M}, N=${N}, batch=${batch})`);
  }

  const buffers = [view.a, view.b, args.c];
  if (view2) buffers.push(view2.a, view2.b);
  if (args.bias) buffers.push(args.bias);
  if (args.preact) buffers.push(args.preact);

  r.dispatch({
    kernel: 'matmul',
    key: variantKey(v),
    code: () => matmulWgsl(v),
    buffers,
    uniforms: packUniforms([
      { u32: viewM }, { u32: viewN }, { u32: K }, { u32: tiles }, { u32: rowBlocks }, { u32: gridY },
      { u32: view.strideA }, { u32: view.strideB }, { u32: strideC }, { f32: args.alpha ?? 1 },
      { u32: K2 }, { u32: view2?.strideA ?? 0 }, { u32: view2?.strideB ?? 0 }, { f32: args.alpha2 ?? 1 },
    ]),
    workgroups: [gridX, gridY, gridZ],
    tag: args.tag,
  });
}

/**
 * Decides whether to compute Cᵀ = op(B)ᵀ·op(A)ᵀ and store it transposed, by the share of a
 * tile's rows and columns that lie inside C. A thin C (N = 16, a LoRA rank) fills half of
 * the 32 columns of a tile, and its transpose fills whole tiles. A·B is the slower layout on
 * lavapipe (about 20% below the other three at 1024²), so it is weighted 0.8 and, at equal
 * fill, runs as Bᵀ·Aᵀ.
 */
function chooseSwap(M: number, N: number, transA: boolean, transB: boolean): boolean {
  const fill = (rows: number, cols: number) => (rows / (Math.ceil(rows / TM) * TM)) * (cols / (Math.ceil(cols / TILE_N) * TILE_N));
  const layoutWeight = (tA: boolean, tB: boolean) => (!tA && !tB ? 0.8 : 1);
  return fill(N, M) * layoutWeight(!transB, !transA) > fill(M, N) * layoutWeight(transA, transB);
}

function validate(args: MatmulArgs, batch: number, first: Operands, second: Operands | null, strideC: number): void {
  const { M, N, K } = args;
  const counts: Array<[string, number, number]> = [
    ['M', M, 1], ['N', N, 1], ['K', K, 1], ['batch', batch, 1],
    ['strideA', first.strideA, 0], ['strideB', first.strideB, 0], ['strideC', strideC, 0],
  ];
  const anySecond = args.a2 !== undefined || args.b2 !== undefined || args.K2 !== undefined;
  if (anySecond && !second) throw new Error('matmul: a second product needs all of a2, b2 and K2');
  if (second) counts.push(['K2', args.K2!, 1], ['strideA2', second.strideA, 0], ['strideB2', second.strideB, 0]);
  for (const [name, value, min] of counts) {
    if (!Number.isInteger(value) || value < min) throw new Error(`matmul: invalid ${name} = ${value}; expected an integer ≥ ${min}`);
  }
  if ([args.a, args.b, args.a2, args.b2].includes(args.c)) throw new Error('matmul: output buffer c must not alias an input (a, b, a2 or b2)');
  if (args.preact && !args.gelu) throw new Error('matmul: preact is only written with gelu: true');
  if (strideC === 0 && batch > 1) throw new Error('matmul: strideC = 0 would make every batch item write the same output');

  const need = (name: string, buf: GPUBuffer, elements: number) => {
    if (buf.size < elements * 4) throw new Error(`matmul: buffer ${name} has ${buf.size} bytes, needs ${elements * 4} (M=${M}, N=${N}, K=${K}${second ? `, K2=${args.K2}` : ''}, batch=${batch})`);
  };
  need('a', args.a, (batch - 1) * first.strideA + M * K);
  need('b', args.b, (batch - 1) * first.strideB + K * N);
  need('c', args.c, (batch - 1) * strideC + M * N);
  if (second) {
    need('a2', second.a, (batch - 1) * second.strideA + M * args.K2!);
    need('b2', second.b, (batch - 1) * second.strideB + args.K2! * N);
  }
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
// vec4 accumulator of row m0+i, and lane the subgroup invocation id (broadcast path). The
// second product's bindings are A2 and B2, its offsets aBase2/bBase2, and the names of its
// setup values end in _2.

/** Names and layout of one product's operands in the generated code. */
interface ProductCode {
  A: string;
  B: string;
  aBase: string;
  bBase: string;
  /** The uniform holding this product's K. */
  K: string;
  transA: boolean;
  transB: boolean;
  vecA: boolean;
  vecB: boolean;
  fullK: boolean;
  /** Makes a setup value's name unique to this product. */
  id: (name: string) => string;
  /** Factor applied to every B value as it is loaded, or null. */
  bScale: string | null;
}

function firstProduct(v: Variant): ProductCode {
  return {
    A: 'A', B: 'B', aBase: 'aBase', bBase: 'bBase', K: 'u.K',
    transA: v.transA, transB: v.transB, vecA: v.vecA, vecB: v.vecB, fullK: v.fullK,
    id: (name) => name, bScale: null,
  };
}

/** Describes the second product. alpha2 is applied to B2 as it is loaded, so both products share the accumulators. */
function secondProduct(v: Variant): ProductCode {
  return {
    A: 'A2', B: 'B2', aBase: 'aBase2', bBase: 'bBase2', K: 'u.K2',
    transA: v.transA2, transB: v.transB2, vecA: v.vecA2, vecB: v.vecB2, fullK: v.fullK2,
    id: (name) => `${name}_2`, bScale: 'u.alpha2',
  };
}

function matmulWgsl(v: Variant): string {
  const array = (vec: boolean) => (vec ? 'array<vec4<f32>>' : 'array<f32>');
  const bindings = [
    `@group(0) @binding(0) var<storage, read> A: ${array(v.vecA)};`,
    `@group(0) @binding(1) var<storage, read> B: ${array(v.vecB)};`,
    `@group(0) @binding(2) var<storage, read_write> C: ${array(v.vecC)};`,
  ];
  if (v.two) {
    bindings.push(`@group(0) @binding(${bindings.length}) var<storage, read> A2: ${array(v.vecA2)};`);
    bindings.push(`@group(0) @binding(${bindings.length}) var<storage, read> B2: ${array(v.vecB2)};`);
  }
  if (v.bias) bindings.push(`@group(0) @binding(${bindings.length}) var<storage, read> bias: ${array(v.vecC)};`);
  if (v.preact) bindings.push(`@group(0) @binding(${bindings.length}) var<storage, read_write> preact: ${array(v.vecC)};`);
  bindings.push(`@group(0) @binding(${bindings.length}) var<uniform> u: U;`);

  const broadcast = v.path === 'broadcast';
  const first = kLoop(v, firstProduct(v));
  const second = v.two ? kLoop(v, secondProduct(v)) : null;
  const accs = Array.from({ length: TM }, (_, i) => `var acc${i} = vec4<f32>();`);
  // With two products, alpha scales the first before the second (already scaled by alpha2) adds in.
  const scaleFirst = Array.from({ length: TM }, (_, i) => `acc${i} = u.alpha * acc${i};`);

  return /* wgsl */ `
${broadcast ? 'enable subgroups;' : ''}
${v.gelu ? GELU_WGSL : ''}
struct U { M: u32, N: u32, K: u32, tiles: u32, rowBlocks: u32, gridY: u32, strideA: u32, strideB: u32, strideC: u32, alpha: f32, K2: u32, strideA2: u32, strideB2: u32, alpha2: f32 }
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
  ${first.setup.join('\n  ')}
  ${accs.join('\n  ')}

  ${first.loop}
${second ? secondPart(second, scaleFirst) : ''}
${v.swap ? epilogueTransposed(v) : epilogue(v)}
}`;
}

/**
 * Builds the second product's code: alpha applied to the first, then the second's offsets
 * and k loop. Its offsets are computed here rather than before the first loop so that they
 * take no registers while the first loop runs.
 * NOTE: on lavapipe a second product of K2 = 16 made X·Wᵀ GEMMs (K = 384 to 1536) 6–25%
 * slower for 1–4% more FLOPs, and dX GEMMs hardly slower. The cause is not known.
 */
function secondPart(second: { setup: string[]; loop: string }, scaleFirst: string[]): string {
  const setup = ['let aBase2 = item * u.strideA2;', 'let bBase2 = item * u.strideB2;', ...second.setup];
  return `
  ${scaleFirst.join('\n  ')}

  ${setup.join('\n  ')}
  ${second.loop}
`;
}

/** Builds one product's k loop: 4 k per step, accumulating into acc0..acc<TM-1>. */
function kLoop(v: Variant, p: ProductCode): { setup: string[]; loop: string } {
  const a = aLoads(v, p);
  const b = bLoads(v, p);
  const body = [...b.loads, ...a.loads];
  for (let i = 0; i < TM; i++) {
    let chain = `acc${i}`;
    for (let kk = 0; kk < 4; kk++) chain = `fma(vec4<f32>(${a.value(i, kk)}), b${kk}, ${chain})`;
    body.push(`acc${i} = ${chain};`);
  }
  const end = p.fullK ? p.K : `((${p.K} + 3u) & ~3u)`;
  return {
    setup: [...a.setup, ...b.setup],
    loop: `for (var k = 0u; k < ${end}; k += 4u) {\n    ${body.join('\n    ')}\n  }`,
  };
}

/** Clamps a row or column index to the last valid one when the tile can pass the edge. */
function clampIf(full: boolean, index: string, last: string): string {
  return full ? `(${index})` : `min(${index}, ${last})`;
}

/** Builds the index k + kk, clamped to K - 1 in a tail variant (its last step can pass K). */
function kAt(p: ProductCode, kk: number): string {
  if (kk === 0) return 'k';
  return p.fullK ? `(k + ${kk}u)` : `min(k + ${kk}u, ${p.K} - 1u)`;
}

/** Zeroes a loaded value whose k (k + kk) is past K, in tail variants only. */
function maskK(p: ProductCode, value: string, kk: number | string, zero = 'vec4<f32>()'): string {
  if (p.fullK || kk === 0) return value;
  const offset = typeof kk === 'number' ? `${kk}u` : kk;
  return `select(${zero}, ${value}, k + ${offset} < ${p.K})`;
}

/** Zeroes the components of a vec4 over k..k+3 that are past K, in tail variants only. */
function maskK4(p: ProductCode, value: string): string {
  return p.fullK ? value : `select(vec4<f32>(), ${value}, vec4<bool>(true, k + 1u < ${p.K}, k + 2u < ${p.K}, k + 3u < ${p.K}))`;
}

interface OperandCode {
  /** Statements before the k loop (offsets, clamped once). */
  setup: string[];
  /** Loads for one step of 4 k. */
  loads: string[];
}

/** A's loads, and value(i, kk): the expression for A[m0+i, k+kk] inside the step. */
function aLoads(v: Variant, p: ProductCode): OperandCode & { value: (i: number, kk: number) => string } {
  const setup: string[] = [];
  const loads: string[] = [];
  const lastRow = 'u.M - 1u';
  const quads = TM / 4;
  const { A, aBase, K, id } = p;

  if (v.path === 'direct') {
    // Every invocation loads all TM rows itself (the same addresses in every lane).
    if (!p.transA) {
      for (let i = 0; i < TM; i++) {
        setup.push(`let ${id(`aRow${i}`)} = ${aBase} + ${clampIf(v.fullM, `m0 + ${i}u`, lastRow)} * ${K};`);
        const load = p.vecA ? `${A}[(${id(`aRow${i}`)} + k) >> 2u]` : `vec4<f32>(${[0, 1, 2, 3].map((kk) => `${A}[${id(`aRow${i}`)} + ${kAt(p, kk)}]`).join(', ')})`;
        loads.push(`let a${i} = ${maskK4(p, load)};`);
      }
      return { setup, loads, value: (i, kk) => `a${i}[${kk}]` };
    }
    if (p.vecA) {
      // M % 4 == 0: rows m0+4q..m0+4q+3 at one k are one vec4, wholly inside or past the edge.
      for (let q = 0; q < quads; q++) setup.push(`let ${id(`aQuad${q}`)} = ${aBase} + ${clampIf(v.fullM, `m0 + ${4 * q}u`, 'u.M - 4u')};`);
      for (let kk = 0; kk < 4; kk++) {
        for (let q = 0; q < quads; q++) loads.push(`let a${kk}_${q} = ${maskK(p, `${A}[(${id(`aQuad${q}`)} + ${kAt(p, kk)} * u.M) >> 2u]`, kk)};`);
      }
      return { setup, loads, value: (i, kk) => `a${kk}_${Math.floor(i / 4)}[${i % 4}]` };
    }
    for (let i = 0; i < TM; i++) setup.push(`let ${id(`aCol${i}`)} = ${aBase} + ${clampIf(v.fullM, `m0 + ${i}u`, lastRow)};`);
    for (let kk = 0; kk < 4; kk++) {
      for (let i = 0; i < TM; i++) loads.push(`let a${kk}_${i} = ${maskK(p, `${A}[${id(`aCol${i}`)} + ${kAt(p, kk)} * u.M]`, kk, '0.0')};`);
    }
    return { setup, loads, value: (i, kk) => `a${kk}_${i}` };
  }

  // Broadcast path: the lanes share the step's 4·TM values of A, 4 per lane per load.
  if (!p.transA) {
    // A[m0+i, k..k+3] is one vec4: load i / 8 of lane i % 8.
    for (let r = 0; r < TM / LANES; r++) {
      const row = id(`aLaneRow${r}`);
      setup.push(`let ${row} = ${aBase} + ${clampIf(v.fullM, `m0 + ${r * LANES}u + lane`, lastRow)} * ${K};`);
      const load = p.vecA ? `${A}[(${row} + k) >> 2u]` : `vec4<f32>(${[0, 1, 2, 3].map((kk) => `${A}[${row} + ${kAt(p, kk)}]`).join(', ')})`;
      loads.push(`let a${r} = ${maskK4(p, load)};`);
    }
    return { setup, loads, value: (i, kk) => `subgroupBroadcast(a${Math.floor(i / LANES)}[${kk}], ${i % LANES}u)` };
  }

  // Transposed A ([K, M]): rows m0+4q..m0+4q+3 at k+kk form unit w = kk·(TM/4) + q, which
  // is load w / 8 of lane w % 8.
  for (let r = 0; r < TM / LANES; r++) {
    const unit = id(`aUnit${r}`);
    const unitK = id(`aUnitK${r}`);
    setup.push(`let ${unit} = ${r * LANES}u + lane;`);
    setup.push(`let ${unitK} = ${unit} / ${quads}u;`);
    const quadRow = `m0 + (${unit} % ${quads}u) * 4u`;
    const kRow = p.fullK ? `(k + ${unitK})` : `min(k + ${unitK}, ${K} - 1u)`;
    let load: string;
    if (p.vecA) {
      setup.push(`let ${id(`aUnitRow${r}`)} = ${aBase} + ${clampIf(v.fullM, quadRow, 'u.M - 4u')};`);
      load = `${A}[(${id(`aUnitRow${r}`)} + ${kRow} * u.M) >> 2u]`;
    } else {
      for (let c = 0; c < 4; c++) setup.push(`let ${id(`aUnitRow${r}_${c}`)} = ${aBase} + ${clampIf(v.fullM, `${quadRow} + ${c}u`, lastRow)};`);
      load = `vec4<f32>(${[0, 1, 2, 3].map((c) => `${A}[${id(`aUnitRow${r}_${c}`)} + ${kRow} * u.M]`).join(', ')})`;
    }
    loads.push(`let a${r} = ${maskK(p, load, unitK)};`);
  }
  const value = (i: number, kk: number) => {
    const unit = kk * quads + Math.floor(i / 4);
    return `subgroupBroadcast(a${Math.floor(unit / LANES)}[${i % 4}], ${unit % LANES}u)`;
  };
  return { setup, loads, value };
}

/**
 * B's loads: b0..b3 hold this invocation's columns n0..n0+3 at k..k+3 (times p.bScale when
 * set). Each invocation loads only its own columns, so nothing is shared across lanes.
 */
function bLoads(v: Variant, p: ProductCode): OperandCode {
  const setup: string[] = [];
  const loads: string[] = [];
  const { B, bBase, K, id } = p;
  const scaled = (value: string) => (p.bScale ? `${p.bScale} * ${value}` : value);

  if (!p.transB) {
    if (p.vecB) {
      // N % 4 == 0: the 4 columns are one vec4, wholly inside or past the edge.
      setup.push(`let ${id('bCols')} = ${bBase} + ${clampIf(v.fullN, 'n0', 'u.N - 4u')};`);
      for (let kk = 0; kk < 4; kk++) loads.push(`let b${kk} = ${scaled(maskK(p, `${B}[(${id('bCols')} + ${kAt(p, kk)} * u.N) >> 2u]`, kk))};`);
      return { setup, loads };
    }
    for (let c = 0; c < 4; c++) setup.push(`let ${id(`bCol${c}`)} = ${bBase} + ${clampIf(v.fullN, `n0 + ${c}u`, 'u.N - 1u')};`);
    for (let kk = 0; kk < 4; kk++) {
      const load = `vec4<f32>(${[0, 1, 2, 3].map((c) => `${B}[${id(`bCol${c}`)} + ${kAt(p, kk)} * u.N]`).join(', ')})`;
      loads.push(`let b${kk} = ${scaled(maskK(p, load, kk))};`);
    }
    return { setup, loads };
  }

  // Transposed B ([N, K]): each column is a row of B, read 4 k at a time and regrouped.
  for (let c = 0; c < 4; c++) {
    setup.push(`let ${id(`bRow${c}`)} = ${bBase} + ${clampIf(v.fullN, `n0 + ${c}u`, 'u.N - 1u')} * ${K};`);
    const load = p.vecB ? `${B}[(${id(`bRow${c}`)} + k) >> 2u]` : `vec4<f32>(${[0, 1, 2, 3].map((kk) => `${B}[${id(`bRow${c}`)} + ${kAt(p, kk)}]`).join(', ')})`;
    loads.push(`let t${c} = ${maskK4(p, load)};`);
  }
  for (let kk = 0; kk < 4; kk++) loads.push(`let b${kk} = ${scaled(`vec4<f32>(t0[${kk}], t1[${kk}], t2[${kk}], t3[${kk}])`)};`);
  return { setup, loads };
}

/** Returns the epilogue's factor on the accumulators: alpha, or none when the k loops applied it (two products). */
function alphaTimes(v: Variant): string {
  return v.two ? '' : 'u.alpha * ';
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

  const row: string[] = ['let cRow = cBase + row * u.N + n0;', `var z = ${alphaTimes(v)}rows[row - m0];`];
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
    body.push(`var z = ${alphaTimes(v)}vec4<f32>(rows[i][c], rows[i + 1u][c], rows[i + 2u][c], rows[i + 3u][c]);`);
    if (v.accumulate) body.push('z += C[cAt];');
    if (v.bias) body.push('z += bias[row >> 2u];');
    if (v.preact) body.push('preact[cAt] = z;');
    body.push(v.gelu ? 'C[cAt] = vec4<f32>(gelu_tanh(z.x), gelu_tanh(z.y), gelu_tanh(z.z), gelu_tanh(z.w));' : 'C[cAt] = z;');
  } else {
    body.push('let cAt = cBase + col * u.M + row;');
    body.push(`var z = ${alphaTimes(v)}rows[i][c];`);
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
