//! Runs `ptxas -v` on a PTX file and parses its per-kernel resource report.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// ptxas figures of one entry function for one architecture.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub name: String,
    pub registers: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    pub shared_bytes: u32,
    pub stack_bytes: u32,
    pub const_bytes: u32,
}

/// Assembles `ptx` into `cubin` for `sm` (e.g. "sm_80") and returns the figures of every entry
/// function, in the order ptxas reports them.
pub fn assemble(ptxas: &Path, ptx: &Path, cubin: &Path, sm: &str) -> Result<Vec<Stats>, String> {
    let out = Command::new(ptxas)
        .args(["-v", "--gpu-name", sm, "-O3"])
        .arg(ptx)
        .arg("-o")
        .arg(cubin)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", ptxas.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!(
            "ptxas {sm} {} failed ({}):\n{text}",
            ptx.display(),
            out.status
        ));
    }
    Ok(parse(&text))
}

/// Parses ptxas -v output. Lines look like
/// `ptxas info    : Compiling entry function 'k' for 'sm_80'`,
/// `ptxas info    : Function properties for k`,
/// `    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads`,
/// `ptxas info    : Used 10 registers, used 0 barriers, 380 bytes cmem[0]`.
/// Figures apply to the function named by the latest header; only entry functions are kept.
pub fn parse(text: &str) -> Vec<Stats> {
    let mut entries: Vec<String> = Vec::new();
    let mut all: BTreeMap<String, Stats> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let body = line.split_once(": ").map_or(line, |(_, b)| b).trim();
        if let Some(rest) = body.strip_prefix("Compiling entry function '") {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            entries.push(name.clone());
            all.entry(name.clone()).or_insert_with(|| Stats {
                name: name.clone(),
                ..Stats::default()
            });
            current = Some(name);
            continue;
        }
        if let Some(rest) = body.strip_prefix("Function properties for ") {
            current = Some(rest.trim().to_string());
            continue;
        }
        let Some(name) = &current else { continue };
        let stats = all.entry(name.clone()).or_insert_with(|| Stats {
            name: name.clone(),
            ..Stats::default()
        });
        for piece in body.split(',') {
            let words: Vec<&str> = piece.split_whitespace().collect();
            let Some(at) = words.iter().position(|w| w.parse::<u32>().is_ok()) else {
                continue;
            };
            let value: u32 = words[at].parse().unwrap_or(0);
            let what = words[at + 1..].join(" ");
            match what.as_str() {
                "registers" => stats.registers = value,
                "bytes stack frame" => stats.stack_bytes = value,
                "bytes spill stores" => stats.spill_stores = value,
                "bytes spill loads" => stats.spill_loads = value,
                "bytes smem" => stats.shared_bytes = value,
                w if w.starts_with("bytes cmem[0]") => stats.const_bytes = value,
                _ => {}
            }
        }
    }
    entries.iter().filter_map(|e| all.get(e).cloned()).collect()
}
