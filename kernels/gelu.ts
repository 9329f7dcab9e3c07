// GELU, tanh approximation: gelu(z) = 0.5·z·(1 + tanh(√(2/π)·(z + 0.044715·z³))).
// The WGSL helpers here are shared with the matmul epilogue; the two kernels are the
// standalone forward (y = gelu(x)) and backward (dz = dy·gelu'(z)) used by the ops.
import { grid1d, packUniforms, type KernelRunner } from './runner.ts';

const WG = 256;

/**
 * WGSL functions gelu_tanh(z) and gelu_tanh_grad(z). The tanh argument u is clamped to ±15:
 * WGSL leaves tanh of large arguments to the driver (some return NaN), z³ overflows f32 for
 * |z| > 7e12, and tanh(15) is 1 − 2e-13, which rounds to 1 in f32, so the clamp changes no
 * result. The gradient is that of the clamped form: past the clamp, gelu' is exactly 1 or 0,
 * and z² (which can overflow) is never multiplied by the zero (1 − t²).
 */
export const GELU_WGSL = /* wgsl */ `
const GELU_K0 = 0.7978845608028654;   // √(2/π)
const GELU_K1 = 0.044715;
const GELU_CLAMP = 15.0;

fn gelu_tanh_u(z: f32) -> f32 {
  return GELU_K0 * (z + GELU_K1 * z * z * z);
}

fn gelu_tanh(z: f32) -> f32 {
  let t = tanh(clamp(gelu_tanh_u(z), -GELU_CLAMP, GELU_CLAMP));
  return 0.5 * z * (1.0 + t);
}

fn gelu_tanh_grad(z: f32) -> f32 {
  let u = gelu_tanh_u(z);
  let t = tanh(clamp(u, -GELU_CLAMP, GELU_CLAMP));
  let dt = select(0.0, (1.0 - t * t) * GELU_K0 * (1.0 + 3.0 * GELU_K1 * z * z), abs(u) < GELU_CLAMP);
  return 0.5 * (1.0 + t) + 0.5 * z * dt;
}`;

/** y[i] = gelu(x[i]) for i < n. */
export function geluForward(r: KernelRunner, x: GPUBuffer, y: GPUBuffer, n: number): void {
  r.dispatch({
    kernel: 'gelu',
    key: 'forward',
    code: () => /* wgsl */ `
      ${GELU_WGSL}
      struct U { n: u32 }
      @group(0) @binding(0) var<storage, read> x: array<f32>;
      @group(0) @binding(1) var<storage, read_write> y: array<f32>;
      @group(0) @binding(2) var<uniform> u: U;
      @compute @workgroup_size(${WG})
      fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nw: vec3u) {
        let i = g.x + g.y * nw.x * ${WG}u;
        if (i < u.n) { y[i] = gelu_tanh(x[i]); }
      }`,
    buffers: [x, y],
    uniforms: packUniforms([{ u32: n }]),
    workgroups: grid1d(Math.ceil(n / WG), r.maxWorkgroupsPerDim),
  });
}

/** dz[i] = dy[i]·gelu'(z[i]) for i < n, where z is the GELU input (the pre-activation). */
export function geluBackward(r: KernelRunner, dy: GPUBuffer, z: GPUBuffer, dz: GPUBuffer, n: number): void {
  r.dispatch({
    kernel: 'gelu',
    key: 'backward',
    code: () => /* wgsl */ `
      ${GELU_WGSL}
      struct U { n: u32 }
      @group(0) @binding(0) var<storage, read> dy: array<f32>;
      @group(0) @binding(1) var<storage, read> z: array<f32>;
      @group(0) @binding(2) var<storage, read_write> dz: array<f32>;
      @group(0) @binding(3) var<uniform> u: U;
      @compute @workgroup_size(${WG})
      fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nw: vec3u) {
        let i = g.x + g.y * nw.x * ${WG}u;
        if (i < u.n) { dz[i] = dy[i] * gelu_tanh_grad(z[i]); }
      }`,
    buffers: [dy, z, dz],
    uniforms: packUniforms([{ u32: n }]),
    workgroups: grid1d(Math.ceil(n / WG), r.maxWorkgroupsPerDim),
  });
}
