//! The CLIP text encoder of SD v1.x (transformers `CLIPTextModel`): token + position embeddings, pre-LayerNorm
//! transformer layers with causal self-attention and quick-GELU MLPs, a final LayerNorm. SD conditions the UNet
//! on `last_hidden_state` `[B, 77, C]` (not the pooled output).
//!
//! Parameter names are the transformers keys (`text_model.embeddings.token_embedding.weight`,
//! `text_model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj.{weight,bias}`, `layer_norm1/2`, `mlp.fc1/fc2`,
//! `text_model.final_layer_norm`), so [`crate::models::weights`] loads them unchanged.
//!
//! Token lookup: `Op::Gather { axis: 0 }` (torch.gather) of the `[V, C]` table with the ids `[B*T, 1]` (i64
//! input) broadcast to `[B*T, C]`: row r, column c reads `table[ids[r], c]`. [`ClipTextModel::inputs`] builds
//! the ids tensor. (Before Gather existed this was a one-hot `[B*T, V]` matmul: 11.7 GFLOP and a 30 MB input
//! at B=2 with the real vocabulary.)

use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId, Op, UnaryOp};
use crate::models::config::ClipTextConfig;
use crate::models::layers;
use crate::nn;
use crate::tensor::{DType, HostTensor};

/// Builds the text encoder graph for a batch of `batch` prompts of `seq` tokens.
#[derive(Clone, Debug)]
pub struct ClipTextModel {
    pub config: ClipTextConfig,
    pub batch: usize,
    /// Tokens per prompt (77 for SD v1.x).
    pub seq: usize,
    /// Storage dtype of parameters and activations.
    pub dtype: DType,
}

/// A built text encoder graph.
#[derive(Clone, Debug)]
pub struct ClipTextGraph {
    pub graph: Graph,
    /// `[B, T, C]` after the final LayerNorm (graph output).
    pub last_hidden_state: NodeId,
    /// The embeddings and the output of every layer, `[B, T, C]` each (graph outputs when kept).
    pub hidden_states: Vec<NodeId>,
}

impl ClipTextModel {
    /// Name of the graph input that carries the token ids (i64 `[B*T, 1]`).
    pub const INPUT: &'static str = "input_ids";

    pub fn new(config: ClipTextConfig, batch: usize, dtype: DType) -> Result<Self> {
        config.validate(None)?;
        let seq = crate::models::tokenizer::MAX_LEN.min(config.max_position_embeddings);
        Ok(ClipTextModel { config, batch, seq, dtype })
    }

    /// The whole graph; with `keep_hidden_states` every layer's output is also a graph output.
    pub fn build(&self, keep_hidden_states: bool) -> Result<ClipTextGraph> {
        let mut g = Graph::new();
        let (last, hidden) = self.build_into(&mut g)?;
        g.mark_output(last);
        if keep_hidden_states {
            for &h in &hidden {
                g.mark_output(h);
            }
        }
        Ok(ClipTextGraph { graph: g, last_hidden_state: last, hidden_states: hidden })
    }

    /// Add the encoder to an existing graph (input [`Self::INPUT`]); returns `last_hidden_state` and the
    /// hidden states (embeddings, then each layer).
    pub fn build_into(&self, g: &mut Graph) -> Result<(NodeId, Vec<NodeId>)> {
        let c = &self.config;
        let (b, t, d, dt) = (self.batch, self.seq, c.hidden_size, self.dtype);
        if t > c.max_position_embeddings {
            return Err(Error::graph("CLIPTextModel", format!("{t} tokens > max_position_embeddings {}", c.max_position_embeddings)));
        }
        let ids = g.input(Self::INPUT, &[b * t, 1], DType::I64)?; // (B*T, 1)
        let ids = g.broadcast_to(ids, &[b * t, d])?; // (B*T, C)
        let table = g.param("text_model.embeddings.token_embedding.weight", &[c.vocab_size, d], dt)?; // (V, C)
        let tok = g.push(Op::Gather { axis: 0 }, &[table, ids])?; // (B*T, C)
        let tok = g.reshape(tok, &[b, t, d])?; // (B, T, C)
        let pos = g.param("text_model.embeddings.position_embedding.weight", &[c.max_position_embeddings, d], dt)?;
        let pos = g.slice(pos, 0, 0, t)?; // (T, C): position ids are 0..T
        let mut x = g.add(tok, pos)?; // (B, T, C)
        let mut hidden = vec![x];
        for i in 0..c.num_hidden_layers {
            x = self.layer(g, &format!("text_model.encoder.layers.{i}"), x)?;
            hidden.push(x);
        }
        let last = nn::layer_norm(g, "text_model.final_layer_norm", x, c.layer_norm_eps)?;
        Ok((last, hidden))
    }

    fn layer(&self, g: &mut Graph, p: &str, x: NodeId) -> Result<NodeId> {
        let c = &self.config;
        let d = c.hidden_size;
        let h = nn::layer_norm(g, &format!("{p}.layer_norm1"), x, c.layer_norm_eps)?;
        let q = nn::linear(g, &format!("{p}.self_attn.q_proj"), h, d, true)?;
        let k = nn::linear(g, &format!("{p}.self_attn.k_proj"), h, d, true)?;
        let v = nn::linear(g, &format!("{p}.self_attn.v_proj"), h, d, true)?;
        let a = layers::attention(g, q, k, v, c.num_attention_heads, true)?; // (B, T, C), causal
        let a = nn::linear(g, &format!("{p}.self_attn.out_proj"), a, d, true)?;
        let x = g.add(x, a)?;
        let h = nn::layer_norm(g, &format!("{p}.layer_norm2"), x, c.layer_norm_eps)?;
        let h = nn::linear(g, &format!("{p}.mlp.fc1"), h, c.intermediate_size, true)?;
        let h = match c.hidden_act.as_str() {
            "quick_gelu" => layers::quick_gelu(g, h)?,
            _ => g.unary(UnaryOp::Gelu, h)?,
        };
        let h = nn::linear(g, &format!("{p}.mlp.fc2"), h, d, true)?;
        g.add(x, h)
    }

    /// The graph inputs for `ids` (`batch` rows of `seq` ids each, e.g. from the tokenizer).
    pub fn inputs(&self, ids: &[Vec<u32>]) -> Result<Vec<(String, HostTensor)>> {
        let v = self.config.vocab_size;
        if ids.len() != self.batch || ids.iter().any(|r| r.len() != self.seq) {
            return Err(Error::Mismatch {
                what: "CLIPTextModel input ids".into(),
                msg: format!("want {} rows of {} ids, got {:?}", self.batch, self.seq, ids.iter().map(|r| r.len()).collect::<Vec<_>>()),
            });
        }
        let mut bytes = Vec::with_capacity(self.batch * self.seq * 8);
        for &id in ids.iter().flatten() {
            if id as usize >= v {
                return Err(Error::Mismatch { what: "CLIPTextModel input ids".into(), msg: format!("id {id} >= vocab_size {v}") });
            }
            bytes.extend_from_slice(&(id as i64).to_le_bytes());
        }
        Ok(vec![(Self::INPUT.to_string(), HostTensor::from_bytes(&[self.batch * self.seq, 1], DType::I64, bytes)?)])
    }
}
