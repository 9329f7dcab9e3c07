// Training metrics kept on the device so a step never waits for a readback: a running
// count of correct top-1 predictions (argmax of the logits equals the label).
import { packUniforms, type KernelRunner } from './runner.ts';

const WG = 64;

/**
 * counter[slot] (read as u32) += #{b : argmax_k logits[b, k] = labels[b]};
 * logits [B, K], labels i32 [B].
 */
export function countCorrect(r: KernelRunner, logits: GPUBuffer, labels: GPUBuffer, counter: GPUBuffer, slot: number, B: number, K: number): void {
  r.dispatch({
    kernel: 'count_correct',
    key: 'f32',
    code: () => /* wgsl */ `
      struct U { b: u32, k: u32, slot: u32 }
      @group(0) @binding(0) var<storage, read> logits: array<f32>;
      @group(0) @binding(1) var<storage, read> labels: array<i32>;
      @group(0) @binding(2) var<storage, read_write> counter: array<atomic<u32>>;
      @group(0) @binding(3) var<uniform> u: U;
      @compute @workgroup_size(${WG})
      fn main(@builtin(global_invocation_id) g: vec3u) {
        let row = g.x;
        if (row >= u.b) { return; }
        // Ties go to the lowest index, as torch.argmax does.
        var best = 0u;
        var bestValue = logits[row * u.k];
        for (var j = 1u; j < u.k; j++) {
          let v = logits[row * u.k + j];
          if (v > bestValue) { bestValue = v; best = j; }
        }
        if (i32(best) == labels[row]) { atomicAdd(&counter[u.slot], 1u); }
      }`,
    buffers: [logits, labels, counter],
    uniforms: packUniforms([{ u32: B }, { u32: K }, { u32: slot }]),
    workgroups: [Math.ceil(B / WG), 1, 1],
  });
}
