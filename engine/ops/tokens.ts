// Sequence-layout ops for patch models: patchify (images carry no gradient), prepend a
// learned token, and select one token. Forward and backward side by side.
import { prependToken as prependTokenKernel, prependTokenBackward, patchify as patchifyKernel, selectToken as selectTokenKernel, selectTokenBackward } from '../../kernels/tokens.ts';
import { record } from '../autograd.ts';
import { runtime } from '../runtime.ts';
import { empty, type Tensor } from '../tensor.ts';

/** images [B, Cin, Hh, Ww] → [B, Np, Cin·P·P]. No gradient: images are data. */
export function patchify(images: Tensor, patch: number): Tensor {
  const [B, Cin, Hh, Ww] = images.shape;
  if (images.shape.length !== 4) throw new Error(`patchify: expected images [B, C, H, W], got [${images.shape}]`);
  if (Hh % patch !== 0 || Ww % patch !== 0) throw new Error(`patchify: image ${Hh}×${Ww} is not a multiple of patch size ${patch}`);
  if (images.requiresGrad) throw new Error('patchify: gradients with respect to images are not supported');
  const Np = (Hh / patch) * (Ww / patch);
  const out = empty([B, Np, Cin * patch * patch]);
  patchifyKernel(runtime(), images.buffer, out.buffer, B, Cin, Hh, Ww, patch);
  return out;
}

/** x [B, N, C], token [C] (any shape with C elements) → [B, N+1, C]. */
export function prependToken(x: Tensor, token: Tensor): Tensor {
  const [B, N, C] = x.shape;
  if (token.size !== C) throw new Error(`prependToken: token has ${token.size} elements, expected ${C}`);
  const y = empty([B, N + 1, C]);
  prependTokenKernel(runtime(), x.buffer, token.buffer, y.buffer, B, N, C);

  return record('prepend_token', y, [x, token], [], (dy, needs) => {
    const dx = needs[0] ? empty(x.shape) : null;
    const dtoken = needs[1] ? empty(token.shape) : null;
    prependTokenBackward(runtime(), dy.buffer, dx?.buffer ?? null, dtoken?.buffer ?? null, B, N, C);
    return [dx, dtoken];
  });
}

/** x [B, T, C] → [B, C] = x[:, index]. */
export function selectToken(x: Tensor, index: number): Tensor {
  const [B, T, C] = x.shape;
  if (index < 0 || index >= T) throw new Error(`selectToken: index ${index} out of range for ${T} tokens`);
  const y = empty([B, C]);
  selectTokenKernel(runtime(), x.buffer, y.buffer, B, T, C, index);

  return record('select_token', y, [x], [], (dy) => {
    const dx = empty(x.shape);
    selectTokenBackward(runtime(), dy.buffer, dx.buffer, B, T, C, index);
    return [dx];
  });
}
