//! The loader: batches of a [`Dataset`] in a shuffled order that depends only on (seed, epoch), made ahead of
//! the step by worker threads through a bounded queue, and a position `(epoch, index)` to resume from.
//!
//! Samples are numbered in one global sequence (epoch by epoch, `per_epoch` samples each); a worker takes the
//! next number, makes that sample and files it under its number, and the consumer takes the numbers in order.
//! Workers stop taking numbers `queue` samples ahead of the consumer (backpressure). Since a sample depends only
//! on (seed, epoch, dataset index), the batches are the same for any number of workers and for a loader started
//! at a position as for one that got there by running.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use super::{sample_rng, Dataset};
use crate::error::{Error, Result};
use crate::util::Rng;

/// Where a loader stands: the next batch starts at sample `index` (in shuffled order) of `epoch`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub index: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch: usize,
    /// Worker threads; 0 makes every sample on the calling thread when its batch is asked for.
    pub workers: usize,
    /// The run's seed: the order of every epoch and every sample's random draws derive from it.
    pub seed: u64,
    /// How many samples the workers may have made (or be making) ahead of the consumer; at least one batch.
    pub queue: usize,
    /// A sample that fails is skipped (counted, its message kept) and the next one in order takes its place,
    /// instead of failing the batch. The same samples fail in every run, so resuming stays exact; a batch can
    /// then straddle two epochs.
    pub lenient: bool,
}

impl LoaderConfig {
    pub fn new(batch: usize, workers: usize, seed: u64) -> Self {
        LoaderConfig { batch, workers, seed, queue: 2 * batch.max(1), lenient: false }
    }
}

/// One batch: the samples in order, their dataset indices, and the position it started at.
#[derive(Debug)]
pub struct Batch<T> {
    pub items: Vec<T>,
    pub indices: Vec<usize>,
    pub start: Position,
}

/// The order of epoch `epoch`: a permutation of `0..n` that depends on `(seed, epoch, n)` only (Fisher-Yates).
pub fn permutation(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut rng = Rng::new(seed ^ 0x5EED_0F_0D3E_u64);
    let mut rng = Rng::new(rng.next_u64() ^ epoch.wrapping_mul(0xA24B_AED4_963E_E407));
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// What the workers and the consumer share.
struct Shared<T> {
    state: Mutex<State<T>>,
    changed: Condvar,
}

struct State<T> {
    /// The next sequence number a worker will take.
    next: u64,
    /// The sequence number the consumer waits for next; workers stay below `consumed + queue`.
    consumed: u64,
    done: BTreeMap<u64, Result<T>>,
    stop: bool,
}

/// The sample of global sequence number `seq` (relative to epoch 0, index 0): (epoch, index in epoch, dataset
/// index), with the epoch's permutation cached in `perm`.
struct Order {
    seed: u64,
    n: usize,
    per_epoch: usize,
    perm: Option<(u64, Vec<usize>)>,
}

impl Order {
    fn locate(&mut self, seq: u64) -> (u64, usize, usize) {
        let epoch = seq / self.per_epoch as u64;
        let index = (seq % self.per_epoch as u64) as usize;
        if self.perm.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.perm = Some((epoch, permutation(self.seed, epoch, self.n)));
        }
        let sample = self.perm.as_ref().map_or(0, |(_, p)| p[index]);
        (epoch, index, sample)
    }
}

fn make<D: Dataset>(ds: &D, seed: u64, epoch: u64, index: usize, sample: usize) -> Result<D::Item> {
    let mut rng = sample_rng(seed, epoch, sample as u64);
    let got = catch_unwind(AssertUnwindSafe(|| ds.get(sample, &mut rng)));
    let got = got.unwrap_or_else(|p| {
        let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        Err(Error::Other(format!("panicked: {}", msg.unwrap_or_else(|| "(no message)".into()))))
    });
    got.map_err(|e| Error::Other(format!("data sample {sample} (epoch {epoch}, position {index}): {e}")))
}

/// Batches of a dataset; see the module documentation. Batches never straddle two epochs (unless lenient
/// skips shift them): each epoch yields `len / batch` batches and the last `len % batch` samples of its order are
/// left out.
pub struct Loader<D: Dataset + 'static> {
    dataset: Arc<D>,
    cfg: LoaderConfig,
    order: Order,
    /// Global sequence number of the next sample to hand out.
    seq: u64,
    shared: Option<Arc<Shared<D::Item>>>,
    threads: Vec<JoinHandle<()>>,
    failed: Option<String>,
    skipped: Vec<String>,
}

impl<D: Dataset + 'static> Loader<D> {
    /// A loader whose first batch starts at `start` (use `Position::default()` for a fresh run).
    pub fn new(dataset: Arc<D>, cfg: LoaderConfig, start: Position) -> Result<Self> {
        let n = dataset.len();
        let bad = |msg: String| Error::Mismatch { what: "data loader".into(), msg };
        if cfg.batch == 0 {
            return Err(bad("batch size 0".into()));
        }
        if n < cfg.batch {
            return Err(bad(format!("the dataset has {n} samples, fewer than one batch of {}", cfg.batch)));
        }
        let per_epoch = n / cfg.batch * cfg.batch;
        if start.index >= per_epoch || (!cfg.lenient && start.index % cfg.batch != 0) {
            return Err(bad(format!(
                "cannot start at position {} of epoch {}: an epoch has {} batches of {} ({per_epoch} samples)",
                start.index, start.epoch, per_epoch / cfg.batch, cfg.batch
            )));
        }
        let seq = start.epoch * per_epoch as u64 + start.index as u64;
        let order = Order { seed: cfg.seed, n, per_epoch, perm: None };
        let mut loader = Loader { dataset, cfg, order, seq, shared: None, threads: Vec::new(), failed: None, skipped: Vec::new() };
        if cfg.workers > 0 {
            let queue = cfg.queue.max(cfg.batch) as u64;
            let shared = Arc::new(Shared {
                state: Mutex::new(State { next: seq, consumed: seq, done: BTreeMap::new(), stop: false }),
                changed: Condvar::new(),
            });
            for w in 0..cfg.workers {
                let (shared, ds) = (shared.clone(), loader.dataset.clone());
                let mut order = Order { seed: cfg.seed, n, per_epoch, perm: None };
                let seed = cfg.seed;
                let h = std::thread::Builder::new()
                    .name(format!("data-worker-{w}"))
                    .spawn(move || worker(&*shared, &*ds, &mut order, seed, queue))
                    .map_err(|e| Error::Other(format!("data loader: cannot start worker thread {w}: {e}")))?;
                loader.threads.push(h);
            }
            loader.shared = Some(shared);
        }
        Ok(loader)
    }

    /// Where the next batch starts.
    pub fn position(&self) -> Position {
        let per = self.order.per_epoch as u64;
        Position { epoch: self.seq / per, index: (self.seq % per) as usize }
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.order.per_epoch / self.cfg.batch
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// The errors of the samples skipped so far (lenient loading), oldest first.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// The next batch. A sample that fails (an error or a panic in `get`) fails this batch with an error naming
    /// the sample; the loader then stays failed.
    pub fn next_batch(&mut self) -> Result<Batch<D::Item>> {
        if let Some(msg) = &self.failed {
            return Err(Error::Other(format!("data loader stopped after an earlier error: {msg}")));
        }
        let start = self.position();
        let mut items = Vec::with_capacity(self.cfg.batch);
        let mut indices = Vec::with_capacity(self.cfg.batch);
        let mut skips_in_a_row = 0;
        while items.len() < self.cfg.batch {
            let seq = self.seq;
            let (epoch, index, sample) = self.order.locate(seq);
            let got = match &self.shared {
                None => make(&*self.dataset, self.cfg.seed, epoch, index, sample),
                Some(sh) => take(&**sh, seq),
            };
            self.seq += 1;
            match got {
                Ok(item) => {
                    items.push(item);
                    skips_in_a_row = 0;
                }
                Err(e) if self.cfg.lenient && skips_in_a_row < self.order.n => {
                    skips_in_a_row += 1;
                    self.skipped.push(e.to_string());
                    continue;
                }
                Err(e) => {
                    let e = match skips_in_a_row {
                        0 => e,
                        n => Error::Other(format!("no usable sample: the last {n} in a row failed; the last: {e}")),
                    };
                    self.failed = Some(e.to_string());
                    self.shutdown();
                    return Err(e);
                }
            }
            indices.push(sample);
        }
        Ok(Batch { items, indices, start })
    }

    fn shutdown(&mut self) {
        if let Some(sh) = &self.shared {
            let mut st = sh.state.lock().unwrap_or_else(|p| p.into_inner());
            st.stop = true;
            st.done.clear();
            drop(st);
            sh.changed.notify_all();
        }
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

impl<D: Dataset + 'static> Drop for Loader<D> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The consumer's side: wait for sample `seq`, take it, and let the workers move on.
fn take<T>(sh: &Shared<T>, seq: u64) -> Result<T> {
    let mut st = sh.state.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if let Some(r) = st.done.remove(&seq) {
            st.consumed = seq + 1;
            drop(st);
            sh.changed.notify_all();
            return r;
        }
        if st.stop {
            return Err(Error::Other("data loader: the workers stopped".into()));
        }
        st = sh.changed.wait(st).unwrap_or_else(|p| p.into_inner());
    }
}

fn worker<D: Dataset>(sh: &Shared<D::Item>, ds: &D, order: &mut Order, seed: u64, queue: u64) {
    loop {
        let seq = {
            let mut st = sh.state.lock().unwrap_or_else(|p| p.into_inner());
            while !st.stop && st.next >= st.consumed + queue {
                st = sh.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.stop {
                return;
            }
            st.next += 1;
            st.next - 1
        };
        let (epoch, index, sample) = order.locate(seq);
        let r = make(ds, seed, epoch, index, sample);
        let mut st = sh.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.stop {
            return;
        }
        st.done.insert(seq, r);
        drop(st);
        sh.changed.notify_all();
    }
}
