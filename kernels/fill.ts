// Fills a buffer with a constant, and accumulates one buffer into another (y += x).
// These two are what the autodiff engine itself needs (seeding dLoss, summing gradients).
import { grid1d, packUniforms, type KernelRunner } from './runner.ts';

const WG = 256;

export function fill(r: KernelRunner, out: GPUBuffer, n: number, value: number): void {
  r.dispatch({
    kernel: 'fill',
    key: 'f32',
    code: () => /* wgsl */ `
      struct U { n: u32, value: f32 }
      @group(0) @binding(0) var<storage, read_write> out: array<f32>;
      @group(0) @binding(1) var<uniform> u: U;
      @compute @workgroup_size(${WG})
      fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nw: vec3u) {
        let i = g.x + g.y * nw.x * ${WG}u;
        if (i < u.n) { out[i] = u.value; }
      }`,
    buffers: [out],
    uniforms: packUniforms([{ u32: n }, { f32: value }]),
    workgroups: grid1d(Math.ceil(n / WG), r.maxWorkgroupsPerDim),
  });
}

/** y[i] += alpha·x[i] for i < n. */
export function accumulate(r: KernelRunner, y: GPUBuffer, x: GPUBuffer, n: number, tag?: string, alpha = 1): void {
  r.dispatch({
    kernel: 'accumulate',
    key: 'f32',
    code: () => /* wgsl */ `
      struct U { n: u32, alpha: f32 }
      @group(0) @binding(0) var<storage, read_write> y: array<f32>;
      @group(0) @binding(1) var<storage, read> x: array<f32>;
      @group(0) @binding(2) var<uniform> u: U;
      @compute @workgroup_size(${WG})
      fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nw: vec3u) {
        let i = g.x + g.y * nw.x * ${WG}u;
        if (i < u.n) { y[i] = y[i] + u.alpha * x[i]; }
      }`,
    buffers: [y, x],
    uniforms: packUniforms([{ u32: n }, { f32: alpha }]),
    workgroups: grid1d(Math.ceil(n / WG), r.maxWorkgroupsPerDim),
    tag,
  });
}
