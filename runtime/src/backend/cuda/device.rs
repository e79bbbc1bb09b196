//! Device detection: a context and a stream on one GPU, found without panicking.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream};

use super::{CudaError, driver_available};

/// One GPU: its context and the stream everything of lamdac runs on.
#[derive(Clone)]
pub struct CudaDevice {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    ordinal: usize,
    name: String,
    /// (major, minor), e.g. (9, 0) for an H100/H200.
    capability: (i32, i32),
    total_mem: usize,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ordinal)
            .field("name", &self.name)
            .field("capability", &self.capability)
            .field("total_mem", &self.total_mem)
            .finish()
    }
}

impl CudaDevice {
    /// The first GPU, or why there is none ([`CudaError::NoDriver`] when
    /// `libcuda` cannot be loaded, [`CudaError::NoDevice`] when it reports no
    /// device). Checks that the driver library loads before any other call.
    pub fn detect() -> Result<CudaDevice, CudaError> {
        Self::open(0)
    }

    /// Number of GPUs the driver reports (0 without a driver). Never panics.
    pub fn count() -> usize {
        if !driver_available() {
            return 0;
        }
        CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
    }

    /// GPU number `ordinal`.
    pub fn open(ordinal: usize) -> Result<CudaDevice, CudaError> {
        if !driver_available() {
            return Err(CudaError::NoDriver);
        }
        let count = CudaContext::device_count().map_err(|e| CudaError::NoDevice(e.to_string()))?;
        if count <= 0 {
            return Err(CudaError::NoDevice("the driver reports no GPU".into()));
        }
        if ordinal >= count as usize {
            return Err(CudaError::NoDevice(format!("GPU {ordinal} requested, {count} present")));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| CudaError::NoDevice(e.to_string()))?;
        // SAFETY: one stream orders every launch, copy and free of this backend,
        // so cudarc's cross-stream events are not needed; slices made from now
        // on carry none.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let capability = ctx.compute_capability()?;
        let total_mem = ctx.total_mem().unwrap_or(0);
        Ok(CudaDevice {
            ctx,
            stream,
            ordinal,
            name,
            capability,
            total_mem,
        })
    }

    /// The device's name, e.g. `NVIDIA H200`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Compute capability (major, minor).
    pub fn capability(&self) -> (i32, i32) {
        self.capability
    }

    /// Device memory in bytes.
    pub fn total_mem(&self) -> usize {
        self.total_mem
    }

    /// Free and total device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize), CudaError> {
        Ok(self.ctx.mem_get_info()?)
    }

    /// Waits for everything queued on the device's stream.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        Ok(self.stream.synchronize()?)
    }

    /// NVRTC architectures to try for this device, best first: its own
    /// (`compute_90`), then older ones whose PTX the driver compiles forward
    /// (for GPUs newer than the NVRTC at hand).
    pub fn archs(&self) -> Vec<&'static str> {
        const KNOWN: [(i32, &str); 8] = [
            (120, "compute_120"),
            (100, "compute_100"),
            (90, "compute_90"),
            (89, "compute_89"),
            (86, "compute_86"),
            (80, "compute_80"),
            (75, "compute_75"),
            (70, "compute_70"),
        ];
        let cc = self.capability.0 * 10 + self.capability.1;
        KNOWN.iter().filter(|(v, _)| *v <= cc).map(|(_, a)| *a).collect()
    }
}
