//! Codegen snapshots of the examples: the spec's source and every kernel its
//! fused plan runs, as kernel IR, CLIF and CUDA C, in one snapshot per target
//! (so a reviewer sees cause and effect together). The plans are compiled
//! without weights, for the train block's batch and seq.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use lamda_compiler::codegen::{clif, cuda};
use lamda_compiler::pipeline::{Options, compile_with};
use lamda_compiler::resolve::check_path;

fn kernels_of(path: &str) -> (String, Vec<lamda_compiler::kernel::Kernel>) {
    let src = std::fs::read_to_string(Path::new("..").join(path)).unwrap();
    let c = check_path(&Path::new("..").join(path)).unwrap();
    let spec = c.spec.unwrap_or_else(|| panic!("{:?}", c.diags));
    let plan = compile_with(
        &spec,
        spec.train.batch as usize,
        spec.train.seq as usize,
        None,
        // both backends' kernels: the CUDA plan keeps the cross-entropy kernel
        Options {
            fuse: true,
            head_loss: false,
        },
    )
    .unwrap();
    (src, plan.kernels())
}

fn snapshot(name: &str, path: &str) {
    let (src, kernels) = kernels_of(path);
    assert!(!kernels.is_empty());
    let mut clif_text = format!("{src}\n");
    let mut cuda_text = format!("{src}\n");
    for k in &kernels {
        clif_text.push_str(&format!("\n{k}\n{}", clif::clif_text(k).unwrap()));
        cuda_text.push_str(&format!("\n{k}\n{}", cuda::cuda_source(k).unwrap()));
    }
    insta::assert_snapshot!(format!("{name}_clif"), clif_text);
    insta::assert_snapshot!(format!("{name}_cuda"), cuda_text);
}

#[test]
fn golden_lamda_example() {
    snapshot("golden_lamda", "examples/golden_lamda.lamda");
}

#[test]
fn quickstart_example() {
    snapshot("quickstart", "examples/quickstart.lamda");
}
