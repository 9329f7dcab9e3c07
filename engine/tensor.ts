// Tensors: f32 (or i32 for labels) device buffers with a shape, row-major and contiguous.
// Lifetime is deterministic: a tensor created inside a Scope is released when the scope
// ends unless kept; parameters and other long-lived tensors are created outside any scope
// and released explicitly. The garbage collector never frees device memory.
import { runtime } from './runtime.ts';
import type { Node } from './autograd.ts';

export type DType = 'f32' | 'i32';

/** Shared device storage; reshape views point at the same storage. */
class Storage {
  refs = 1;
  constructor(public buffer: GPUBuffer, public bytes: number) {}
}

export function sizeOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export class Tensor {
  readonly shape: readonly number[];
  readonly size: number;
  readonly dtype: DType;
  requiresGrad: boolean;
  /** Accumulated gradient (leaves only); null while none is held. */
  grad: Tensor | null = null;
  /** False after zeroGrad(): the next accumulation overwrites instead of adding. */
  gradHasValue = false;
  /** The autodiff node that produced this tensor; null for leaves. */
  node: Node | null = null;
  name: string | undefined;
  private storage: Storage | null;

  constructor(storage: Storage, shape: readonly number[], dtype: DType, requiresGrad = false) {
    this.storage = storage;
    this.shape = [...shape];
    this.size = sizeOf(shape);
    this.dtype = dtype;
    this.requiresGrad = requiresGrad;
    currentScope()?.adopt(this);
  }

  get buffer(): GPUBuffer {
    if (!this.storage) throw new Error(`tensor${this.name ? ` "${this.name}"` : ''} [${this.shape}] used after release`);
    return this.storage.buffer;
  }

  get bytes(): number {
    return this.size * 4;
  }

  get released(): boolean {
    return this.storage === null;
  }

  get isLeaf(): boolean {
    return this.node === null;
  }

  /** Returns the storage to the pool once no view uses it. Idempotent. */
  release(): void {
    const s = this.storage;
    if (!s) return;
    this.storage = null;
    s.refs--;
    if (s.refs === 0) runtime().pool.release(s.buffer);
  }

  /** Returns a view of the same storage with another shape (no copy, no autodiff; see ops.reshape). */
  view(shape: readonly number[]): Tensor {
    const s = this.buffer && this.storage!;
    if (sizeOf(shape) !== this.size) {
      throw new Error(`invalid reshape: [${this.shape}] has ${this.size} elements, [${shape}] has ${sizeOf(shape)}`);
    }
    s.refs++;
    return new Tensor(s, shape, this.dtype, false);
  }

  /** Reads the values back to the host (submits pending work). */
  async toArray(): Promise<Float32Array> {
    if (this.dtype !== 'f32') throw new Error('toArray: tensor is not f32; use toInt32Array');
    return new Float32Array(await runtime().read(this.buffer, this.bytes));
  }

  async toInt32Array(): Promise<Int32Array> {
    return new Int32Array(await runtime().read(this.buffer, this.bytes));
  }

  /** Overwrites the contents from host data (same element count). */
  write(data: ArrayLike<number>): void {
    if (data.length !== this.size) throw new Error(`write: got ${data.length} values for [${this.shape}] (${this.size})`);
    const host = this.dtype === 'f32' ? Float32Array.from(data) : Int32Array.from(data);
    runtime().upload(this.buffer, host);
  }

  toString(): string {
    return `Tensor(${this.name ?? ''}[${this.shape}] ${this.dtype}${this.requiresGrad ? ' grad' : ''})`;
  }
}

// ---- creation -------------------------------------------------------------------------

export function empty(shape: readonly number[], dtype: DType = 'f32'): Tensor {
  const bytes = Math.max(4, sizeOf(shape) * 4);
  const buffer = runtime().pool.acquire(bytes);
  return new Tensor(new Storage(buffer, bytes), shape, dtype);
}

export function fromArray(data: ArrayLike<number>, shape: readonly number[], opts: { requiresGrad?: boolean; dtype?: DType } = {}): Tensor {
  const t = empty(shape, opts.dtype ?? 'f32');
  t.write(data);
  t.requiresGrad = opts.requiresGrad ?? false;
  return t;
}

// ---- scopes ---------------------------------------------------------------------------

/**
 * Owns every tensor created while it is the innermost open scope. end() releases them
 * all except those passed to keep(), which move to the enclosing scope (or become
 * unowned when there is none).
 */
export class Scope {
  private owned = new Set<Tensor>();
  private parent: Scope | null;
  private open = true;

  constructor() {
    this.parent = currentScope();
    scopeStack.push(this);
  }

  adopt(t: Tensor): void {
    this.owned.add(t);
  }

  owns(t: Tensor): boolean {
    return this.owned.has(t);
  }

  /** Releases a tensor now (it is dead before the scope ends). */
  releaseEarly(t: Tensor): void {
    if (this.owned.delete(t)) t.release();
  }

  /** Stops owning a tensor without releasing it: the caller now owns it. */
  detach<T extends Tensor>(t: T): T {
    this.owned.delete(t);
    return t;
  }

  keep<T extends Tensor>(t: T): T {
    if (this.owned.delete(t)) this.parent?.adopt(t);
    return t;
  }

  end(): void {
    if (!this.open) return;
    this.open = false;
    const i = scopeStack.lastIndexOf(this);
    if (i >= 0) scopeStack.splice(i, 1);
    for (const t of this.owned) t.release();
    this.owned.clear();
  }
}

const scopeStack: Scope[] = [];

export function currentScope(): Scope | null {
  return scopeStack.length > 0 ? scopeStack[scopeStack.length - 1] : null;
}

/** Releases a temporary now if the innermost scope owns it (it is dead before the scope ends). */
export function releaseTemp(t: Tensor | null): void {
  if (t) currentScope()?.releaseEarly(t);
}

/** Runs fn in a scope; tensors it returns are kept, everything else it made is released. */
export function tidy<T extends Tensor | Tensor[] | void>(fn: () => T): T {
  const scope = new Scope();
  try {
    const out = fn();
    if (out instanceof Tensor) scope.keep(out);
    else if (Array.isArray(out)) out.forEach((t) => scope.keep(t));
    return out;
  } finally {
    scope.end();
  }
}

/** Creates a tensor that no scope owns (parameters, optimizer state, persistent grads). */
export function persistent<T>(fn: () => T): T {
  const saved = scopeStack.splice(0, scopeStack.length);
  try {
    return fn();
  } finally {
    scopeStack.push(...saved);
  }
}
