// Test access to the shared runtime. PRELORA_NO_BOUNDS_CHECKS=1 runs the suite with Dawn's
// robustness transform off, the mode the trainer offers as --unsafe-no-bounds-checks.
import { initRuntime, type Runtime } from '../../engine/runtime.ts';

export function gpu(): Promise<Runtime> {
  return initRuntime({ verbose: false, unsafeNoBoundsChecks: process.env.PRELORA_NO_BOUNDS_CHECKS === '1' });
}
