//! NVRTC compiles the generated CUDA C: the support kernels and every library
//! kernel of `kernel::lib::examples()`, for compute_90 (H100/H200) and
//! compute_80 (A100), and the module a CUDA executor builds for the stdlib
//! `tiny` llama, unfused and fused (its fused kernels plus the kernel-IR
//! instances of its unfused ops and AdamW steps). Needs only libnvrtc, no GPU; skips with a message when
//! the library cannot be loaded (`.ci/run` installs it from PyPI and puts it
//! on `LD_LIBRARY_PATH`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use lamda_compiler::codegen::cuda::{
    cuda_source, module_kernels, module_source, prelude, support, support_source, unfused_kernels,
};
use lamda_compiler::kernel::{lib, symbol};
use lamda_compiler::passes::memory_plan::Program;
use lamda_compiler::pipeline::{Options, compile_with};
use lamda_compiler::resolve::check_source;
use lamda_runtime::backend::cuda::{compile_ptx, nvrtc_available};

const ARCHS: [&str; 2] = ["compute_90", "compute_80"];

fn skip() -> bool {
    if nvrtc_available() {
        return false;
    }
    lamda_runtime::testkit::skip(
        "libnvrtc cannot be loaded (install nvidia-cuda-nvrtc-cu12 and add its lib dir to LD_LIBRARY_PATH)",
    );
    true
}

#[test]
fn the_whole_module_compiles_for_every_arch() {
    if skip() {
        return;
    }
    let kernels = lib::examples();
    let src = module_source(&kernels).unwrap();
    for arch in ARCHS {
        let ptx = compile_ptx(&src, arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        for k in &kernels {
            let entry = format!(".entry {}(", lamda_compiler::kernel::symbol(&k.name));
            assert!(ptx.contains(&entry), "{arch}: no {entry} in the PTX");
        }
        for name in support::ALL {
            assert!(ptx.contains(&format!(".entry {name}(")), "{arch}: no {name} in the PTX");
        }
    }
    eprintln!(
        "NVRTC: {} fused + {} support kernels compile for {ARCHS:?}",
        kernels.len(),
        support::ALL.len()
    );
}

#[test]
fn each_kernel_compiles_alone() {
    if skip() {
        return;
    }
    for k in lib::examples() {
        let src = format!("{}\n{}", prelude(), cuda_source(&k).unwrap());
        compile_ptx(&src, "compute_90").unwrap_or_else(|e| panic!("{}: {e}\n{src}", k.name));
    }
    compile_ptx(&support_source(), "compute_80").unwrap();
}

#[test]
fn the_module_of_a_plan_compiles() {
    if skip() {
        return;
    }
    let src = "adapt tiny.attn.{q,v} rank 2 freeze_b linear(0.5)\ntrain { steps 4 batch 1 seq 4 }";
    let c = check_source("t.lamda", src, Path::new("."));
    let spec = c.spec.unwrap_or_else(|| panic!("{:?}", c.diags));
    for fuse in [false, true] {
        let plan = compile_with(&spec, 1, 4, None, Options { fuse, head_loss: false }).unwrap();
        let progs: Vec<&Program> = plan.phases.iter().map(|p| &p.program).chain([&plan.eval]).collect();
        let unfused = unfused_kernels(progs.iter().copied());
        assert!(!unfused.is_empty());
        // the module the backend compiles: fused kernels, then the unfused ops' instances
        let kernels = module_kernels(progs.iter().copied());
        let ptx = compile_ptx(&module_source(&kernels).unwrap(), "compute_90").unwrap_or_else(|e| panic!("{e}"));
        for k in &kernels {
            let entry = format!(".entry {}(", symbol(&k.name));
            assert!(ptx.contains(&entry), "fuse {fuse}: no {entry} in the PTX");
        }
        eprintln!(
            "NVRTC: the tiny plan (fuse {fuse}) module, {} kernel-IR kernels",
            kernels.len()
        );
    }
}

#[test]
fn a_syntax_error_is_an_error_with_the_log() {
    if skip() {
        return;
    }
    let err = compile_ptx("extern \"C\" __global__ void broken( { }", "compute_90").unwrap_err();
    assert!(err.to_string().contains("error"), "{err}");
}
