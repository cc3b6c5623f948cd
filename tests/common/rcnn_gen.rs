//! The key-function weight generator of tools/make_rcnn_e2e_fixtures.py (and of the backbone fixture script).

use instagen::params::ParamStore;
use instagen::tensor::{DType, HostTensor};
use serde_json::Value;

fn fnv1a64(s: &str) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01B3);
    }
    h
}

/// The script's generator: u in [-1, 1) for element i of `key`.
pub fn uniform(key: &str, i: u64) -> f64 {
    let mut z = fnv1a64(key).wrapping_add(i).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f64 / (1u64 << 23) as f64 - 1.0
}

pub fn value(key: &str, shape: &[usize], gain: f64) -> HostTensor {
    let n: usize = shape.iter().product();
    let last = key.rsplit('.').next().unwrap();
    let v: Vec<f32> = (0..n as u64)
        .map(|i| {
            let u = uniform(key, i);
            let x = if shape.len() == 4 {
                gain * (6.0 / (shape[1] * shape[2] * shape[3]) as f64).sqrt() * u
            } else if shape.len() == 2 {
                gain * (6.0 / shape[1] as f64).sqrt() * u
            } else if last == "running_var" {
                1.0 + 0.5 * u
            } else if last == "weight" {
                1.0 + 0.25 * u
            } else {
                0.1 * u
            };
            x as f32
        })
        .collect();
    HostTensor::from_f32(shape, DType::F32, &v).unwrap()
}

/// The parameters of the fixture `fx` (its key list and gains).
pub fn store(fx: &Value) -> ParamStore {
    let mut store = ParamStore::new();
    for kv in fx["keys"].as_array().unwrap() {
        let key = kv[0].as_str().unwrap();
        let shape: Vec<usize> = kv[1].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let gain = fx["gain"].get(key).and_then(|g| g.as_f64()).unwrap_or(1.0);
        store.insert(key, value(key, &shape, gain));
    }
    store
}

pub fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rcnn_e2e/e2e.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}
