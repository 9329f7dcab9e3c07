// Exits 0 and prints the adapter when Dawn finds a WebGPU adapter, 1 otherwise.
// Used by setup.sh to decide whether a software Vulkan driver must be installed.
import { create, globals } from 'webgpu';

Object.assign(globalThis, globals);
const gpu = create([]);
const adapter = await gpu.requestAdapter();
if (!adapter) {
  console.error('setup: no WebGPU adapter found');
  process.exit(1);
}
const info = adapter.info ?? {};
console.log(`setup: WebGPU adapter found: ${info.vendor || '?'} ${info.architecture || ''} ${info.description || ''}`.trim());
process.exit(0);
