// A float64 ViT forward pass on host arrays, the reference the engine's model is tested
// against. Written for clarity, not speed; only for tiny shapes.
import type { VitConfig } from '../../model/vit.ts';

export type Weights = Map<string, Float64Array>;

/** y [N, out] = x [N, in] · Wᵀ + b (+ s·(x·Aᵀ)·Bᵀ). */
export function refLinear(x: Float64Array, N: number, inF: number, w: Float64Array, b: Float64Array | null, outF: number, lora?: { a: Float64Array; b: Float64Array; R: number; s: number }): Float64Array {
  const y = new Float64Array(N * outF);
  for (let n = 0; n < N; n++) {
    let u: Float64Array | null = null;
    if (lora) {
      u = new Float64Array(lora.R);
      for (let r = 0; r < lora.R; r++) {
        let acc = 0;
        for (let i = 0; i < inF; i++) acc += x[n * inF + i] * lora.a[r * inF + i];
        u[r] = acc;
      }
    }
    for (let o = 0; o < outF; o++) {
      let acc = b ? b[o] : 0;
      for (let i = 0; i < inF; i++) acc += x[n * inF + i] * w[o * inF + i];
      if (lora && u) for (let r = 0; r < lora.R; r++) acc += lora.s * u[r] * lora.b[o * lora.R + r];
      y[n * outF + o] = acc;
    }
  }
  return y;
}

export function refLayerNorm(x: Float64Array, N: number, C: number, g: Float64Array, b: Float64Array, eps: number): Float64Array {
  const y = new Float64Array(N * C);
  for (let n = 0; n < N; n++) {
    let mean = 0;
    for (let c = 0; c < C; c++) mean += x[n * C + c];
    mean /= C;
    let v = 0;
    for (let c = 0; c < C; c++) v += (x[n * C + c] - mean) ** 2;
    v /= C;
    const rstd = 1 / Math.sqrt(v + eps);
    for (let c = 0; c < C; c++) y[n * C + c] = (x[n * C + c] - mean) * rstd * g[c] + b[c];
  }
  return y;
}

export function refGelu(z: number): number {
  return 0.5 * z * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (z + 0.044715 * z ** 3)));
}

/** q, k, v [B, T, H·D] → [B, T, H·D]. */
export function refAttention(q: Float64Array, k: Float64Array, v: Float64Array, B: number, T: number, H: number, D: number): Float64Array {
  const C = H * D;
  const out = new Float64Array(B * T * C);
  const scale = 1 / Math.sqrt(D);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < T; i++) {
        const s = new Float64Array(T);
        let max = -Infinity;
        for (let j = 0; j < T; j++) {
          let acc = 0;
          for (let d = 0; d < D; d++) acc += q[(b * T + i) * C + h * D + d] * k[(b * T + j) * C + h * D + d];
          s[j] = acc * scale;
          max = Math.max(max, s[j]);
        }
        let sum = 0;
        for (let j = 0; j < T; j++) sum += (s[j] = Math.exp(s[j] - max));
        for (let d = 0; d < D; d++) {
          let acc = 0;
          for (let j = 0; j < T; j++) acc += (s[j] / sum) * v[(b * T + j) * C + h * D + d];
          out[(b * T + i) * C + h * D + d] = acc;
        }
      }
    }
  }
  return out;
}

/** images [B, Cin, S, S] → logits [B, classes], with the model's parameters by HF name. */
export function refVitForward(cfg: VitConfig, w: Weights, images: Float64Array, B: number): Float64Array {
  const { hidden: C, patchSize: P, channels: Cin, imageSize: S, heads: H, mlpDim, numClasses, layerNormEps: eps } = cfg;
  const g = S / P;
  const Np = g * g;
  const T = Np + 1;
  const get = (n: string) => {
    const t = w.get(n);
    if (!t) throw new Error(`reference: missing weight ${n}`);
    return t;
  };

  // Patches flattened (channel, row, column), as a stride-P convolution reads them.
  const patches = new Float64Array(B * Np * Cin * P * P);
  for (let b = 0; b < B; b++)
    for (let p = 0; p < Np; p++)
      for (let c = 0; c < Cin; c++)
        for (let py = 0; py < P; py++)
          for (let px = 0; px < P; px++) {
            const y = Math.floor(p / g) * P + py;
            const xx = (p % g) * P + px;
            patches[((b * Np + p) * Cin + c) * P * P + py * P + px] = images[((b * Cin + c) * S + y) * S + xx];
          }
  const pe = refLinear(patches, B * Np, Cin * P * P, get('vit.embeddings.patch_embeddings.projection.weight'), get('vit.embeddings.patch_embeddings.projection.bias'), C);

  let x = new Float64Array(B * T * C);
  const cls = get('vit.embeddings.cls_token');
  const pos = get('vit.embeddings.position_embeddings');
  for (let b = 0; b < B; b++)
    for (let t = 0; t < T; t++)
      for (let c = 0; c < C; c++) x[(b * T + t) * C + c] = (t === 0 ? cls[c] : pe[(b * Np + t - 1) * C + c]) + pos[t * C + c];

  const N = B * T;
  for (let l = 0; l < cfg.layers; l++) {
    const pre = `vit.encoder.layer.${l}`;
    const lin = (name: string, input: Float64Array, inF: number, outF: number) => refLinear(input, N, inF, get(`${pre}.${name}.weight`), get(`${pre}.${name}.bias`), outF);
    const h = refLayerNorm(x, N, C, get(`${pre}.layernorm_before.weight`), get(`${pre}.layernorm_before.bias`), eps);
    const a = refAttention(lin('attention.attention.query', h, C, C), lin('attention.attention.key', h, C, C), lin('attention.attention.value', h, C, C), B, T, H, C / H);
    const ao = lin('attention.output.dense', a, C, C);
    const x1 = x.map((v, i) => v + ao[i]);
    const h2 = refLayerNorm(x1, N, C, get(`${pre}.layernorm_after.weight`), get(`${pre}.layernorm_after.bias`), eps);
    const m = lin('intermediate.dense', h2, C, mlpDim).map(refGelu);
    const o = lin('output.dense', m, mlpDim, C);
    x = x1.map((v, i) => v + o[i]);
  }

  const clsOut = new Float64Array(B * C);
  for (let b = 0; b < B; b++) for (let c = 0; c < C; c++) clsOut[b * C + c] = x[b * T * C + c];
  const normed = refLayerNorm(clsOut, B, C, get('vit.layernorm.weight'), get('vit.layernorm.bias'), eps);
  return refLinear(normed, B, C, get('classifier.weight'), get('classifier.bias'), numClasses);
}
