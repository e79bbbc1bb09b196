//! Codegen snapshots: each `kernel::lib::examples()` kernel as kernel IR text
//! followed by the CUDA C the emitter makes of it, so a reviewer sees cause
//! and effect together. (NVRTC compiles these in runtime/tests/cuda_nvrtc.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lamda_compiler::codegen::cuda::{cuda_source, module_source, support, support_source};
use lamda_compiler::kernel::lib;
use lamda_compiler::kernel::symbol;

#[test]
fn every_example_kernel_ir_then_cuda() {
    for k in lib::examples() {
        let src = cuda_source(&k).unwrap_or_else(|e| panic!("{}: {e}", k.name));
        insta::assert_snapshot!(symbol(&k.name), format!("{k}\n{src}"));
    }
}

#[test]
fn the_text_is_stable() {
    for k in lib::examples() {
        assert_eq!(cuda_source(&k).unwrap(), cuda_source(&k.clone()).unwrap());
    }
    assert_eq!(
        module_source(&lib::examples()).unwrap(),
        module_source(&lib::examples()).unwrap()
    );
}

#[test]
fn the_support_source_defines_every_support_kernel() {
    let src = support_source();
    for name in support::ALL {
        assert_eq!(
            src.matches(&format!("extern \"C\" __global__ void {name}(")).count(),
            1,
            "{name}"
        );
    }
    assert_eq!(src.matches("__global__").count(), support::ALL.len());
}
