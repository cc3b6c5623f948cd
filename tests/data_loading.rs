//! The data loader: deterministic order, the same batches for any number of workers, resuming at a position,
//! errors that name the sample, backpressure, and padding of variable counts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use instagen::data::{pad_rows, permutation, stack, Dataset, Loader, LoaderConfig, Position};
use instagen::error::{Error, Result};
use instagen::tensor::{DType, HostTensor};
use instagen::util::Rng;

/// Sample i is (i, a draw from its generator); `fail` makes one index an error, `panic` one a panic.
struct Toy {
    n: usize,
    fail: Option<usize>,
    panic: Option<usize>,
    made: AtomicUsize,
}

impl Toy {
    fn new(n: usize) -> Self {
        Toy { n, fail: None, panic: None, made: AtomicUsize::new(0) }
    }
}

impl Dataset for Toy {
    type Item = (usize, u64);
    fn len(&self) -> usize {
        self.n
    }
    fn get(&self, index: usize, rng: &mut Rng) -> Result<(usize, u64)> {
        self.made.fetch_add(1, Ordering::SeqCst);
        // Uneven work, so that workers finish out of order.
        std::thread::sleep(std::time::Duration::from_micros((index as u64 * 37) % 300));
        if self.fail == Some(index) {
            return Err(Error::Other(format!("cannot read image_{index}.jpg")));
        }
        if self.panic == Some(index) {
            panic!("bad box in record {index}");
        }
        Ok((index, rng.next_u64()))
    }
}

fn batches(ds: Arc<Toy>, workers: usize, start: Position, count: usize) -> Vec<(Position, Vec<(usize, u64)>)> {
    let mut l = Loader::new(ds, LoaderConfig::new(4, workers, 7), start).unwrap();
    (0..count).map(|_| { let b = l.next_batch().unwrap(); (b.start, b.items) }).collect()
}

#[test]
fn order_is_a_permutation_fixed_by_seed_and_epoch() {
    let p = permutation(3, 0, 50);
    let mut s = p.clone();
    s.sort();
    assert_eq!(s, (0..50).collect::<Vec<_>>());
    assert_eq!(p, permutation(3, 0, 50));
    assert_ne!(p, permutation(3, 1, 50), "epochs must be shuffled differently");
    assert_ne!(p, permutation(4, 0, 50), "seeds must shuffle differently");
    assert_ne!(p, s, "not shuffled");
}

#[test]
fn same_batches_for_any_number_of_workers() {
    // 23 samples, batches of 4: 5 batches per epoch (3 samples left out each epoch); 12 batches cross 2 epochs.
    let ds = Arc::new(Toy::new(23));
    let one = batches(ds.clone(), 0, Position::default(), 12);
    for workers in [1, 4] {
        assert_eq!(batches(ds.clone(), workers, Position::default(), 12), one, "{workers} workers");
    }
    assert_eq!(one[5].0, Position { epoch: 1, index: 0 });
    assert_eq!(one[11].0, Position { epoch: 2, index: 4 });
    // Within an epoch no sample repeats; the two epochs' orders differ.
    let e0: Vec<usize> = one[..5].iter().flat_map(|b| b.1.iter().map(|s| s.0)).collect();
    let e1: Vec<usize> = one[5..10].iter().flat_map(|b| b.1.iter().map(|s| s.0)).collect();
    let mut u = e0.clone();
    u.sort();
    u.dedup();
    assert_eq!(u.len(), 20);
    assert_ne!(e0, e1);
    // A sample's draws depend on (seed, epoch, index): the same index in two epochs draws differently.
    let find = |bs: &[(Position, Vec<(usize, u64)>)], i: usize| bs.iter().flat_map(|b| b.1.iter()).find(|s| s.0 == i).map(|s| s.1);
    assert_ne!(find(&one[..5], e0[0]), find(&one[5..10], e0[0]));
}

#[test]
fn resuming_at_a_position_continues_the_run() {
    let ds = Arc::new(Toy::new(23));
    let full = batches(ds.clone(), 2, Position::default(), 13);
    let mut l = Loader::new(ds.clone(), LoaderConfig::new(4, 3, 7), Position::default()).unwrap();
    for _ in 0..7 {
        l.next_batch().unwrap();
    }
    let at = l.position();
    assert_eq!(at, Position { epoch: 1, index: 8 });
    drop(l);
    let rest = batches(ds.clone(), 3, at, 6);
    assert_eq!(rest, full[7..]);
    // A position that is not a batch start is refused with a message.
    let e = Loader::new(ds, LoaderConfig::new(4, 0, 7), Position { epoch: 0, index: 6 }).err().unwrap().to_string();
    assert!(e.contains("position 6"), "{e}");
}

#[test]
fn a_failing_sample_fails_its_batch_and_names_it() {
    for workers in [0, 1, 4] {
        for (fail, panic) in [(Some(13), None), (None, Some(13))] {
            let ds = Arc::new(Toy { fail, panic, ..Toy::new(23) });
            let mut l = Loader::new(ds, LoaderConfig::new(4, workers, 7), Position::default()).unwrap();
            let e = (0..5).find_map(|_| l.next_batch().err()).expect("sample 13 is in epoch 0").to_string();
            assert!(e.contains("data sample 13 (epoch 0"), "{workers} workers: {e}");
            assert!(e.contains(if fail.is_some() { "image_13.jpg" } else { "bad box in record 13" }), "{e}");
            let again = l.next_batch().err().unwrap().to_string();
            assert!(again.contains("earlier error") && again.contains("sample 13"), "{again}");
        }
    }
}

#[test]
fn workers_stay_within_the_queue() {
    let ds = Arc::new(Toy::new(400));
    let cfg = LoaderConfig { queue: 8, ..LoaderConfig::new(4, 4, 1) };
    let mut l = Loader::new(ds.clone(), cfg, Position::default()).unwrap();
    l.next_batch().unwrap();
    // 4 taken: the workers run ahead to 4 + 8 samples (waiting for that up to 10 s on a busy machine) and stop.
    let t0 = std::time::Instant::now();
    while ds.made.load(Ordering::SeqCst) < 12 && t0.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let made = ds.made.load(Ordering::SeqCst);
    assert_eq!(made, 12, "samples made after one batch of 4 with a queue of 8");
    l.next_batch().unwrap();
    let t0 = std::time::Instant::now();
    while ds.made.load(Ordering::SeqCst) < 16 && t0.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(ds.made.load(Ordering::SeqCst), 16, "after the second batch");
}

#[test]
fn padding_variable_counts() {
    let rows = vec![vec![[1.0, 2.0, 3.0, 4.0]], vec![], vec![[5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0]]];
    let p = pad_rows(&rows, None).unwrap();
    assert_eq!(p.values.shape, vec![3, 2, 4]);
    assert_eq!(p.mask.shape, vec![3, 2]);
    assert_eq!(p.counts, vec![1, 0, 2]);
    assert_eq!(p.mask.to_f32(), vec![1.0, 0.0, 0.0, 0.0, 1.0, 1.0]);
    let v = p.values.to_f32();
    assert_eq!(&v[0..4], &[1.0, 2.0, 3.0, 4.0]);
    assert!(v[4..16].iter().all(|&x| x == 0.0));
    assert_eq!(&v[16..24], &[5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]);
    let fixed = pad_rows(&rows, Some(5)).unwrap();
    assert_eq!(fixed.values.shape, vec![3, 5, 4]);
    assert_eq!(fixed.mask.to_f32().iter().sum::<f32>(), 3.0);
    let e = pad_rows(&rows, Some(1)).unwrap_err().to_string();
    assert!(e.contains("sample 2") && e.contains("2 rows"), "{e}");
    // All-empty batches still get a width of one (no zero-sized dimension).
    assert_eq!(pad_rows::<4>(&[vec![], vec![]], None).unwrap().values.shape, vec![2, 1, 4]);

    let a = HostTensor::from_f32(&[2, 2], DType::F32, &[1.0, 2.0, 3.0, 4.0]).unwrap();
    let b = HostTensor::from_f32(&[2, 2], DType::F32, &[5.0, 6.0, 7.0, 8.0]).unwrap();
    let s = stack(&[a.clone(), b]).unwrap();
    assert_eq!(s.shape, vec![2, 2, 2]);
    assert_eq!(s.to_f32(), (1..=8).map(|x| x as f32).collect::<Vec<_>>());
    let c = HostTensor::zeros(&[3], DType::F32);
    assert!(stack(&[a, c]).unwrap_err().to_string().contains("sample 1"));
}

#[test]
fn lenient_loading_skips_failing_samples_the_same_way_every_time() {
    let bad = |i: usize| i % 5 == 2;
    struct Some5(Toy);
    impl Dataset for Some5 {
        type Item = (usize, u64);
        fn len(&self) -> usize {
            self.0.n
        }
        fn get(&self, index: usize, rng: &mut Rng) -> Result<(usize, u64)> {
            if index % 5 == 2 {
                return Err(Error::Other(format!("cannot read image_{index}.jpg")));
            }
            self.0.get(index, rng)
        }
    }
    let ds = Arc::new(Some5(Toy::new(23)));
    let cfg = LoaderConfig { lenient: true, ..LoaderConfig::new(4, 3, 7) };
    let mut l = Loader::new(ds.clone(), cfg, Position::default()).unwrap();
    let all: Vec<Vec<(usize, u64)>> = (0..9).map(|_| l.next_batch().unwrap().items).collect();
    assert!(all.iter().flatten().all(|s| !bad(s.0)) && all.iter().all(|b| b.len() == 4));
    // Every failure was counted, with its message: 5 of the 23 indices are bad, and 36 good samples reach into
    // epoch 1, so epoch 0's 20 used positions alone hold at least 4 of them.
    assert!(l.skipped().len() >= 4 && l.skipped().iter().all(|m| m.contains("cannot read image_")), "{:?}", l.skipped());
    // Resuming mid-run, at a position that is no longer a multiple of the batch, continues identically.
    let mut l = Loader::new(ds.clone(), cfg, Position::default()).unwrap();
    for _ in 0..4 {
        l.next_batch().unwrap();
    }
    let at = l.position();
    let mut r = Loader::new(ds.clone(), LoaderConfig { workers: 0, ..cfg }, at).unwrap();
    let rest: Vec<Vec<(usize, u64)>> = (0..5).map(|_| r.next_batch().unwrap().items).collect();
    assert_eq!(rest, all[4..]);
    // Without lenient loading the same dataset fails on its first bad sample.
    let mut strict = Loader::new(ds, LoaderConfig::new(4, 3, 7), Position::default()).unwrap();
    assert!((0..9).any(|_| strict.next_batch().is_err()));
    // A dataset with no usable sample is an error, not an endless loop.
    struct AllBad(Toy);
    impl Dataset for AllBad {
        type Item = ();
        fn len(&self) -> usize {
            self.0.n
        }
        fn get(&self, index: usize, _: &mut Rng) -> Result<()> {
            Err(Error::Other(format!("record {index} has no usable crop")))
        }
    }
    let mut l = Loader::new(Arc::new(AllBad(Toy::new(6))), LoaderConfig { lenient: true, ..LoaderConfig::new(2, 2, 1) }, Position::default()).unwrap();
    let e = l.next_batch().unwrap_err().to_string();
    assert!(e.contains("no usable sample") && e.contains("no usable crop"), "{e}");
}
