//! The Cranelift JIT for fused kernels: compiles a kernel-IR [`Kernel`] to host
//! code once and launches it over rows, split into blocks across rayon threads.
//!
//! Design. [`lamda_compiler::codegen::clif::lower`] produces the function (its
//! module doc is the ABI: `fn(args: *const *mut u8, row_begin: u64, row_end: u64)`);
//! this file owns the machine side. One `JITModule` for the host ISA
//! (cranelift-native, `opt_level=speed`) holds every kernel compiled by a
//! [`Jit`]; it sits behind an `Arc` that each [`CompiledKernel`] shares, so
//! the code stays mapped while any kernel can still be called and is freed when
//! the last one (and the `Jit`) is dropped. Kernels are cached by name (names
//! are unique and stable, kernel/mod.rs), so compiling a kernel twice is a map
//! lookup. A launch is validated with [`interp::check_launch`] (the
//! interpreter's contract), then the row range is cut into blocks sized so that
//! each carries enough work to pay for a task, and the blocks run on rayon.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cranelift_codegen::settings::{self, Configurable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{Linkage, Module, default_libcall_names};
use lamda_compiler::codegen::clif::{self, CodegenError};
use lamda_compiler::kernel::Kernel;
use rayon::prelude::*;

use super::interp::{self, KArg, KernelError};

/// Why the JIT could not start or compile a kernel.
#[derive(Debug, thiserror::Error)]
pub enum JitError {
    /// Cranelift does not support this machine (or rejected a setting).
    #[error("the Cranelift JIT does not support this host: {0}")]
    Host(String),
    /// The kernel could not be lowered to Cranelift IR.
    #[error(transparent)]
    Codegen(#[from] CodegenError),
    /// Cranelift failed to compile or link the lowered function.
    #[error("kernel {kernel}: Cranelift failed: {msg}")]
    Compile { kernel: String, msg: String },
    /// A different kernel with the same name was compiled before.
    #[error("kernel name `{0}` was compiled before for a different kernel")]
    NameClash(String),
    /// An earlier compilation panicked while holding the module.
    #[error("the JIT module is unusable after an earlier failure")]
    Poisoned,
}

/// The compiled function: see the ABI in `lamda_compiler::codegen::clif`.
type KernelFn = unsafe extern "C" fn(args: *const *mut u8, row_begin: u64, row_end: u64);

/// A launch block carries at least this much column work (elements, kernel
/// `work_per_row`) before it is worth a rayon task.
const WORK_PER_BLOCK: usize = 1 << 15;

/// `floorf` for the `floor` libcall Cranelift emits on hosts without SSE4.1.
extern "C" fn lamdac_floorf(x: f32) -> f32 {
    x.floor()
}

/// The JIT module, shared by the [`Jit`] and every kernel it compiled.
struct SharedModule {
    /// `None` only while being dropped.
    module: Mutex<Option<JITModule>>,
}

impl Drop for SharedModule {
    fn drop(&mut self) {
        let module = match self.module.get_mut() {
            Ok(m) => m.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(m) = module {
            // SAFETY: every function pointer from this module lives in a
            // `CompiledKernel`, which holds an `Arc` to this `SharedModule`;
            // we are dropping the last `Arc`, so no kernel can be running or
            // be called again.
            unsafe { m.free_memory() };
        }
    }
}

/// Compiles fused kernels for the host and caches them by name.
pub struct Jit {
    shared: Arc<SharedModule>,
    cache: HashMap<String, CompiledKernel>,
    /// Functions declared so far (the next symbol's number).
    declared: usize,
    /// Set when Cranelift panicked mid-definition.
    broken: bool,
}

/// A kernel compiled for the host: cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct CompiledKernel {
    inner: Arc<Compiled>,
}

struct Compiled {
    kernel: Kernel,
    entry: KernelFn,
    work_per_row: usize,
    compile_time: Duration,
    /// Keeps the code mapped while this kernel exists.
    _module: Arc<SharedModule>,
}

impl Jit {
    /// A JIT for the host ISA (all its detected features), optimising for speed.
    pub fn new() -> Result<Jit, JitError> {
        let host = |e: &dyn std::fmt::Display| JitError::Host(e.to_string());
        let mut flags = settings::builder();
        flags.set("opt_level", "speed").map_err(|e| host(&e))?;
        // cranelift-jit links with absolute addresses and needs full-range libcalls.
        flags.set("is_pic", "false").map_err(|e| host(&e))?;
        flags.set("use_colocated_libcalls", "false").map_err(|e| host(&e))?;
        let isa = cranelift_native::builder()
            .map_err(|e| host(&e))?
            .finish(settings::Flags::new(flags))
            .map_err(|e| host(&e))?;
        let mut builder = JITBuilder::with_isa(isa, default_libcall_names());
        builder.symbol("floorf", lamdac_floorf as *const u8);
        Ok(Jit {
            shared: Arc::new(SharedModule {
                module: Mutex::new(Some(JITModule::new(builder))),
            }),
            cache: HashMap::new(),
            declared: 0,
            broken: false,
        })
    }

    /// Compiles `k`, or returns the kernel compiled before under its name.
    pub fn compile(&mut self, k: &Kernel) -> Result<CompiledKernel, JitError> {
        if let Some(c) = self.cache.get(&k.name) {
            return if c.inner.kernel == *k {
                Ok(c.clone())
            } else {
                Err(JitError::NameClash(k.name.clone()))
            };
        }
        let start = Instant::now();
        let fail = |msg: String| JitError::Compile {
            kernel: k.name.clone(),
            msg,
        };
        if self.broken {
            return Err(JitError::Poisoned);
        }
        let mut guard = self.shared.module.lock().map_err(|_| JitError::Poisoned)?;
        let module = guard.as_mut().ok_or(JitError::Poisoned)?;
        let func = clif::lower(k, module.target_config())?;
        // Symbols are local to this module; the counter keeps them unique.
        let name = format!("lamdac_{}_{}", self.declared, lamda_compiler::kernel::symbol(&k.name));
        self.declared += 1;
        let id = module
            .declare_function(&name, Linkage::Local, &func.signature)
            .map_err(|e| fail(e.to_string()))?;
        let mut ctx = cranelift_codegen::Context::for_function(func);
        // Cranelift reports errors as values, but a kernel is untrusted input:
        // a panic inside the compiler becomes an error here, not an abort.
        // The module may be half-updated after a panic: no more kernels go into it.
        let defined = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            module.define_function(id, &mut ctx).map_err(|e| format!("{e:?}"))
        }))
        .map_err(|_| {
            self.broken = true;
            fail("Cranelift panicked".into())
        })?;
        defined.map_err(fail)?;
        module.finalize_definitions().map_err(|e| fail(e.to_string()))?;
        let code = module.get_finalized_function(id);
        drop(guard);
        // SAFETY: `code` is the finalized (mapped, executable) function just
        // defined with the signature `lower` gives every kernel, which is
        // `KernelFn` in the target's default calling convention, the C ABI.
        let entry = unsafe { std::mem::transmute::<*const u8, KernelFn>(code) };
        let compiled = CompiledKernel {
            inner: Arc::new(Compiled {
                kernel: k.clone(),
                entry,
                work_per_row: clif::work_per_row(k),
                compile_time: start.elapsed(),
                _module: Arc::clone(&self.shared),
            }),
        };
        self.cache.insert(k.name.clone(), compiled.clone());
        Ok(compiled)
    }

    /// How many kernels this JIT has compiled.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether it has compiled none.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

/// The pointers of a launch, shared by its blocks.
struct ArgPtrs(smallvec::SmallVec<[*mut u8; 16]>);

// SAFETY: the pointers are only dereferenced by the kernel code, which reads
// shared arguments and writes row ranges that differ between blocks (see
// `CompiledKernel::launch_blocks`); moving the list to another thread is no
// different from moving the borrowed slices it was taken from.
unsafe impl Sync for ArgPtrs {}

impl ArgPtrs {
    /// The `args` pointer of the ABI. (A method, so closures capture the whole `ArgPtrs`.)
    fn as_abi(&self) -> *const *mut u8 {
        self.0.as_ptr()
    }
}

impl CompiledKernel {
    /// The kernel this was compiled from.
    pub fn kernel(&self) -> &Kernel {
        &self.inner.kernel
    }

    /// How long lowering and compiling took.
    pub fn compile_time(&self) -> Duration {
        self.inner.compile_time
    }

    /// Whether two handles share one compilation.
    pub fn same(&self, other: &CompiledKernel) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Rows per block for a launch of `rows` rows: enough work per rayon task.
    pub fn rows_per_block(&self, rows: usize) -> usize {
        (WORK_PER_BLOCK / self.inner.work_per_row.max(1)).clamp(1, rows.max(1))
    }

    /// Runs the kernel over `rows` rows, split across threads as
    /// [`rows_per_block`](Self::rows_per_block) says. Same contract as
    /// [`interp::run`]: the arguments must pass [`interp::check_launch`].
    pub fn launch(&self, args: &mut [KArg<'_>], rows: usize) -> Result<(), KernelError> {
        self.launch_blocks(args, rows, self.rows_per_block(rows))
    }

    /// Runs the kernel over `rows` rows in blocks of `rows_per_block` rows (0
    /// is taken as 1), one rayon task per block; one block runs on the caller's thread.
    pub fn launch_blocks(&self, args: &mut [KArg<'_>], rows: usize, rows_per_block: usize) -> Result<(), KernelError> {
        let k = &self.inner.kernel;
        interp::check_launch(k, args, rows)?;
        if rows == 0 {
            return Ok(());
        }
        let ptrs = ArgPtrs(
            args.iter_mut()
                .map(|a| match a {
                    KArg::F32(b) => b.as_ptr().cast_mut().cast::<u8>(),
                    KArg::F32Mut(b) => b.as_mut_ptr().cast::<u8>(),
                    KArg::I64(b) => b.as_ptr().cast_mut().cast::<u8>(),
                    KArg::Scalar(s) => std::ptr::from_mut(s).cast::<u8>(),
                })
                .collect(),
        );
        let per = rows_per_block.max(1);
        let entry = self.inner.entry;
        let run = |block: usize| {
            // Cranelift mixes VEX and legacy-SSE encodings: on a dirty upper
            // vector state each switch costs (ops/vector_state.rs).
            crate::ops::vector_state::clear_upper_here();
            let begin = block * per;
            let end = rows.min(begin + per);
            // SAFETY: `check_launch` proved every buffer has the length the
            // kernel's signature gives for `rows` rows (and `lower` rejects i64
            // arguments that are not read-only, the one kind check_launch lets
            // through as f32). Given those lengths the code stays in bounds
            // (clif module doc) and, for row i, writes only row i of `Rows`
            // and element i of `PerRow` arguments, reading other rows of no
            // written argument. Blocks cover disjoint row ranges, so no two
            // threads touch the same written element, and Read buffers
            // (passed as `&[T]`) are never written. The pointers come from the
            // `&mut` borrow of `args`, which outlives this call, as
            // `par_iter` joins before returning.
            unsafe { entry(ptrs.as_abi(), begin as u64, end as u64) }
        };
        let blocks = rows.div_ceil(per);
        if blocks == 1 {
            run(0);
        } else {
            (0..blocks).into_par_iter().for_each(run);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Jit>();
        check::<CompiledKernel>();
    }
}
