//! The CLIP BPE tokenizer of Stable Diffusion v1.x, built on the `tokenizers` crate.
//!
//! The pipeline is the one of Hugging Face's `CLIPTokenizer` (transformers >= 5, and `CLIPTokenizerFast`):
//! special tokens `<|startoftext|>`/`<|endoftext|>` are matched verbatim first; the rest is NFC-normalised,
//! every whitespace run becomes one space, it is lowercased, split by the CLIP regex, mapped to byte-level
//! characters and BPE-merged with a `</w>` end-of-word suffix. The ids are then framed as SD feeds its text
//! encoder: BOS 49406, at most 75 content tokens, EOS 49407, padding with 49407 to 77.
//!
//! Not done: `ftfy.fix_text` (used by the old slow `CLIPTokenizer` of transformers < 5 when `ftfy` is installed,
//! and by OpenAI's CLIP), which uncurls quotes, undoes ligatures and full-width forms, unescapes HTML entities
//! and repairs mojibake. Plain ASCII and NFC text encode identically with or without it.
//!
//! Sources: a diffusers weights folder (`tokenizer/vocab.json` + `tokenizer/merges.txt`, or
//! `tokenizer/tokenizer.json`), or CLIP's `bpe_simple_vocab_16e6.txt.gz`, from which vocab and merges derive.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormSeq};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};

/// Tokens per prompt fed to the SD v1.x text encoder, BOS and EOS included.
pub const MAX_LEN: usize = 77;
/// `<|startoftext|>`.
pub const BOS_ID: u32 = 49406;
/// `<|endoftext|>`; SD v1.x also pads with it.
pub const EOS_ID: u32 = 49407;
/// The padding id of SD v1.x (`tokenizer.pad_token` is `<|endoftext|>`).
pub const PAD_ID: u32 = EOS_ID;
pub const BOS_TOKEN: &str = "<|startoftext|>";
pub const EOS_TOKEN: &str = "<|endoftext|>";
/// Entries of the CLIP vocabulary: 256 byte characters, the same with `</w>`, 48,894 merges, 2 specials.
pub const VOCAB_SIZE: usize = 49408;
const N_MERGES: usize = VOCAB_SIZE - 512 - 2;

/// The CLIP pre-tokenizer pattern (its `'s|'t|...` alternatives need lowercased input).
pub const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// One prompt, framed for the text encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// `MAX_LEN` ids: BOS, content, EOS, then `PAD_ID`.
    pub ids: Vec<u32>,
    /// Ids before padding, BOS and EOS included (2..=77).
    pub len: usize,
    /// Whether content tokens were cut to fit 77.
    pub truncated: bool,
    /// Content tokens cut.
    pub dropped_tokens: usize,
    /// Words (pre-tokens) of which at least one token was cut.
    pub dropped_words: usize,
    /// The prompt text from the first cut token on (empty when nothing was cut), for messages.
    pub dropped_text: String,
}

/// The CLIP BPE tokenizer of SD v1.x.
pub struct ClipTokenizer {
    inner: Tokenizer,
    /// Where it was loaded from, for error messages.
    source: PathBuf,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer").field("source", &self.source).finish()
    }
}

fn weights_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Weights { path: path.to_path_buf(), msg: msg.into() }
}

/// A regular file: vocab.json, merges.txt, tokenizer.json (capped at
/// [`CONFIG_MAX_BYTES`](crate::util::files::CONFIG_MAX_BYTES)) or the gzipped CLIP vocabulary.
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    crate::util::files::read_input(path, Some(crate::util::files::CONFIG_MAX_BYTES)).map_err(|e| Error::io(path, e))
}

fn read_text(path: &Path) -> Result<String> {
    String::from_utf8(read_bytes(path)?).map_err(|e| weights_err(path, format!("not UTF-8: {e}")))
}

impl ClipTokenizer {
    /// Loads from a diffusers weights folder: `dir/tokenizer/{vocab.json, merges.txt}` or
    /// `dir/tokenizer/tokenizer.json`; `dir` may also be the `tokenizer` folder itself.
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let sub = dir.join("tokenizer");
        let tdir = if sub.is_dir() { sub } else { dir.to_path_buf() };
        let (vocab, merges) = (tdir.join("vocab.json"), tdir.join("merges.txt"));
        if vocab.is_file() && merges.is_file() {
            return Self::from_vocab_merges(&vocab, &merges);
        }
        let json = tdir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_tokenizer_json(&json);
        }
        let missing: Vec<String> = [&vocab, &merges]
            .iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        Err(Error::Other(format!(
            "CLIP tokenizer in {}: missing {} and no {}",
            dir.display(),
            missing.join(" and "),
            json.display()
        )))
    }

    /// Loads Hugging Face `vocab.json` and `merges.txt` (the latter with an optional `#version` header).
    pub fn from_vocab_merges(vocab_path: &Path, merges_path: &Path) -> Result<Self> {
        let vocab: HashMap<String, u32> = serde_json::from_str(&read_text(vocab_path)?)
            .map_err(|e| weights_err(vocab_path, format!("not a token -> id JSON object: {e}")))?;
        let text = read_text(merges_path)?;
        let mut merges = Merges::new();
        for (i, line) in text.lines().enumerate() {
            if line.starts_with("#version") || line.trim().is_empty() {
                continue;
            }
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => merges.push((a.to_string(), b.to_string())),
                _ => return Err(weights_err(merges_path, format!("line {}: not 'a b': {line:?}", i + 1))),
            }
        }
        if merges.is_empty() {
            return Err(weights_err(merges_path, "no merges (an empty merges.txt): not a BPE tokenizer"));
        }
        Self::build(vocab, merges, vocab_path)
    }

    /// Loads the `model` (vocab and merges) of a Hugging Face `tokenizer.json`; the rest of the pipeline is CLIP's.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let json: serde_json::Value = serde_json::from_str(&read_text(path)?)
            .map_err(|e| weights_err(path, format!("not JSON: {e}")))?;
        let model = &json["model"];
        if model["type"].as_str().is_some_and(|t| t != "BPE") {
            return Err(weights_err(path, format!("model.type is {}, expected BPE", model["type"])));
        }
        if model["end_of_word_suffix"].as_str().is_some_and(|s| s != "</w>") {
            return Err(weights_err(path, "model.end_of_word_suffix is not \"</w>\" (not a CLIP tokenizer)"));
        }
        let vocab: HashMap<String, u32> = serde_json::from_value(model["vocab"].clone())
            .map_err(|e| weights_err(path, format!("model.vocab: {e}")))?;
        let list = model["merges"]
            .as_array()
            .ok_or_else(|| weights_err(path, "model.merges missing or not a list"))?;
        let mut merges = Merges::with_capacity(list.len());
        for (i, m) in list.iter().enumerate() {
            // Either "a b" (tokenizers < 0.20) or ["a", "b"].
            let pair = match m {
                serde_json::Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
                serde_json::Value::Array(v) if v.len() == 2 => match (v[0].as_str(), v[1].as_str()) {
                    (Some(a), Some(b)) => Some((a.to_string(), b.to_string())),
                    _ => None,
                },
                _ => None,
            };
            merges.push(pair.ok_or_else(|| weights_err(path, format!("model.merges[{i}]: not a pair: {m}")))?);
        }
        Self::build(vocab, merges, path)
    }

    /// Builds from CLIP's `bpe_simple_vocab_16e6.txt.gz`: lines 1..=48894 are the merges; the vocabulary is the
    /// 256 byte characters, the same with `</w>`, every merge joined, then `<|startoftext|>` and `<|endoftext|>`.
    pub fn from_bpe_gz(path: &Path) -> Result<Self> {
        let (tokens, merges) = read_bpe_gz(path)?;
        let vocab: HashMap<String, u32> = tokens.into_iter().zip(0u32..).collect();
        if vocab.len() != VOCAB_SIZE {
            return Err(weights_err(path, format!("{} distinct tokens, expected {VOCAB_SIZE}", vocab.len())));
        }
        Self::build(vocab, merges, path)
    }

    fn build(vocab: HashMap<String, u32>, merges: Merges, source: &Path) -> Result<Self> {
        // Ids must be 0..n-1, each once: an id at or past the vocabulary size would index past the text
        // encoder's embedding table.
        let n = vocab.len();
        if let Some((tok, id)) = vocab.iter().find(|(_, id)| **id as usize >= n) {
            return Err(weights_err(source, format!("token {tok:?} has id {id}, at or above the vocabulary size {n} (ids must be 0..{n})")));
        }
        if vocab.values().collect::<std::collections::HashSet<_>>().len() != n {
            return Err(weights_err(source, "two tokens share an id"));
        }
        if merges.is_empty() {
            return Err(weights_err(source, "no merges: not a BPE tokenizer"));
        }
        for (tok, id) in [(BOS_TOKEN, BOS_ID), (EOS_TOKEN, EOS_ID)] {
            match vocab.get(tok) {
                Some(&got) if got == id => {}
                got => return Err(weights_err(source, format!("{tok} has id {got:?}, SD v1.x expects {id}"))),
            }
        }
        let vocab: Vocab = vocab.into_iter().collect();
        let tk = |e: tokenizers::Error| weights_err(source, format!("tokenizers: {e}"));
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .unk_token(EOS_TOKEN.to_string())
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".to_string())
            .fuse_unk(false)
            .build()
            .map_err(tk)?;
        let mut inner = Tokenizer::new(bpe);
        let ws = Replace::new(ReplacePattern::Regex(r"\s+".to_string()), " ").map_err(tk)?;
        inner.with_normalizer(Some(NormSeq::new(vec![NFC.into(), ws.into(), Lowercase.into()]))).map_err(tk)?;
        let split = Split::new(SplitPattern::Regex(CLIP_PATTERN.to_string()), SplitDelimiterBehavior::Removed, true)
            .map_err(tk)?;
        inner.with_pre_tokenizer(Some(PreSeq::new(vec![split.into(), ByteLevel::new(false, true, false).into()])));
        inner.add_special_tokens([AddedToken::from(BOS_TOKEN, true), AddedToken::from(EOS_TOKEN, true)]).map_err(tk)?;
        Ok(Self { inner, source: source.to_path_buf() })
    }

    /// Content ids of `prompt`, without BOS/EOS, padding or truncation.
    pub fn tokenize(&self, prompt: &str) -> Result<Vec<u32>> {
        Ok(self.encoding(prompt)?.get_ids().to_vec())
    }

    fn encoding(&self, prompt: &str) -> Result<tokenizers::Encoding> {
        self.inner.encode(prompt, false).map_err(|e| {
            Error::Other(format!("CLIP tokenizer ({}): encoding {prompt:?}: {e}", self.source.display()))
        })
    }

    /// Encodes one prompt as SD v1.x does: BOS, at most 75 content tokens, EOS, padded with `PAD_ID` to 77.
    pub fn encode(&self, prompt: &str) -> Result<Encoded> {
        let enc = self.encoding(prompt)?;
        let content = enc.get_ids();
        let keep = content.len().min(MAX_LEN - 2);
        let mut ids = Vec::with_capacity(MAX_LEN);
        ids.push(BOS_ID);
        ids.extend_from_slice(&content[..keep]);
        ids.push(EOS_ID);
        let len = ids.len();
        ids.resize(MAX_LEN, PAD_ID);
        let dropped_tokens = content.len() - keep;
        let (mut dropped_words, mut dropped_text) = (0, String::new());
        if dropped_tokens > 0 {
            let words = enc.get_word_ids();
            let mut seen: Option<Option<u32>> = None;
            for w in words.iter().skip(keep) {
                // Special tokens have no word id: each counts as a word.
                if w.is_none() || seen != Some(*w) {
                    dropped_words += 1;
                }
                seen = Some(*w);
            }
            let start = enc.get_offsets().get(keep).map_or(prompt.len(), |o| o.0);
            // Offsets are byte offsets; step back to a char boundary if a byte-level token split a character.
            let start = (0..=start.min(prompt.len())).rev().find(|&s| prompt.is_char_boundary(s)).unwrap_or(0);
            dropped_text = prompt[start..].to_string();
        }
        Ok(Encoded { ids, len, truncated: dropped_tokens > 0, dropped_tokens, dropped_words, dropped_text })
    }

    /// `encode` for each prompt, in order.
    pub fn encode_batch<S: AsRef<str>>(&self, prompts: &[S]) -> Result<Vec<Encoded>> {
        prompts.iter().map(|p| self.encode(p.as_ref())).collect()
    }

    /// Entries of the vocabulary (ids are `0..vocab_size()`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(false)
    }

    /// Where it was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The token strings of ids (byte-level characters, `</w>` marking word ends); `None` for unknown ids.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}

/// Reads CLIP's `bpe_simple_vocab_16e6.txt.gz` into the Hugging Face vocabulary (tokens in id order, 49,408) and
/// merges (in rank order, 48,894): what `vocab.json` and `merges.txt` hold.
pub fn read_bpe_gz(path: &Path) -> Result<(Vec<String>, Vec<(String, String)>)> {
    let raw = gunzip(&read_bytes(path)?).map_err(|msg| weights_err(path, format!("gzip: {msg}")))?;
    let text = String::from_utf8(raw).map_err(|e| weights_err(path, format!("not UTF-8: {e}")))?;
    let lines: Vec<&str> = text.split('\n').collect();
    if lines.len() < N_MERGES + 1 {
        return Err(weights_err(path, format!("{} lines, expected at least {}", lines.len(), N_MERGES + 1)));
    }
    let mut merges = Merges::with_capacity(N_MERGES);
    for (i, line) in lines[1..=N_MERGES].iter().enumerate() {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) => merges.push((a.to_string(), b.to_string())),
            _ => return Err(weights_err(path, format!("line {}: not 'a b': {line:?}", i + 1))),
        }
    }
    let bytes = bytes_to_unicode();
    let mut tokens: Vec<String> = Vec::with_capacity(VOCAB_SIZE);
    tokens.extend(bytes.iter().map(|c| c.to_string()));
    tokens.extend(bytes.iter().map(|c| format!("{c}</w>")));
    tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    tokens.push(BOS_TOKEN.to_string());
    tokens.push(EOS_TOKEN.to_string());
    Ok((tokens, merges))
}

/// GPT-2/CLIP's reversible map from the 256 byte values to printable characters, in vocabulary order.
fn bytes_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (u32::from(b'!')..=u32::from(b'~')).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    cs.into_iter().filter_map(char::from_u32).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// A small gzip (RFC 1952) / DEFLATE (RFC 1951) decoder, after zlib's `puff.c`: the crate has no gzip dependency
// and the CLIP vocabulary ships gzipped. Checks the CRC-32 and the length in the trailer.

/// Decompress a gzip file's bytes (CRC and length are checked by the decoder).
fn gunzip(data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data).read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_permutation() {
        let m = bytes_to_unicode();
        assert_eq!(m.len(), 256);
        assert_eq!(m[0], '!');
        let set: std::collections::HashSet<char> = m.iter().copied().collect();
        assert_eq!(set.len(), 256);
    }
}
