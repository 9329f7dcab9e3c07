// The contract between kernels and whoever drives the GPU. A kernel file builds WGSL and
// describes one dispatch; the engine's runtime (engine/runtime.ts) owns the device, the
// pipeline cache, the command encoder and the dispatch counters. Kernels import nothing
// from the engine, so the dependency points one way.

/** One compute dispatch, as a kernel describes it. */
export interface DispatchSpec {
  /** Kernel name, counted per dispatch (e.g. "matmul", "adamw"). */
  kernel: string;
  /** Specialisation key: same key means same WGSL source, so the pipeline is reused. */
  key: string;
  /** Builds the WGSL source; called only on a pipeline-cache miss. */
  code: () => string;
  /**
   * Storage bindings in binding order (@group(0) @binding(0..n-1)).
   * The uniform block, if any, is bound right after them.
   */
  buffers: GPUBuffer[];
  /** Uniform block contents (already laid out per WGSL rules), or undefined. */
  uniforms?: ArrayBuffer;
  /** Workgroup counts. */
  workgroups: [number, number, number];
  /** Optional role tag counted beside the kernel name (e.g. "dW" for weight gradients). */
  tag?: string;
}

export interface KernelRunner {
  dispatch(spec: DispatchSpec): void;
  /** Largest workgroup count per dimension the device allows. */
  readonly maxWorkgroupsPerDim: number;
  /** Device features enabled at creation (e.g. "subgroups", "shader-f16"). */
  readonly features: ReadonlySet<string>;
  /** Subgroup size bounds the adapter reports (0 when unknown); a size-specific kernel needs min = max. */
  readonly subgroupMinSize: number;
  readonly subgroupMaxSize: number;
}

/** Packs u32/i32/f32 scalars into a uniform block (each scalar 4 bytes, 16-byte total padding). */
export function packUniforms(values: Array<{ u32: number } | { i32: number } | { f32: number }>): ArrayBuffer {
  const bytes = Math.max(16, Math.ceil((values.length * 4) / 16) * 16);
  const buf = new ArrayBuffer(bytes);
  const view = new DataView(buf);
  values.forEach((v, i) => {
    if ('u32' in v) view.setUint32(i * 4, v.u32, true);
    else if ('i32' in v) view.setInt32(i * 4, v.i32, true);
    else view.setFloat32(i * 4, v.f32, true);
  });
  return buf;
}

/** Splits a flat workgroup count over x and y so neither exceeds the device limit. */
export function grid1d(workgroups: number, maxPerDim: number): [number, number, number] {
  if (workgroups <= maxPerDim) return [Math.max(1, workgroups), 1, 1];
  const y = Math.ceil(workgroups / maxPerDim);
  return [Math.ceil(workgroups / y), y, 1];
}
