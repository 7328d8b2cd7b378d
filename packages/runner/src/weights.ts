import type { ModelConfig } from "./config.js";
import { SafetensorsStore } from "./safetensors.js";

export interface LayerWeights {
  inputNorm: Float32Array;
  postNorm: Float32Array;
  /** PyTorch Linear layout [out][in]. */
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  o: Float32Array;
  gate: Float32Array;
  up: Float32Array;
  down: Float32Array;
  qBias?: Float32Array;
  kBias?: Float32Array;
  vBias?: Float32Array;
  oBias?: Float32Array;
  gateBias?: Float32Array;
  upBias?: Float32Array;
  downBias?: Float32Array;
  /** Qwen3: RMSNorm weights [head_dim] of each head's q and k. */
  qNorm?: Float32Array;
  kNorm?: Float32Array;
}

export interface ModelWeights {
  embed: Float32Array;
  norm: Float32Array;
  /** The classifier [vocab][hidden]; the same array as `embed` when tied. */
  lmHead: Float32Array;
  layers: LayerWeights[];
}

/** Load every weight the config implies, checking names and shapes; 16-bit weights become float32. */
export function loadWeights(dir: string, c: ModelConfig): ModelWeights {
  const st = new SafetensorsStore(dir);
  const d = c.hiddenSize;
  const qd = c.numHeads * c.headDim;
  const kvd = c.numKvHeads * c.headDim;
  const I = c.intermediateSize;
  const layers: LayerWeights[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const w: LayerWeights = {
      inputNorm: st.read(`${p}input_layernorm.weight`, [d]),
      postNorm: st.read(`${p}post_attention_layernorm.weight`, [d]),
      q: st.read(`${p}self_attn.q_proj.weight`, [qd, d]),
      k: st.read(`${p}self_attn.k_proj.weight`, [kvd, d]),
      v: st.read(`${p}self_attn.v_proj.weight`, [kvd, d]),
      o: st.read(`${p}self_attn.o_proj.weight`, [d, qd]),
      gate: st.read(`${p}mlp.gate_proj.weight`, [I, d]),
      up: st.read(`${p}mlp.up_proj.weight`, [I, d]),
      down: st.read(`${p}mlp.down_proj.weight`, [d, I]),
    };
    if (c.qkvBias) {
      w.qBias = st.read(`${p}self_attn.q_proj.bias`, [qd]);
      w.kBias = st.read(`${p}self_attn.k_proj.bias`, [kvd]);
      w.vBias = st.read(`${p}self_attn.v_proj.bias`, [kvd]);
    }
    if (c.oBias) w.oBias = st.read(`${p}self_attn.o_proj.bias`, [d]);
    if (c.mlpBias) {
      w.gateBias = st.read(`${p}mlp.gate_proj.bias`, [I]);
      w.upBias = st.read(`${p}mlp.up_proj.bias`, [I]);
      w.downBias = st.read(`${p}mlp.down_proj.bias`, [d]);
    }
    if (c.qkNorm) {
      w.qNorm = st.read(`${p}self_attn.q_norm.weight`, [c.headDim]);
      w.kNorm = st.read(`${p}self_attn.k_norm.weight`, [c.headDim]);
    }
    layers.push(w);
  }
  const embed = st.read("model.embed_tokens.weight", [c.vocabSize, d]);
  const lmHead = c.tieWordEmbeddings ? embed : st.read("lm_head.weight", [c.vocabSize, d]);
  return { embed, norm: st.read("model.norm.weight", [d]), lmHead, layers };
}
