//! The category list and the prompt plan of `instagen generate` (pure functions).
//!
//! Prompts are InstaGen's stage-2 prompts, `"a photograph of A"` and `"a photograph of A and B"`, generalised to up
//! to K categories (`"a photograph of A and B and C"`, as stage 1 names every category of a crop). The plan gives
//! every global image index its prompt:
//! - the *primary* categories are the `--novel` list when given, else the whole category list; image `i`'s first
//!   category is primary number `i % P` (round robin), so each primary category is first in exactly N of the
//!   `N * P` images and any prefix of the indices is spread over the categories;
//! - round `j = i / P` (`0..N`): even rounds are single-category prompts, odd rounds multi-category (half and half,
//!   the extra one single when N is odd); a multi-category prompt has `m` categories, `m` uniform in `2..=K`
//!   (drawn from the image's own generator), its companions drawn without repeats from the whole category list
//!   minus the first (with fewer than 2 categories in the list every prompt has one);
//! - the choice of an image depends only on (seed, index, lists, K): a shard or a resumed run computes the same.
//!
//! `--novel` reproduces the OV-COCO novel set (first category novel, the second from all 80 COCO classes: pass the
//! 80 as `--categories`, the 17 as `--novel`); the base set is `--categories BASE` alone (both from the base list).
//!
//! Names must come back unchanged from [`prompt_names`] (the grounding stages may read the prompt): no whole word
//! `and`, no leading article `a`/`an` before a further word, single spaces; besides non-empty, no control
//! characters, unique.

use std::path::Path;

use crate::error::{Error, Result};
use crate::pipeline::ground::dataset::{prompt_names, PROMPT_PREFIX};
use crate::util::Rng;

/// One planned image.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedImage {
    pub index: u64,
    pub prompt: String,
    /// Category names, prompt order.
    pub categories: Vec<String>,
    /// The image's own seed (its initial noise).
    pub seed: u64,
}

/// The plan's inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub categories: Vec<String>,
    /// Primary categories (a subset of `categories`, `--novel`), or `None`: all.
    pub novel: Option<Vec<String>>,
    pub images_per_category: u64,
    pub per_prompt: usize,
    pub seed: u64,
}

fn bad(what: &str, msg: String) -> Error {
    Error::Mismatch { what: what.into(), msg }
}

/// SplitMix64's finaliser: a well-mixed 64-bit function of `x`.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of image `index` of a run seeded `seed`: 53 bits (exact as a JSON number in any reader).
pub fn image_seed(seed: u64, index: u64) -> u64 {
    mix(mix(seed) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03)) >> 11
}

impl Plan {
    /// Checks the lists and numbers (see the module documentation).
    pub fn new(categories: Vec<String>, novel: Option<Vec<String>>, images_per_category: u64, per_prompt: usize, seed: u64) -> Result<Plan> {
        check_names(&categories, "--categories")?;
        if let Some(n) = &novel {
            check_names(n, "--novel")?;
            for name in n {
                if !categories.contains(name) {
                    return Err(bad("--novel", format!("{name:?} is not in --categories (the novel categories must be among them)")));
                }
            }
        }
        if images_per_category == 0 {
            return Err(bad("--images-per-category", "must be at least 1".into()));
        }
        if per_prompt == 0 {
            return Err(bad("--per-prompt", "must be at least 1".into()));
        }
        let p = Plan { categories, novel, images_per_category, per_prompt, seed };
        p.primary().len().checked_mul(images_per_category as usize).ok_or_else(|| bad("--images-per-category", "the image count overflows".into()))?;
        Ok(p)
    }

    pub fn primary(&self) -> &[String] {
        self.novel.as_deref().unwrap_or(&self.categories)
    }

    /// Images of the whole run (all shards).
    pub fn total(&self) -> u64 {
        self.primary().len() as u64 * self.images_per_category
    }

    /// The most categories a prompt can have.
    pub fn max_per_prompt(&self) -> usize {
        if self.categories.len() < 2 || self.images_per_category < 2 { 1 } else { self.per_prompt.min(self.categories.len()) }
    }

    /// Image `index` (< [`Plan::total`]).
    pub fn image(&self, index: u64) -> PlannedImage {
        let primary = self.primary();
        let p = primary.len() as u64;
        let first = &primary[(index % p) as usize];
        let round = index / p;
        let seed = image_seed(self.seed, index);
        let mut names = vec![first.clone()];
        let k = self.per_prompt.min(self.categories.len());
        if round % 2 == 1 && k >= 2 {
            // The plan's own generator (not the noise's): seeded by the image seed, salted.
            let mut rng = Rng::new(seed ^ 0x5052_4f4d_5054);
            let m = 2 + rng.below(k - 1);
            let mut pool: Vec<&String> = self.categories.iter().filter(|c| *c != first).collect();
            for _ in 1..m {
                let j = rng.below(pool.len());
                names.push(pool.swap_remove(j).clone());
            }
        }
        PlannedImage { index, prompt: prompt_of(&names), categories: names, seed }
    }
}

/// `"a photograph of A and B"`.
pub fn prompt_of(names: &[String]) -> String {
    format!("{PROMPT_PREFIX}{}", names.join(" and "))
}

/// The checks on a category list named `what` (see the module documentation).
pub fn check_names(names: &[String], what: &str) -> Result<()> {
    if names.is_empty() {
        return Err(bad(what, "the category list is empty".into()));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, n) in names.iter().enumerate() {
        let at = format!("{what}: category {} ({n:?})", i + 1);
        if n.trim().is_empty() {
            return Err(bad(&at, "is empty".into()));
        }
        if n.chars().any(|c| c.is_control()) {
            return Err(bad(&at, "has a control character".into()));
        }
        if !seen.insert(n.as_str()) {
            return Err(bad(&at, "is given twice".into()));
        }
        if prompt_names(&prompt_of(std::slice::from_ref(n))).as_deref() != Some(std::slice::from_ref(n)) {
            return Err(bad(
                &at,
                "would not read back from its prompt (a name has single spaces, no leading or trailing space, no word \"and\" and no leading \"a\"/\"an\" article)".into(),
            ));
        }
    }
    Ok(())
}

/// `--categories a,b,c` or a FILE: a text file (`.txt` or no extension: one name per line, `#` comments and blank
/// lines ignored), a JSON array of names, or a COCO file (its `categories` names, in file order). A value with no
/// comma that names an existing path is a file; a value ending in `.txt`/`.json` that does not exist is an error.
pub fn read_categories(spec: &str, what: &str) -> Result<Vec<String>> {
    let path = Path::new(spec);
    let looks_like_file = !spec.contains(',') && (path.exists() || [".txt", ".json"].iter().any(|e| spec.ends_with(e)) || spec.contains('/'));
    if !looks_like_file {
        return Ok(spec.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect());
    }
    let text = crate::util::files::read_text(path, Some(crate::util::files::DATA_JSON_MAX_BYTES))
        .map_err(|e| Error::io(path, std::io::Error::new(e.kind(), format!("{what} file: {e}"))))?;
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase());
    let file_err = |msg: String| Error::Other(format!("{}: {what} file: {msg}", path.display()));
    let trimmed = text.trim_start();
    let json = ext.as_deref() == Some("json") || trimmed.starts_with('[') || trimmed.starts_with('{');
    match ext.as_deref() {
        None | Some("txt") | Some("json") => {}
        Some(e) => {
            return Err(file_err(format!(
                "unknown category file format .{e} (want a .txt file with one name per line, a .json array of names or a COCO .json)"
            )))
        }
    }
    if !json {
        return Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect());
    }
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| file_err(format!("malformed JSON: {}", crate::util::json::describe(text.as_bytes(), &e))))?;
    let names_of = |a: &Vec<serde_json::Value>, field: &str| -> Result<Vec<String>> {
        a.iter()
            .enumerate()
            .map(|(i, x)| {
                let x = if field.is_empty() { Some(x) } else { x.get("name") };
                x.and_then(|n| n.as_str()).map(str::to_string).ok_or_else(|| file_err(format!("{field}[{i}]{}: not a name (string)", if field.is_empty() { "" } else { ".name" })))
            })
            .collect()
    };
    match &v {
        serde_json::Value::Array(a) => names_of(a, ""),
        serde_json::Value::Object(o) => match o.get("categories") {
            Some(serde_json::Value::Array(a)) => names_of(a, "categories"),
            Some(_) => Err(file_err("field categories is not an array".into())),
            None => Err(file_err("a JSON object without a categories field (want a JSON array of names or a COCO file)".into())),
        },
        _ => Err(file_err("want a JSON array of names or a COCO file (an object with categories)".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_category_gets_its_images_half_single_half_multi() {
        for (n, k) in [(4u64, 2usize), (5, 3), (7, 4), (1, 2)] {
            let cats = names(&["person", "dog", "hot dog", "cat", "tv"]);
            let p = Plan::new(cats.clone(), None, n, k, 9).unwrap();
            assert_eq!(p.total(), 5 * n);
            let imgs: Vec<PlannedImage> = (0..p.total()).map(|i| p.image(i)).collect();
            for c in &cats {
                let first = imgs.iter().filter(|im| &im.categories[0] == c).count() as u64;
                assert_eq!(first, n, "{c} is first in {first} images");
                assert!(imgs.iter().filter(|im| im.categories.contains(c)).count() as u64 >= n);
            }
            let single = imgs.iter().filter(|im| im.categories.len() == 1).count() as u64;
            assert_eq!(single, 5 * n.div_ceil(2), "n {n}");
            let mut sizes = std::collections::BTreeSet::new();
            for im in &imgs {
                assert!(im.categories.len() <= k.max(1));
                sizes.insert(im.categories.len());
                // No repeats, and the prompt reads back as its names.
                let set: std::collections::HashSet<_> = im.categories.iter().collect();
                assert_eq!(set.len(), im.categories.len());
                assert_eq!(prompt_names(&im.prompt).unwrap(), im.categories, "{}", im.prompt);
            }
            if n >= 6 && k >= 3 {
                assert_eq!(sizes, (1..=k).collect(), "every size 1..=K occurs");
            }
            // Pure: the same image again; another seed changes companions and seeds.
            assert_eq!(p.image(3), imgs[3]);
            let q = Plan::new(cats.clone(), None, n, k, 10).unwrap();
            assert_ne!(q.image(3).seed, imgs[3].seed);
        }
    }

    #[test]
    fn novel_categories_come_first_with_companions_from_all() {
        let all = names(&["person", "dog", "cat", "cup", "tv"]);
        let p = Plan::new(all.clone(), Some(names(&["cat", "cup"])), 6, 2, 1).unwrap();
        assert_eq!(p.total(), 12);
        let imgs: Vec<PlannedImage> = (0..12).map(|i| p.image(i)).collect();
        for im in &imgs {
            assert!(["cat", "cup"].contains(&im.categories[0].as_str()));
        }
        let companions: std::collections::HashSet<&String> = imgs.iter().flat_map(|im| im.categories[1..].iter()).collect();
        assert!(companions.iter().any(|c| !["cat", "cup"].contains(&c.as_str())), "{companions:?}");
        assert!(Plan::new(all, Some(names(&["zebra"])), 1, 2, 1).unwrap_err().to_string().contains("zebra"));
    }

    #[test]
    fn image_seeds_are_distinct_and_53_bit() {
        let s: std::collections::HashSet<u64> = (0..10_000).map(|i| image_seed(42, i)).collect();
        assert_eq!(s.len(), 10_000);
        assert!(s.iter().all(|&x| x < 1 << 53));
    }

    #[test]
    fn bad_names_are_refused_naming_them() {
        for (list, want) in [
            (vec![], "empty"),
            (vec!["dog", "dog"], "twice"),
            (vec!["dog", " "], "category 2"),
            (vec!["salt and pepper"], "salt and pepper"),
            (vec!["a dog"], "article"),
            (vec!["hot  dog"], "single spaces"),
            (vec!["dog\n"], "control"),
        ] {
            let e = check_names(&names(&list), "--categories").unwrap_err().to_string();
            assert!(e.contains(want), "{list:?}: {e}");
        }
        check_names(&names(&["hot dog", "teddy bear", "a"]), "--categories").unwrap();
    }

    #[test]
    fn category_files_text_json_coco_and_unknown() {
        let d = std::env::temp_dir().join(format!("instagen_plan_cats_{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let w = |name: &str, text: &str| {
            let p = d.join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        assert_eq!(read_categories("dog, cat,,tv", "--categories").unwrap(), names(&["dog", "cat", "tv"]));
        assert_eq!(read_categories(&w("c.txt", "# coco\ndog\n\n hot dog \n"), "x").unwrap(), names(&["dog", "hot dog"]));
        assert_eq!(read_categories(&w("c.json", r#"["a", "b"]"#), "x").unwrap(), names(&["a", "b"]));
        let coco = r#"{"images": [], "categories": [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}]}"#;
        assert_eq!(read_categories(&w("coco.json", coco), "x").unwrap(), names(&["car", "person"]));
        for (file, text, want) in [
            ("c.yaml", "- dog\n", "unknown category file format .yaml"),
            ("bad.json", "[\"a\", ", "malformed JSON"),
            ("obj.json", r#"{"names": ["a"]}"#, "without a categories field"),
            ("num.json", "[1, 2]", "[0]: not a name"),
            ("cocobad.json", r#"{"categories": [{"id": 1}]}"#, "categories[0].name"),
        ] {
            let p = w(file, text);
            let e = read_categories(&p, "--categories").unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(file), "{file}: {e}");
        }
        let e = read_categories(&d.join("missing.txt").display().to_string(), "--categories").unwrap_err().to_string();
        assert!(e.contains("missing.txt"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
