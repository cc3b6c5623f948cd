//! One scene: what is in it (drawn from a per-image generator) and how it is rendered.
//!
//! Rendering is supersampled: [`SS`] x [`SS`] samples per pixel, each owned by the topmost object containing
//! it (painter's order) or by the background. A pixel is the mean of its samples' colours plus grain noise. An
//! object's box is the bounding box of the samples it owns (its visible extent, to 1/[`SS`] pixel), its area the
//! number of those samples / SS^2. Objects are placed one by one; a placement that would leave any object with
//! less than [`MIN_VISIBLE`] of its area visible (covered by a later object or outside the image) is redrawn,
//! a few times, then given up (the scene has one object fewer).
//!
//! Determinism: every draw comes from the scene's [`Rng`] (the crate's SplitMix64) in a fixed order; the float
//! math is plain `f32` arithmetic, `floor` and `sqrt` (exact in IEEE 754) and `libm`'s sin/cos/pow (the same
//! bits on every platform, unlike the system libm).

use crate::util::Rng;

use super::shapes::{Shape, BOUND};

/// Samples per pixel along each axis.
pub const SS: usize = 4;
/// The smallest visible fraction of an object's area (the rest occluded or outside the image).
pub const MIN_VISIBLE: f32 = 0.3;
/// Placement attempts per object.
const TRIES: usize = 12;
/// Owner of a sample no object covers.
const BG: u8 = u8::MAX;
/// Objects per scene: 1..=4 with these probabilities.
const COUNT_WEIGHTS: [f32; 4] = [0.25, 0.35, 0.25, 0.15];
/// Object size: the local unit (about the circumradius) as a fraction of the image side, drawn log-uniformly.
const SCALE_RANGE: (f32, f32) = (0.12, 0.30);

pub type Rgb = [f32; 3];

/// How an object's surface is filled (in the object's own frame, so patterns turn with it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Texture {
    Solid,
    /// Stripes of the second colour, `period` pixels, across direction `(cos, sin)`.
    Stripes { period: f32, cos: f32, sin: f32, phase: f32 },
    /// A square grid of dots of the second colour.
    Dots { period: f32, radius: f32, phase: (f32, f32) },
    /// From the first colour to the second along `(cos, sin)`.
    Gradient { cos: f32, sin: f32 },
}

/// One object of a scene.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    /// Index into the world's category list.
    pub category: usize,
    pub shape: Shape,
    /// Centre in pixels.
    pub cx: f32,
    pub cy: f32,
    /// Pixels per local unit.
    pub scale: f32,
    /// Width / height before rotation.
    pub aspect: f32,
    /// Rotation in radians.
    pub angle: f32,
    pub colour: Rgb,
    pub colour2: Rgb,
    pub texture: Texture,
    cos: f32,
    sin: f32,
    /// Local-unit stretch along u and v (`sqrt(aspect)`, `1 / sqrt(aspect)`).
    stretch: (f32, f32),
}

impl Object {
    /// The offset from the centre, in pixels, turned into the object's frame.
    fn turned(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = (x - self.cx, y - self.cy);
        (dx * self.cos + dy * self.sin, dy * self.cos - dx * self.sin)
    }

    fn contains(&self, x: f32, y: f32) -> bool {
        let (ru, rv) = self.turned(x, y);
        self.shape.contains(ru / (self.scale * self.stretch.0), rv / (self.scale * self.stretch.1))
    }

    /// Radius (pixels) of a disc around the centre holding the whole shape.
    fn reach(&self) -> f32 {
        self.scale * BOUND * self.stretch.0.max(self.stretch.1)
    }

    fn colour_at(&self, x: f32, y: f32) -> Rgb {
        let (ru, rv) = self.turned(x, y);
        match self.texture {
            Texture::Solid => self.colour,
            Texture::Stripes { period, cos, sin, phase } => {
                let w = (ru * cos + rv * sin) / period + phase;
                if w - w.floor() < 0.5 { self.colour } else { self.colour2 }
            }
            Texture::Dots { period, radius, phase } => {
                let (a, b) = (ru / period + phase.0, rv / period + phase.1);
                let (fa, fb) = (a - a.floor() - 0.5, b - b.floor() - 0.5);
                let r = radius / period;
                if fa * fa + fb * fb < r * r { self.colour2 } else { self.colour }
            }
            Texture::Gradient { cos, sin } => {
                let t = (((ru * cos + rv * sin) / self.scale + 1.0) * 0.5).clamp(0.0, 1.0);
                lerp(self.colour, self.colour2, t)
            }
        }
    }
}

/// A smooth random field on the unit square: a grid of `n x n` cells, values at the corners, interpolated with
/// smoothstep weights.
#[derive(Clone, Debug, PartialEq)]
struct Field {
    n: usize,
    v: Vec<f32>,
}

impl Field {
    fn sample(rng: &mut Rng, n: usize) -> Field {
        Field { n, v: (0..(n + 1) * (n + 1)).map(|_| rng.uniform()).collect() }
    }

    fn at(&self, x: f32, y: f32) -> f32 {
        let cell = |t: f32| {
            let g = t * self.n as f32;
            let i = (g.floor().max(0.0) as usize).min(self.n - 1);
            let f = (g - i as f32).clamp(0.0, 1.0);
            (i, f * f * (3.0 - 2.0 * f))
        };
        let ((i, wx), (j, wy)) = (cell(x), cell(y));
        let at = |i: usize, j: usize| self.v[j * (self.n + 1) + i];
        let top = at(i, j) + (at(i + 1, j) - at(i, j)) * wx;
        let bottom = at(i, j + 1) + (at(i + 1, j + 1) - at(i, j + 1)) * wx;
        top + (bottom - top) * wy
    }
}

/// A muted two-colour background mixed by a coarse and a fine random field, with per-pixel grain.
#[derive(Clone, Debug, PartialEq)]
pub struct Background {
    pub colour1: Rgb,
    pub colour2: Rgb,
    coarse: Field,
    fine: Field,
    fine_amount: f32,
    /// Grain: each channel of each pixel gets `(a - b) * grain` levels, `a`, `b` uniform.
    pub grain: f32,
    grain_seed: u64,
}

impl Background {
    fn sample(rng: &mut Rng, size: usize) -> Background {
        let (h, s, v) = (rng.uniform(), rng.range(0.0, 0.35), rng.range(0.25, 0.85));
        let colour1 = hsv(h, s, v);
        let dv = rng.range(0.1, 0.3) * if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
        let colour2 = hsv(h + rng.range(-0.15, 0.15), rng.range(0.0, 0.35), (v + dv).clamp(0.1, 0.95));
        let n = 2 + rng.below(4);
        let coarse = Field::sample(rng, n);
        let n = (10 + rng.below(7)) * size.div_ceil(64);
        let fine = Field::sample(rng, n);
        let fine_amount = rng.range(0.0, 0.35);
        let grain = rng.range(2.0, 7.0);
        Background { colour1, colour2, coarse, fine, fine_amount, grain, grain_seed: rng.next_u64() }
    }

    /// The colour at pixel `(px, py)` of a `size`-pixel image (before grain).
    fn at(&self, px: usize, py: usize, size: usize) -> Rgb {
        let (x, y) = ((px as f32 + 0.5) / size as f32, (py as f32 + 0.5) / size as f32);
        let t = self.coarse.at(x, y) * (1.0 - self.fine_amount) + self.fine.at(x, y) * self.fine_amount;
        lerp(self.colour1, self.colour2, t)
    }
}

/// A scene: the background, the objects in painter's order (first = bottom), and the caption's categories.
#[derive(Clone, Debug)]
pub struct Scene {
    pub size: usize,
    pub background: Background,
    pub objects: Vec<Object>,
    /// The distinct categories of the objects (indices into the category list), in caption order (shuffled).
    pub caption_categories: Vec<usize>,
    /// Owner of every sample (`BG` or an index into `objects`), `(size * SS)^2`, row-major.
    owner: Vec<u8>,
}

/// One drawn object of a rendered scene.
#[derive(Clone, Debug, PartialEq)]
pub struct Drawn {
    pub category: usize,
    /// Visible extent `[x1, y1, x2, y2]` in pixels (multiples of 1/SS).
    pub bbox: [f64; 4],
    /// Visible area in pixels.
    pub area: f64,
    /// Per pixel (row-major), how many of its SS^2 samples show this object.
    pub coverage: Vec<u8>,
}

/// A rendered scene.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub image: image::RgbImage,
    pub objects: Vec<Drawn>,
}

fn lerp(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

/// HSV (each in [0, 1], hue wrapping) to RGB in [0, 255].
fn hsv(h: f32, s: f32, v: f32) -> Rgb {
    let h = (h - h.floor()) * 6.0;
    let i = (h.floor() as usize).min(5);
    let f = h - i as f32;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let c = match i {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    };
    c.map(|x| x * 255.0)
}

fn distance(a: Rgb, b: Rgb) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// A saturated colour far from the background's colours and the other objects' (best of a few draws).
fn object_colour(rng: &mut Rng, bg: &Background, others: &[Rgb]) -> Rgb {
    let mut best = ([0.0; 3], f32::MIN);
    for _ in 0..16 {
        let c = hsv(rng.uniform(), rng.range(0.5, 1.0), rng.range(0.45, 1.0));
        let d_bg = distance(c, bg.colour1).min(distance(c, bg.colour2));
        let d_obj = others.iter().map(|&o| distance(c, o)).fold(f32::MAX, f32::min);
        // Contrast with the background matters most; other objects only need to differ.
        let score = d_bg.min(90.0) + d_obj.min(60.0);
        if score > best.1 {
            best = (c, score);
        }
        if d_bg >= 90.0 && d_obj >= 60.0 {
            break;
        }
    }
    best.0
}

/// Log-uniform in [lo, hi].
fn log_uniform(rng: &mut Rng, lo: f32, hi: f32) -> f32 {
    lo * libm::powf(hi / lo, rng.uniform())
}

fn sample_object(rng: &mut Rng, size: usize, category: usize, shape: Shape, bg: &Background, others: &[Rgb]) -> Object {
    let k = size as f32 / 64.0;
    let scale = size as f32 * log_uniform(rng, SCALE_RANGE.0, SCALE_RANGE.1);
    let (lo, hi) = shape.aspect_range();
    let aspect = log_uniform(rng, lo, hi);
    let angle = rng.range(-shape.max_rotation(), shape.max_rotation()).to_radians();
    let stretch = (aspect.sqrt(), 1.0 / aspect.sqrt());
    let reach = scale * BOUND * stretch.0.max(stretch.1);
    // Centres keep at least half the reach inside the image: some truncation at the borders, never much.
    let margin = (0.5 * reach).min(0.5 * size as f32);
    let cx = rng.range(margin, size as f32 - margin);
    let cy = rng.range(margin, size as f32 - margin);
    let colour = object_colour(rng, bg, others);
    let colour2 = if rng.uniform() < 0.5 { colour.map(|c| c * 0.45) } else { colour.map(|c| c + (255.0 - c) * 0.6) };
    let dir = |rng: &mut Rng| {
        let a = rng.range(0.0, std::f32::consts::TAU);
        (libm::cosf(a), libm::sinf(a))
    };
    let texture = match rng.uniform() {
        u if u < 0.35 => Texture::Solid,
        u if u < 0.6 => {
            let (cos, sin) = dir(rng);
            Texture::Stripes { period: rng.range(2.5, 5.0) * k, cos, sin, phase: rng.uniform() }
        }
        u if u < 0.8 => {
            let period = rng.range(3.5, 6.0) * k;
            Texture::Dots { period, radius: period * rng.range(0.25, 0.35), phase: (rng.uniform(), rng.uniform()) }
        }
        _ => {
            let (cos, sin) = dir(rng);
            Texture::Gradient { cos, sin }
        }
    };
    Object {
        category,
        shape,
        cx,
        cy,
        scale,
        aspect,
        angle,
        colour,
        colour2,
        texture,
        cos: libm::cosf(angle),
        sin: libm::sinf(angle),
        stretch,
    }
}

/// The samples an object covers: indices of those inside the image, and the count of all (inside or not).
fn raster(o: &Object, size: usize) -> (Vec<u32>, usize) {
    let n = (size * SS) as i64;
    let ss = SS as f32;
    let r = o.reach();
    let lo = |c: f32| ((c - r) * ss - 1.0).floor() as i64;
    let hi = |c: f32| ((c + r) * ss + 1.0).ceil() as i64;
    let (mut inside, mut total) = (Vec::new(), 0);
    for sy in lo(o.cy)..=hi(o.cy) {
        let y = (sy as f32 + 0.5) / ss;
        for sx in lo(o.cx)..=hi(o.cx) {
            if o.contains((sx as f32 + 0.5) / ss, y) {
                total += 1;
                if (0..n).contains(&sx) && (0..n).contains(&sy) {
                    inside.push((sy * n + sx) as u32);
                }
            }
        }
    }
    (inside, total)
}

impl Scene {
    /// Draws a scene of `size` pixels over `shapes` (the category list); `first` forces the first object's
    /// category (the contact sheet uses it).
    pub fn sample(rng: &mut Rng, size: usize, shapes: &[Shape], first: Option<usize>) -> Scene {
        assert!(!shapes.is_empty() && shapes.len() < BG as usize);
        let background = Background::sample(rng, size);
        let u = rng.uniform();
        let mut acc = 0.0;
        let wanted = COUNT_WEIGHTS.iter().position(|w| {
            acc += w;
            u < acc
        });
        let wanted = wanted.unwrap_or(COUNT_WEIGHTS.len() - 1) + 1;
        let mut owner = vec![BG; (size * SS) * (size * SS)];
        let mut objects: Vec<Object> = Vec::new();
        let (mut visible, mut total): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
        for k in 0..wanted {
            let category = match first {
                Some(c) if k == 0 => c,
                _ => rng.below(shapes.len()),
            };
            for _ in 0..TRIES {
                let colours: Vec<Rgb> = objects.iter().map(|o| o.colour).collect();
                let o = sample_object(rng, size, category, shapes[category], &background, &colours);
                let (inside, all) = raster(&o, size);
                if (inside.len() as f32) < MIN_VISIBLE * all as f32 {
                    continue;
                }
                let mut lost = vec![0usize; objects.len()];
                for &i in &inside {
                    if let Some(l) = lost.get_mut(owner[i as usize] as usize) {
                        *l += 1;
                    }
                }
                let hides = (0..objects.len()).any(|j| ((visible[j] - lost[j]) as f32) < MIN_VISIBLE * total[j] as f32);
                if hides {
                    continue;
                }
                for j in 0..objects.len() {
                    visible[j] -= lost[j];
                }
                let id = objects.len() as u8;
                for &i in &inside {
                    owner[i as usize] = id;
                }
                visible.push(inside.len());
                total.push(all);
                objects.push(o);
                break;
            }
        }
        let mut caption_categories: Vec<usize> = Vec::new();
        for o in &objects {
            if !caption_categories.contains(&o.category) {
                caption_categories.push(o.category);
            }
        }
        for i in (1..caption_categories.len()).rev() {
            caption_categories.swap(i, rng.below(i + 1));
        }
        Scene { size, background, objects, caption_categories, owner }
    }

    /// The image and every object's visible box, area and coverage.
    pub fn render(&self) -> Rendered {
        self.render_owned(&self.owner)
    }

    /// The image with the objects left out (the same background and grain): pixels where [`Scene::render`]
    /// differs from this are pixels the objects cover.
    pub fn render_background(&self) -> image::RgbImage {
        self.render_owned(&vec![BG; self.owner.len()]).image
    }

    fn render_owned(&self, owner: &[u8]) -> Rendered {
        let (size, n) = (self.size, self.size * SS);
        let ss = SS as f32;
        let mut grain = Rng::new(self.background.grain_seed);
        let mut image = image::RgbImage::new(size as u32, size as u32);
        let mut objects: Vec<Drawn> = self
            .objects
            .iter()
            .map(|o| Drawn {
                category: o.category,
                bbox: [f64::MAX, f64::MAX, f64::MIN, f64::MIN],
                area: 0.0,
                coverage: vec![0; size * size],
            })
            .collect();
        let mut extent = vec![[usize::MAX, usize::MAX, 0, 0]; self.objects.len()];
        for py in 0..size {
            for px in 0..size {
                let bg = self.background.at(px, py, size);
                let mut acc = [0.0f32; 3];
                for sy in py * SS..(py + 1) * SS {
                    for sx in px * SS..(px + 1) * SS {
                        let o = owner[sy * n + sx];
                        let c = if o == BG {
                            bg
                        } else {
                            let k = o as usize;
                            objects[k].coverage[py * size + px] += 1;
                            let e = &mut extent[k];
                            *e = [e[0].min(sx), e[1].min(sy), e[2].max(sx + 1), e[3].max(sy + 1)];
                            self.objects[k].colour_at((sx as f32 + 0.5) / ss, (sy as f32 + 0.5) / ss)
                        };
                        for ch in 0..3 {
                            acc[ch] += c[ch];
                        }
                    }
                }
                let mut rgb = [0u8; 3];
                for ch in 0..3 {
                    let noise = (grain.uniform() - grain.uniform()) * self.background.grain;
                    rgb[ch] = (acc[ch] / (SS * SS) as f32 + noise + 0.5).floor().clamp(0.0, 255.0) as u8;
                }
                image.put_pixel(px as u32, py as u32, image::Rgb(rgb));
            }
        }
        for (d, e) in objects.iter_mut().zip(&extent) {
            let samples: usize = d.coverage.iter().map(|&c| c as usize).sum();
            d.area = samples as f64 / (SS * SS) as f64;
            d.bbox = e.map(|v| v as f64 / SS as f64);
        }
        Rendered { image, objects }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::shapes::SHAPES;

    #[test]
    fn placement_keeps_every_object_visible_enough() {
        for seed in 0..40 {
            let s = Scene::sample(&mut Rng::new(seed), 64, &SHAPES, None);
            assert!(!s.objects.is_empty() && s.objects.len() <= 4);
            let r = s.render();
            for (o, d) in s.objects.iter().zip(&r.objects) {
                let (_, total) = raster(o, 64);
                let frac = d.area * (SS * SS) as f64 / total as f64;
                assert!(frac >= MIN_VISIBLE as f64 - 1e-9, "seed {seed}: {} visible {frac}", o.shape.name());
            }
        }
    }
}
