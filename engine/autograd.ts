// Define-by-run reverse-mode autodiff. An op records a Node only when some input requires
// a gradient; its backward rule receives `needs` (one flag per input) and computes only the
// gradients asked for, so a frozen weight costs no dW work at all. backward() walks the
// nodes in reverse recording order (already a topological order), accumulates leaf
// gradients into `.grad`, and releases activations as soon as no earlier node needs them.
import { accumulate, fill } from '../kernels/fill.ts';
import { runtime } from './runtime.ts';
import { Scope, Tensor, empty, persistent } from './tensor.ts';

/**
 * Gradients for each input, null where not needed. Each returned gradient must own its
 * storage, except that one of them may be a view of dy: the tape accumulates into
 * gradients in place, so two views of one buffer would corrupt each other.
 */
export type BackwardFn = (dy: Tensor, needs: boolean[]) => Array<Tensor | null>;

export interface Node {
  op: string;
  inputs: Tensor[];
  output: Tensor;
  /** Tensors the backward rule reads (inputs or the output), released after their last use. */
  saved: Tensor[];
  backward: BackwardFn;
}

let gradEnabled = true;
let activeTape: Tape | null = null;

/** Runs fn without recording any node (evaluation, optimizer updates, weight norms). */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

/**
 * Attaches a backward rule to `output`. Call after computing the output; returns it.
 * Records nothing when no input requires a gradient or recording is off.
 */
export function record(op: string, output: Tensor, inputs: Tensor[], saved: Tensor[], backward: BackwardFn): Tensor {
  if (!gradEnabled || !activeTape) return output;
  if (!inputs.some((t) => t.requiresGrad)) return output;

  const node: Node = { op, inputs, output, saved, backward };
  output.requiresGrad = true;
  output.node = node;
  activeTape.nodes.push(node);
  return output;
}

/**
 * Records the forward pass of one step and runs its backward pass. It is a Scope: every
 * tensor created while it is open (activations, temporaries, intermediate gradients) is
 * released by end() unless kept.
 */
export class Tape extends Scope {
  nodes: Node[] = [];
  private prevTape: Tape | null;

  constructor() {
    super();
    this.prevTape = activeTape;
    activeTape = this;
  }

  /** Back-propagates from a scalar loss (dLoss = 1) into the `.grad` of every leaf that requires one. */
  backward(loss: Tensor): void {
    if (loss.size !== 1) throw new Error(`backward: loss must have one element, got [${loss.shape}]`);
    this.stopRecording();
    const r = runtime();

    const seed = empty(loss.shape);
    fill(r, seed.buffer, 1, 1);
    const grads = new Map<Tensor, Tensor>([[loss, seed]]);

    // Index of the earliest node that reads each tensor: after the reverse walk passes it,
    // the tensor is dead and can go back to the pool.
    const lastUse = new Map<Tensor, number>();
    this.nodes.forEach((n, i) => {
      for (const t of [...n.saved, n.output]) if (!lastUse.has(t)) lastUse.set(t, i);
    });
    const deadAt: Tensor[][] = this.nodes.map(() => []);
    for (const [t, i] of lastUse) deadAt[i].push(t);

    for (let i = this.nodes.length - 1; i >= 0; i--) {
      const node = this.nodes[i];
      const dy = grads.get(node.output);
      if (dy) {
        grads.delete(node.output);
        const needs = node.inputs.map((t) => t.requiresGrad);
        const dxs = node.backward(dy, needs);
        this.releaseEarly(dy);
        node.inputs.forEach((x, j) => {
          const dx = dxs[j];
          if (!dx || !needs[j]) return;
          if (x.isLeaf) this.accumulateLeaf(x, dx);
          else this.accumulateInner(grads, x, dx);
        });
      }
      for (const t of deadAt[i]) this.releaseEarly(t);
    }
    for (const g of grads.values()) this.releaseEarly(g);
  }

  private accumulateInner(grads: Map<Tensor, Tensor>, x: Tensor, dx: Tensor): void {
    const prev = grads.get(x);
    if (!prev) {
      grads.set(x, dx);
      return;
    }
    accumulate(runtime(), prev.buffer, dx.buffer, x.size);
    this.releaseEarly(dx);
  }

  /**
   * Adds dx into x.grad. The first gradient of a step is not copied: x.grad takes over dx's
   * storage (the previous step's buffer goes back to the pool), which saves one copy per
   * parameter per step.
   */
  private accumulateLeaf(x: Tensor, dx: Tensor): void {
    if (dx.size !== x.size) throw new Error(`backward: gradient [${dx.shape}] does not match ${x}`);
    if (x.gradHasValue) {
      accumulate(runtime(), x.grad!.buffer, dx.buffer, x.size);
      this.releaseEarly(dx);
      return;
    }
    x.grad?.release();
    if (this.owns(dx)) {
      x.grad = this.detach(dx.shape.length === x.shape.length && dx.shape.every((d, i) => d === x.shape[i]) ? dx : this.reshapeOwned(dx, x.shape));
    } else {
      x.grad = persistent(() => empty(x.shape));
      runtime().copy(dx.buffer, 0, x.grad.buffer, 0, x.bytes);
    }
    x.gradHasValue = true;
  }

  /** Returns a view of dx with another shape and releases dx (the view keeps the storage). */
  private reshapeOwned(dx: Tensor, shape: readonly number[]): Tensor {
    const v = dx.view(shape);
    this.releaseEarly(dx);
    return v;
  }

  private stopRecording(): void {
    if (activeTape === this) activeTape = this.prevTape;
  }

  override end(): void {
    this.stopRecording();
    for (const n of this.nodes) n.output.node = null;
    this.nodes = [];
    super.end();
  }
}

/** Marks every leaf's gradient stale so the next backward overwrites it (no fill dispatch). */
export function zeroGrad(params: Iterable<Tensor>): void {
  for (const p of params) p.gradHasValue = false;
}
