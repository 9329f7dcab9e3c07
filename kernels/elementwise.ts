// One generic elementwise kernel: out[i] = EXPR(a, b, c, s) over n outputs, specialised by
// the WGSL expression and by how each operand is indexed. Broadcasting is an index rule per
// operand, so [B,T,C] + [C] reads the [C] operand at i % C and a per-row value is read at
// i / C. Which shapes may broadcast is the ops' business (engine/ops/elementwise.ts).
import { grid1d, packUniforms, type KernelRunner } from './runner.ts';

const WG = 256;
const NAMES = ['a', 'b', 'c'] as const;

/** An input of the elementwise kernel; output element i reads element (i / inner) % size. */
export interface ElementwiseOperand {
  buffer: GPUBuffer;
  /** Elements of the operand (default: the output count n). */
  size?: number;
  /** Consecutive outputs that share one operand element (default 1). */
  inner?: number;
}

export interface ElementwiseSpec {
  /** Kernel name counted by the runtime ("add", "mul", "sqrt"...). */
  kernel: string;
  /** WGSL f32 expression of the operands a, b, c (in order) and the scalar s. */
  expr: string;
  out: GPUBuffer;
  /** Output elements. */
  n: number;
  /** One to three inputs; none of them may be `out` (WebGPU forbids the aliasing). */
  operands: ElementwiseOperand[];
  /** Value of `s` in the expression. */
  scalar?: number;
  tag?: string;
}

/** WGSL index of an operand for output i, leaving out the divide or modulo when it is the identity. */
function indexExpression(k: number, op: ElementwiseOperand, n: number): { code: string; key: string } {
  const inner = op.inner ?? 1;
  const size = op.size ?? n;
  const divides = inner !== 1;
  const wraps = inner * size < n;
  let code = 'i';
  if (divides) code = `(i / u.inner${k})`;
  if (wraps) code = `(${code} % u.size${k})`;
  return { code, key: `${divides ? 'd' : ''}${wraps ? 'w' : ''}` };
}

/** Dispatches out[i] = expr for i < n, one invocation per output element. */
export function elementwise(r: KernelRunner, s: ElementwiseSpec): void {
  if (s.operands.length < 1 || s.operands.length > NAMES.length) {
    throw new Error(`elementwise: expected 1 to ${NAMES.length} operands, got ${s.operands.length}`);
  }
  const index = s.operands.map((op, k) => indexExpression(k, op, s.n));
  const fields = s.operands.map((_, k) => `inner${k}: u32, size${k}: u32`).join(', ');
  const uniforms: Array<{ u32: number } | { f32: number }> = [{ u32: s.n }, { f32: s.scalar ?? 0 }];
  for (const op of s.operands) uniforms.push({ u32: op.inner ?? 1 }, { u32: op.size ?? s.n });

  r.dispatch({
    kernel: s.kernel,
    key: `${s.expr}|${index.map((x) => x.key).join(',')}`,
    code: () => /* wgsl */ `
      struct U { n: u32, s: f32, ${fields} }
      @group(0) @binding(0) var<storage, read_write> out: array<f32>;
      ${s.operands.map((_, k) => `@group(0) @binding(${k + 1}) var<storage, read> in${k}: array<f32>;`).join('\n')}
      @group(0) @binding(${s.operands.length + 1}) var<uniform> u: U;
      @compute @workgroup_size(${WG})
      fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nw: vec3u) {
        let i = g.x + g.y * nw.x * ${WG}u;
        if (i >= u.n) { return; }
        let s = u.s;
        ${s.operands.map((_, k) => `let ${NAMES[k]} = in${k}[${index[k].code}];`).join('\n')}
        out[i] = ${s.expr};
      }`,
    buffers: [s.out, ...s.operands.map((op) => op.buffer)],
    uniforms: packUniforms(uniforms),
    workgroups: grid1d(Math.ceil(s.n / WG), r.maxWorkgroupsPerDim),
    tag: s.tag,
  });
}
