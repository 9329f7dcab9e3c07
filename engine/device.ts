// Acquires the WebGPU adapter and device through Dawn's Node bindings, reports which
// adapter was chosen, and turns device loss and uncaptured validation errors into errors
// the trainer sees. Everything else (buffers, dispatch) lives in runtime.ts.
import { create, globals } from 'webgpu';

export type Backend = 'default' | 'vulkan' | 'metal' | 'd3d12' | 'd3d11' | 'opengl' | 'opengles' | 'null';

export interface DeviceOptions {
  /** Dawn backend; "default" lets Dawn pick (Vulkan on Linux, Metal on macOS, D3D12 on Windows). */
  backend?: Backend;
  /** Exact adapter name as Dawn lists it; unset picks by power preference. */
  adapterName?: string;
  powerPreference?: GPUPowerPreference;
  /**
   * Turns off Dawn's robustness transform (the index clamp around every storage access).
   * This is sound only because every kernel validates shapes on the host and guards its
   * tails in the shader. The matmul here measured no speed difference on lavapipe.
   */
  unsafeNoBoundsChecks?: boolean;
  /** Print the chosen adapter to stderr (default true). */
  verbose?: boolean;
}

export interface AdapterReport {
  vendor: string;
  architecture: string;
  description: string;
  backend: string;
  isSoftware: boolean;
}

export interface AcquiredDevice {
  device: GPUDevice;
  adapter: AdapterReport;
  features: Set<string>;
  /** Errors reported asynchronously by the device; the runtime rethrows the first one. */
  pendingErrors: Error[];
  /** Drops every reference to Dawn so Node can exit. */
  release(): void;
}

export class NoAdapterError extends Error {
  constructor(detail: string) {
    super(
      `no WebGPU adapter found${detail ? ` (${detail})` : ''}. ` +
        'On Linux without a GPU run ./setup.sh, which installs Mesa\'s lavapipe (Vulkan on the CPU); ' +
        'elsewhere install a Vulkan, Metal or D3D12 driver.',
    );
    this.name = 'NoAdapterError';
  }
}

const OPTIONAL_FEATURES: GPUFeatureName[] = ['shader-f16', 'subgroups' as GPUFeatureName, 'timestamp-query'];

export async function acquireDevice(options: DeviceOptions = {}): Promise<AcquiredDevice> {
  Object.assign(globalThis, globals);

  // Dawn's Vulkan loader path wants a runtime directory; a bare container has none.
  if (!process.env.XDG_RUNTIME_DIR) process.env.XDG_RUNTIME_DIR = '/tmp';

  const flags: string[] = [];
  if (options.backend && options.backend !== 'default') flags.push(`backend=${options.backend}`);
  if (options.adapterName) flags.push(`adapter=${options.adapterName}`);
  if (options.unsafeNoBoundsChecks) flags.push('enable-dawn-features=allow_unsafe_apis,disable_robustness');

  let gpu: GPU | null = create(flags);
  let adapter: GPUAdapter | null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference: options.powerPreference });
  } catch (err) {
    throw new NoAdapterError((err as Error).message.split('\n')[0]);
  }
  if (!adapter) throw new NoAdapterError(options.adapterName ? `adapter "${options.adapterName}" not found` : '');

  const requiredFeatures = OPTIONAL_FEATURES.filter((f) => adapter!.features.has(f));
  const limits = adapter.limits;
  const device = await adapter.requestDevice({
    requiredFeatures,
    requiredLimits: {
      maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize,
      maxBufferSize: limits.maxBufferSize,
      maxComputeWorkgroupStorageSize: limits.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: limits.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: limits.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupSizeY: limits.maxComputeWorkgroupSizeY,
      maxStorageBuffersPerShaderStage: limits.maxStorageBuffersPerShaderStage,
    },
  });

  const pendingErrors: Error[] = [];
  device.addEventListener('uncapturederror', (event) => {
    const e = (event as GPUUncapturedErrorEvent).error;
    pendingErrors.push(new Error(`WebGPU error: ${e.message}`));
  });
  device.lost.then((info) => {
    if (info.reason !== 'destroyed') pendingErrors.push(new Error(`WebGPU device lost: ${info.message}`));
  });

  const info = adapter.info;
  const description = info.description || '';
  const report: AdapterReport = {
    vendor: info.vendor || 'unknown',
    architecture: info.architecture || '',
    description,
    backend: options.backend ?? 'default',
    isSoftware: /llvmpipe|lavapipe|swiftshader/i.test(`${description} ${info.architecture}`),
  };
  if (options.verbose ?? true) {
    process.stderr.write(`adapter: ${describeAdapter(report)}\n`);
  }

  return {
    device,
    adapter: report,
    features: new Set([...device.features] as string[]),
    pendingErrors,
    release() {
      device.destroy();
      gpu = null;
    },
  };
}

export function describeAdapter(a: AdapterReport): string {
  const parts = [a.vendor, a.architecture, a.description].filter((s) => s && s.length > 0);
  return parts.join(' / ') + (a.isSoftware ? ' (software)' : '');
}
