// The GPU runtime: one device, one buffer pool, one open command encoder. Kernels describe
// dispatches (kernels/runner.ts); the runtime compiles and caches their pipelines, records
// them into a shared compute pass, counts them per kernel, and submits only when a copy,
// an upload or a readback needs the queue. Nothing here knows about tensors or autodiff.
import type { DispatchSpec, KernelRunner } from '../kernels/runner.ts';
import { acquireDevice, type AcquiredDevice, type AdapterReport, type DeviceOptions } from './device.ts';
import { BufferPool } from './pool.ts';

const UNIFORM_USAGE = 0x40 /* UNIFORM */ | 0x08 /* COPY_DST */;
const MAP_READ_USAGE = 0x01 /* MAP_READ */ | 0x08 /* COPY_DST */;
/** Uniform blocks are cached by content; past this many, the cache is dropped at the next submit. */
const UNIFORM_CACHE_LIMIT = 4096;

export class Runtime implements KernelRunner {
  readonly device: GPUDevice;
  readonly adapter: AdapterReport;
  readonly features: Set<string>;
  readonly pool: BufferPool;
  readonly maxWorkgroupsPerDim: number;
  readonly unsafeNoBoundsChecks: boolean;
  readonly subgroupMinSize: number;
  readonly subgroupMaxSize: number;

  private acquired: AcquiredDevice;
  private pipelines = new Map<string, GPUComputePipeline>();
  private uniforms = new Map<string, GPUBuffer>();
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private counts = new Map<string, number>();
  /** Dispatches recorded since the last submit. */
  private pendingDispatches = 0;

  constructor(acquired: AcquiredDevice, unsafeNoBoundsChecks: boolean) {
    this.acquired = acquired;
    this.device = acquired.device;
    this.adapter = acquired.adapter;
    this.features = acquired.features;
    this.pool = new BufferPool(this.device);
    this.maxWorkgroupsPerDim = this.device.limits.maxComputeWorkgroupsPerDimension;
    this.unsafeNoBoundsChecks = unsafeNoBoundsChecks;
    const info = this.device.adapterInfo as GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number };
    this.subgroupMinSize = info?.subgroupMinSize ?? 0;
    this.subgroupMaxSize = info?.subgroupMaxSize ?? 0;
  }

  // ---- dispatch ---------------------------------------------------------------------

  dispatch(spec: DispatchSpec): void {
    this.throwPendingErrors();
    const pipeline = this.pipeline(spec);

    const entries: GPUBindGroupEntry[] = spec.buffers.map((buffer, binding) => ({ binding, resource: { buffer } }));
    if (spec.uniforms) entries.push({ binding: spec.buffers.length, resource: { buffer: this.uniformBuffer(spec.uniforms) } });
    const bindGroup = this.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });

    const pass = this.computePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    const [x, y, z] = spec.workgroups;
    if (x > 0 && y > 0 && z > 0) pass.dispatchWorkgroups(x, y, z);

    this.count(spec.kernel);
    if (spec.tag) this.count(`${spec.kernel}:${spec.tag}`);
    this.pendingDispatches++;
  }

  private pipeline(spec: DispatchSpec): GPUComputePipeline {
    const cacheKey = `${spec.kernel}|${spec.key}`;
    let p = this.pipelines.get(cacheKey);
    if (!p) {
      const module = this.device.createShaderModule({ code: spec.code(), label: spec.kernel });
      p = this.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' }, label: spec.kernel });
      this.pipelines.set(cacheKey, p);
    }
    return p;
  }

  private uniformBuffer(data: ArrayBuffer): GPUBuffer {
    const key = Buffer.from(data).toString('base64');
    let buf = this.uniforms.get(key);
    if (!buf) {
      buf = this.device.createBuffer({ size: data.byteLength, usage: UNIFORM_USAGE, mappedAtCreation: true });
      new Uint8Array(buf.getMappedRange()).set(new Uint8Array(data));
      buf.unmap();
      this.uniforms.set(key, buf);
    }
    return buf;
  }

  private computePass(): GPUComputePassEncoder {
    if (!this.encoder) this.encoder = this.device.createCommandEncoder();
    if (!this.pass) this.pass = this.encoder.beginComputePass();
    return this.pass;
  }

  private commandEncoder(): GPUCommandEncoder {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
    if (!this.encoder) this.encoder = this.device.createCommandEncoder();
    return this.encoder;
  }

  // ---- copies, uploads, readback ----------------------------------------------------

  /** Records a buffer-to-buffer copy in stream order with the dispatches around it. */
  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, bytes: number): void {
    this.commandEncoder().copyBufferToBuffer(src, srcOffset, dst, dstOffset, bytes);
    this.count('copy');
  }

  /**
   * Writes host data into a buffer. queue.writeBuffer lands before any command still
   * sitting in the open encoder, so the encoder is submitted first: a pooled buffer that
   * earlier recorded work reads must not be overwritten ahead of that work.
   */
  upload(dst: GPUBuffer, data: ArrayBufferView, dstOffset = 0): void {
    this.submit();
    this.device.queue.writeBuffer(dst, dstOffset, data.buffer, data.byteOffset, data.byteLength);
  }

  /** Submits everything recorded so far. */
  submit(): void {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
    if (this.encoder) {
      this.device.queue.submit([this.encoder.finish()]);
      this.encoder = null;
      this.pendingDispatches = 0;
      if (this.uniforms.size > UNIFORM_CACHE_LIMIT) {
        for (const b of this.uniforms.values()) b.destroy();
        this.uniforms.clear();
      }
    }
    this.throwPendingErrors();
  }

  /** Copies `bytes` from `src` into host memory; submits pending work first. */
  async read(src: GPUBuffer, bytes: number, srcOffset = 0): Promise<ArrayBuffer> {
    const size = Math.ceil(bytes / 4) * 4;
    const staging = this.device.createBuffer({ size: Math.max(4, size), usage: MAP_READ_USAGE });
    this.commandEncoder().copyBufferToBuffer(src, srcOffset, staging, 0, size);
    this.submit();
    await staging.mapAsync(1 /* GPUMapMode.READ */);
    const out = staging.getMappedRange(0, size).slice(0, bytes);
    staging.unmap();
    staging.destroy();
    this.throwPendingErrors();
    return out;
  }

  /** Resolves when the queue has finished everything submitted so far. */
  async sync(): Promise<void> {
    this.submit();
    await this.device.queue.onSubmittedWorkDone();
    this.throwPendingErrors();
  }

  // ---- counters -----------------------------------------------------------------------

  private count(key: string): void {
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
  }

  /** Dispatch counts per kernel ("matmul") and per kernel and tag ("matmul:dW"). */
  counters(): Record<string, number> {
    return Object.fromEntries(this.counts);
  }

  resetCounters(): void {
    this.counts.clear();
  }

  // ---- errors and teardown ------------------------------------------------------------

  private throwPendingErrors(): void {
    const errs = this.acquired.pendingErrors;
    if (errs.length > 0) {
      const first = errs[0];
      errs.length = 0;
      throw first;
    }
  }

  destroy(): void {
    this.submit();
    this.pool.trim();
    for (const b of this.uniforms.values()) b.destroy();
    this.uniforms.clear();
    this.acquired.release();
  }
}

let current: Runtime | null = null;

/** Acquires the device once per process; later calls return the same runtime. */
export async function initRuntime(options: DeviceOptions = {}): Promise<Runtime> {
  if (current) return current;
  const acquired = await acquireDevice(options);
  current = new Runtime(acquired, options.unsafeNoBoundsChecks ?? false);
  return current;
}

/** Returns the process runtime; throws when initRuntime has not run. */
export function runtime(): Runtime {
  if (!current) throw new Error('WebGPU runtime not initialised: call initRuntime() first');
  return current;
}

export function destroyRuntime(): void {
  current?.destroy();
  current = null;
}
