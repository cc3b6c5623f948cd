//! Running an ordered list of stages, each in its own folder, skipping the ones whose inputs and config are
//! unchanged and resuming an interrupted one.
//!
//! A stage folder holds:
//! - `stage.json`, written (atomically) before the stage's work starts: the stage's command lines, its resolved
//!   config, the fingerprints of its inputs and the stage fingerprint (a hash of all of them and the crate
//!   version);
//! - `log.txt`: everything its commands printed, one header line per attempt;
//! - `done`, written (atomically) LAST, after every step succeeded: the fingerprint, the finish time and a nonce.
//!
//! Input fingerprints: an upstream stage is the hash of its `stage.json` and its `done` marker (the nonce makes
//! every rerun of a stage a change for its downstream stages); an external file is its content hash (FNV-1a 64)
//! when at most [`CONTENT_HASH_MAX`] bytes, else its size and modification time; a folder is the hash of the
//! relative name, size and modification time of every file below it (names sorted; an image folder of COCO's
//! size is 118k `stat`s, not 18 GB read).
//!
//! The decision per stage: `done` with the current fingerprint -> skip; `stage.json` with the current fingerprint
//! but no such `done` -> resume (the steps run again with `--resume` where the command has it); anything else
//! (new, changed, or an upstream stage ran) -> the folder is removed and the stage runs from scratch.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::util::files::write_atomic;

/// Files up to this size are fingerprinted by content; larger ones by size and modification time.
pub const CONTENT_HASH_MAX: u64 = 1 << 20;
pub const STAGE_JSON: &str = "stage.json";
pub const DONE: &str = "done";
pub const LOG: &str = "log.txt";

/// FNV-1a, 64 bits: a stable hash for change detection (not for security).
#[derive(Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

pub fn hash_bytes(bytes: &[u8]) -> String {
    let mut h = Fnv::default();
    h.update(bytes);
    h.hex()
}

/// Work done in this process as a step of a stage (writing a derived file); gets the stage's log.
pub type InternalFn = Box<dyn Fn(&mut dyn Write) -> Result<()>>;

pub enum StepKind {
    /// A command of the current executable (the arguments after the program name); `resumable`: append
    /// `--resume` when the stage resumes.
    Exec { args: Vec<String>, resumable: bool },
    /// Work in this process; `describe` is what `stage.json` records.
    Internal { describe: String, work: InternalFn },
}

pub struct Step(pub StepKind);

impl Step {
    pub fn exec(args: Vec<String>, resumable: bool) -> Step {
        Step(StepKind::Exec { args, resumable })
    }
    pub fn internal(describe: impl Into<String>, work: impl Fn(&mut dyn Write) -> Result<()> + 'static) -> Step {
        Step(StepKind::Internal { describe: describe.into(), work: Box::new(work) })
    }
    /// What `stage.json` records: `instagen ARGS...` or `(internal) WHAT`.
    pub fn describe(&self) -> String {
        match &self.0 {
            StepKind::Exec { args, resumable } => {
                let mut s = String::from("instagen");
                for a in args {
                    s.push(' ');
                    s.push_str(&shell_quote(a));
                }
                if *resumable {
                    s.push_str("  [+ --resume when resuming]");
                }
                s
            }
            StepKind::Internal { describe, .. } => format!("(in process) {describe}"),
        }
    }
}

/// `a` quoted for a POSIX shell when it needs it.
pub fn shell_quote(a: &str) -> String {
    if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=,:@+%".contains(c)) {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

/// What a stage reads.
#[derive(Clone, Debug)]
pub enum Input {
    /// The output of an earlier stage (by name).
    Stage(String),
    /// A file or folder from outside the run; `what` says which setting named it.
    Path { path: PathBuf, what: String },
}

pub struct Stage {
    /// `generate-base`, ...
    pub name: String,
    /// `OUT/NN-name`.
    pub dir: PathBuf,
    /// The stage's resolved config (recorded and fingerprinted).
    pub config: Value,
    pub inputs: Vec<Input>,
    pub steps: Vec<Step>,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steps: Vec<String> = self.steps.iter().map(Step::describe).collect();
        f.debug_struct("Stage").field("name", &self.name).field("dir", &self.dir).field("inputs", &self.inputs).field("steps", &steps).finish()
    }
}

/// Runs the commands of [`StepKind::Exec`]: a subprocess of the current executable in production, a fake in
/// the unit tests.
pub trait Executor {
    /// Runs `args` (program name excluded), appending what it prints to `log`.
    fn exec(&mut self, args: &[String], log: &Path) -> Result<()>;
}

/// Runs the steps as subprocesses of `exe`, their stdout and stderr streamed to ours and appended to the log.
pub struct Subprocess {
    pub exe: PathBuf,
    /// Also echo the output to this process's stdout / stderr.
    pub echo: bool,
}

fn pump(mut from: impl Read + Send + 'static, log: Arc<Mutex<std::fs::File>>, echo: Option<Box<dyn Write + Send>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut echo = echo;
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut f) = log.lock() {
                let _ = f.write_all(&buf[..n]);
            }
            if let Some(e) = echo.as_mut() {
                let _ = e.write_all(&buf[..n]);
                let _ = e.flush();
            }
        }
    })
}

impl Executor for Subprocess {
    fn exec(&mut self, args: &[String], log: &Path) -> Result<()> {
        use std::process::{Command, Stdio};
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| Error::io(log, e))?;
        let file = Arc::new(Mutex::new(file));
        let mut cmd = Command::new(&self.exe);
        // The stage dies with this process (a `kill -9` of `instagen run` must not leave a stage writing into its
        // folder while a rerun resumes it).
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(&self.exe, e))?;
        let (out, err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
        let echo_out: Option<Box<dyn Write + Send>> = self.echo.then(|| Box::new(std::io::stdout()) as Box<dyn Write + Send>);
        let echo_err: Option<Box<dyn Write + Send>> = self.echo.then(|| Box::new(std::io::stderr()) as Box<dyn Write + Send>);
        let threads = [pump(out, file.clone(), echo_out), pump(err, file.clone(), echo_err)];
        let status = child.wait().map_err(|e| Error::io(&self.exe, e))?;
        for t in threads {
            let _ = t.join();
        }
        if status.success() { Ok(()) } else { Err(Error::Other(format!("exited with {status}"))) }
    }
}

/// What happens to a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Finished with the same fingerprint.
    Skip,
    /// Started with the same fingerprint, not finished: run again, resuming.
    Resume,
    /// New or changed (the reason): run from scratch.
    Run(String),
    /// Left as it is (before `--from`, or not the `--only` stage): its outputs are used as they are.
    Kept,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Skip => write!(f, "skip (finished, unchanged)"),
            Action::Resume => write!(f, "resume (interrupted)"),
            Action::Run(why) => write!(f, "run ({why})"),
            Action::Kept => write!(f, "kept as it is"),
        }
    }
}

/// Which stages `run` forces.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Rerun this stage and every later one; earlier stages must have finished.
    pub from: Option<String>,
    /// Rerun this stage only; the others must have finished (or are not touched).
    pub only: Option<String>,
    /// Print the plan, run nothing.
    pub dry_run: bool,
}

fn read_fingerprint(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v.get("fingerprint")?.as_str().map(String::from)
}

/// The fingerprint entry of an external path (`what` names the setting in errors).
pub fn path_fingerprint(path: &Path, what: &str) -> Result<Value> {
    let meta = std::fs::metadata(path).map_err(|e| Error::Other(format!("{what}: {}: {e}", path.display())))?;
    fn file_entry(p: &Path, meta: &std::fs::Metadata, by_content: bool) -> Result<String> {
        if by_content && meta.len() <= CONTENT_HASH_MAX {
            let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
            Ok(format!("content {}", hash_bytes(&bytes)))
        } else {
            let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
            Ok(format!("size {} mtime {mtime}", meta.len()))
        }
    }
    if meta.is_dir() {
        let mut files = Vec::new();
        let mut stack = vec![path.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
                let p = e.map_err(|e| Error::io(&d, e))?.path();
                let m = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?;
                if m.is_dir() {
                    stack.push(p);
                } else {
                    files.push((p, m));
                }
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut h = Fnv::default();
        for (p, m) in &files {
            h.update(p.strip_prefix(path).unwrap_or(p).to_string_lossy().as_bytes());
            h.update(b"\0");
            h.update(file_entry(p, m, false)?.as_bytes());
            h.update(b"\n");
        }
        Ok(json!({"path": path, "what": what, "kind": "folder", "files": files.len(), "hash": h.hex(),
                  "method": "per file: name, size, mtime"}))
    } else {
        let e = file_entry(path, &meta, true)?;
        Ok(json!({"path": path, "what": what, "kind": "file", "hash": e}))
    }
}

/// The folder must be a stage folder (has stage.json) or empty before it is removed.
fn clear_stage_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let empty = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.next().is_none();
    if !empty && !dir.join(STAGE_JSON).is_file() {
        return Err(Error::Other(format!(
            "{} exists and is not a stage folder (no {STAGE_JSON}): not removing it; move it away",
            dir.display()
        )));
    }
    std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))
}

fn now_unix() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The record of `stage`: commands, config, input fingerprints, and the fingerprint of them all.
fn record(stage: &Stage, stages: &[Stage]) -> Result<Value> {
    let mut inputs = Vec::new();
    for i in &stage.inputs {
        inputs.push(match i {
            Input::Stage(name) => {
                let up = stages.iter().find(|s| &s.name == name).ok_or_else(|| Error::Other(format!("stage {}: no stage {name}", stage.name)))?;
                let read = |f: &str| std::fs::read(up.dir.join(f)).ok();
                let (Some(sj), Some(done)) = (read(STAGE_JSON), read(DONE)) else {
                    return Err(Error::Other(format!("stage {}: its input stage {name} has not finished ({} has no {DONE})", stage.name, up.dir.display())));
                };
                json!({"stage": name, "stage_json": hash_bytes(&sj), "done": hash_bytes(&done)})
            }
            Input::Path { path, what } => path_fingerprint(path, &format!("stage {}: {what}", stage.name))?,
        });
    }
    let commands: Vec<String> = stage.steps.iter().map(Step::describe).collect();
    let mut v = json!({"version": env!("CARGO_PKG_VERSION"), "stage": stage.name, "commands": commands,
                       "config": stage.config, "inputs": inputs});
    let fp = hash_bytes(serde_json::to_string(&v).expect("json").as_bytes());
    v["fingerprint"] = json!(fp);
    Ok(v)
}

/// The action for `stage` given its record (None when an upstream stage will run first).
fn decide(stage: &Stage, rec: Option<&Value>) -> Action {
    let Some(rec) = rec else { return Action::Run("an input stage runs first".into()) };
    let fp = rec["fingerprint"].as_str().unwrap_or_default();
    if read_fingerprint(&stage.dir.join(DONE)).as_deref() == Some(fp) {
        return Action::Skip;
    }
    match read_fingerprint(&stage.dir.join(STAGE_JSON)) {
        Some(old) if old == fp => Action::Resume,
        Some(_) => Action::Run("its config or inputs changed".into()),
        None => Action::Run("new".into()),
    }
}

fn io_err(p: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(p, e)
}

/// Runs `stage` (from scratch, or resuming).
fn execute(stage: &Stage, rec: &Value, resume: bool, exec: &mut dyn Executor) -> Result<()> {
    let dir = &stage.dir;
    if resume {
        let _ = std::fs::remove_file(dir.join(DONE));
    } else {
        clear_stage_dir(dir)?;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let text = serde_json::to_string_pretty(rec).expect("json") + "\n";
        write_atomic(&dir.join(STAGE_JSON), text.as_bytes()).map_err(io_err(&dir.join(STAGE_JSON)))?;
    }
    let log = dir.join(LOG);
    for step in &stage.steps {
        let header = format!("=== {:.0} {} {}\n", now_unix(), if resume { "resume:" } else { "run:" }, step.describe());
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&log).map_err(io_err(&log))?;
        f.write_all(header.as_bytes()).map_err(io_err(&log))?;
        let result = match &step.0 {
            StepKind::Exec { args, resumable } => {
                let mut a = args.clone();
                if resume && *resumable {
                    a.push("--resume".into());
                }
                drop(f);
                exec.exec(&a, &log)
            }
            StepKind::Internal { work, .. } => work(&mut f),
        };
        result.map_err(|e| {
            Error::Other(format!("stage {} failed: {e}\n  command: {}\n  log: {}", stage.name, step.describe(), log.display()))
        })?;
    }
    let nonce = format!("{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    let done = json!({"fingerprint": rec["fingerprint"], "finished_unix": now_unix(), "nonce": nonce});
    write_atomic(&dir.join(DONE), (done.to_string() + "\n").as_bytes()).map_err(io_err(&dir.join(DONE)))
}

/// One line per stage of what happened (or, with `dry_run`, would happen).
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub actions: Vec<(String, Action)>,
    pub dry_run: bool,
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", if self.dry_run { "plan (dry run, nothing was run):" } else { "stages:" })?;
        for (name, a) in &self.actions {
            writeln!(f, "  {name:<24} {a}")?;
        }
        Ok(())
    }
}

/// The positions of `--from` and `--only` in `stages` (an unknown name is an error listing the stages).
pub fn forced(stages: &[Stage], opts: &RunOptions) -> Result<(Option<usize>, Option<usize>)> {
    let index = |name: &Option<String>, flag: &str| -> Result<Option<usize>> {
        match name {
            None => Ok(None),
            Some(n) => {
                let n2 = n.replace('_', "-");
                stages.iter().position(|s| s.name == n2).map(Some).ok_or_else(|| {
                    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
                    Error::Other(format!("{flag} {n}: no such stage in this pipeline (its stages: {})", names.join(", ")))
                })
            }
        }
    };
    if opts.from.is_some() && opts.only.is_some() {
        return Err(Error::Other("--from and --only cannot be given together".into()));
    }
    Ok((index(&opts.from, "--from")?, index(&opts.only, "--only")?))
}

/// An exclusive lock on `OUT/run.lock` for this process's life: two `instagen run`s on one folder would race.
pub struct RunLock(#[allow(dead_code)] std::fs::File);

pub fn lock_run_dir(out: &Path) -> Result<RunLock> {
    use std::os::unix::io::AsRawFd;
    let p = out.join("run.lock");
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&p).map_err(io_err(&p))?;
    // SAFETY: flock on a file descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(Error::Other(format!("{}: another `instagen run` is working in {} (its lock is held)", p.display(), out.display())));
    }
    Ok(RunLock(f))
}

/// Runs `stages` in order (see the module doc); `say` gets a line as each stage starts.
pub fn run_stages(stages: &[Stage], exec: &mut dyn Executor, opts: &RunOptions, say: &mut dyn FnMut(&str)) -> Result<RunReport> {
    let (from, only) = forced(stages, opts)?;
    let mut report = RunReport { actions: Vec::new(), dry_run: opts.dry_run };
    // Stages that run (or would run) in this call: their downstream stages see a new `done`.
    let mut ran: Vec<&str> = Vec::new();
    for (i, stage) in stages.iter().enumerate() {
        let forced = from.is_some_and(|f| i >= f) || only == Some(i);
        let kept = from.is_some_and(|f| i < f) || only.is_some_and(|o| i != o);
        let action = if kept {
            if !stage.dir.join(DONE).is_file() {
                let flag = if from.is_some() { "--from" } else { "--only" };
                return Err(Error::Other(format!(
                    "{flag}: stage {} has not finished ({} has no {DONE}); run the pipeline without {flag} first",
                    stage.name, stage.dir.display()
                )));
            }
            Action::Kept
        } else {
            let upstream_runs = stage.inputs.iter().any(|inp| matches!(inp, Input::Stage(n) if ran.contains(&n.as_str())));
            let rec = if upstream_runs && opts.dry_run { None } else { Some(record(stage, stages)?) };
            let action = if forced { Action::Run(format!("forced by {}", if from.is_some() { "--from" } else { "--only" })) } else { decide(stage, rec.as_ref()) };
            if !opts.dry_run {
                if let Some(rec) = &rec {
                    match &action {
                        Action::Run(_) | Action::Resume => {
                            say(&format!("[{}] {action}", stage.dir.file_name().map_or(stage.name.clone(), |n| n.to_string_lossy().into_owned())));
                            execute(stage, rec, action == Action::Resume, exec)?;
                        }
                        _ => {}
                    }
                }
            }
            action
        };
        if matches!(action, Action::Run(_) | Action::Resume) {
            ran.push(&stage.name);
        }
        report.actions.push((stage.name.clone(), action));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A fake stage command: `touch FILE` writes FILE (its content: the call count), `fail` fails, `slow-fail
    /// FILE` writes FILE then fails (an interruption).
    #[derive(Default)]
    struct Fake {
        calls: Vec<Vec<String>>,
        fail_on: HashMap<String, usize>,
    }

    impl Executor for Fake {
        fn exec(&mut self, args: &[String], log: &Path) -> Result<()> {
            self.calls.push(args.to_vec());
            std::fs::OpenOptions::new().append(true).create(true).open(log).unwrap().write_all(b"fake output\n").unwrap();
            let file = PathBuf::from(&args[1]);
            std::fs::write(&file, self.calls.len().to_string()).unwrap();
            match self.fail_on.get_mut(&args[1]) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    Err(Error::Other("killed".into()))
                }
                _ => Ok(()),
            }
        }
    }

    /// a <- ext file; b <- a; c <- b; d <- a (a branch beside b, c).
    fn stages(root: &Path, ext: &Path, cfg: [i64; 4]) -> Vec<Stage> {
        let names = ["a", "b", "c", "d"];
        let ups = [None, Some("a"), Some("b"), Some("a")];
        (0..4)
            .map(|i| {
                let dir = root.join(format!("{i:02}-{}", names[i]));
                let mut inputs = vec![];
                if let Some(u) = ups[i] {
                    inputs.push(Input::Stage(u.into()));
                } else {
                    inputs.push(Input::Path { path: ext.into(), what: "[run] ext".into() });
                }
                let out = dir.join("out.txt").to_string_lossy().into_owned();
                Stage { name: names[i].into(), dir, config: json!({"k": cfg[i]}), inputs, steps: vec![Step::exec(vec!["touch".into(), out], i == 1)] }
            })
            .collect()
    }

    fn actions(r: &RunReport) -> Vec<String> {
        r.actions.iter().map(|(n, a)| format!("{n}:{}", match a { Action::Skip => "skip", Action::Resume => "resume", Action::Run(_) => "run", Action::Kept => "kept" })).collect()
    }

    fn go(st: &[Stage], fake: &mut Fake, opts: &RunOptions) -> Result<RunReport> {
        run_stages(st, fake, opts, &mut |_| {})
    }

    #[test]
    fn skips_reruns_downstream_and_resumes() {
        let root = std::env::temp_dir().join(format!("instagen_run_engine_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let ext = root.join("ext.txt");
        std::fs::write(&ext, "v1").unwrap();
        let o = RunOptions::default();
        let mut fake = Fake::default();
        let st = stages(&root, &ext, [1, 1, 1, 1]);
        let r = go(&st, &mut fake, &o).unwrap();
        assert_eq!(actions(&r), ["a:run", "b:run", "c:run", "d:run"]);
        for s in &st {
            assert!(s.dir.join(DONE).is_file() && s.dir.join(STAGE_JSON).is_file() && s.dir.join(LOG).is_file());
        }
        let sj: Value = serde_json::from_str(&std::fs::read_to_string(st[1].dir.join(STAGE_JSON)).unwrap()).unwrap();
        assert_eq!(sj["config"]["k"], 1);
        assert!(sj["commands"][0].as_str().unwrap().starts_with("instagen touch"));
        assert_eq!(sj["inputs"][0]["stage"], "a");
        // Unchanged: everything skipped, nothing executed.
        let r = go(&st, &mut fake, &o).unwrap();
        assert_eq!(actions(&r), ["a:skip", "b:skip", "c:skip", "d:skip"]);
        assert_eq!(fake.calls.len(), 4);
        // b's config changes: b and c rerun, a and d (not downstream of b) are skipped.
        let st = stages(&root, &ext, [1, 2, 1, 1]);
        let dry = go(&st, &mut fake, &RunOptions { dry_run: true, ..o.clone() }).unwrap();
        assert_eq!(actions(&dry), ["a:skip", "b:run", "c:run", "d:skip"]);
        assert_eq!(fake.calls.len(), 4, "a dry run runs nothing");
        let r = go(&st, &mut fake, &o).unwrap();
        assert_eq!(actions(&r), ["a:skip", "b:run", "c:run", "d:skip"]);
        assert_eq!(fake.calls.len(), 6);
        // The external input changes (same size, new content): everything reruns.
        std::fs::write(&ext, "v2").unwrap();
        assert_eq!(actions(&go(&st, &mut fake, &o).unwrap()), ["a:run", "b:run", "c:run", "d:run"]);
        // An interrupted stage resumes (with --resume where the command takes it), then its downstream runs.
        let st = stages(&root, &ext, [1, 3, 1, 1]);
        let b_out = st[1].dir.join("out.txt").to_string_lossy().into_owned();
        fake.fail_on.insert(b_out.clone(), 1);
        let e = go(&st, &mut fake, &o).unwrap_err().to_string();
        assert!(e.contains("stage b failed") && e.contains("killed") && e.contains("instagen touch") && e.contains("log.txt"), "{e}");
        assert!(!st[1].dir.join(DONE).exists());
        let n = fake.calls.len();
        let r = go(&st, &mut fake, &o).unwrap();
        assert_eq!(actions(&r), ["a:skip", "b:resume", "c:run", "d:skip"]);
        assert_eq!(fake.calls[n], vec!["touch".to_string(), b_out, "--resume".into()]);
        assert_eq!(fake.calls[n + 1].len(), 2, "c does not resume: it never started");
        let log = std::fs::read_to_string(st[1].dir.join(LOG)).unwrap();
        assert!(log.contains("run: instagen touch") && log.contains("resume: instagen touch") && log.matches("fake output").count() == 2, "{log}");
        // --from c reruns c and d; --only b reruns b alone; a dry run of --from says so.
        let r = go(&st, &mut fake, &RunOptions { from: Some("c".into()), ..o.clone() }).unwrap();
        assert_eq!(actions(&r), ["a:kept", "b:kept", "c:run", "d:run"]);
        let r = go(&st, &mut fake, &RunOptions { only: Some("b".into()), ..o.clone() }).unwrap();
        assert_eq!(actions(&r), ["a:kept", "b:run", "c:kept", "d:kept"]);
        // ... after which c (downstream of the rerun b) reruns in a plain run.
        assert_eq!(actions(&go(&st, &mut fake, &o).unwrap()), ["a:skip", "b:skip", "c:run", "d:skip"]);
        let e = go(&st, &mut fake, &RunOptions { from: Some("zz".into()), ..o.clone() }).unwrap_err().to_string();
        assert!(e.contains("--from zz") && e.contains("a, b, c, d"), "{e}");
        // A missing external input names the stage and the setting.
        std::fs::remove_file(&ext).unwrap();
        let e = go(&st, &mut fake, &o).unwrap_err().to_string();
        assert!(e.contains("stage a") && e.contains("[run] ext") && e.contains("ext.txt"), "{e}");
        // A folder in the way that is not a stage folder is not removed.
        std::fs::write(&ext, "v3").unwrap();
        std::fs::remove_dir_all(&st[0].dir).unwrap();
        std::fs::create_dir_all(&st[0].dir).unwrap();
        std::fs::write(st[0].dir.join("precious"), "x").unwrap();
        let e = go(&st, &mut fake, &o).unwrap_err().to_string();
        assert!(e.contains("not a stage folder") && st[0].dir.join("precious").is_file(), "{e}");
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn one_run_per_folder() {
        let root = std::env::temp_dir().join(format!("instagen_run_lock_{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let held = lock_run_dir(&root).unwrap();
        let e = lock_run_dir(&root).err().unwrap().to_string();
        assert!(e.contains("another `instagen run`") && e.contains("run.lock"), "{e}");
        drop(held);
        lock_run_dir(&root).unwrap();
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn folder_fingerprints_see_content_and_names() {
        let root = std::env::temp_dir().join(format!("instagen_run_fp_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.json"), "{}").unwrap();
        let h = |p: &Path| path_fingerprint(p, "x").unwrap()["hash"].clone();
        let h0 = h(&root);
        std::fs::write(root.join("sub/a.json"), "[1]").unwrap();
        let h1 = h(&root);
        std::fs::rename(root.join("sub/a.json"), root.join("sub/b.json")).unwrap();
        let h2 = h(&root);
        assert!(h0 != h1 && h1 != h2 && h0 != h2);
        assert_eq!(h(&root), h2);
        assert!(h(&root.join("sub/b.json")).as_str().unwrap().starts_with("content "));
        assert_eq!(hash_bytes(b""), "cbf29ce484222325");
        assert_eq!(hash_bytes(b"a"), "af63dc4c8601ec8c");
        let _ = std::fs::remove_dir_all(root);
    }
}
