//! Tests of the adapter checker on the stdlib methods and on broken definitions.

use super::*;
use crate::syntax::ast::Item;
use crate::syntax::parse_file;

fn check_src(src: &str) -> Result<(Method, Vec<Diagnostic>), Vec<Diagnostic>> {
    let f = parse_file(src).expect("parses");
    let Some(Item::Adapter(def)) = f.items.first() else {
        panic!("no adapter")
    };
    check_adapter(def, 0)
}

fn codes(src: &str) -> Vec<Code> {
    match check_src(src) {
        Ok((_, w)) => w.iter().map(|d| d.code).collect(),
        Err(e) => e.iter().map(|d| d.code).collect(),
    }
}

#[test]
fn stdlib_lamda_normal_form() {
    let (m, warnings) = check_src(include_str!("../../../stdlib/adapters/lamda.lamda")).unwrap();
    assert!(warnings.is_empty());
    assert!(m.residual);
    let (b, sched) = m.freeze.unwrap();
    assert_eq!(m.tensors[b].name, "B");
    assert_eq!(sched, Schedule::Never);
    assert_eq!(m.terms.len(), 1);
    let names: Vec<&str> = m.terms[0]
        .chain
        .iter()
        .map(|f| match f {
            Factor::Tensor(i) => m.tensors[*i].name.as_str(),
            Factor::Diag(_) => "diag",
        })
        .collect();
    assert_eq!(names, vec!["B", "S", "A"]);
    let env = m.env(64, 32, 4, &BTreeMap::new());
    assert_eq!(m.terms[0].coefficient(&env), Some(1.0));
    assert_eq!(m.shape(m.tensor("B").unwrap(), &env), Some(vec![32, 4]));
}

#[test]
fn stdlib_lora_scale_is_alpha_over_r() {
    let (m, _) = check_src(include_str!("../../../stdlib/adapters/lora.lamda")).unwrap();
    assert!(!m.residual);
    let mut given = BTreeMap::new();
    given.insert("alpha".to_string(), Const::Float(8.0));
    let env = m.env(64, 64, 4, &given);
    assert_eq!(m.terms[0].coefficient(&env), Some(2.0));
}

#[test]
fn every_stdlib_adapter_checks_clean() {
    for src in [
        include_str!("../../../stdlib/adapters/lamda.lamda"),
        include_str!("../../../stdlib/adapters/lora.lamda"),
        include_str!("../../../stdlib/adapters/lora_fa.lamda"),
        include_str!("../../../stdlib/adapters/pissa.lamda"),
    ] {
        let (_, w) = check_src(src).unwrap();
        assert!(w.is_empty(), "{w:?}");
    }
}

#[test]
fn broken_adapters_get_their_codes() {
    let base = "tensor A [r, in] frozen init svd_right\n tensor B [out, r] trainable init zeros\n base keep\n";
    let cases: Vec<(String, Code)> = vec![
        (
            format!("adapter t(r) {{ {base} path B @ C @ x }}"),
            Code::AdapterUndeclaredTensor,
        ),
        (
            format!("adapter t(r) {{ {base} path A @ B @ x }}"),
            Code::AdapterShapeMismatch,
        ),
        (
            format!("adapter t(r) {{ {base} path B @ A @ x @ x }}"),
            Code::AdapterNotLinear,
        ),
        (format!("adapter t(r) {{ {base} path B @ A }}"), Code::AdapterNotLinear),
        (
            format!("adapter t(r) {{ {base} path A @ x }}"),
            Code::AdapterShapeMismatch,
        ),
        (
            format!("adapter t(r) {{ {base} path B @ relu(A @ x) }}"),
            Code::AdapterNotLinear,
        ),
        (
            format!("adapter t(r) {{ {base} path B @ A @ x + 1 }}"),
            Code::AdapterNotLinear,
        ),
        (format!("adapter t(r) {{ {base} }}"), Code::AdapterMissingPath),
        (
            "adapter t(r) { tensor A [r, in] frozen init svd_right path A @ x }".to_string(),
            Code::AdapterMissingBase,
        ),
        (
            format!("adapter t(r) {{ {base} tensor A [r, in] frozen init zeros path B @ A @ x }}"),
            Code::AdapterDuplicateTensor,
        ),
        (
            "adapter t(r) { tensor A [r, in] frozen init svd_lft base keep path A @ x }".to_string(),
            Code::AdapterUnknownInit,
        ),
        (
            "adapter t(r) { tensor A [in, r] frozen init svd_right base keep path A @ x }".to_string(),
            Code::AdapterInitShape,
        ),
        (
            format!("adapter t(r) {{ {base} freeze A by columns path B @ A @ x }}"),
            Code::AdapterFreezeNotColumns,
        ),
        (
            format!("adapter t(alpha) {{ {base} path B @ A @ x }}"),
            Code::AdapterBadParam,
        ),
        (
            "adapter t(r) { tensor A [q, in] frozen init zeros base keep path A @ x }".to_string(),
            Code::AdapterUnknownName,
        ),
    ];
    for (src, code) in cases {
        let got = codes(&src);
        assert!(got.contains(&code), "{src}\nexpected {code}, got {got:?}");
    }
}

#[test]
fn x_squared_is_not_linear() {
    let src = "adapter t(r) { tensor D [in] trainable init zeros base keep path out * 0 + diag(D) @ x * x }";
    assert!(codes(src).contains(&Code::AdapterNotLinear) || codes(src).contains(&Code::AdapterShapeMismatch));
}

#[test]
fn unused_tensor_is_a_warning() {
    let src = "adapter t(r) { tensor A [r, in] frozen init svd_right tensor B [out, r] trainable init zeros tensor C [r, r] trainable init zeros base keep path B @ A @ x }";
    let (_, w) = check_src(src).unwrap();
    assert_eq!(
        w.iter().map(|d| d.code).collect::<Vec<_>>(),
        vec![Code::AdapterUnusedTensor]
    );
}
