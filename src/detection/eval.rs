//! The COCO box evaluator, matching pycocotools' `COCOeval` (iouType "bbox") to the last bit we could check
//! (`tests/coco_eval.rs` compares every metric with pycocotools on committed detection sets, |diff| <= 1e-6).
//!
//! Semantics reproduced (see docs/DESIGN.md "COCO evaluation"):
//! - Images: every GT image id, sorted; categories: every GT category id, sorted (a category without GT gives
//!   -1 and is left out of the means). Detections of other categories are not evaluated.
//! - Per (image, category): detections sorted by descending score with a stable sort (numpy's mergesort) and
//!   cut to the largest maxDets; IoU of `[x,y,w,h]` boxes in f64 as pycocotools' C code (for a crowd GT the
//!   denominator is the detection's area).
//! - Per area range: a GT is ignored when it is crowd or its `area` field is outside the range (inclusive
//!   bounds); GTs are stably sorted non-ignored first; each detection, best score first, takes the GT with the
//!   highest IoU >= min(t, 1 - 1e-10) among unmatched non-crowd GTs and any crowd GT (a later GT with an equal
//!   IoU wins), stopping at the first ignored GT once it holds a non-ignored one. A detection matched to an
//!   ignored GT is ignored; an unmatched detection whose `w*h` is outside the range is ignored. As in
//!   pycocotools, "matched" means "the matched GT's id is not 0".
//! - Accumulation per (category, area, maxDets): the first maxDets detections of every image, concatenated in
//!   image order and stably sorted by descending score; precision tp/(tp+fp+eps) made monotone from the right,
//!   read at the 101 recall thresholds with a left `searchsorted` (0 past the last recall); recall is the last
//!   cumulative recall (0 with no detections). Categories with no non-ignored GT stay -1.
//! - Summary: the mean over entries > -1, the 12 pycocotools stats.

use std::borrow::Cow;

use rayon::prelude::*;
use serde::Serialize;

use super::coco::{Annotation, Dataset, Detection};

/// Evaluation parameters (the pycocotools bbox defaults from [`EvalParams::default`]).
#[derive(Clone, Debug, PartialEq)]
pub struct EvalParams {
    pub iou_thrs: Vec<f64>,
    pub rec_thrs: Vec<f64>,
    /// Sorted ascending; the last is the per-image cut.
    pub max_dets: Vec<usize>,
    pub area_rngs: Vec<[f64; 2]>,
    pub area_lbls: Vec<String>,
}

/// `numpy.linspace(start, stop, num)` bit for bit: `i * step + start`, the last point exactly `stop`.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

impl Default for EvalParams {
    fn default() -> Self {
        EvalParams {
            iou_thrs: linspace(0.5, 0.95, 10),
            rec_thrs: linspace(0.0, 1.0, 101),
            max_dets: vec![1, 10, 100],
            area_rngs: vec![[0.0, 1e10], [0.0, 1024.0], [1024.0, 9216.0], [9216.0, 1e10]],
            area_lbls: ["all", "small", "medium", "large"].iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Per-category figures (all areas, the largest maxDets).
#[derive(Clone, Debug, Serialize)]
pub struct CategoryResult {
    pub id: u64,
    pub name: String,
    /// Non-crowd ground-truth boxes.
    pub num_gt: usize,
    /// AP@[.5:.95]; -1 when the category has no non-crowd GT.
    pub ap: f64,
    pub ap50: f64,
    pub ar100: f64,
}

/// The names of the 12 pycocotools stats, in order.
pub const STAT_NAMES: [&str; 12] = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"];

/// The result of [`evaluate`]: pycocotools' `eval['precision']`, `eval['recall']` and `stats`.
#[derive(Clone, Debug)]
pub struct EvalResult {
    pub params: EvalParams,
    pub img_ids: Vec<u64>,
    pub cat_ids: Vec<u64>,
    /// Per (category, area, maxDets), index `(k * A + a) * M + m`: precision [T, R] and recall [T], `None`
    /// where pycocotools leaves -1 (see [`EvalResult::precision_at`] for pycocotools' indexing).
    pub blocks: Vec<Option<(Vec<f64>, Vec<f64>)>>,
    pub stats: [f64; 12],
    pub per_category: Vec<CategoryResult>,
}

/// What one image contributes for one category and one area range.
struct ImgEval {
    /// Detection scores, best first (at most the largest maxDets).
    scores: Vec<f64>,
    /// [T, D]: matched to a GT (with a non-zero id).
    matched: Vec<bool>,
    /// [T, D]: ignored.
    ignored: Vec<bool>,
    /// GTs not ignored in this area range.
    n_valid_gt: usize,
}

/// pycocotools' `bbIou`: IoU of `[x,y,w,h]` boxes, for a crowd GT intersection over the detection's area.
#[inline]
pub fn iou_xywh(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[2] + d[0]).min(g[2] + g[0]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[3] + d[1]).min(g[3] + g[1]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let i = w * h;
    let da = d[2] * d[3];
    let u = if crowd { da } else { da + g[2] * g[3] - i };
    i / u
}

/// Evaluates one (image, category): `None` when it has neither GT nor detections.
fn evaluate_img(gts: &[&Annotation], dts: &[&Detection], p: &EvalParams) -> Option<Vec<ImgEval>> {
    if gts.is_empty() && dts.is_empty() {
        return None;
    }
    let max_det = *p.max_dets.last().unwrap_or(&0);
    let mut dts: Vec<&Detection> = dts.to_vec();
    dts.sort_by(|a, b| b.score.partial_cmp(&a.score).unwrap_or(std::cmp::Ordering::Equal)); // stable
    dts.truncate(max_det);
    let (g_n, d_n, t_n) = (gts.len(), dts.len(), p.iou_thrs.len());
    // ious[d * G + g] in the GT's original order.
    let mut ious = vec![0.0f64; d_n * g_n];
    for (di, d) in dts.iter().enumerate() {
        for (gi, g) in gts.iter().enumerate() {
            ious[di * g_n + gi] = iou_xywh(&d.bbox, &g.bbox, g.iscrowd);
        }
    }
    let mut out = Vec::with_capacity(p.area_rngs.len());
    for rng in &p.area_rngs {
        let outside = |area: f64| area < rng[0] || area > rng[1];
        let gt_ig: Vec<bool> = gts.iter().map(|g| g.iscrowd || outside(g.area)).collect();
        // Stable sort: non-ignored GTs first.
        let order: Vec<usize> = (0..g_n).filter(|&g| !gt_ig[g]).chain((0..g_n).filter(|&g| gt_ig[g])).collect();
        let mut matched = vec![false; t_n * d_n];
        let mut ignored = vec![false; t_n * d_n];
        let mut gt_taken = vec![false; g_n];
        for (ti, &t) in p.iou_thrs.iter().enumerate() {
            gt_taken.iter_mut().for_each(|x| *x = false);
            for di in 0..d_n {
                let mut best = t.min(1.0 - 1e-10);
                let mut m: Option<usize> = None; // position in `order`
                for (oi, &g) in order.iter().enumerate() {
                    if gt_taken[oi] && !gts[g].iscrowd {
                        continue;
                    }
                    if let Some(mo) = m {
                        if !gt_ig[order[mo]] && gt_ig[g] {
                            break;
                        }
                    }
                    let iou = ious[di * g_n + g];
                    if iou < best {
                        continue;
                    }
                    best = iou;
                    m = Some(oi);
                }
                if let Some(mo) = m {
                    let g = order[mo];
                    ignored[ti * d_n + di] = gt_ig[g];
                    matched[ti * d_n + di] = gts[g].id != 0;
                    gt_taken[mo] = true;
                }
            }
        }
        for (di, d) in dts.iter().enumerate() {
            if outside(d.bbox[2] * d.bbox[3]) {
                for ti in 0..t_n {
                    let j = ti * d_n + di;
                    if !matched[j] {
                        ignored[j] = true;
                    }
                }
            }
        }
        out.push(ImgEval {
            scores: dts.iter().map(|d| d.score).collect(),
            matched,
            ignored,
            n_valid_gt: gt_ig.iter().filter(|&&x| !x).count(),
        });
    }
    Some(out)
}

/// Accumulates one (category, area range, maxDets) over the images: (precision [T, R], recall [T]) or `None`
/// when pycocotools leaves it at -1.
/// `sorted` holds (score, image position, detection index) for every detection of `evals`, concatenated in
/// image order and stably sorted by descending score; the ones with index >= `max_det` are skipped, which
/// leaves exactly the stable sort of pycocotools' concatenation of each image's first `max_det`.
fn accumulate_one(evals: &[&ImgEval], sorted: &[(f64, u32, u32)], max_det: usize, p: &EvalParams) -> Option<(Vec<f64>, Vec<f64>)> {
    if evals.is_empty() {
        return None;
    }
    let npig: usize = evals.iter().map(|e| e.n_valid_gt).sum();
    if npig == 0 {
        return None;
    }
    let dets: Vec<(f64, u32, u32)> = sorted.iter().filter(|d| (d.2 as usize) < max_det).copied().collect();
    let (t_n, r_n, nd) = (p.iou_thrs.len(), p.rec_thrs.len(), dets.len());
    let mut precision = vec![0.0; t_n * r_n];
    let mut recall = vec![0.0; t_n];
    let mut rc = vec![0.0f64; nd];
    let mut pr = vec![0.0f64; nd];
    for ti in 0..t_n {
        let (mut tp, mut fp) = (0usize, 0usize);
        for (j, &(_, ei, di)) in dets.iter().enumerate() {
            let e = evals[ei as usize];
            let k = ti * e.scores.len() + di as usize;
            if !e.ignored[k] {
                if e.matched[k] {
                    tp += 1;
                } else {
                    fp += 1;
                }
            }
            let (tpf, fpf) = (tp as f64, fp as f64);
            rc[j] = tpf / npig as f64;
            pr[j] = tpf / (fpf + tpf + f64::EPSILON);
        }
        recall[ti] = if nd > 0 { rc[nd - 1] } else { 0.0 };
        for i in (1..nd).rev() {
            if pr[i] > pr[i - 1] {
                pr[i - 1] = pr[i];
            }
        }
        // searchsorted(rc, thr, 'left'): the first index with rc >= thr; past the end the rest stay 0.
        let mut idx = 0usize;
        for (ri, &thr) in p.rec_thrs.iter().enumerate() {
            while idx < nd && rc[idx] < thr {
                idx += 1;
            }
            if idx >= nd {
                break;
            }
            precision[ti * r_n + ri] = pr[idx];
        }
    }
    Some((precision, recall))
}

/// Evaluates detections against a ground truth, as pycocotools' `COCOeval(gt, dt, 'bbox')` with
/// `evaluate(); accumulate(); summarize()`. Detections are taken in the given order (it breaks score ties).
pub fn evaluate(gt: &Dataset, dts: &[Detection], p: &EvalParams) -> EvalResult {
    let mut img_ids: Vec<u64> = gt.images.iter().map(|i| i.id).collect();
    img_ids.sort_unstable();
    img_ids.dedup();
    let mut cat_ids: Vec<u64> = gt.categories.iter().map(|c| c.id).collect();
    cat_ids.sort_unstable();
    cat_ids.dedup();
    let (i_n, k_n, a_n, m_n) = (img_ids.len(), cat_ids.len(), p.area_rngs.len(), p.max_dets.len());
    let img_pos: std::collections::HashMap<u64, usize> = img_ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let cat_pos: std::collections::HashMap<u64, usize> = cat_ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();

    // Bucket GT and detections per (category, image), keeping file order.
    let mut gt_b: Vec<Vec<&Annotation>> = vec![Vec::new(); k_n * i_n];
    for a in &gt.annotations {
        if let (Some(&k), Some(&i)) = (cat_pos.get(&a.category_id), img_pos.get(&a.image_id)) {
            gt_b[k * i_n + i].push(a);
        }
    }
    let mut dt_b: Vec<Vec<&Detection>> = vec![Vec::new(); k_n * i_n];
    for d in dts {
        if let (Some(&k), Some(&i)) = (cat_pos.get(&d.category_id), img_pos.get(&d.image_id)) {
            dt_b[k * i_n + i].push(d);
        }
    }
    let per_img: Vec<Option<Vec<ImgEval>>> =
        (0..k_n * i_n).into_par_iter().map(|ki| evaluate_img(&gt_b[ki], &dt_b[ki], p)).collect();

    // Accumulate per category (in parallel), then scatter into pycocotools' layouts.
    let per_cat: Vec<Vec<Option<(Vec<f64>, Vec<f64>)>>> = (0..k_n)
        .into_par_iter()
        .map(|k| {
            let mut v = Vec::with_capacity(a_n * m_n);
            for a in 0..a_n {
                let evals: Vec<&ImgEval> = (0..i_n).filter_map(|i| per_img[k * i_n + i].as_ref().map(|e| &e[a])).collect();
                let mut sorted: Vec<(f64, u32, u32)> = Vec::new();
                for (ei, e) in evals.iter().enumerate() {
                    sorted.extend(e.scores.iter().enumerate().map(|(di, &s)| (s, ei as u32, di as u32)));
                }
                sorted.sort_by(|x, y| y.0.partial_cmp(&x.0).unwrap_or(std::cmp::Ordering::Equal)); // stable
                for &md in &p.max_dets {
                    v.push(accumulate_one(&evals, &sorted, md, p));
                }
            }
            v
        })
        .collect();
    let blocks: Vec<Option<(Vec<f64>, Vec<f64>)>> = per_cat.into_iter().flatten().collect();
    let names: std::collections::HashMap<u64, &str> = gt.categories.iter().map(|c| (c.id, c.name.as_str())).collect();
    let mut num_gt = vec![0usize; k_n];
    for a in &gt.annotations {
        if let (Some(&k), true) = (cat_pos.get(&a.category_id), !a.iscrowd && img_pos.contains_key(&a.image_id)) {
            num_gt[k] += 1;
        }
    }
    let mut r = EvalResult {
        params: p.clone(),
        img_ids,
        cat_ids: cat_ids.clone(),
        blocks,
        stats: [-1.0; 12],
        per_category: Vec::new(),
    };
    r.stats = r.summary_stats();
    let last_m = m_n.saturating_sub(1);
    r.per_category = cat_ids
        .iter()
        .enumerate()
        .map(|(k, &id)| CategoryResult {
            id,
            name: names.get(&id).unwrap_or(&"").to_string(),
            num_gt: num_gt[k],
            ap: r.mean_precision(None, Some(k), 0, last_m),
            ap50: r.mean_precision(r.iou_index(0.5), Some(k), 0, last_m),
            ar100: r.mean_recall(None, Some(k), 0, last_m),
        })
        .collect();
    r
}

/// Mean of the entries > -1 (pycocotools' `np.mean(s[s > -1])`), -1 when there are none.
fn mean_valid(it: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for v in it {
        if v > -1.0 {
            sum += v;
            n += 1;
        }
    }
    if n == 0 { -1.0 } else { sum / n as f64 }
}

impl EvalResult {
    fn dims(&self) -> (usize, usize, usize, usize, usize) {
        let p = &self.params;
        (p.iou_thrs.len(), p.rec_thrs.len(), self.cat_ids.len(), p.area_rngs.len(), p.max_dets.len())
    }

    fn iou_index(&self, thr: f64) -> Option<usize> {
        self.params.iou_thrs.iter().position(|&t| t == thr)
    }

    fn block(&self, k: usize, a: usize, m: usize) -> Option<&(Vec<f64>, Vec<f64>)> {
        let (_, _, _, a_n, m_n) = self.dims();
        self.blocks[(k * a_n + a) * m_n + m].as_ref()
    }

    /// pycocotools' `eval['precision'][t, r, k, a, m]` (-1 where absent).
    pub fn precision_at(&self, t: usize, r: usize, k: usize, a: usize, m: usize) -> f64 {
        self.block(k, a, m).map_or(-1.0, |(p, _)| p[t * self.params.rec_thrs.len() + r])
    }

    /// pycocotools' `eval['recall'][t, k, a, m]` (-1 where absent).
    pub fn recall_at(&self, t: usize, k: usize, a: usize, m: usize) -> f64 {
        self.block(k, a, m).map_or(-1.0, |(_, r)| r[t])
    }

    /// Mean precision over IoU thresholds (one when `t` is given), recall thresholds and categories (one when
    /// `k` is given), at area index `a` and maxDets index `m`: pycocotools' mean of the entries > -1.
    pub fn mean_precision(&self, t: Option<usize>, k: Option<usize>, a: usize, m: usize) -> f64 {
        let (t_n, r_n, k_n, _, _) = self.dims();
        let ts = t.map_or(0..t_n, |t| t..t + 1);
        let ks = k.map_or(0..k_n, |k| k..k + 1);
        mean_valid(ks.filter_map(|k| self.block(k, a, m)).flat_map(|(p, _)| p[ts.start * r_n..ts.end * r_n].iter().copied()))
    }

    /// Mean recall over IoU thresholds (or one) and categories (or one) at area index `a`, maxDets index `m`.
    pub fn mean_recall(&self, t: Option<usize>, k: Option<usize>, a: usize, m: usize) -> f64 {
        let (t_n, _, k_n, _, _) = self.dims();
        let ts = t.map_or(0..t_n, |t| t..t + 1);
        let ks = k.map_or(0..k_n, |k| k..k + 1);
        mean_valid(ks.filter_map(|k| self.block(k, a, m)).flat_map(|(_, r)| r[ts.clone()].iter().copied()))
    }

    /// pycocotools' `_summarize(ap, iouThr, areaRng, maxDets)`: -1 when the area label, maxDets or IoU threshold
    /// is not among the parameters.
    pub fn summarize(&self, ap: bool, iou_thr: Option<f64>, area: &str, max_dets: usize) -> f64 {
        let Some(a) = self.params.area_lbls.iter().position(|l| l == area) else { return -1.0 };
        let Some(m) = self.params.max_dets.iter().position(|&d| d == max_dets) else { return -1.0 };
        let t = match iou_thr {
            None => None,
            Some(thr) => match self.iou_index(thr) {
                Some(t) => Some(t),
                None => return -1.0,
            },
        };
        if ap { self.mean_precision(t, None, a, m) } else { self.mean_recall(t, None, a, m) }
    }

    fn stat_args(&self) -> [(bool, Option<f64>, &'static str, usize); 12] {
        let md = &self.params.max_dets;
        let get = |i: usize| md.get(i).copied().unwrap_or(0);
        let (m0, m1, m2) = (get(0), get(1), get(2));
        [
            (true, None, "all", 100),
            (true, Some(0.5), "all", m2),
            (true, Some(0.75), "all", m2),
            (true, None, "small", m2),
            (true, None, "medium", m2),
            (true, None, "large", m2),
            (false, None, "all", m0),
            (false, None, "all", m1),
            (false, None, "all", m2),
            (false, None, "small", m2),
            (false, None, "medium", m2),
            (false, None, "large", m2),
        ]
    }

    fn summary_stats(&self) -> [f64; 12] {
        let mut s = [0.0; 12];
        for (i, (ap, thr, area, md)) in self.stat_args().into_iter().enumerate() {
            s[i] = self.summarize(ap, thr, area, md);
        }
        s
    }

    /// The 12 lines pycocotools' `summarize()` prints.
    pub fn summary_lines(&self) -> String {
        let p = &self.params;
        let mut out = String::new();
        for (i, (ap, thr, area, md)) in self.stat_args().into_iter().enumerate() {
            let (title, ty) = if ap { ("Average Precision", "(AP)") } else { ("Average Recall", "(AR)") };
            let iou = match thr {
                None => format!("{:.2}:{:.2}", p.iou_thrs.first().unwrap_or(&0.0), p.iou_thrs.last().unwrap_or(&0.0)),
                Some(t) => format!("{t:.2}"),
            };
            out.push_str(&format!(
                " {title:<18} {ty} @[ IoU={iou:<9} | area={area:>6} | maxDets={md:>3} ] = {:.3}\n",
                self.stats[i]
            ));
        }
        out
    }

    /// Per-class AP50 averaged over a split (classes without GT are left out), as the OV-COCO papers report.
    pub fn split_report(&self, split: &OvSplit) -> SplitReport {
        let mean = |ids: &[u64]| -> (f64, usize) {
            let v: Vec<f64> = self
                .per_category
                .iter()
                .filter(|c| ids.contains(&c.id) && c.ap50 > -1.0)
                .map(|c| c.ap50)
                .collect();
            if v.is_empty() { (-1.0, 0) } else { (v.iter().sum::<f64>() / v.len() as f64, v.len()) }
        };
        let all: Vec<u64> = split.base.iter().chain(split.novel.iter()).copied().collect();
        let (base_ap50, n_base) = mean(&split.base);
        let (novel_ap50, n_novel) = mean(&split.novel);
        let (all_ap50, n_all) = mean(&all);
        SplitReport { name: split.name.to_string(), base_ap50, novel_ap50, all_ap50, n_base, n_novel, n_all }
    }
}

/// An open-vocabulary split of a dataset's categories (ids): [`OVCOCO`], or one built at run time
/// ([`OvSplit::from_names`]).
#[derive(Clone, Debug, PartialEq)]
pub struct OvSplit {
    pub name: Cow<'static, str>,
    pub base: Cow<'static, [u64]>,
    pub novel: Cow<'static, [u64]>,
}

impl OvSplit {
    /// The split whose base and novel classes are named `base` / `novel`, resolved by name against
    /// `categories` ((id, name) of the ground truth). A name the categories lack, or one listed twice, is an
    /// error naming it.
    pub fn from_names(name: &str, base: &[String], novel: &[String], categories: &[(u64, String)]) -> std::result::Result<OvSplit, String> {
        let mut seen = std::collections::HashSet::new();
        let mut ids = |what: &str, names: &[String]| -> std::result::Result<Vec<u64>, String> {
            names
                .iter()
                .map(|n| {
                    if !seen.insert(n.clone()) {
                        return Err(format!("{what} category {n:?} is listed twice (base and novel must be distinct)"));
                    }
                    categories.iter().find(|(_, c)| c == n).map(|(id, _)| *id).ok_or_else(|| {
                        format!("{what} category {n:?} is not a category of the ground truth ({} categories)", categories.len())
                    })
                })
                .collect()
        };
        let base = ids("base", base)?;
        let novel = ids("novel", novel)?;
        Ok(OvSplit { name: Cow::Owned(name.to_string()), base: Cow::Owned(base), novel: Cow::Owned(novel) })
    }
}

/// The open-vocabulary COCO split (OVR-CNN; InstaGen): 48 base and 17 novel classes, by COCO category id.
pub const OVCOCO: OvSplit = OvSplit {
    name: Cow::Borrowed("ovcoco"),
    base: Cow::Borrowed(&[
        1, 2, 3, 4, 7, 8, 9, 15, 16, 19, 20, 23, 24, 25, 27, 31, 33, 34, 35, 38, 42, 44, 48, 50, 51, 52, 53, 54, 55, 56,
        57, 59, 60, 62, 65, 70, 72, 73, 74, 75, 78, 79, 80, 82, 84, 85, 86, 90,
    ]),
    novel: Cow::Borrowed(&[5, 6, 17, 18, 21, 22, 28, 32, 36, 41, 47, 49, 61, 63, 76, 81, 87]),
};

/// The names of [`OVCOCO`]'s classes, in the same order as its ids.
pub const OVCOCO_BASE_NAMES: [&str; 48] = [
    "person", "bicycle", "car", "motorcycle", "train", "truck", "boat", "bench", "bird", "horse", "sheep", "bear",
    "zebra", "giraffe", "backpack", "handbag", "suitcase", "frisbee", "skis", "kite", "surfboard", "bottle", "fork",
    "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "pizza", "donut", "chair", "bed",
    "toilet", "tv", "laptop", "mouse", "remote", "microwave", "oven", "toaster", "refrigerator", "book", "clock",
    "vase", "toothbrush",
];
pub const OVCOCO_NOVEL_NAMES: [&str; 17] = [
    "airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard", "skateboard", "cup", "knife",
    "cake", "couch", "keyboard", "sink", "scissors",
];

/// Splits known by name (`--split`).
pub fn split_by_name(name: &str) -> Option<OvSplit> {
    match name {
        "ovcoco" => Some(OVCOCO),
        _ => None,
    }
}

/// Base / novel / all AP50 (means of per-class AP50).
#[derive(Clone, Debug, Serialize)]
pub struct SplitReport {
    pub name: String,
    pub base_ap50: f64,
    pub novel_ap50: f64,
    pub all_ap50: f64,
    /// Classes of each group that have GT (and so count in the mean).
    pub n_base: usize,
    pub n_novel: usize,
    pub n_all: usize,
}

impl SplitReport {
    /// The line `instagen eval` / `detect eval` print.
    pub fn line(&self) -> String {
        format!(
            "{}: AP50 base {:.1} ({} classes) | novel {:.1} ({}) | all {:.1} ({})\n",
            self.name,
            self.base_ap50 * 100.0,
            self.n_base,
            self.novel_ap50 * 100.0,
            self.n_novel,
            self.all_ap50 * 100.0,
            self.n_all
        )
    }
}
