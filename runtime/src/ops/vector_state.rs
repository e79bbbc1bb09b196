//! Clean vector-register state after foreign AVX code (see spec/cli.md, "CPU targets").
//!
//! faer's GEMM on AVX-512 machines runs hand-written assembly microkernels
//! (private-gemm-x86) that return with the upper halves of ymm/zmm0-15 dirty
//! and no `vzeroupper`. Everything compiled for baseline x86-64 (this crate,
//! the standard library, rayon, libm) uses legacy-SSE encodings, and on Intel
//! cores each legacy-SSE instruction executed in that dirty state pays a
//! state-transition penalty: measured on a Sapphire Rapids VM, an `expf` loop
//! ran 50x slower after one dirty `ymm1` than after `vzeroupper`. AMD cores do
//! not pay it, which is why it went unnoticed on Zen 4. `vzeroupper` restores
//! the clean state (zmm16-31 never triggered the penalty in that measurement).
//!
//! So every call into faer is followed by [`clear_upper_all`] (or
//! [`clear_upper_here`] when faer ran on this thread alone).

use std::sync::OnceLock;

/// Whether the CPU has AVX (and so `vzeroupper`); detected once.
fn has_avx() -> bool {
    static AVX: OnceLock<bool> = OnceLock::new();
    *AVX.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// `vzeroupper` on this thread, when the CPU has AVX; a no-op elsewhere.
#[inline(never)]
pub fn clear_upper_here() {
    #[cfg(target_arch = "x86_64")]
    if has_avx() {
        // SAFETY: `vzeroupper` exists on every CPU with AVX (checked above); it
        // zeroes bits 128 and up of ymm/zmm0-15, which `clobber_abi("C")`
        // declares clobbered (all vector registers are caller-saved in the
        // System V and Windows x64 ABIs for those bits); memory and the stack
        // are untouched.
        unsafe { std::arch::asm!("vzeroupper", clobber_abi("C"), options(nostack, nomem, preserves_flags)) };
    }
}

/// [`clear_upper_here`] on this thread and on every thread of rayon's current
/// pool (after work that faer spread over the pool).
pub fn clear_upper_all() {
    clear_upper_here();
    if has_avx() && rayon::current_num_threads() > 1 {
        rayon::broadcast(|_| clear_upper_here());
    }
}

/// Runs [`clear_upper_all`] when dropped: the first line of a function that
/// calls into faer, so that every return path leaves the vector state clean.
#[must_use = "bind it to a variable (`let _clean = ...`) so it lives to the end of the scope"]
pub struct ClearOnDrop {
    /// Only this thread ran faer (`Par::Seq`): [`clear_upper_here`].
    here_only: bool,
}

impl ClearOnDrop {
    /// For code that runs faer with `par`: a sequential run cleans only this
    /// thread. (That matters inside rayon tasks: `clear_upper_all` blocks on
    /// a broadcast, and a blocked worker runs other queued tasks meanwhile, so
    /// their buffers pile up on one stack.)
    pub fn for_par(par: faer::Par) -> Self {
        ClearOnDrop {
            here_only: matches!(par, faer::Par::Seq),
        }
    }

    /// For code that may have run faer on every thread.
    pub fn all() -> Self {
        ClearOnDrop { here_only: false }
    }
}

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        if self.here_only {
            clear_upper_here();
        } else {
            clear_upper_all();
        }
    }
}
