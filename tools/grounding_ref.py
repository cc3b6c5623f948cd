#!/usr/bin/env python3
"""PyTorch reference of the grounding head (src/models/grounding/), written from the InstaGen paper and the
GroundingDINO / DINO / Deformable DETR papers' semantics; deformable attention goes through F.grid_sample.

Not used by tests or CI: tools/make_grounding_fixtures.py runs it once and the outputs are committed.

Parameter names and shapes are the Rust model's (a Linear weight is [out, in]; the neck's 1x1 convolution weight
is [hidden, C, 1, 1]); feature maps are NHWC [B, h, w, C] as the UNet feature tap writes them. The forward and the
loss follow docs/DESIGN.md "Grounding head" step by step; where that section names a choice (validity of encoder
proposals, detached references, cosine classification, text masking), this file makes the same one.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss


# ---- configuration helpers ---------------------------------------------------------------------------------

def levels_of(cfg):
    return len(cfg["feature_channels"])


def param_shapes(cfg):
    """Every parameter's name and shape, as the Rust graph declares them."""
    d = cfg["hidden"]
    L, P, nh = levels_of(cfg), cfg["points"], cfg["deform_heads"]
    F_ = cfg["fusion_dim"]
    s = {}

    def lin(name, i, o, bias=True):
        s[name + ".weight"] = (o, i)
        if bias:
            s[name + ".bias"] = (o,)

    def ln(name, n):
        s[name + ".weight"] = (n,)
        s[name + ".bias"] = (n,)

    def attn(name):
        for p in ("q", "k", "v", "out"):
            lin(f"{name}.{p}", d, d)

    def deform(name):
        lin(f"{name}.value_proj", d, d)
        lin(f"{name}.offsets", d, nh * L * P * 2)
        lin(f"{name}.weights", d, nh * L * P)
        lin(f"{name}.out_proj", d, d)

    for l, c in enumerate(cfg["feature_channels"]):
        s[f"neck.{l}.conv.weight"] = (d, c, 1, 1)
        s[f"neck.{l}.conv.bias"] = (d,)
        ln(f"neck.{l}.norm", d)
    s["level_embed"] = (L, d)
    lin("text_proj", cfg["text_dim"], d)
    for k in range(cfg["enc_layers"]):
        e = f"enc.{k}"
        ln(f"{e}.fusion.norm_v", d)
        ln(f"{e}.fusion.norm_l", d)
        for p in ("v_proj", "l_proj", "values_v", "values_l"):
            lin(f"{e}.fusion.{p}", d, F_)
        lin(f"{e}.fusion.out_v", F_, d)
        lin(f"{e}.fusion.out_l", F_, d)
        s[f"{e}.fusion.gamma_v"] = (d,)
        s[f"{e}.fusion.gamma_l"] = (d,)
        attn(f"{e}.text.attn")
        ln(f"{e}.text.norm1", d)
        lin(f"{e}.text.linear1", d, cfg["text_ffn"])
        lin(f"{e}.text.linear2", cfg["text_ffn"], d)
        ln(f"{e}.text.norm2", d)
        deform(f"{e}.image.attn")
        ln(f"{e}.image.norm1", d)
        lin(f"{e}.image.linear1", d, cfg["ffn"])
        lin(f"{e}.image.linear2", cfg["ffn"], d)
        ln(f"{e}.image.norm2", d)
    lin("enc_output", d, d)
    ln("enc_output_norm", d)
    for i in range(3):
        lin(f"enc_bbox.{i}", d, 4 if i == 2 else d)
    s["class_scale"] = (1,)
    s["class_bias"] = (1,)
    s["tgt_embed"] = (cfg["queries"], d)
    lin("ref_point_head.0", 2 * d, d)
    lin("ref_point_head.1", d, d)
    for i in range(cfg["dec_layers"]):
        e = f"dec.{i}"
        attn(f"{e}.self_attn")
        ln(f"{e}.norm2", d)
        attn(f"{e}.text_attn")
        ln(f"{e}.text_norm", d)
        deform(f"{e}.cross_attn")
        ln(f"{e}.norm1", d)
        lin(f"{e}.linear1", d, cfg["ffn"])
        lin(f"{e}.linear2", cfg["ffn"], d)
        ln(f"{e}.norm3", d)
    ln("dec_norm", d)
    for i in range(3):
        lin(f"bbox_embed.{i}", d, 4 if i == 2 else d)
    return s


# ---- building blocks -----------------------------------------------------------------------------------------

def linear(p, name, x):
    y = x @ p[name + ".weight"].t()
    b = p.get(name + ".bias")
    return y if b is None else y + b


def layer_norm(p, name, x):
    return F.layer_norm(x, (x.shape[-1],), p[name + ".weight"], p[name + ".bias"], 1e-5)


def mha(q, k, v, heads):
    """softmax(q k^T / sqrt(D)) v per head; q [B, Tq, C], k, v [B, Tk, C]."""
    B, Tq, C = q.shape
    Tk = k.shape[1]
    D = C // heads
    q = q.view(B, Tq, heads, D).transpose(1, 2)
    k = k.view(B, Tk, heads, D).transpose(1, 2)
    v = v.view(B, Tk, heads, D).transpose(1, 2)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D), dim=-1)
    return (a @ v).transpose(1, 2).reshape(B, Tq, C)


def attention_module(p, name, q_in, k_in, v_in, heads):
    q = linear(p, name + ".q", q_in)
    k = linear(p, name + ".k", k_in)
    v = linear(p, name + ".v", v_in)
    return linear(p, name + ".out", mha(q, k, v, heads))


def msda_grid_sample(value, levels, loc, attn):
    """Multi-scale deformable attention through grid_sample (Deformable DETR's pytorch path).

    value [B, S, H, D], levels [(h, w)], loc [B, Q, H, L, P, 2] (x, y in [0, 1]), attn [B, Q, H, L, P]
    -> [B, Q, H*D]."""
    B, S, H, D = value.shape
    _, Q, _, L, P, _ = loc.shape
    grids = 2 * loc - 1
    out = 0
    start = 0
    for l, (h, w) in enumerate(levels):
        v = value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(B * H, D, h, w)
        start += h * w
        g = grids[:, :, :, l].permute(0, 2, 1, 3, 4).reshape(B * H, Q, P, 2)
        s = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B*H, D, Q, P)
        a = attn[:, :, :, l].permute(0, 2, 1, 3).reshape(B * H, 1, Q, P)
        out = out + (s * a).sum(-1)  # (B*H, D, Q)
    return out.view(B, H, D, Q).permute(0, 3, 1, 2).reshape(B, Q, H * D)


def deform_attn(p, name, cfg, query, ref, value_in, levels):
    """ref: [Q, 2] token centres (same for every level) or [B, Q, 4] boxes (cx, cy, w, h)."""
    B, Q, d = query.shape
    nh, L, P = cfg["deform_heads"], len(levels), cfg["points"]
    value = linear(p, name + ".value_proj", value_in).view(B, -1, nh, d // nh)
    off = linear(p, name + ".offsets", query).view(B, Q, nh, L, P, 2)
    a = linear(p, name + ".weights", query).view(B, Q, nh, L * P)
    a = torch.softmax(a, -1).view(B, Q, nh, L, P)
    if ref.dim() == 2:
        norm = torch.tensor([[1.0 / w, 1.0 / h] for (h, w) in levels], dtype=query.dtype)  # (L, 2)
        loc = ref[None, :, None, None, None, :] + off * norm[None, None, None, :, None, :]
    else:
        xy = ref[:, :, None, None, None, :2]
        wh = ref[:, :, None, None, None, 2:]
        loc = xy + off * (0.5 / P) * wh
    out = msda_grid_sample(value, levels, loc, a)
    return linear(p, name + ".out_proj", out)


def ffn(p, name1, name2, x):
    return linear(p, name2, torch.relu(linear(p, name1, x)))


def sine_pos_2d(levels, d, temperature, dtype):
    """DETR's normalised sine position embedding per level, tokens level-major: [S, d] = (pos_y, pos_x), each
    interleaving sin and cos."""
    npf = d // 2
    k = torch.arange(npf, dtype=torch.float64)
    dim_t = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / npf)
    out = []
    for (h, w) in levels:
        y = (torch.arange(h, dtype=torch.float64) + 1) / (h + 1e-6) * 2 * math.pi
        x = (torch.arange(w, dtype=torch.float64) + 1) / (w + 1e-6) * 2 * math.pi
        py = y[:, None] / dim_t  # (h, npf)
        px = x[:, None] / dim_t
        py = torch.stack((py[:, 0::2].sin(), py[:, 1::2].cos()), dim=2).flatten(1)
        px = torch.stack((px[:, 0::2].sin(), px[:, 1::2].cos()), dim=2).flatten(1)
        pos = torch.cat((py[:, None, :].expand(h, w, npf), px[None, :, :].expand(h, w, npf)), dim=2)
        out.append(pos.reshape(h * w, d))
    return torch.cat(out, 0).to(dtype)


def token_centres(levels, dtype):
    """[S, 2] (x, y) of every token's centre, normalised."""
    out = []
    for (h, w) in levels:
        ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w
        out.append(torch.stack((xs[None, :].expand(h, w), ys[:, None].expand(h, w)), dim=2).reshape(h * w, 2))
    return torch.cat(out, 0).to(dtype)


def proposals(levels, min_wh, dtype):
    """DINO's encoder output proposals: [S, 4] anchors (cx, cy, wh, wh) with wh = min_wh * 2^level, in inverse-
    sigmoid space, and [S] validity (every coordinate in (0.01, 0.99)); invalid proposals are 0 here."""
    c = token_centres(levels, torch.float64)
    wh = torch.cat([torch.full((h * w, 2), min_wh * 2.0 ** l, dtype=torch.float64) for l, (h, w) in enumerate(levels)])
    a = torch.cat((c, wh), 1)
    valid = ((a > 0.01) & (a < 0.99)).all(1)
    unsig = torch.log(a / (1 - a))
    unsig = torch.where(valid[:, None], unsig, torch.zeros_like(unsig))
    return unsig.to(dtype), valid.to(dtype)


def sine_embed_box(ref, d):
    """gen_sineembed_for_position for 4-d boxes: [B, Q, 4] -> [B, Q, 2d] = (y, x, w, h) blocks of d/2, each
    interleaving sin and cos, temperature 10000, scale 2 pi."""
    half = d // 2
    k = torch.arange(half, dtype=torch.float64)
    dim_t = (10000 ** (2 * torch.div(k, 2, rounding_mode="floor") / half)).to(ref.dtype)
    outs = []
    for c in (1, 0, 2, 3):
        v = ref[:, :, c, None] * (2 * math.pi) / dim_t
        outs.append(torch.stack((v[:, :, 0::2].sin(), v[:, :, 1::2].cos()), dim=3).flatten(2))
    return torch.cat(outs, 2)


def inverse_sigmoid(x, eps):
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def mlp3(p, name, x):
    x = torch.relu(linear(p, name + ".0", x))
    x = torch.relu(linear(p, name + ".1", x))
    return linear(p, name + ".2", x)


def contrastive(p, q, text, eps=1e-12):
    """scale * cos(q, text) + bias: [B, Q, d] x [B, T, d] -> [B, Q, T]."""
    qn = q / torch.sqrt((q * q).sum(-1, keepdim=True) + eps)
    tn = text / torch.sqrt((text * text).sum(-1, keepdim=True) + eps)
    return (qn @ tn.transpose(1, 2)) * p["class_scale"] + p["class_bias"]


# ---- the head ------------------------------------------------------------------------------------------------

def forward(p, cfg, feats, text, text_mask):
    """feats: list of [B, h, w, C]; text [B, T, text_dim]; text_mask [B, T] (1 = real token).

    Returns dict: enc_logits/enc_boxes [B, K, T]/[B, K, 4] (the selected proposals), dec_logits/dec_boxes lists
    per decoder layer, topk indices [B, K]."""
    d = cfg["hidden"]
    levels = [(f.shape[1], f.shape[2]) for f in feats]
    B = feats[0].shape[0]
    dtype = feats[0].dtype
    groups = cfg["neck_groups"]
    toks = []
    for l, f in enumerate(feats):
        x = f.permute(0, 3, 1, 2)
        x = F.conv2d(x, p[f"neck.{l}.conv.weight"], p[f"neck.{l}.conv.bias"])
        x = F.group_norm(x, groups, p[f"neck.{l}.norm.weight"], p[f"neck.{l}.norm.bias"], 1e-5)
        toks.append(x.flatten(2).transpose(1, 2))  # (B, hw, d)
    src = torch.cat(toks, 1)
    pos = sine_pos_2d(levels, d, cfg["pos_temperature"], dtype)
    lvl = torch.cat([p["level_embed"][l][None, :].expand(h * w, d) for l, (h, w) in enumerate(levels)])
    pos = (pos + lvl)[None]  # (1, S, d)
    ref = token_centres(levels, dtype)
    txt = linear(p, "text_proj", text)
    # Encoder: fusion, text self-attention, deformable image self-attention (post-norm, ReLU FFNs).
    for k in range(cfg["enc_layers"]):
        e = f"enc.{k}"
        vn = layer_norm(p, f"{e}.fusion.norm_v", src)
        ln = layer_norm(p, f"{e}.fusion.norm_l", txt)
        qv = linear(p, f"{e}.fusion.v_proj", vn)
        kl = linear(p, f"{e}.fusion.l_proj", ln)
        vv = linear(p, f"{e}.fusion.values_v", vn)
        vl = linear(p, f"{e}.fusion.values_l", ln)
        dv = linear(p, f"{e}.fusion.out_v", mha(qv, kl, vl, cfg["fusion_heads"]))
        dl = linear(p, f"{e}.fusion.out_l", mha(kl, qv, vv, cfg["fusion_heads"]))
        src = src + p[f"{e}.fusion.gamma_v"] * dv
        txt = txt + p[f"{e}.fusion.gamma_l"] * dl
        t2 = attention_module(p, f"{e}.text.attn", txt, txt, txt, cfg["text_heads"])
        txt = layer_norm(p, f"{e}.text.norm1", txt + t2)
        txt = layer_norm(p, f"{e}.text.norm2", txt + ffn(p, f"{e}.text.linear1", f"{e}.text.linear2", txt))
        s2 = deform_attn(p, f"{e}.image.attn", cfg, src + pos, ref, src, levels)
        src = layer_norm(p, f"{e}.image.norm1", src + s2)
        src = layer_norm(p, f"{e}.image.norm2", src + ffn(p, f"{e}.image.linear1", f"{e}.image.linear2", src))
    memory, text_mem = src, txt
    # Two-stage: proposals, encoder heads, language-guided query selection.
    prop, valid = proposals(levels, cfg["proposal_min_wh"], dtype)
    out_mem = memory * valid[None, :, None]
    out_mem = layer_norm(p, "enc_output_norm", linear(p, "enc_output", out_mem))
    enc_logits_all = contrastive(p, out_mem, text_mem)  # (B, S, T)
    enc_unsig_all = mlp3(p, "enc_bbox", out_mem) + prop[None]  # (B, S, 4)
    mask_bias = (text_mask[:, None, :] - 1) * 1e9
    score = (enc_logits_all + mask_bias).max(-1).values + ((valid - 1) * 1e9)[None]
    K = cfg["queries"]
    topk = torch.topk(score.detach(), K, dim=1).indices  # (B, K), descending
    enc_logits = torch.gather(enc_logits_all, 1, topk[:, :, None].expand(B, K, enc_logits_all.shape[2]))
    ref_unsig = torch.gather(enc_unsig_all, 1, topk[:, :, None].expand(B, K, 4))
    enc_boxes = ref_unsig.sigmoid()
    reference = ref_unsig.detach().sigmoid()
    tgt = p["tgt_embed"][None].expand(B, K, d)
    dec_logits, dec_boxes = [], []
    eps = cfg["inverse_sigmoid_eps"]
    for i in range(cfg["dec_layers"]):
        e = f"dec.{i}"
        qpos = linear(p, "ref_point_head.1", torch.relu(linear(p, "ref_point_head.0", sine_embed_box(reference, d))))
        q = tgt + qpos
        tgt = layer_norm(p, f"{e}.norm2", tgt + attention_module(p, f"{e}.self_attn", q, q, tgt, cfg["dec_heads"]))
        t2 = attention_module(p, f"{e}.text_attn", tgt + qpos, text_mem, text_mem, cfg["dec_heads"])
        tgt = layer_norm(p, f"{e}.text_norm", tgt + t2)
        t2 = deform_attn(p, f"{e}.cross_attn", cfg, tgt + qpos, reference, memory, levels)
        tgt = layer_norm(p, f"{e}.norm1", tgt + t2)
        tgt = layer_norm(p, f"{e}.norm3", tgt + ffn(p, f"{e}.linear1", f"{e}.linear2", tgt))
        hn = layer_norm(p, "dec_norm", tgt)
        box = (mlp3(p, "bbox_embed", hn) + inverse_sigmoid(reference, eps)).sigmoid()
        dec_logits.append(contrastive(p, hn, text_mem))
        dec_boxes.append(box)
        reference = box.detach()
    return dict(enc_logits=enc_logits, enc_boxes=enc_boxes, dec_logits=dec_logits, dec_boxes=dec_boxes, topk=topk)


# ---- matching and losses ------------------------------------------------------------------------------------

def cxcywh_to_xyxy(b):
    cx, cy, w, h = b.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), -1)


def giou_matrix(a, b):
    """a [N, 4], b [M, 4] xyxy -> [N, M]."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None] - inter
    iou = inter / union
    lt2 = torch.min(a[:, None, :2], b[None, :, :2])
    rb2 = torch.max(a[:, None, 2:], b[None, :, 2:])
    wh2 = (rb2 - lt2).clamp(min=0)
    area = wh2[..., 0] * wh2[..., 1]
    return iou - (area - union) / area


def match(cfg, logits, boxes, targets):
    """Hungarian matching per image: list of (query indices, target indices)."""
    a, gm = cfg["focal_alpha"], cfg["focal_gamma"]
    out = []
    for b, (tb, tl) in enumerate(zip(targets["boxes"], targets["labels"])):
        if len(tl) == 0:
            out.append(([], []))
            continue
        prob = logits[b].detach().sigmoid()[:, tl]  # (Q, n)
        neg = (1 - a) * prob ** gm * (-(1 - prob + 1e-8).log())
        pos = a * (1 - prob) ** gm * (-(prob + 1e-8).log())
        c_class = pos - neg
        tbx = torch.tensor(tb, dtype=logits.dtype)
        pb = boxes[b].detach()
        c_bbox = torch.cdist(pb, tbx, p=1)
        c_giou = -giou_matrix(cxcywh_to_xyxy(pb), cxcywh_to_xyxy(tbx))
        c = cfg["cost_bbox"] * c_bbox + cfg["cost_class"] * c_class + cfg["cost_giou"] * c_giou
        r, cidx = linear_sum_assignment(c.numpy())
        out.append((list(r), list(cidx)))
    return out


def losses_for(cfg, logits, boxes, targets, text_mask, num_boxes, matching):
    onehot = torch.zeros_like(logits)
    pb, tb = [], []
    for b, (qi, ti) in enumerate(matching):
        for q, t in zip(qi, ti):
            onehot[b, q, targets["labels"][b][t]] = 1.0
            pb.append(boxes[b, q])
            tb.append(torch.tensor(targets["boxes"][b][t], dtype=logits.dtype))
    focal = sigmoid_focal_loss(logits, onehot, cfg["focal_alpha"], cfg["focal_gamma"]) * text_mask[:, None, :]
    ce = focal.sum() / num_boxes
    if pb:
        pb, tb = torch.stack(pb), torch.stack(tb)
        l1 = (pb - tb).abs().sum() / num_boxes
        giou = generalized_box_iou_loss(cxcywh_to_xyxy(pb), cxcywh_to_xyxy(tb), reduction="sum") / num_boxes
    else:
        l1 = giou = logits.sum() * 0
    return ce, l1, giou


def loss(cfg, out, targets, text_mask):
    """Weighted total and the terms {name: (ce, l1, giou)} with names enc, dec0, dec1, ... and the matchings."""
    n = sum(len(l) for l in targets["labels"])
    num_boxes = max(float(n), 1.0)
    outputs = [("enc", out["enc_logits"], out["enc_boxes"])]
    outputs += [(f"dec{i}", l, b) for i, (l, b) in enumerate(zip(out["dec_logits"], out["dec_boxes"]))]
    total = 0
    terms, matchings = {}, {}
    for name, lg, bx in outputs:
        m = match(cfg, lg, bx, targets)
        ce, l1, gi = losses_for(cfg, lg, bx, targets, text_mask, num_boxes, m)
        terms[name] = (ce, l1, gi)
        matchings[name] = m
        total = total + cfg["loss_class"] * ce + cfg["loss_bbox"] * l1 + cfg["loss_giou"] * gi
    return total, terms, matchings
