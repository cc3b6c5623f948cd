//! The twelve object categories of the miniature world: their names, how each is drawn (a membership test in a
//! local frame) and how much each may be stretched and turned.
//!
//! Local frame: `u` to the right, `v` down (image orientation), every shape inside the disc of radius
//! [`BOUND`] around the origin (a test checks it), most reaching about 1.

use std::sync::LazyLock;

/// Every shape lies inside this radius in its local frame.
pub const BOUND: f32 = 1.05;

const SQRT3: f32 = 1.732_050_8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Cross,
    Heart,
    Arrow,
    Hexagon,
    Ring,
    Moon,
    Diamond,
    Bolt,
}

/// All shapes, in the default category order (category id = index + 1).
pub const SHAPES: [Shape; 12] = [
    Shape::Circle,
    Shape::Square,
    Shape::Triangle,
    Shape::Star,
    Shape::Cross,
    Shape::Heart,
    Shape::Arrow,
    Shape::Hexagon,
    Shape::Ring,
    Shape::Moon,
    Shape::Diamond,
    Shape::Bolt,
];

/// The default novel categories: each has a base relative (heart ~ circle + triangle, hexagon ~ circle, moon ~
/// ring, bolt ~ arrow), as OV-COCO's novel classes have base relatives (cat ~ dog... bus ~ truck).
pub const DEFAULT_NOVEL: [Shape; 4] = [Shape::Heart, Shape::Hexagon, Shape::Moon, Shape::Bolt];

/// A five-pointed star, point up: outer radius 1, inner 0.42.
static STAR: LazyLock<Vec<(f32, f32)>> = LazyLock::new(|| {
    (0..10)
        .map(|k| {
            let r = if k % 2 == 0 { 1.0 } else { 0.42 };
            let a = -std::f32::consts::FRAC_PI_2 + k as f32 * std::f32::consts::PI / 5.0;
            (r * libm::cosf(a), r * libm::sinf(a))
        })
        .collect()
});

/// A lightning bolt, top right to bottom left.
const BOLT: [(f32, f32); 7] = [(0.05, -1.0), (0.6, -1.0), (0.18, -0.18), (0.55, -0.18), (-0.4, 0.92), (-0.06, 0.1), (-0.45, 0.1)];

/// Crossing-number test of a simple polygon.
fn in_polygon(p: &[(f32, f32)], u: f32, v: f32) -> bool {
    let mut inside = false;
    let mut j = p.len() - 1;
    for i in 0..p.len() {
        let ((xi, yi), (xj, yj)) = (p[i], p[j]);
        if (yi > v) != (yj > v) && u < (xj - xi) * (v - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

impl Shape {
    /// The category name: an ordinary word, one CLIP token.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Cross => "cross",
            Shape::Heart => "heart",
            Shape::Arrow => "arrow",
            Shape::Hexagon => "hexagon",
            Shape::Ring => "ring",
            Shape::Moon => "moon",
            Shape::Diamond => "diamond",
            Shape::Bolt => "bolt",
        }
    }

    pub fn from_name(name: &str) -> Option<Shape> {
        SHAPES.iter().copied().find(|s| s.name() == name)
    }

    /// The indefinite article before the name ("an arrow", "a hexagon": every name here is read as spelled).
    pub fn article(self) -> &'static str {
        article(self.name())
    }

    /// Range of the aspect ratio (width / height before rotation). Shapes whose identity is their proportions
    /// (circle, square, ring, hexagon, diamond) vary little; a square at 45 degrees must not pass for a diamond
    /// (which is 0.6 as wide as tall).
    pub fn aspect_range(self) -> (f32, f32) {
        match self {
            Shape::Square => (0.9, 1.11),
            Shape::Circle | Shape::Ring | Shape::Hexagon | Shape::Diamond => (0.87, 1.15),
            _ => (0.75, 1.33),
        }
    }

    /// The largest rotation either way, in degrees (hearts and bolts stay roughly upright).
    pub fn max_rotation(self) -> f32 {
        match self {
            Shape::Heart | Shape::Bolt => 35.0,
            _ => 180.0,
        }
    }

    /// Whether the local point `(u, v)` is inside the shape.
    pub fn contains(self, u: f32, v: f32) -> bool {
        let r2 = u * u + v * v;
        match self {
            Shape::Circle => r2 <= 1.0,
            Shape::Ring => (0.27..=1.0).contains(&r2),
            Shape::Square => u.abs() <= 0.7 && v.abs() <= 0.7,
            Shape::Triangle => v <= 0.5 && v >= -1.0 + SQRT3 * u.abs(),
            Shape::Hexagon => v.abs() <= 0.5 * SQRT3 && SQRT3 * u.abs() + v.abs() <= SQRT3,
            Shape::Diamond => u.abs() / 0.6 + v.abs() <= 1.0,
            Shape::Cross => (u.abs() <= 0.3 && v.abs() <= 0.92) || (u.abs() <= 0.92 && v.abs() <= 0.3),
            Shape::Star => r2 <= 1.0 && in_polygon(&STAR, u, v),
            Shape::Bolt => in_polygon(&BOLT, u, v),
            Shape::Arrow => {
                (-0.95..=0.12).contains(&u) && v.abs() <= 0.2 || (0.12..=0.95).contains(&u) && v.abs() <= 0.62 * (0.95 - u) / 0.83
            }
            Shape::Moon => {
                let (du, dv) = (u - 0.42, v + 0.12);
                r2 <= 1.0 && du * du + dv * dv >= 0.82 * 0.82
            }
            Shape::Heart => {
                // (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 spans x in [-1.14, 1.14], y in [-1, 1.24]; every point is
                // within 1.25 of (0, 0.25), so this maps it into the unit disc.
                let x = u * 1.25;
                let y = 0.25 - v * 1.25;
                let q = x * x + y * y - 1.0;
                q * q * q - x * x * y * y * y <= 0.0
            }
        }
    }
}

/// "an" before a vowel letter, else "a".
pub fn article(word: &str) -> &'static str {
    match word.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples of the local square [-1.3, 1.3]^2.
    fn grid() -> impl Iterator<Item = (f32, f32)> {
        let n = 261;
        (0..n * n).map(move |k| (-1.3 + 2.6 * (k % n) as f32 / (n - 1) as f32, -1.3 + 2.6 * (k / n) as f32 / (n - 1) as f32))
    }

    #[test]
    fn shapes_lie_inside_the_bound_and_are_not_empty() {
        for s in SHAPES {
            let inside: Vec<(f32, f32)> = grid().filter(|&(u, v)| s.contains(u, v)).collect();
            let far = inside.iter().map(|&(u, v)| (u * u + v * v).sqrt()).fold(0.0f32, f32::max);
            assert!(far <= BOUND, "{}: reaches {far} > {BOUND}", s.name());
            // Every shape covers a good part of its disc and reaches near its edge, so sizes are comparable.
            let frac = inside.len() as f32 / grid().filter(|&(u, v)| u * u + v * v <= 1.0).count() as f32;
            assert!(frac > 0.2 && far > 0.85, "{}: covers {frac} of the unit disc, reaches {far}", s.name());
        }
    }

    #[test]
    fn names_round_trip_and_articles() {
        for s in SHAPES {
            assert_eq!(Shape::from_name(s.name()), Some(s));
            assert!(!s.name().contains(' ') && s.name() != "and");
        }
        assert_eq!(Shape::Arrow.article(), "an");
        assert_eq!(Shape::Hexagon.article(), "a");
        assert_eq!(Shape::from_name("Circle"), None);
    }
}
