// Elementwise ops: the generic kernel against a TypeScript reference on odd sizes, on
// every broadcast direction and on every operand layout of the vec4 kernel, the grid
// split over two dimensions, and every gradient.
import { beforeAll, describe, expect, it } from 'vitest';
import { add, addScalar, broadcastShape, mul, scale, sub } from '../engine/ops/elementwise.ts';
import type { Runtime } from '../engine/runtime.ts';
import { Scope, empty, fromArray, sizeOf, type Tensor } from '../engine/tensor.ts';
import { elementwise, type ElementwiseOperand } from '../kernels/elementwise.ts';
import type { KernelRunner } from '../kernels/runner.ts';
import { assertGradients } from './helpers/gradcheck.ts';
import { gpu } from './helpers/gpu.ts';
import { maxAbsDiff, randomArray } from './helpers/reference.ts';

let r: Runtime;
beforeAll(async () => {
  r = await gpu();
});

/** Wraps the runtime with at most `limit` workgroups per grid dimension, so a small dispatch already needs a second grid row. */
function gridLimited(limit: number): KernelRunner {
  return {
    dispatch: (spec) => r.dispatch(spec),
    maxWorkgroupsPerDim: limit,
    features: r.features,
    subgroupMinSize: r.subgroupMinSize,
    subgroupMaxSize: r.subgroupMaxSize,
  };
}

type Binary = (a: Tensor, b: Tensor) => Tensor;
const BINARY: Array<[string, Binary, (x: number, y: number) => number]> = [
  ['add', add, (x, y) => x + y],
  ['sub', sub, (x, y) => x - y],
  ['mul', mul, (x, y) => x * y],
];

/** Reference of a broadcast binary op: the smaller operand repeats every `size` elements. */
function referenceBinary(a: Float32Array, b: Float32Array, f: (x: number, y: number) => number): Float32Array {
  const n = Math.max(a.length, b.length);
  return Float32Array.from({ length: n }, (_, i) => f(a[i % a.length], b[i % b.length]));
}

async function runBinary(op: Binary, aShape: number[], bShape: number[], seed: number) {
  const aHost = randomArray(sizeOf(aShape), seed);
  const bHost = randomArray(sizeOf(bShape), seed + 1);
  const s = new Scope();
  try {
    const y = op(fromArray(aHost, aShape), fromArray(bHost, bShape));
    return { aHost, bHost, shape: y.shape, out: await y.toArray() };
  } finally {
    s.end();
  }
}

// [a shape, b shape]: same shapes at odd sizes, then each broadcast direction.
const SHAPES: Array<[number[], number[]]> = [
  [[1], [1]],
  [[7], [7]],
  [[33], [33]],
  [[65], [65]],
  [[127], [127]],
  [[1000], [1000]],
  [[3, 5, 7], [5, 7]],
  [[3, 5, 7], [7]],
  [[7], [3, 5, 7]],
  [[5, 7], [2, 5, 7]],
  [[2, 33, 65], [1, 65]],
  [[4, 127], [1]],
  [[1], [4, 127]],
  // n % 4 = 0: vec4 loads, with the smaller operand repeating every 8 or 4 elements, or a scalar.
  [[3, 8], [3, 8]],
  [[3, 8], [8]],
  [[8], [2, 3, 8]],
  [[2, 3, 4], [1, 4]],
  [[4, 128], [1]],
];

describe('elementwise binary', () => {
  // f32 +, − and × are correctly rounded in WGSL, like the fround of the float64 result,
  // so the kernel must match the reference exactly.
  for (const [name, op, f] of BINARY) {
    for (const [aShape, bShape] of SHAPES) {
      it(`${name} [${aShape}] [${bShape}]`, async () => {
        const { aHost, bHost, shape, out } = await runBinary(op, aShape, bShape, aShape.length * 31 + bShape[0]);
        expect(shape).toEqual(sizeOf(aShape) >= sizeOf(bShape) ? aShape : bShape);
        expect(maxAbsDiff(out, referenceBinary(aHost, bHost, f))).toBe(0);
      });
    }
  }

  it('add splits a grid past 65535 workgroups', async () => {
    // 2396709·7 = 65535·256 + 3 elements need a second grid row of workgroups.
    const { aHost, bHost, out } = await runBinary(add, [2396709, 7], [7], 5);
    expect(maxAbsDiff(out, referenceBinary(aHost, bHost, (x, y) => x + y))).toBe(0);
  });
});

describe('elementwise kernel layouts', () => {
  // out = a + b + c over n outputs, operands given as [size, inner]: element i reads
  // (i / inner) % size. Sums of three f32 values in a fixed order are deterministic, so the
  // kernel must match the reference exactly.
  type Layout = [number, number];
  const cases: Array<{ name: string; n: number; layouts: [Layout, Layout, Layout] }> = [
    { name: 'vec4 along, repeating and per-row', n: 96, layouts: [[96, 1], [8, 1], [24, 4]] },
    { name: 'vec4 scalar and per-row repeating', n: 96, layouts: [[1, 1], [3, 8], [96, 1]] },
    { name: 'f32 per-row of 3', n: 36, layouts: [[12, 3], [36, 1], [36, 1]] },
    { name: 'f32 repeating every 6', n: 36, layouts: [[36, 1], [6, 1], [1, 1]] },
    { name: 'f32 odd count', n: 30, layouts: [[30, 1], [10, 1], [15, 2]] },
  ];

  for (const { name, n, layouts } of cases) {
    it(`elementwise ${name} [${n}]`, async () => {
      const hosts = layouts.map(([size], k) => randomArray(size, n + k));
      const expected = Float32Array.from({ length: n }, (_, i) => {
        const [a, b, c] = layouts.map(([size, inner], k) => hosts[k][Math.floor(i / inner) % size]);
        return Math.fround(Math.fround(a + b) + c);
      });
      const s = new Scope();
      try {
        const out = empty([n]);
        const operands: ElementwiseOperand[] = layouts.map(([size, inner], k) => ({ buffer: fromArray(hosts[k], [size]).buffer, size, inner }));
        elementwise(r, { kernel: 'add3', expr: 'a + b + c', out: out.buffer, n, operands });
        expect(maxAbsDiff(await out.toArray(), expected)).toBe(0);
      } finally {
        s.end();
      }
    });
  }

  // At most 3 workgroups per grid dimension: 4·1025 outputs take 5 workgroups of 256 vec4
  // invocations, 1025 outputs 5 of 256 scalar ones, so both span a second grid row.
  for (const n of [4 * 1025, 1025]) {
    it(`elementwise split grid [${n}]`, async () => {
      const host = randomArray(n, n);
      const s = new Scope();
      try {
        const out = empty([n]);
        elementwise(gridLimited(3), { kernel: 'scale', expr: 'a * s', out: out.buffer, n, operands: [{ buffer: fromArray(host, [n]).buffer }], scalar: -2 });
        expect(maxAbsDiff(await out.toArray(), host.map((v) => v * -2))).toBe(0);
      } finally {
        s.end();
      }
    });
  }
});

describe('elementwise constants', () => {
  for (const n of [1, 4, 7, 33, 65, 127, 1000]) {
    it(`scale and addScalar [${n}]`, async () => {
      const host = randomArray(n, n);
      const s = new Scope();
      const x = fromArray(host, [n]);
      const scaled = await scale(x, -2.5).toArray();
      const shifted = await addScalar(x, 0.75).toArray();
      s.end();
      expect(maxAbsDiff(scaled, host.map((v) => v * -2.5))).toBe(0);
      expect(maxAbsDiff(shifted, host.map((v) => v + 0.75))).toBe(0);
    });
  }
});

describe('broadcastShape', () => {
  it('accepts trailing shapes', () => {
    expect(broadcastShape([2, 3, 4], [3, 4])).toEqual([2, 3, 4]);
    expect(broadcastShape([4], [2, 3, 4])).toEqual([2, 3, 4]);
    expect(broadcastShape([1, 1, 4], [2, 4])).toEqual([2, 4]);
    expect(broadcastShape([1, 4], [4])).toEqual([1, 4]);
  });

  it('rejects mismatched axes', () => {
    expect(() => broadcastShape([2, 3, 4], [3])).toThrow(/invalid broadcast/);
    expect(() => broadcastShape([2, 3], [3, 1])).toThrow(/invalid broadcast/);
    expect(() => broadcastShape([6], [2, 3])).toThrow(/invalid broadcast/);
  });
});

// Default gradcheck tolerance (rtol 2e-3 of max |g_ref|): gradients here are single
// products or column sums of a few f32 terms, far inside it.
describe('elementwise gradients', () => {
  for (const [name, op, f] of BINARY) {
    for (const [aShape, bShape] of [
      [[3, 5], [3, 5]],
      [[2, 3, 5], [3, 5]],
      [[5], [2, 3, 5]],
      [[4, 3], [1]],
    ] as Array<[number[], number[]]>) {
      it(`${name} [${aShape}] [${bShape}]`, async () => {
        await assertGradients({
          inputs: [{ shape: aShape }, { shape: bShape }],
          engine: ([a, b]) => op(a, b),
          reference: ([a, b]) => {
            const n = Math.max(a.length, b.length);
            return Float64Array.from({ length: n }, (_, i) => f(a[i % a.length], b[i % b.length]));
          },
        });
      });
    }
  }

  it('mul with a frozen operand', async () => {
    const res = await assertGradients({
      inputs: [{ shape: [4, 6] }, { shape: [6], requiresGrad: false }],
      engine: ([a, b]) => mul(a, b),
      reference: ([a, b]) => a.map((v, i) => v * b[i % 6]),
    });
    expect(res.grads[1].engine).toBeNull();
  });

  it('mul of a tensor with itself', async () => {
    await assertGradients({
      inputs: [{ shape: [3, 7] }],
      engine: ([a]) => mul(a, a),
      reference: ([a]) => a.map((v) => v * v),
    });
  });

  it('scale and addScalar', async () => {
    await assertGradients({
      inputs: [{ shape: [3, 7] }],
      engine: ([x]) => addScalar(scale(x, -1.5), 2),
      reference: ([x]) => x.map((v) => v * -1.5 + 2),
    });
  });

  it('add shares no gradient buffer', async () => {
    // The tape accumulates into gradient buffers in place. u's gradient from add is
    // accumulated with its gradient from the earlier mul. If v's gradient were the same
    // buffer, v would receive that accumulation too.
    await assertGradients({
      inputs: [{ shape: [2, 5] }],
      engine: ([x]) => {
        const u = scale(x, 2);
        const v = scale(x, 3);
        const p = mul(u, u);
        return add(p, add(u, v));
      },
      reference: ([x]) => x.map((v) => 4 * v * v + 5 * v),
    });
  });
});
