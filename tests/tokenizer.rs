//! The CLIP tokenizer against Hugging Face's ids (`tests/fixtures/tokenizer/clip_prompts.json`, written by
//! `tools/make_tokenizer_fixtures.py`). Needs `../shared/data/clip` (or `$INSTAGEN_DATA/clip`); skips without it.

mod common;

use std::path::PathBuf;

use instagen::models::tokenizer::{BOS_ID, ClipTokenizer, EOS_ID, MAX_LEN, PAD_ID, read_bpe_gz};

fn gz_path() -> Option<PathBuf> {
    common::shared_data("clip/bpe_simple_vocab_16e6.txt.gz")
}

fn load() -> Option<ClipTokenizer> {
    let p = gz_path()?;
    Some(ClipTokenizer::from_bpe_gz(&p).expect("build CLIP tokenizer from the .gz"))
}

#[derive(serde::Deserialize)]
struct Case {
    prompt: String,
    ids: Vec<u32>,
    len: usize,
    untruncated_len: usize,
    slow_ftfy_ids: Option<Vec<u32>>,
}

#[derive(serde::Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

fn fixture() -> Fixture {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/clip_prompts.json");
    serde_json::from_str(&std::fs::read_to_string(&p).expect("read fixture")).expect("parse fixture")
}

#[test]
fn a_photo_of_a_cat() {
    let Some(tok) = load() else { return };
    let e = tok.encode("a photo of a cat").unwrap();
    assert_eq!(&e.ids[..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);
    assert!(e.ids[7..].iter().all(|&i| i == PAD_ID));
    assert_eq!((e.ids.len(), e.len, e.truncated, e.dropped_tokens), (MAX_LEN, 7, false, 0));
}

#[test]
fn matches_hugging_face_fixtures() {
    let Some(tok) = load() else { return };
    let fx = fixture();
    assert!(fx.cases.len() >= 60);
    let mut bad = Vec::new();
    let mut slow_diffs = 0;
    for c in &fx.cases {
        let e = tok.encode(&c.prompt).unwrap();
        if e.ids != c.ids || e.len != c.len {
            bad.push(format!("{:?}\n  got  {:?} (len {})\n  want {:?} (len {})", c.prompt, e.ids, e.len, c.ids, c.len));
        }
        let cut = c.untruncated_len.saturating_sub(MAX_LEN);
        assert_eq!((e.truncated, e.dropped_tokens), (cut > 0, cut), "{:?}", c.prompt);
        slow_diffs += usize::from(c.slow_ftfy_ids.is_some());
    }
    println!("{} prompts match; {slow_diffs} differ under the old slow CLIPTokenizer with ftfy", fx.cases.len());
    assert!(bad.is_empty(), "{} of {} prompts differ:\n{}", bad.len(), fx.cases.len(), bad.join("\n"));
}

#[test]
fn truncation_reports_what_was_cut() {
    let Some(tok) = load() else { return };
    let prompt = vec!["cat"; 80].join(" ") + " zebra";
    let e = tok.encode(&prompt).unwrap();
    assert_eq!(e.len, MAX_LEN);
    assert_eq!((e.ids[0], e.ids[MAX_LEN - 1]), (BOS_ID, EOS_ID));
    assert!(e.truncated);
    assert_eq!((e.dropped_tokens, e.dropped_words), (6, 6));
    assert_eq!(e.dropped_text, "cat cat cat cat cat zebra");
    let short = tok.encode("").unwrap();
    assert_eq!((&short.ids[..2], short.len, short.truncated), (&[BOS_ID, EOS_ID][..], 2, false));
}

#[test]
fn batch_equals_single() {
    let Some(tok) = load() else { return };
    let prompts = ["a photo of a dog", "", "a photograph of a hot dog"];
    let batch = tok.encode_batch(&prompts).unwrap();
    for (p, b) in prompts.iter().zip(&batch) {
        assert_eq!(&tok.encode(p).unwrap(), b);
    }
}

/// Derives vocab.json / merges.txt / tokenizer.json from the .gz into a temp folder (diffusers layout) and checks
/// that every source gives the same ids.
#[test]
fn folder_sources_agree_with_gz() {
    let Some(tok) = load() else { return };
    let dir = std::env::temp_dir().join(format!("instagen_tok_{}", std::process::id()));
    let tdir = dir.join("tokenizer");
    std::fs::create_dir_all(&tdir).unwrap();
    // Missing files are named in the error.
    let err = ClipTokenizer::from_folder(&dir).unwrap_err().to_string();
    assert!(err.contains("vocab.json") && err.contains("merges.txt") && err.contains("tokenizer.json"), "{err}");

    let (tokens, merges) = read_bpe_gz(&gz_path().unwrap()).unwrap();
    assert_eq!((tokens.len(), merges.len()), (49408, 48894));
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().zip(0u32..).map(|(t, i)| (t.clone(), serde_json::Value::from(i))).collect();
    let merges_src: Vec<String> = merges.iter().map(|(a, b)| format!("{a} {b}")).collect();
    let fx = fixture();
    let merges_txt = format!("#version: 0.2\n{}\n", merges_src.join("\n"));
    std::fs::write(tdir.join("vocab.json"), serde_json::to_string(&vocab).unwrap()).unwrap();
    std::fs::write(tdir.join("merges.txt"), &merges_txt).unwrap();
    let from_files = ClipTokenizer::from_folder(&dir).unwrap();
    let json = serde_json::json!({"model": {"type": "BPE", "end_of_word_suffix": "</w>", "vocab": vocab,
        "merges": merges_src.iter().map(|m| m.split(' ').collect::<Vec<_>>()).collect::<Vec<_>>()}});
    std::fs::remove_file(tdir.join("vocab.json")).unwrap();
    std::fs::write(tdir.join("tokenizer.json"), serde_json::to_string(&json).unwrap()).unwrap();
    let from_json = ClipTokenizer::from_folder(&dir).unwrap();
    for c in &fx.cases {
        let want = tok.encode(&c.prompt).unwrap();
        assert_eq!(from_files.encode(&c.prompt).unwrap(), want, "{:?}", c.prompt);
        assert_eq!(from_json.encode(&c.prompt).unwrap(), want, "{:?}", c.prompt);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
