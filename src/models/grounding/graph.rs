//! The forward graph of the grounding head: neck, encoder ("feature enhancer"), encoder proposals and
//! language-guided query selection, decoder with iterative box refinement. See DESIGN.md "Grounding head".

use super::layers::{self, add_norm, attention_module, deform_attn, ffn, inverse_sigmoid, lin, ln, mlp3, Ctx, Reference};
use super::GroundingConfig;
use crate::error::Result;
use crate::graph::{Graph, NodeId, Op, ReduceOp, UnaryOp};
use crate::tensor::{DType, HostTensor};

/// Sizes of one graph: batch, feature level shapes `(h, w)` (largest first) and text tokens per image.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadShape {
    pub batch: usize,
    pub levels: Vec<[usize; 2]>,
    pub text_tokens: usize,
}

/// The forward graph with its named outputs.
pub struct HeadGraph {
    pub graph: Graph,
    pub ctx: Ctx,
    /// `(name, logits [B, K, T], boxes [B, K, 4] cxcywh in [0, 1])`: `enc` (the selected encoder proposals), then
    /// `dec0`, `dec1`, ... (every decoder layer).
    pub outputs: Vec<(String, NodeId, NodeId)>,
    /// Selected token of each query, i64 `[B, K]` (descending selection score).
    pub topk: NodeId,
    /// The `[B, 1, T]` text mask input (1 = real token).
    pub text_mask: NodeId,
}

/// Input names.
pub const TEXT: &str = "text";
pub const TEXT_MASK: &str = "text_mask";
pub fn feature_input(level: usize) -> String {
    format!("feat_{level}")
}

/// Builds the forward graph. Inputs: `feat_{l}` `[B, h_l, w_l, C_l]`, `text` `[B, T, text_dim]`, `text_mask`
/// `[B, 1, T]`, the constants of `ctx` and (with dropout) the dropout keys.
pub fn build_forward(cfg: &GroundingConfig, shape: &HeadShape, dropout: bool) -> Result<HeadGraph> {
    cfg.validate(None)?;
    if shape.levels.len() != cfg.levels() {
        return Err(layers::shape_err(
            "levels",
            format!("{} feature level shapes for a config with {} levels", shape.levels.len(), cfg.levels()),
        ));
    }
    if shape.batch == 0 || shape.text_tokens == 0 || shape.levels.iter().any(|l| l[0] == 0 || l[1] == 0) {
        return Err(layers::shape_err("shape", format!("{shape:?} has an empty axis")));
    }
    let s_total: usize = shape.levels.iter().map(|l| l[0] * l[1]).sum();
    if s_total < cfg.queries {
        return Err(layers::shape_err("queries", format!("{} queries but only {s_total} image tokens", cfg.queries)));
    }
    let mut g = Graph::new();
    let mut ctx = Ctx::new(if dropout { cfg.dropout } else { 0.0 });
    let (b, d, t, l_n) = (shape.batch, cfg.hidden, shape.text_tokens, cfg.levels());
    let f32t = DType::F32;

    // Neck: 1x1 conv + GroupNorm per level, flattened level-major.
    let mut toks = Vec::new();
    for (l, (&[h, w], &c)) in shape.levels.iter().zip(&cfg.feature_channels).enumerate() {
        let x = g.input(&feature_input(l), &[b, h, w, c], f32t)?;
        let x = crate::nn::spatial::conv2d(&mut g, x, &format!("neck.{l}.conv"), c, d, 1, 1, 0)?;
        let x = crate::nn::spatial::group_norm(&mut g, x, &format!("neck.{l}.norm"), cfg.neck_groups, 1e-5, false)?;
        toks.push(g.reshape(x, &[b, h * w, d])?);
    }
    let mut src = g.concat(&toks, 1)?; // (B, S, d)
    let s = s_total;

    // Position: sine (constant) + level embedding.
    let pos = ctx.constant(&mut g, "pos", layers::sine_pos_2d(&shape.levels, d, cfg.pos_temperature)?)?; // (S, d)
    let lvl_embed = g.param("level_embed", &[l_n, d], f32t)?;
    let mut lv = Vec::new();
    for (l, &[h, w]) in shape.levels.iter().enumerate() {
        let e = g.slice(lvl_embed, 0, l, l + 1)?;
        lv.push(g.broadcast_to(e, &[h * w, d])?);
    }
    let lv = g.concat(&lv, 0)?;
    let pos = g.add(pos, lv)?;
    let pos = g.reshape(pos, &[1, s, d])?;

    // Encoder reference points and per-level offset normalisers.
    let centres: Vec<f32> = layers::token_centres(&shape.levels).iter().flat_map(|c| [c[0] as f32, c[1] as f32]).collect();
    let centres = ctx.constant(&mut g, "token_centres", HostTensor::from_f32(&[1, s, 1, 1, 1, 2], f32t, &centres)?)?;
    let inv: Vec<f32> = shape.levels.iter().flat_map(|&[h, w]| [1.0 / w as f32, 1.0 / h as f32]).collect();
    let inv = ctx.constant(&mut g, "level_inv_size", HostTensor::from_f32(&[1, 1, 1, l_n, 1, 2], f32t, &inv)?)?;
    let enc_ref = Reference::Points { points: centres, inv_size: inv };

    // Text.
    let text_in = g.input(TEXT, &[b, t, cfg.text_dim], f32t)?;
    let text_mask = g.input(TEXT_MASK, &[b, 1, t], f32t)?;
    let mut txt = lin(&mut g, "text_proj", text_in, d)?; // (B, T, d)

    // Encoder layers: fusion, text self-attention, deformable image self-attention.
    for k in 0..cfg.enc_layers {
        let e = format!("enc.{k}");
        let vn = ln(&mut g, &format!("{e}.fusion.norm_v"), src)?;
        let lnn = ln(&mut g, &format!("{e}.fusion.norm_l"), txt)?;
        let fd = cfg.fusion_dim;
        let qv = lin(&mut g, &format!("{e}.fusion.v_proj"), vn, fd)?;
        let kl = lin(&mut g, &format!("{e}.fusion.l_proj"), lnn, fd)?;
        let vv = lin(&mut g, &format!("{e}.fusion.values_v"), vn, fd)?;
        let vl = lin(&mut g, &format!("{e}.fusion.values_l"), lnn, fd)?;
        let av = crate::nn::attention::attention(&mut g, qv, kl, vl, cfg.fusion_heads, false)?;
        let al = crate::nn::attention::attention(&mut g, kl, qv, vv, cfg.fusion_heads, false)?;
        let dv = lin(&mut g, &format!("{e}.fusion.out_v"), av, d)?;
        let dl = lin(&mut g, &format!("{e}.fusion.out_l"), al, d)?;
        let gv = g.param(&format!("{e}.fusion.gamma_v"), &[d], f32t)?;
        let gl = g.param(&format!("{e}.fusion.gamma_l"), &[d], f32t)?;
        let dv = g.mul(dv, gv)?;
        let dv = ctx.dropout(&mut g, dv)?;
        let dl = g.mul(dl, gl)?;
        let dl = ctx.dropout(&mut g, dl)?;
        src = g.add(src, dv)?;
        txt = g.add(txt, dl)?;

        let t2 = attention_module(&mut g, &format!("{e}.text.attn"), txt, txt, txt, cfg.text_heads)?;
        txt = add_norm(&mut g, &mut ctx, &format!("{e}.text.norm1"), txt, t2)?;
        let t2 = ffn(&mut g, &mut ctx, &format!("{e}.text.linear1"), &format!("{e}.text.linear2"), txt, cfg.text_ffn)?;
        txt = add_norm(&mut g, &mut ctx, &format!("{e}.text.norm2"), txt, t2)?;

        let q = g.add(src, pos)?;
        let s2 = deform_attn(&mut g, &format!("{e}.image.attn"), cfg.deform_heads, cfg.points, &shape.levels, q, &enc_ref, src)?;
        src = add_norm(&mut g, &mut ctx, &format!("{e}.image.norm1"), src, s2)?;
        let s2 = ffn(&mut g, &mut ctx, &format!("{e}.image.linear1"), &format!("{e}.image.linear2"), src, cfg.ffn)?;
        src = add_norm(&mut g, &mut ctx, &format!("{e}.image.norm2"), src, s2)?;
    }
    let (memory, text_mem) = (src, txt);

    // Two-stage: proposals, encoder heads, language-guided query selection.
    let (prop, valid) = layers::proposals(&shape.levels, cfg.proposal_min_wh);
    let prop = ctx.constant(&mut g, "proposals", HostTensor::from_f32(&[1, s, 4], f32t, &prop)?)?;
    let valid_bias: Vec<f32> = valid.iter().map(|v| (v - 1.0) * 1e9).collect();
    let valid = ctx.constant(&mut g, "proposal_valid", HostTensor::from_f32(&[1, s, 1], f32t, &valid)?)?;
    let valid_bias = ctx.constant(&mut g, "proposal_valid_bias", HostTensor::from_f32(&[1, s], f32t, &valid_bias)?)?;
    let out_mem = g.mul(memory, valid)?;
    let out_mem = lin(&mut g, "enc_output", out_mem, d)?;
    let out_mem = ln(&mut g, "enc_output_norm", out_mem)?;
    let enc_logits_all = layers::contrastive(&mut g, out_mem, text_mem)?; // (B, S, T)
    let enc_delta = mlp3(&mut g, "enc_bbox", out_mem, 4)?;
    let enc_unsig_all = g.add(enc_delta, prop)?; // (B, S, 4)
    let mask_bias = g.affine(text_mask, 1e9, -1e9)?; // (B, 1, T): 0 real, -1e9 padding
    let masked = g.add(enc_logits_all, mask_bias)?;
    let score = g.reduce(ReduceOp::Max, masked, &[2], false)?; // (B, S)
    let score = g.add(score, valid_bias)?;
    let score = g.stop_gradient(score)?;
    let k_q = cfg.queries;
    let topk = g.push(Op::TopK { k: k_q }, &[score])?; // (B, K) i64
    let idx = g.reshape(topk, &[b, k_q, 1])?;
    let idx_t = g.broadcast_to(idx, &[b, k_q, t])?;
    let idx_4 = g.broadcast_to(idx, &[b, k_q, 4])?;
    let enc_logits = g.push(Op::Gather { axis: 1 }, &[enc_logits_all, idx_t])?; // (B, K, T)
    let ref_unsig = g.push(Op::Gather { axis: 1 }, &[enc_unsig_all, idx_4])?; // (B, K, 4)
    let enc_boxes = g.unary(UnaryOp::Sigmoid, ref_unsig)?;
    let mut outputs = vec![("enc".to_string(), enc_logits, enc_boxes)];
    let detached = g.stop_gradient(ref_unsig)?;
    let mut reference = g.unary(UnaryOp::Sigmoid, detached)?; // (B, K, 4)

    // Decoder.
    let tgt_embed = g.param("tgt_embed", &[k_q, d], f32t)?;
    let mut tgt = g.reshape(tgt_embed, &[1, k_q, d])?;
    tgt = g.broadcast_to(tgt, &[b, k_q, d])?;
    for i in 0..cfg.dec_layers {
        let e = format!("dec.{i}");
        let se = layers::sine_embed_box(&mut g, &mut ctx, reference, d)?;
        let h = lin(&mut g, "ref_point_head.0", se, d)?;
        let h = layers::relu(&mut g, h)?;
        let qpos = lin(&mut g, "ref_point_head.1", h, d)?;
        let q = g.add(tgt, qpos)?;
        let t2 = attention_module(&mut g, &format!("{e}.self_attn"), q, q, tgt, cfg.dec_heads)?;
        tgt = add_norm(&mut g, &mut ctx, &format!("{e}.norm2"), tgt, t2)?;
        let q = g.add(tgt, qpos)?;
        let t2 = attention_module(&mut g, &format!("{e}.text_attn"), q, text_mem, text_mem, cfg.dec_heads)?;
        tgt = add_norm(&mut g, &mut ctx, &format!("{e}.text_norm"), tgt, t2)?;
        let q = g.add(tgt, qpos)?;
        let r = Reference::Boxes(reference);
        let t2 = deform_attn(&mut g, &format!("{e}.cross_attn"), cfg.deform_heads, cfg.points, &shape.levels, q, &r, memory)?;
        tgt = add_norm(&mut g, &mut ctx, &format!("{e}.norm1"), tgt, t2)?;
        let t2 = ffn(&mut g, &mut ctx, &format!("{e}.linear1"), &format!("{e}.linear2"), tgt, cfg.ffn)?;
        tgt = add_norm(&mut g, &mut ctx, &format!("{e}.norm3"), tgt, t2)?;
        let hn = ln(&mut g, "dec_norm", tgt)?;
        let delta = mlp3(&mut g, "bbox_embed", hn, 4)?;
        let inv = inverse_sigmoid(&mut g, reference, cfg.inverse_sigmoid_eps)?;
        let unsig = g.add(delta, inv)?;
        let boxes = g.unary(UnaryOp::Sigmoid, unsig)?;
        let logits = layers::contrastive(&mut g, hn, text_mem)?;
        outputs.push((format!("dec{i}"), logits, boxes));
        reference = g.stop_gradient(boxes)?;
    }
    Ok(HeadGraph { graph: g, ctx, outputs, topk, text_mask })
}
