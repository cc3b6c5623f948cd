//! Bad graphs and bad inputs give errors that name the op, input or key and the shapes, never panics.

use instagen::backend::cpu::CpuBackend;
use instagen::graph::{Graph, UnaryOp};
use instagen::runtime::Executor;
use instagen::params::ParamStore;
use instagen::tensor::{DType, HostTensor};

fn msg<T: std::fmt::Debug>(r: instagen::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn shape_mismatch_names_op_and_shapes() {
    let mut g = Graph::new();
    let a = g.input("a", &[2, 3], DType::F32).unwrap();
    let b = g.input("b", &[4, 5], DType::F32).unwrap();
    let m = msg(g.matmul(a, b));
    assert!(m.contains("MatMul") && m.contains("[2, 3]") && m.contains("[4, 5]"), "{m}");
    let m = msg(g.add(a, b));
    assert!(m.contains("Add") && m.contains("[2, 3]") && m.contains("[4, 5]"), "{m}");
    let m = msg(g.reshape(a, &[7]));
    assert!(m.contains("reshape") && m.contains("[2, 3]") && m.contains("[7]"), "{m}");
    let m = msg(g.permute(a, &[0, 0]));
    assert!(m.contains("Permute") && m.contains("[0, 0]"), "{m}");
    let m = msg(g.slice(a, 1, 2, 9));
    assert!(m.contains("Slice") && m.contains("2..9"), "{m}");
    let m = msg(g.softmax(a, 2));
    assert!(m.contains("axis 2"), "{m}");
    let m = msg(g.concat(&[a, b], 0));
    assert!(m.contains("Concat"), "{m}");
}

#[test]
fn dtype_mismatch_names_op_and_dtypes() {
    let mut g = Graph::new();
    let a = g.input("a", &[2, 3], DType::F32).unwrap();
    let b = g.input("b", &[2, 3], DType::F16).unwrap();
    let i = g.input("i", &[2, 3], DType::I32).unwrap();
    let m = msg(g.mul(a, b));
    assert!(m.contains("Mul") && m.contains("f32") && m.contains("f16"), "{m}");
    let m = msg(g.unary(UnaryOp::Exp, i));
    assert!(m.contains("Exp") && m.contains("i32"), "{m}");
    let m = msg(g.matmul_t(a, b, false, true));
    assert!(m.contains("MatMul") && m.contains("f16"), "{m}");
}

#[test]
fn bad_feed_and_missing_params_are_errors() {
    let mut g = Graph::new();
    let x = g.input("x", &[2, 3], DType::F32).unwrap();
    let w = g.param("fc.weight", &[4, 3], DType::F32).unwrap();
    let y = g.matmul_t(x, w, false, true).unwrap();
    g.mark_output(y);
    let m = msg(Executor::new(CpuBackend, g.clone(), &ParamStore::new()).map(|_| ()));
    assert!(m.contains("fc.weight") && m.contains("missing"), "{m}");
    let mut store = ParamStore::new();
    store.insert("fc.weight", HostTensor::zeros(&[3, 4], DType::F32));
    let m = msg(Executor::new(CpuBackend, g.clone(), &store).map(|_| ()));
    assert!(m.contains("fc.weight") && m.contains("[4, 3]") && m.contains("[3, 4]"), "{m}");
    store.insert("fc.weight", HostTensor::zeros(&[4, 3], DType::F32));
    let mut ex = Executor::new(CpuBackend, g, &store).unwrap();
    let bad = HostTensor::zeros(&[3, 2], DType::F32);
    let m = msg(ex.run(&[("x", &bad)]));
    assert!(m.contains("input 'x'") && m.contains("[2, 3]") && m.contains("[3, 2]"), "{m}");
    let m = msg(ex.run(&[("nope", &bad)]));
    assert!(m.contains("nope"), "{m}");
    let m = msg(ex.run(&[]));
    assert!(m.contains("input 'x'") && m.contains("not given"), "{m}");
}

#[test]
fn safetensors_round_trip_and_truncation() {
    let dir = std::env::temp_dir().join(format!("instagen-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.safetensors");
    let mut s = ParamStore::new();
    s.insert("a.weight", HostTensor::from_f32(&[2, 3], DType::F32, &[1., 2., 3., 4., 5., 6.]).unwrap());
    s.insert("a.bias", HostTensor::from_f32(&[3], DType::F16, &[0.5, -1., 2.]).unwrap());
    s.insert("ids", HostTensor::from_bytes(&[2], DType::I64, [7i64, -9].iter().flat_map(|v| v.to_le_bytes()).collect()).unwrap());
    s.save_safetensors(&path).unwrap();
    assert_eq!(ParamStore::load_safetensors(&path).unwrap(), s);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
    let m = msg(ParamStore::load_safetensors(&path));
    assert!(m.contains("w.safetensors"), "{m}");
    let m = msg(ParamStore::load_safetensors(&dir.join("absent.safetensors")));
    assert!(m.contains("absent.safetensors"), "{m}");
    std::fs::remove_dir_all(&dir).ok();
}
