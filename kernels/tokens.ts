// Token-layout kernels for patch models: cut images into flattened patches (im2col),
// prepend a learned token to every sequence, and pick one token per sequence. Each is a
// plain gather/scatter with one invocation per output element.
import { grid1d, packUniforms, type KernelRunner } from './runner.ts';

const WG = 256;

function flatIndex(): string {
  return `let i = g.x + g.y * nw.x * ${WG}u;`;
}

/**
 * images [B, Cin, Hh, Ww] → patches [B, Np, Cin·P·P], Np = (Hh/P)·(Ww/P), patches in
 * row-major grid order and each flattened as (channel, row, column) so a linear layer with
 * weight [C, Cin·P·P] equals a stride-P convolution with weight [C, Cin, P, P].
 */
export function patchify(r: KernelRunner, images: GPUBuffer, out: GPUBuffer, B: number, Cin: number, Hh: number, Ww: number, P: number): void {
  const n = B * Cin * Hh * Ww;
  r.dispatch({
    kernel: 'patchify',
    key: 'f32',
    code: () => /* wgsl */ `
      struct U { n: u32, cin: u32, h: u32, w: u32, p: u32 }
      @group(0) @binding(0) var<storage, read> img: array<f32>;
      @group(0) @binding(1) var<storage, read_write> out: array<f32>;
      @group(0) @binding(2) var<uniform> u: U;
      @compute @workgroup_size(${WG})
      fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nw: vec3u) {
        ${flatIndex()}
        if (i >= u.n) { return; }
        // i indexes the output: [b, patch, c, py, px].
        let pp = u.p * u.p;
        let patchLen = u.cin * pp;
        let gw = u.w / u.p;
        let np = (u.h / u.p) * gw;
        let b = i / (np * patchLen);
        let rem = i % (np * patchLen);
        let pidx = rem / patchLen;
        let e = rem % patchLen;
        let c = e / pp;
        let py = (e % pp) / u.p;
        let px = e % u.p;
        let y = (pidx / gw) * u.p + py;
        let x = (pidx % gw) * u.p + px;
        out[i] = img[((b * u.cin + c) * u.h + y) * u.w + x];
      }`,
    buffers: [images, out],
    uniforms: packUniforms([{ u32: n }, { u32: Cin }, { u32: Hh }, { u32: Ww }, { u32: P }]),
    workgroups: grid1d(Math.ceil(n / WG), r.maxWorkgroupsPerDim),
  });
}

/** x [B, N, C], token [C] → out [B, N+1, C] with out[b, 0] = token. */
export function prependToken(r: KernelRunner, x: GPUBuffer, token: GPUBuffer, out: GPUBuffer, B: number, N: number, C: number): void {
  const n = B * (N + 1) * C;
  r.dispatch({
    kernel: 'prepend_token',
    key: 'f32',
    code: () => /* wgsl */ `
      struct U { n: u32, tokens: u32, c: u32 }
      @group(0) @binding(0) var<storage, read> x: array<f32>;
      @group(0) @binding(1) var<storage, read> token: array<f32>;
      @group(0) @binding(2) var<storage, read_write> out: array<f32>;
      @group(0) @binding(3) var<uniform> u: U;
      @compute @workgroup_size(${WG})
      fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nw: vec3u) {
        ${flatIndex()}
        if (i >= u.n) { return; }
        let c = i % u.c;
        let t = (i / u.c) % (u.tokens + 1u);
        let b = i / (u.c * (u.tokens + 1u));
        if (t == 0u) { out[i] = token[c]; } else { out[i] = x[(b * u.tokens + t - 1u) * u.c + c]; }
      }`,
    buffers: [x, token, out],
    uniforms: packUniforms([{ u32: n }, { u32: N }, { u32: C }]),
    workgroups: grid1d(Math.ceil(n / WG), r.maxWorkgroupsPerDim),
  });
}

/**
 * Backward of prependToken: dx [B, N, C] = dy[:, 1:], and dtoken [C] = Σ_b dy[b, 0]
 * (B is a batch, at most a few hundred rows, so one invocation per channel loops over it).
 */
export function prependTokenBackward(
  r: KernelRunner, dy: GPUBuffer, dx: GPUBuffer | null, dtoken: GPUBuffer | null, B: number, N: number, C: number,
): void {
  if (dx) {
    const n = B * N * C;
    r.dispatch({
      kernel: 'prepend_token_dx',
      key: 'f32',
      code: () => /* wgsl */ `
        struct U { n: u32, tokens: u32, c: u32 }
        @group(0) @binding(0) var<storage, read> dy: array<f32>;
        @group(0) @binding(1) var<storage, read_write> dx: array<f32>;
        @group(0) @binding(2) var<uniform> u: U;
        @compute @workgroup_size(${WG})
        fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nw: vec3u) {
          ${flatIndex()}
          if (i >= u.n) { return; }
          let c = i % u.c;
          let t = (i / u.c) % u.tokens;
          let b = i / (u.c * u.tokens);
          dx[i] = dy[(b * (u.tokens + 1u) + t + 1u) * u.c + c];
        }`,
      buffers: [dy, dx],
      uniforms: packUniforms([{ u32: n }, { u32: N }, { u32: C }]),
      workgroups: grid1d(Math.ceil(n / WG), r.maxWorkgroupsPerDim),
    });
  }
  if (dtoken) {
    r.dispatch({
      kernel: 'prepend_token_dtoken',
      key: 'f32',
      code: () => /* wgsl */ `
        struct U { b: u32, tokens: u32, c: u32 }
        @group(0) @binding(0) var<storage, read> dy: array<f32>;
        @group(0) @binding(1) var<storage, read_write> dtoken: array<f32>;
        @group(0) @binding(2) var<uniform> u: U;
        @compute @workgroup_size(64)
        fn main(@builtin(global_invocation_id) g: vec3u) {
          let c = g.x;
          if (c >= u.c) { return; }
          var s = 0.0;
          for (var b = 0u; b < u.b; b++) { s += dy[b * (u.tokens + 1u) * u.c + c]; }
          dtoken[c] = s;
        }`,
      buffers: [dy, dtoken],
      uniforms: packUniforms([{ u32: B }, { u32: N }, { u32: C }]),
      workgroups: [Math.ceil(C / 64), 1, 1],
    });
  }
}

/** x [B, T, C] → out [B, C] = x[:, index]. */
export function selectToken(r: KernelRunner, x: GPUBuffer, out: GPUBuffer, B: number, T: number, C: number, index: number): void {
  const n = B * C;
  r.dispatch({
    kernel: 'select_token',
    key: 'f32',
    code: () => /* wgsl */ `
      struct U { n: u32, tokens: u32, c: u32, index: u32 }
      @group(0) @binding(0) var<storage, read> x: array<f32>;
      @group(0) @binding(1) var<storage, read_write> out: array<f32>;
      @group(0) @binding(2) var<uniform> u: U;
      @compute @workgroup_size(${WG})
      fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nw: vec3u) {
        ${flatIndex()}
        if (i >= u.n) { return; }
        let b = i / u.c;
        out[i] = x[(b * u.tokens + u.index) * u.c + i % u.c];
      }`,
    buffers: [x, out],
    uniforms: packUniforms([{ u32: n }, { u32: T }, { u32: C }, { u32: index }]),
    workgroups: grid1d(Math.ceil(n / WG), r.maxWorkgroupsPerDim),
  });
}

/** Backward of selectToken: dx [B, T, C] is zero except dx[:, index] = dy. */
export function selectTokenBackward(r: KernelRunner, dy: GPUBuffer, dx: GPUBuffer, B: number, T: number, C: number, index: number): void {
  const n = B * T * C;
  r.dispatch({
    kernel: 'select_token_dx',
    key: 'f32',
    code: () => /* wgsl */ `
      struct U { n: u32, tokens: u32, c: u32, index: u32 }
      @group(0) @binding(0) var<storage, read> dy: array<f32>;
      @group(0) @binding(1) var<storage, read_write> dx: array<f32>;
      @group(0) @binding(2) var<uniform> u: U;
      @compute @workgroup_size(${WG})
      fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nw: vec3u) {
        ${flatIndex()}
        if (i >= u.n) { return; }
        let c = i % u.c;
        let t = (i / u.c) % u.tokens;
        let b = i / (u.c * u.tokens);
        if (t == u.index) { dx[i] = dy[b * u.c + c]; } else { dx[i] = 0.0; }
      }`,
    buffers: [dy, dx],
    uniforms: packUniforms([{ u32: n }, { u32: T }, { u32: C }, { u32: index }]),
    workgroups: grid1d(Math.ceil(n / WG), r.maxWorkgroupsPerDim),
  });
}
