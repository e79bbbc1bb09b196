//! LaMDA++ rank allocation end to end against the PyTorch golden case `alloc_basic`.
//!
//! Energies come from the runtime's spectrum code (Gram eigenvalues) on
//! `weights.safetensors` and are compared with `scenario<i>.energy` (atol
//! 1e-6, the golden tolerance); the compiler's `rank_alloc` pass then runs on
//! them and every integer it reports (r0, r_min, r_max, r_round, r_dec,
//! ranks, sum_r, decrements, increments) must equal `case.json` exactly. The
//! float intermediates (w, mean_w, r_star) are compared within 1e-9: the
//! reference computed them from its own energies, which agree with ours to
//! about 1e-15, and every r* sits at least 1e-3 from a rounding edge. The
//! same pass also runs on the reference's energies, which isolates the pass
//! from the spectrum code. The infeasible scenario must give the typed error.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::PathBuf;

use lamda_compiler::passes::rank_alloc::{AllocBudget, AllocError, AllocModule, Allocation, allocate, uniform_rank};
use lamda_runtime::linalg::{MatF32Ref, energy, squared_singular_values, thin_svd};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

const ENERGY_ATOL: f64 = 1e-6;
const FLOAT_INTERMEDIATE_ATOL: f64 = 1e-9;

fn golden_file(file: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden/alloc_basic")
        .join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f32_data(st: &SafeTensors<'_>, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    let data = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (data, t.shape().to_vec())
}

fn f64_data(st: &SafeTensors<'_>, name: &str) -> Vec<f64> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F64, "{name}");
    t.data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn i64_data(st: &SafeTensors<'_>, name: &str) -> Vec<i64> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::I64, "{name}");
    t.data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    u64s(v).into_iter().map(|x| x as usize).collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn assert_all_close(what: &str, got: &[f64], want: &[f64], atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (l, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= atol, "{what}[{l}]: {g} vs {w} (atol {atol:e})");
    }
}

struct Module {
    name: String,
    d_out: usize,
    d_in: usize,
    /// (d_out, d_in), row-major
    weight: Vec<f32>,
}

fn load_modules(case: &Value) -> Vec<Module> {
    let bytes = golden_file("weights.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    case["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap().to_owned();
            let (d_out, d_in) = (
                m["d_out"].as_u64().unwrap() as usize,
                m["d_in"].as_u64().unwrap() as usize,
            );
            let (weight, shape) = f32_data(&st, &name);
            assert_eq!(shape, [d_out, d_in], "{name}");
            Module {
                name,
                d_out,
                d_in,
                weight,
            }
        })
        .collect()
}

impl Module {
    fn view(&self) -> MatF32Ref<'_> {
        MatF32Ref::new("w", &self.weight, self.d_out, self.d_in).unwrap()
    }
}

/// Every field of `got` against scenario `s` of case.json.
fn check_allocation(label: &str, got: &Allocation, s: &Value) {
    assert_eq!(got.r0, s["r0"].as_u64().unwrap(), "{label}: r0");
    assert_eq!(got.r_min, s["r_min"].as_u64().unwrap(), "{label}: r_min");
    assert_eq!(got.r_max, u64s(&s["r_max"]), "{label}: r_max");
    assert_all_close(&format!("{label}: w"), &got.w, &f64s(&s["w"]), FLOAT_INTERMEDIATE_ATOL);
    assert!(
        (got.mean_w - s["mean_w"].as_f64().unwrap()).abs() <= FLOAT_INTERMEDIATE_ATOL,
        "{label}: mean_w"
    );
    assert_all_close(
        &format!("{label}: r_star"),
        &got.r_star,
        &f64s(&s["r_star"]),
        FLOAT_INTERMEDIATE_ATOL,
    );
    assert_eq!(got.r_round, u64s(&s["r_round"]), "{label}: r_round");
    assert_eq!(got.decrements, usizes(&s["decrements"]), "{label}: decrements");
    assert_eq!(got.r_dec, u64s(&s["r_dec"]), "{label}: r_dec");
    assert_eq!(got.increments, usizes(&s["increments"]), "{label}: increments");
    assert_eq!(got.ranks, u64s(&s["ranks"]), "{label}: ranks");
    assert_eq!(got.sum_r(), s["sum_r"].as_u64().unwrap(), "{label}: sum_r");
}

#[test]
fn alloc_basic_every_scenario() {
    let case: Value = serde_json::from_slice(&golden_file("case.json")).unwrap();
    let expected_bytes = golden_file("expected.safetensors");
    let expected = SafeTensors::deserialize(&expected_bytes).unwrap();
    let modules = load_modules(&case);
    let n = modules.len();
    assert_eq!(case["r_min"], 1);

    let scenarios = case["scenarios"].as_array().unwrap();
    let mut checked = 0;
    for (i, s) in scenarios.iter().enumerate() {
        let p = s["budget"].as_u64().unwrap();
        let label = format!("scenario{i} (P = {p}, {})", s["budget_expr"]);
        let budget = AllocBudget {
            budget: p,
            r_min: None,
            r_max: None,
        };
        if s.get("error").is_some() {
            assert_eq!(s["error"], "infeasible");
            let err = AllocError::BudgetBelowModuleCount { budget: p, modules: n };
            assert_eq!(uniform_rank(p, n), Err(err.clone()), "{label}");
            let dummy: Vec<AllocModule> = modules
                .iter()
                .map(|m| AllocModule {
                    energy: 0.5,
                    d_in: m.d_in as u64,
                    d_out: m.d_out as u64,
                })
                .collect();
            assert_eq!(allocate(&dummy, budget), Err(err), "{label}");
            continue;
        }

        // step 2 in the runtime: energies for this budget's r0
        let r0 = uniform_rank(p, n).unwrap();
        let energies: Vec<f64> = modules.iter().map(|m| energy(m.view(), r0 as usize).unwrap()).collect();
        let want_energy = f64_data(&expected, &format!("scenario{i}.energy"));
        assert_all_close(
            &format!("{label}: energy (expected.safetensors)"),
            &energies,
            &want_energy,
            ENERGY_ATOL,
        );
        assert_all_close(
            &format!("{label}: energy (case.json)"),
            &energies,
            &f64s(&s["energy"]),
            ENERGY_ATOL,
        );
        let max_diff = energies
            .iter()
            .zip(&want_energy)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        println!("{label}: max |energy - reference| = {max_diff:.1e}");
        // the deliberate tie: bit-identical weights must give bit-identical energies
        assert_eq!(modules[0].weight, modules[7].weight);
        assert_eq!(energies[0].to_bits(), energies[7].to_bits(), "{label}: tied energies");

        // steps 1, 3-6 in the compiler, on our energies and on the reference's
        for (source, e) in [("ours", energies), ("reference", f64s(&s["energy"]))] {
            let input: Vec<AllocModule> = modules
                .iter()
                .zip(&e)
                .map(|(m, &energy)| AllocModule {
                    energy,
                    d_in: m.d_in as u64,
                    d_out: m.d_out as u64,
                })
                .collect();
            let got = allocate(&input, budget).unwrap();
            check_allocation(&format!("{label}, {source} energies"), &got, s);
            let want_ranks = i64_data(&expected, &format!("scenario{i}.ranks"));
            let got_ranks: Vec<i64> = got.ranks.iter().map(|&r| r as i64).collect();
            assert_eq!(got_ranks, want_ranks, "{label}: ranks (expected.safetensors)");
        }
        checked += 1;
    }
    assert_eq!(checked, 5, "feasible scenarios");
}

/// The fast spectrum (Gram eigenvalues) against the reference's full float64
/// SVD, `sigma.<m>`, and our own SVD against it too: including the rank-2
/// module, whose trailing values are rounding noise.
#[test]
fn alloc_basic_spectra_match_the_reference_svd() {
    let case: Value = serde_json::from_slice(&golden_file("case.json")).unwrap();
    let expected_bytes = golden_file("expected.safetensors");
    let expected = SafeTensors::deserialize(&expected_bytes).unwrap();
    for m in load_modules(&case) {
        let sigma = f64_data(&expected, &format!("sigma.{}", m.name));
        let s0_sq = sigma[0] * sigma[0];
        let s2 = squared_singular_values(m.view()).unwrap();
        assert_eq!(s2.len(), sigma.len(), "{}", m.name);
        for (i, (g, w)) in s2.iter().zip(&sigma).enumerate() {
            assert!(
                (g - w * w).abs() <= 1e-13 * s0_sq,
                "{} s2[{i}]: {g} vs {}",
                m.name,
                w * w
            );
        }
        let s = thin_svd(m.view()).unwrap().s;
        for (i, (g, w)) in s.iter().zip(&sigma).enumerate() {
            assert!((g - w).abs() <= 1e-12 * sigma[0], "{} s[{i}]: {g} vs {w}", m.name);
        }
    }
}
