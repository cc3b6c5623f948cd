//! Which shard a process generates: `--shard i/n`; else a Slurm array task (`SLURM_ARRAY_TASK_ID` minus
//! `SLURM_ARRAY_TASK_MIN` (0 when unset; arrays may start at 1) of `SLURM_ARRAY_TASK_COUNT`); else a Kubernetes
//! indexed job (`JOB_COMPLETION_INDEX` of `--shards n`); else the whole run (0/1). Shard `i` of `n` owns the global
//! indices `k` with `k % n == i`. Inconsistent values are errors naming the flag or variable.

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// The global indices of this shard among `total`.
    pub fn indices(&self, total: u64) -> impl Iterator<Item = u64> + '_ {
        (self.index..total).step_by(self.count as usize)
    }

    /// How many of `total` indices this shard owns.
    pub fn len(&self, total: u64) -> u64 {
        if self.index >= total { 0 } else { (total - self.index).div_ceil(self.count) }
    }

    pub fn owns(&self, index: u64) -> bool {
        index % self.count == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

fn bad(what: &str, msg: String) -> Error {
    Error::Mismatch { what: what.into(), msg }
}

fn number(what: &str, v: &str) -> Result<u64> {
    v.trim().parse::<u64>().map_err(|_| bad(what, format!("{v:?} is not a non-negative integer")))
}

/// `i/n` with `i < n`.
pub fn parse_shard(s: &str) -> Result<Shard> {
    let (i, n) = s.split_once('/').ok_or_else(|| bad("--shard", format!("{s:?}: want i/n (e.g. 0/4)")))?;
    let (index, count) = (number("--shard", i)?, number("--shard", n)?);
    check(Shard { index, count }, "--shard")
}

fn check(s: Shard, what: &str) -> Result<Shard> {
    if s.count == 0 {
        return Err(bad(what, "the shard count must be at least 1".into()));
    }
    if s.index >= s.count {
        return Err(bad(what, format!("shard index {} is not below the shard count {} (indices start at 0)", s.index, s.count)));
    }
    Ok(s)
}

/// The shard from the flags and the environment (`env` looks a variable up).
pub fn resolve(shard: Option<&str>, shards: Option<u64>, env: impl Fn(&str) -> Option<String>) -> Result<Shard> {
    if let Some(s) = shard {
        let s = parse_shard(s)?;
        if let Some(n) = shards.filter(|&n| n != s.count) {
            return Err(bad("--shards", format!("{n} differs from the count of --shard {s}")));
        }
        return Ok(s);
    }
    if let Some(id) = env("SLURM_ARRAY_TASK_ID") {
        let id = number("SLURM_ARRAY_TASK_ID", &id)?;
        let count = env("SLURM_ARRAY_TASK_COUNT")
            .ok_or_else(|| bad("SLURM_ARRAY_TASK_COUNT", "is not set but SLURM_ARRAY_TASK_ID is (or pass --shard i/n)".into()))?;
        let count = number("SLURM_ARRAY_TASK_COUNT", &count)?;
        let min = env("SLURM_ARRAY_TASK_MIN").map(|m| number("SLURM_ARRAY_TASK_MIN", &m)).transpose()?.unwrap_or(0);
        if let Some(step) = env("SLURM_ARRAY_TASK_STEP") {
            let step = number("SLURM_ARRAY_TASK_STEP", &step)?;
            if step != 1 {
                return Err(bad("SLURM_ARRAY_TASK_STEP", format!("{step}: the array must be contiguous (--array=0-{}, step 1)", count.saturating_sub(1))));
            }
        }
        if let Some(max) = env("SLURM_ARRAY_TASK_MAX") {
            let max = number("SLURM_ARRAY_TASK_MAX", &max)?;
            if max.checked_sub(min).and_then(|d| d.checked_add(1)) != Some(count) {
                return Err(bad(
                    "SLURM_ARRAY_TASK_COUNT",
                    format!("{count} tasks, but SLURM_ARRAY_TASK_MIN {min} .. SLURM_ARRAY_TASK_MAX {max} spans {}: the array must be contiguous", max.saturating_sub(min) + 1),
                ));
            }
        }
        if id < min {
            return Err(bad("SLURM_ARRAY_TASK_ID", format!("{id} is below SLURM_ARRAY_TASK_MIN {min}")));
        }
        let s = check(Shard { index: id - min, count }, "SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT")?;
        if let Some(n) = shards.filter(|&n| n != count) {
            return Err(bad("--shards", format!("{n} differs from SLURM_ARRAY_TASK_COUNT {count}")));
        }
        return Ok(s);
    }
    if let Some(i) = env("JOB_COMPLETION_INDEX") {
        let index = number("JOB_COMPLETION_INDEX", &i)?;
        let count = shards.ok_or_else(|| bad("--shards", format!("JOB_COMPLETION_INDEX is {index}: give the job's completions as --shards n")))?;
        return check(Shard { index, count }, "JOB_COMPLETION_INDEX of --shards");
    }
    match shards {
        Some(n) => Err(bad("--shards", format!("{n} given, but no shard index: pass --shard i/n, or run as a Slurm array task or a Kubernetes indexed job (JOB_COMPLETION_INDEX)"))),
        None => Ok(Shard::WHOLE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn flags_slurm_and_kubernetes() {
        let sh = |i, n| Shard { index: i, count: n };
        assert_eq!(resolve(None, None, env(&[])).unwrap(), Shard::WHOLE);
        assert_eq!(resolve(Some("2/4"), None, env(&[("SLURM_ARRAY_TASK_ID", "0")])).unwrap(), sh(2, 4));
        assert_eq!(resolve(Some("2/4"), Some(4), env(&[])).unwrap(), sh(2, 4));
        let slurm = [("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_TASK_COUNT", "4")];
        assert_eq!(resolve(None, None, env(&slurm)).unwrap(), sh(3, 4));
        let slurm1 = [("SLURM_ARRAY_TASK_ID", "4"), ("SLURM_ARRAY_TASK_COUNT", "4"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_MAX", "4")];
        assert_eq!(resolve(None, Some(4), env(&slurm1)).unwrap(), sh(3, 4));
        assert_eq!(resolve(None, Some(3), env(&[("JOB_COMPLETION_INDEX", "2")])).unwrap(), sh(2, 3));
        let s = sh(1, 3);
        assert_eq!(s.indices(8).collect::<Vec<_>>(), vec![1, 4, 7]);
        assert_eq!(s.len(8), 3);
        assert_eq!(sh(5, 6).len(3), 0);
    }

    #[test]
    fn inconsistent_values_are_named() {
        for (shard, shards, vars, want) in [
            (Some("4/4"), None, vec![], "--shard"),
            (Some("1/0"), None, vec![], "at least 1"),
            (Some("a/2"), None, vec![], "not a non-negative integer"),
            (Some("1"), None, vec![], "want i/n"),
            (Some("1/4"), Some(3), vec![], "--shards"),
            (None, None, vec![("SLURM_ARRAY_TASK_ID", "1")], "SLURM_ARRAY_TASK_COUNT"),
            (None, None, vec![("SLURM_ARRAY_TASK_ID", "4"), ("SLURM_ARRAY_TASK_COUNT", "4")], "not below"),
            (None, None, vec![("SLURM_ARRAY_TASK_ID", "0"), ("SLURM_ARRAY_TASK_COUNT", "4"), ("SLURM_ARRAY_TASK_MIN", "1")], "below SLURM_ARRAY_TASK_MIN"),
            (None, None, vec![("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_TASK_COUNT", "2"), ("SLURM_ARRAY_TASK_STEP", "2")], "SLURM_ARRAY_TASK_STEP"),
            (None, None, vec![("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_TASK_COUNT", "2"), ("SLURM_ARRAY_TASK_MAX", "5")], "contiguous"),
            (None, Some(3), vec![("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_TASK_COUNT", "2")], "--shards"),
            (None, None, vec![("JOB_COMPLETION_INDEX", "1")], "--shards n"),
            (None, Some(2), vec![("JOB_COMPLETION_INDEX", "2")], "JOB_COMPLETION_INDEX"),
            (None, Some(2), vec![("JOB_COMPLETION_INDEX", "x")], "JOB_COMPLETION_INDEX"),
            (None, Some(2), vec![], "no shard index"),
        ] {
            let e = resolve(shard, shards, env(&vars)).unwrap_err().to_string();
            assert!(e.contains(want), "{shard:?} {shards:?} {vars:?}: {e}");
        }
    }
}
