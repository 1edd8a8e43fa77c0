//! The FFI layer of the cuda engine: the GPU of one rank, fenced. Context and stream, typed device
//! buffers, the NVRTC-compiled kernel registry, cuBLAS GEMMs and the NCCL communicator. Every raw
//! CUDA/cuBLAS/NCCL call of the cuda engine (cudarc's `sys` and `result` layers, cuLaunchKernel
//! through cudarc's launch builder) lives in this file; the engine above it (mod.rs, model.rs)
//! only sees `Gpu`, `Buf<T>`, `DevSlice<T>`, `Kernel`, `Arg` and `Nccl`, and holds no raw address.
//!
//! Layered as cudarc is (sys → result → safe): this file wraps cudarc's safe layer where it fits
//! and its raw layers where it does not, and offers a safe API whose one `unsafe fn` is
//! `Gpu::launch` (a kernel's parameters and memory accesses are not visible to Rust).
//!
//! One stream per rank and event tracking off: all work is ordered on that stream, which also makes
//! it capturable into a CUDA graph (cudarc's per-buffer events would be recorded inside the capture).
//!
//! Device memory is not Rust memory: a `DevSlice` is a handle (address and length) the device reads
//! and writes in stream order, so a shared view may be written by a kernel or a collective, like a
//! file offset. What the types guarantee is that it lies inside a live allocation: only a `Buf`
//! makes one, and it borrows that `Buf`.

use std::collections::HashMap;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::cublas::sys as blas_sys;
use cudarc::driver::{
    sys as drv_sys, CudaContext, CudaEvent, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    DriverError, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use cudarc::nccl::sys as nccl_sys;

use super::kernel::{Kernel, Module};
use super::{CudaError, Dtype};

impl Dtype {
    fn blas(self) -> blas_sys::cudaDataType {
        match self {
            Dtype::F16 => blas_sys::cudaDataType::CUDA_R_16F,
            Dtype::Bf16 => blas_sys::cudaDataType::CUDA_R_16BF,
        }
    }
    fn nccl(self) -> nccl_sys::ncclDataType_t {
        match self {
            Dtype::F16 => nccl_sys::ncclDataType_t::ncclFloat16,
            Dtype::Bf16 => nccl_sys::ncclDataType_t::ncclBfloat16,
        }
    }
}

/// One element of the engine's 16-bit type, fp16 or bf16 (the engine's `Dtype` says which): the
/// raw bits, which the host only moves, never computes with.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Half(pub u16);

// SAFETY: a plain 2-byte value, any bit pattern valid (zero included), as the kernels' __half /
// __nv_bfloat16.
unsafe impl DeviceRepr for Half {}
unsafe impl ValidAsZeroBits for Half {}

impl Half {
    /// fp16 or bf16 bits (as a checkpoint reader returns them) as `Half`s, without a copy.
    pub fn from_bits(bits: &[u16]) -> &[Half] {
        // SAFETY: Half is repr(transparent) over u16: same size, alignment and validity.
        unsafe { std::slice::from_raw_parts(bits.as_ptr().cast::<Half>(), bits.len()) }
    }
}

/// The element types of device buffers.
pub trait Elem: DeviceRepr + ValidAsZeroBits + Copy + Default + 'static {}
impl Elem for Half {}
impl Elem for f32 {}
impl Elem for i32 {}
impl Elem for u8 {}

/// The element types a GEMM may write: f32, or the engine's dtype.
pub trait GemmOut: Elem {
    const F32: bool;
}
impl GemmOut for f32 {
    const F32: bool = true;
}
impl GemmOut for Half {
    const F32: bool = false;
}

/// A device allocation of `len` elements of `T`, with its address (taken once; event tracking is
/// off). Freed on drop, in stream order (cudarc's cuMemFreeAsync on the engine's one stream), so
/// work already queued on it completes first.
pub struct Buf<T> {
    _slice: CudaSlice<T>,
    addr: u64,
    len: usize,
}

impl<T> Buf<T> {
    /// The whole buffer.
    pub fn view(&self) -> DevSlice<'_, T> {
        DevSlice { addr: self.addr, len: self.len, _buf: PhantomData }
    }

    /// From element `offset` to the end (panics past the end, as slice indexing does).
    pub fn at(&self, offset: usize) -> DevSlice<'_, T> {
        self.view().at(offset)
    }

    /// The buffer's address as a kernel argument.
    pub fn addr(&self) -> DevAddr<'_> {
        self.view().addr()
    }

    pub fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
}

/// Elements `addr..addr + len` of a live `Buf<T>`, which it borrows; made only by a `Buf` (or by
/// narrowing another `DevSlice`), so it always lies inside the allocation.
pub struct DevSlice<'a, T> {
    addr: u64,
    len: usize,
    _buf: PhantomData<&'a Buf<T>>,
}

impl<T> Clone for DevSlice<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DevSlice<'_, T> {}

impl<'a, T> DevSlice<'a, T> {
    /// From element `offset` to the end (panics past the end, as slice indexing does).
    pub fn at(self, offset: usize) -> DevSlice<'a, T> {
        assert!(offset <= self.len, "device offset {offset} past a {}-element view", self.len);
        DevSlice {
            addr: self.addr + (offset * std::mem::size_of::<T>()) as u64,
            len: self.len - offset,
            _buf: PhantomData,
        }
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> usize {
        self.len
    }

    /// Whether the address is a multiple of `bytes`.
    pub fn aligned(self, bytes: u64) -> bool {
        self.addr % bytes == 0
    }

    /// The address as a kernel argument.
    pub fn addr(self) -> DevAddr<'a> {
        DevAddr { addr: self.addr, _buf: PhantomData }
    }
}

/// The device address of a live buffer (or into one), as a kernel argument: made only from a
/// `Buf` or a `DevSlice`, borrowing it.
#[derive(Clone, Copy)]
pub struct DevAddr<'a> {
    addr: u64,
    _buf: PhantomData<&'a ()>,
}

/// A kernel argument: every kind travels as one 8-byte slot; cuLaunchKernel copies as many bytes
/// as the kernel's parameter has from the slot's start (little-endian x86-64 / aarch64), so a 4-byte
/// int or float sits in the low half.
#[derive(Clone, Copy)]
pub enum Arg<'a> {
    /// A pointer into a live buffer.
    Ptr(DevAddr<'a>),
    /// A null pointer (the kernel's "absent").
    Null,
    I32(i32),
    F32(f32),
    U64(u64),
    I64(i64),
}

impl Arg<'_> {
    fn slot(self) -> u64 {
        match self {
            Arg::Ptr(p) => p.addr,
            Arg::Null => 0,
            Arg::U64(u) => u,
            Arg::I32(i) => i as u32 as u64,
            Arg::F32(f) => f.to_bits() as u64,
            Arg::I64(i) => i as u64,
        }
    }
}

pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    blas: blas_sys::cublasHandle_t,
    _blas_workspace: Option<Buf<u8>>,
    /// Each kernel with its static shared memory in bytes (read once at load).
    kernels: HashMap<Kernel, (CudaFunction, u32)>,
    dtype: Dtype,
    pub allocated: usize,
    pub arch: String,
    /// Launch our kernels with programmatic dependent launch (`set_pdl`).
    pdl: bool,
}

/// Turns a missing CUDA library into an error instead of cudarc's panic.
pub fn check_libraries() -> Result<(), CudaError> {
    // SAFETY: the presence checks only try to dlopen the library; they call nothing in it.
    let present = unsafe {
        [
            ("the CUDA driver (libcuda.so)", drv_sys::is_culib_present()),
            ("NVRTC (libnvrtc.so)", cudarc::nvrtc::sys::is_culib_present()),
            ("cuBLAS (libcublas.so)", blas_sys::is_culib_present()),
            ("NCCL (libnccl.so)", nccl_sys::is_culib_present()),
        ]
    };
    let missing: Vec<&str> = present.iter().filter(|(_, ok)| !ok).map(|(n, _)| *n).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CudaError::Missing(missing.join(", ")))
    }
}

/// A fresh NCCL unique id (rank 0 creates it; MPI broadcasts it).
pub fn nccl_unique_id() -> Result<Vec<u8>, CudaError> {
    check_libraries()?;
    let id = cudarc::nccl::result::get_uniqueid().map_err(|e| CudaError::Nccl(format!("ncclGetUniqueId: {e:?}")))?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

fn drv(what: &str) -> impl Fn(DriverError) -> CudaError + '_ {
    move |e| CudaError::Driver(format!("{what}: {e}"))
}

fn blas_ok(what: &str, s: blas_sys::cublasStatus_t) -> Result<(), CudaError> {
    if s == blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Blas(format!("{what}: {s:?}")))
    }
}

/// Elements a row-major `rows` × `cols` matrix with row stride `ld` spans, `count` of them `stride`
/// elements apart (0 when empty); `None` for a negative stride or an overflow.
fn gemm_span(rows: usize, cols: usize, ld: usize, count: usize, stride: i64) -> Option<usize> {
    if rows == 0 || cols == 0 || count == 0 {
        return Some(0);
    }
    let stride = usize::try_from(stride).ok()?;
    (count - 1).checked_mul(stride)?.checked_add((rows - 1).checked_mul(ld)?)?.checked_add(cols)
}

impl Gpu {
    /// Opens device `ordinal`, compiles the kernel sources for its architecture.
    pub fn open(ordinal: usize, modules: &[Module], dtype: Dtype) -> Result<Gpu, CudaError> {
        check_libraries()?;
        let ctx = CudaContext::new(ordinal).map_err(drv("cuCtxCreate"))?;
        // SAFETY: this engine uses exactly one stream, so there is no cross-stream ordering for
        // cudarc's events to manage, and no buffer is freed while work on it is pending (buffers
        // are freed in stream order, and the engine synchronizes before dropping them).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(drv("cuStreamCreate"))?;
        let (major, minor) = ctx.compute_capability().map_err(drv("compute capability"))?;
        let arch = format!("sm_{major}{minor}");
        let mut blas: blas_sys::cublasHandle_t = std::ptr::null_mut();
        // SAFETY: cublasCreate writes a handle; the stream outlives the handle (both in Gpu, the
        // handle destroyed first in Drop).
        unsafe {
            blas_ok("cublasCreate", blas_sys::cublasCreate_v2(&mut blas))?;
            blas_ok("cublasSetStream", blas_sys::cublasSetStream_v2(blas, stream.cu_stream() as _))?;
        }
        let mut gpu = Gpu {
            ctx,
            stream,
            blas,
            _blas_workspace: None,
            kernels: HashMap::new(),
            dtype,
            allocated: 0,
            arch,
            pdl: false,
        };
        // A workspace of our own so cuBLAS never allocates inside a graph capture.
        let ws = gpu.alloc::<u8>(32 << 20)?;
        // SAFETY: the workspace buffer lives as long as the handle (both owned by Gpu; Drop destroys
        // the handle before the fields drop).
        unsafe {
            blas_ok(
                "cublasSetWorkspace",
                blas_sys::cublasSetWorkspace_v2(gpu.blas, ws.addr as *mut c_void, ws.bytes()),
            )?
        };
        gpu._blas_workspace = Some(ws);
        gpu.compile(modules, dtype)?;
        Ok(gpu)
    }

    fn compile(&mut self, modules: &[Module], dtype: Dtype) -> Result<(), CudaError> {
        let include: Vec<String> = ["/usr/local/cuda/include", "/usr/local/cuda/targets/x86_64-linux/include"]
            .iter()
            .filter(|p| std::path::Path::new(p).join("cuda_fp16.h").exists())
            .map(|s| s.to_string())
            .collect();
        for m in modules {
            let opts = cudarc::nvrtc::CompileOptions {
                arch: None,
                // compute_XY: NVRTC emits PTX (an sm_XY target would give only a cubin, and cudarc reads
                // the PTX); the driver JIT-compiles it for the device once at load.
                options: vec![
                    format!("--gpu-architecture={}", self.arch.replace("sm_", "compute_")),
                    "--std=c++17".into(),
                ],
                include_paths: include.clone(),
                name: Some(format!("{}.cu", m.name)),
                ..Default::default()
            };
            let source = format!("{}\n#line 1 \"{}.cu\"\n{}", super::kernel::COMMON, m.name, m.source);
            let ptx = cudarc::nvrtc::compile_ptx_with_opts(source, opts)
                .map_err(|e| CudaError::Compile(format!("{}.cu for {}: {e}", m.name, self.arch)))?;
            let module = self.ctx.load_module(ptx).map_err(drv("cuModuleLoadData"))?;
            for &k in m.kernels {
                let name = if k.typed() { format!("{}_{}", k.name(), dtype.suffix()) } else { k.name().to_string() };
                let func = module
                    .load_function(&name)
                    .map_err(|e| CudaError::Compile(format!("{}.cu has no kernel `{name}`: {e}", m.name)))?;
                let static_shared = func
                    .get_attribute(drv_sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
                    .map_err(drv("cuFuncGetAttribute(SHARED_SIZE_BYTES)"))?
                    .max(0) as u32;
                self.kernels.insert(k, (func, static_shared));
            }
        }
        Ok(())
    }

    /// A zeroed buffer of `len` elements (at least 256 bytes).
    pub fn alloc<T: Elem>(&mut self, len: usize) -> Result<Buf<T>, CudaError> {
        let len = len.max(256 / std::mem::size_of::<T>());
        let bytes = len * std::mem::size_of::<T>();
        let slice =
            self.stream.alloc_zeros::<T>(len).map_err(|e| CudaError::OutOfMemory(format!("{bytes} bytes: {e}")))?;
        let addr = {
            let (ptr, _sync) = slice.device_ptr(&self.stream);
            ptr
        };
        self.allocated += bytes;
        Ok(Buf { _slice: slice, addr, len })
    }

    pub fn upload<T: Elem>(&mut self, host: &[T]) -> Result<Buf<T>, CudaError> {
        let buf = self.alloc::<T>(host.len())?;
        self.write(&buf, 0, host)?;
        Ok(buf)
    }

    /// Host → device copy into `buf` at element `at` (synchronous with respect to the host data).
    pub fn write<T: Elem>(&self, buf: &Buf<T>, at: usize, host: &[T]) -> Result<(), CudaError> {
        let size = std::mem::size_of::<T>();
        let bytes = std::mem::size_of_val(host);
        if at + host.len() > buf.len {
            return Err(CudaError::Internal(format!(
                "write of {bytes} bytes at {} past a {}-byte buffer",
                at * size,
                buf.bytes()
            )));
        }
        // SAFETY: bounds checked above; the host slice is read before the call returns (the stream is
        // synchronized right after, so the host memory may be freed afterwards).
        unsafe {
            drv_sys::cuMemcpyHtoDAsync_v2(
                buf.at(at).addr,
                host.as_ptr() as *const c_void,
                bytes,
                self.stream.cu_stream(),
            )
            .result()
            .map_err(drv("cuMemcpyHtoDAsync"))?;
        }
        self.sync()
    }

    /// Device → host copy of the first `n` elements of `src` (waits for the stream).
    pub fn read<T: Elem>(&self, src: DevSlice<'_, T>, n: usize) -> Result<Vec<T>, CudaError> {
        let mut host = vec![T::default(); n];
        self.read_into(src, &mut host)?;
        Ok(host)
    }

    /// Device → host copy into a preallocated slice (waits for the stream; no allocation).
    pub fn read_into<T: Elem>(&self, src: DevSlice<'_, T>, host: &mut [T]) -> Result<(), CudaError> {
        if host.len() > src.len {
            return Err(CudaError::Internal(format!(
                "read of {} elements from a {}-element view",
                host.len(),
                src.len
            )));
        }
        // SAFETY: `src` holds at least host.len() elements (checked above) and `host` has room for
        // them; the copy completes before sync() returns.
        unsafe {
            drv_sys::cuMemcpyDtoHAsync_v2(
                host.as_mut_ptr() as *mut c_void,
                src.addr,
                std::mem::size_of_val(host),
                self.stream.cu_stream(),
            )
            .result()
            .map_err(drv("cuMemcpyDtoHAsync"))?;
        }
        self.sync()
    }

    /// Device → host copy of the first `n` elements of `src` into `dst`, enqueued on the stream
    /// (no wait).
    ///
    /// # Safety
    /// `dst` must be page-locked host memory with room for `n` elements that stays alive and is
    /// neither read nor written until the stream has passed this copy (an event recorded after it).
    pub unsafe fn read_async<T: Elem>(&self, src: DevSlice<'_, T>, dst: *mut T, n: usize) -> Result<(), CudaError> {
        if n > src.len {
            return Err(CudaError::Internal(format!("read of {n} elements from a {}-element view", src.len)));
        }
        // SAFETY: `src` holds at least n elements (checked above); the caller vouches for `dst`.
        unsafe {
            drv_sys::cuMemcpyDtoHAsync_v2(
                dst as *mut c_void,
                src.addr,
                n * std::mem::size_of::<T>(),
                self.stream.cu_stream(),
            )
            .result()
            .map_err(drv("cuMemcpyDtoHAsync"))
        }
    }

    /// Device → device copy of `n` elements on the stream (asynchronous).
    pub fn copy<T: Elem>(&self, dst: DevSlice<'_, T>, src: DevSlice<'_, T>, n: usize) -> Result<(), CudaError> {
        if n > dst.len || n > src.len {
            return Err(CudaError::Internal(format!(
                "copy of {n} elements between views of {} and {}",
                src.len, dst.len
            )));
        }
        // SAFETY: both views hold at least n elements of live buffers (checked above); the copy is
        // ordered on the stream like every other use of them.
        unsafe {
            drv_sys::cuMemcpyDtoDAsync_v2(dst.addr, src.addr, n * std::mem::size_of::<T>(), self.stream.cu_stream())
                .result()
                .map_err(drv("cuMemcpyDtoDAsync"))
        }
    }

    pub fn sync(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(drv("cuStreamSynchronize"))
    }

    /// Launches `kernel` (its dtype variant) on the stream.
    ///
    /// # Safety
    ///
    /// `args` must match the kernel's parameter list in kernels/*.cu: as many, in order, `Ptr`
    /// (or `Null` where the kernel accepts a null pointer) for a pointer to the element type the
    /// buffer holds, `I32` for int, `F32` for float, `I64` for long long, `U64` for unsigned long
    /// long. With this grid, block, dynamic shared memory and these arguments, the kernel must
    /// read and write only inside the buffers the `Ptr` arguments point into.
    pub unsafe fn launch(
        &self,
        kernel: Kernel,
        grid: (u32, u32, u32),
        block: u32,
        shared: u32,
        args: &[Arg<'_>],
    ) -> Result<(), CudaError> {
        let (func, static_shared) = self
            .kernels
            .get(&kernel)
            .ok_or_else(|| CudaError::Internal(format!("no kernel `{}` in the registry", kernel.name())))?;
        let slots: Vec<u64> = args.iter().map(|a| a.slot()).collect();
        // Above 48 KiB of static + dynamic shared memory a kernel must opt in (once is enough; the
        // calls are cheap and not stream operations, so they are allowed while a graph is captured).
        // The static part counts: decode_attn_mma_d64 asks for exactly 48 KiB dynamic plus 16 bytes
        // static, and failed with CUDA_ERROR_INVALID_VALUE when only the dynamic part was compared.
        // The limit is set to the most the device allows, not to this launch's size: a kernel
        // launched with several sizes (gemv_bulk: one per projection) must never have it lowered
        // below an earlier launch's, which a captured graph still replays.
        if shared + static_shared > 48 * 1024 {
            let most = (self.max_shared_per_block() as u32).saturating_sub(*static_shared).max(shared);
            func.set_attribute(
                drv_sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                most as i32,
            )
            .map_err(drv("cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)"))?;
            // The most shared memory (least L1) per SM, so two such blocks fit on an SM where
            // they can (the driver's default carveout may leave room for one).
            func.set_attribute(drv_sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 100)
                .map_err(drv("cuFuncSetAttribute(PREFERRED_SHARED_MEMORY_CARVEOUT)"))?;
        }
        if self.pdl {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            let mut attr = drv_sys::CUlaunchAttribute {
                id: drv_sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
                pad: [0; 4],
                value: drv_sys::CUlaunchAttributeValue { programmaticStreamSerializationAllowed: 1 },
            };
            let config = drv_sys::CUlaunchConfig {
                gridDimX: grid.0,
                gridDimY: grid.1,
                gridDimZ: grid.2,
                blockDimX: block,
                blockDimY: 1,
                blockDimZ: 1,
                sharedMemBytes: shared,
                hStream: self.stream.cu_stream(),
                attrs: &mut attr,
                numAttrs: 1,
            };
            // One pointer per parameter, each to a u64 slot whose low bytes hold the value (as cudarc's
            // builder passes them: the driver copies the parameter's size from it, little-endian).
            let mut params: Vec<*mut c_void> = slots.iter().map(|s| s as *const u64 as *mut c_void).collect();
            // SAFETY: the caller's contract (one slot per parameter, accesses inside the buffers); config
            // and attr outlive the call; every kernel starts with pdl_wait() (common.cuh, tested in
            // kernel.rs), so none touches memory before the kernel ahead of it has completed.
            unsafe {
                drv_sys::cuLaunchKernelEx(&config, func.cu_function(), params.as_mut_ptr(), std::ptr::null_mut())
                    .result()
                    .map_err(drv(kernel.name()))?;
            }
            return Ok(());
        }
        let mut b = self.stream.launch_builder(func);
        for s in &slots {
            b.arg(s);
        }
        let cfg = LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: shared };
        // SAFETY: the caller's contract (one slot per parameter, see Arg; accesses inside the buffers).
        unsafe { b.launch(cfg) }.map_err(drv(kernel.name()))?;
        Ok(())
    }

    /// Programmatic dependent launch for every kernel of ours (`launch`) from now on: each may be
    /// scheduled while the kernel ahead of it still runs (its launch latency hidden behind that
    /// kernel's tail) and waits in its first statement (common.cuh's pdl_wait) until that kernel's
    /// writes are visible. sm_90 or newer (griddepcontrol); captured into graphs as programmatic edges.
    pub fn set_pdl(&mut self, on: bool) {
        self.pdl = on;
    }

    pub fn pdl(&self) -> bool {
        self.pdl
    }

    /// Row-major C (m × n) = alpha · A (m × k, row stride lda) · Bᵀ, B being (n × k) with row stride
    /// ldb — a Hugging Face (out, in) weight — plus beta · C; C has row stride ldc.
    /// In cuBLAS's column-major terms: Cᵀ = op_T(B') · A' with B' = B viewed (k × n).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_nt<C: GemmOut>(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: (DevSlice<'_, Half>, usize),
        b: (DevSlice<'_, Half>, usize),
        c: (DevSlice<'_, C>, usize),
        alpha: f32,
        batch: Option<(usize, i64, i64, i64)>,
    ) -> Result<(), CudaError> {
        self.gemm(false, m, n, k, a, b, c, alpha, batch)
    }

    /// Row-major C (m × n) = alpha · A (m × k) · B (k × n), B with row stride ldb.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_nn<C: GemmOut>(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: (DevSlice<'_, Half>, usize),
        b: (DevSlice<'_, Half>, usize),
        c: (DevSlice<'_, C>, usize),
        alpha: f32,
        batch: Option<(usize, i64, i64, i64)>,
    ) -> Result<(), CudaError> {
        self.gemm(true, m, n, k, a, b, c, alpha, batch)
    }

    /// `batch`: (count, stride_a, stride_b, stride_c) in elements. Every operand's view must hold
    /// the elements the shapes span (checked: cuBLAS would read or write past it otherwise).
    #[allow(clippy::too_many_arguments)]
    fn gemm<C: GemmOut>(
        &self,
        b_nn: bool,
        m: usize,
        n: usize,
        k: usize,
        a: (DevSlice<'_, Half>, usize),
        b: (DevSlice<'_, Half>, usize),
        c: (DevSlice<'_, C>, usize),
        alpha: f32,
        batch: Option<(usize, i64, i64, i64)>,
    ) -> Result<(), CudaError> {
        let beta = 0.0f32;
        let (a, lda) = a;
        let (b, ldb) = b;
        let (c, ldc) = c;
        let (count, sa, sb, sc) = batch.unwrap_or((1, 0, 0, 0));
        let (b_rows, b_cols) = if b_nn { (k, n) } else { (n, k) };
        for (what, len, span) in [
            ("A", a.len, gemm_span(m, k, lda, count, sa)),
            ("B", b.len, gemm_span(b_rows, b_cols, ldb, count, sb)),
            ("C", c.len, gemm_span(m, n, ldc, count, sc)),
        ] {
            if span.is_none_or(|s| s > len) {
                return Err(CudaError::Internal(format!(
                    "GEMM {m}×{n}×{k}: operand {what} spans {span:?} elements of a {len}-element view"
                )));
            }
        }
        let op_b =
            if b_nn { blas_sys::cublasOperation_t::CUBLAS_OP_N } else { blas_sys::cublasOperation_t::CUBLAS_OP_T };
        let (at, bt) = (self.dtype.blas(), self.dtype.blas());
        let ct = if C::F32 { blas_sys::cudaDataType::CUDA_R_32F } else { self.dtype.blas() };
        let (ap, bp, cp) = (a.addr, b.addr, c.addr);
        let n_ = blas_sys::cublasOperation_t::CUBLAS_OP_N;
        let compute = blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let algo = blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP;
        // Row-major C = A·op(B)  ⇔  column-major Cᵀ = op(B)ᵀ'·Aᵀ: cuBLAS's "A" is our B, its "B" our A.
        // SAFETY: every operand lies inside its view for these shapes (checked above), the views
        // inside live buffers; alpha/beta are host scalars (default pointer mode).
        let status = unsafe {
            match batch {
                None => blas_sys::cublasGemmEx(
                    self.blas,
                    op_b,
                    n_,
                    n as i32,
                    m as i32,
                    k as i32,
                    &alpha as *const f32 as *const c_void,
                    bp as *const c_void,
                    bt,
                    ldb as i32,
                    ap as *const c_void,
                    at,
                    lda as i32,
                    &beta as *const f32 as *const c_void,
                    cp as *mut c_void,
                    ct,
                    ldc as i32,
                    compute,
                    algo,
                ),
                Some((count, sa, sb, sc)) => blas_sys::cublasGemmStridedBatchedEx(
                    self.blas,
                    op_b,
                    n_,
                    n as i32,
                    m as i32,
                    k as i32,
                    &alpha as *const f32 as *const c_void,
                    bp as *const c_void,
                    bt,
                    ldb as i32,
                    sb,
                    ap as *const c_void,
                    at,
                    lda as i32,
                    sa,
                    &beta as *const f32 as *const c_void,
                    cp as *mut c_void,
                    ct,
                    ldc as i32,
                    sc,
                    count as i32,
                    compute,
                    algo,
                ),
            }
        };
        blas_ok("cublasGemmEx", status)
    }

    /// A timing event (CU_EVENT_DEFAULT).
    pub fn event(&self) -> Result<CudaEvent, CudaError> {
        self.ctx.new_event(Some(drv_sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(drv("cuEventCreate"))
    }

    /// Records `event` on the stream; while the stream is captured, with CU_EVENT_RECORD_EXTERNAL:
    /// inside a capture a plain record only orders the graph's nodes, this flag makes it a real
    /// event-record node that timing can read after each launch (outside a capture the flag is
    /// refused: CUDA_ERROR_ILLEGAL_STATE).
    pub fn record_external(&self, event: &CudaEvent) -> Result<(), CudaError> {
        let mut status = drv_sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
        // SAFETY: the stream belongs to this GPU's context and is alive (borrowed); status is a
        // valid place for the answer.
        unsafe { drv_sys::cuStreamIsCapturing(self.stream.cu_stream(), &mut status) }
            .result()
            .map_err(|e| CudaError::Driver(format!("cuStreamIsCapturing: {e}")))?;
        let flags = if status == drv_sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE {
            drv_sys::CUevent_record_flags::CU_EVENT_RECORD_EXTERNAL as u32
        } else {
            0
        };
        // SAFETY: the event and the stream belong to this GPU's context and are alive (borrowed).
        unsafe {
            drv_sys::cuEventRecordWithFlags(event.cu_event(), self.stream.cu_stream(), flags)
                .result()
                .map_err(|e| CudaError::Driver(format!("cuEventRecordWithFlags: {e}")))
        }
    }

    /// Starts capturing the stream's work into a CUDA graph (relaxed mode).
    pub fn begin_capture(&self) -> Result<(), DriverError> {
        self.stream.begin_capture(drv_sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
    }

    /// Ends the capture and instantiates the graph (no flags). The graph holds the device addresses
    /// it was captured with: it must be dropped before the buffers they point into.
    pub fn end_capture(&self) -> Result<Option<CudaGraph>, DriverError> {
        self.stream.end_capture(drv_sys::CUgraphInstantiate_flags(0))
    }

    /// The device's streaming multiprocessors (108, an A100's, if the driver does not say).
    pub fn sm_count(&self) -> usize {
        self.ctx.attribute(drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).unwrap_or(108)
            as usize
    }

    /// The most shared memory one block may ask for (after the opt-in; 48 KiB if the driver does not say).
    pub fn max_shared_per_block(&self) -> usize {
        self.ctx
            .attribute(drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .unwrap_or(48 * 1024) as usize
    }

    /// Shared memory per SM (the blocks resident on one SM share it; 100 KiB if the driver does not say).
    pub fn shared_per_sm(&self) -> usize {
        self.ctx
            .attribute(drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)
            .unwrap_or(100 * 1024) as usize
    }

    /// Free and total device memory from the driver.
    pub fn mem_info(&self) -> Result<(usize, usize), CudaError> {
        self.ctx.mem_get_info().map_err(drv("cuMemGetInfo"))
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
        // SAFETY: the handle was created in open() and is destroyed once.
        unsafe {
            blas_sys::cublasDestroy_v2(self.blas);
        }
    }
}

/// NCCL on this rank's stream, owned (destroyed on Drop).
///
/// Not cudarc's safe `nccl::Comm`, though its collectives would fit how the engine uses them (they
/// take any `DevicePtrMut`, so a view into one arena works in place; they run on the stream the
/// communicator was made with, so they are captured into the CUDA graph): its Drop calls
/// `ncclCommAbort` and panics if that fails (`expect`), where this engine synchronizes its stream
/// and calls `ncclCommDestroy`, ignoring a failure at teardown, and `Comm` does not give its raw
/// handle back to do that instead. (Its f16/bf16 collectives also need cudarc's `f16` feature.)
/// So the raw calls stay, here, behind safe methods that take typed views and check their bounds.
pub struct Nccl {
    comm: nccl_sys::ncclComm_t,
    stream: Arc<CudaStream>,
    pub world: usize,
    pub bytes: usize,
}

impl Nccl {
    pub fn init(gpu: &Gpu, rank: usize, world: usize, id: &[u8]) -> Result<Nccl, CudaError> {
        if id.len() != 128 {
            return Err(CudaError::Nccl(format!("the NCCL unique id has {} bytes, expected 128", id.len())));
        }
        let mut internal = [0 as std::ffi::c_char; 128];
        for (d, s) in internal.iter_mut().zip(id) {
            *d = *s as std::ffi::c_char;
        }
        let before = gpu.mem_info().map(|(free, _)| free).unwrap_or(0);
        let mut comm: nccl_sys::ncclComm_t = std::ptr::null_mut();
        gpu.ctx.bind_to_thread().map_err(drv("bind context"))?;
        // SAFETY: `comm` receives the new communicator; the id is the one rank 0 created.
        unsafe {
            cudarc::nccl::result::comm_init_rank(
                &mut comm,
                world as i32,
                nccl_sys::ncclUniqueId { internal },
                rank as i32,
            )
        }
        .map_err(|e| CudaError::Nccl(format!("ncclCommInitRank (rank {rank} of {world}): {e:?}")))?;
        let after = gpu.mem_info().map(|(free, _)| free).unwrap_or(0);
        Ok(Nccl { comm, stream: gpu.stream.clone(), world, bytes: before.saturating_sub(after) })
    }

    /// In-place sum over ranks of the first `count` elements of `buf` (of the engine's `dtype`).
    /// Every rank must call it with the same count (a collective).
    pub fn all_reduce(&self, buf: DevSlice<'_, Half>, count: usize, dtype: Dtype) -> Result<(), CudaError> {
        if self.world == 1 {
            return Ok(());
        }
        if count > buf.len {
            return Err(CudaError::Internal(format!("all-reduce of {count} elements in a {}-element view", buf.len)));
        }
        let ptr = buf.addr;
        // SAFETY: ptr addresses at least `count` elements of a live buffer on this rank's device
        // (checked above), of the dtype given; the communicator and the stream are the engine's.
        unsafe {
            cudarc::nccl::result::all_reduce(
                ptr as *const c_void,
                ptr as *mut c_void,
                count,
                dtype.nccl(),
                nccl_sys::ncclRedOp_t::ncclSum,
                self.comm,
                self.stream.cu_stream() as _,
            )
        }
        .map(|_| ())
        .map_err(|e| CudaError::Nccl(format!("ncclAllReduce: {e:?}")))
    }

    /// Gathers the first `count` elements of `src` from every rank into `dst` (rank-major), as
    /// bytes. Every rank must call it with the same count (a collective).
    pub fn all_gather<T: Elem>(
        &self,
        src: DevSlice<'_, T>,
        dst: DevSlice<'_, T>,
        count: usize,
    ) -> Result<(), CudaError> {
        if count > src.len || self.world * count > dst.len {
            return Err(CudaError::Internal(format!(
                "all-gather of {count} elements × {} ranks from a {}-element view into a {}-element one",
                self.world, src.len, dst.len
            )));
        }
        let bytes = count * std::mem::size_of::<T>();
        // SAFETY: src holds `bytes`, dst world × bytes (checked above), both live on this device.
        unsafe {
            cudarc::nccl::result::all_gather(
                src.addr as *const c_void,
                dst.addr as *mut c_void,
                bytes,
                nccl_sys::ncclDataType_t::ncclUint8,
                self.comm,
                self.stream.cu_stream() as _,
            )
        }
        .map(|_| ())
        .map_err(|e| CudaError::Nccl(format!("ncclAllGather: {e:?}")))
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
        // SAFETY: created in init(), destroyed once, no work pending (synchronized above).
        unsafe {
            let _ = cudarc::nccl::result::comm_destroy(self.comm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_fill_the_low_bytes() {
        assert_eq!(Arg::I32(-1).slot(), 0xffff_ffff);
        assert_eq!(Arg::F32(1.0).slot(), 0x3f80_0000);
        assert_eq!(Arg::Ptr(DevAddr { addr: 0xdead_beef_0000, _buf: PhantomData }).slot(), 0xdead_beef_0000);
        assert_eq!(Arg::Null.slot(), 0);
    }

    #[test]
    fn views_narrow_inside_their_buffer() {
        let v: DevSlice<'_, f32> = DevSlice { addr: 0x1000, len: 10, _buf: PhantomData };
        let w = v.at(4);
        assert_eq!((w.addr, w.len), (0x1010, 6));
        assert_eq!(v.at(10).len(), 0);
        assert!(v.aligned(16) && !w.aligned(32));
        assert!(std::panic::catch_unwind(|| v.at(11)).is_err());
    }

    #[test]
    fn gemm_spans_cover_rows_strides_and_batches() {
        // 3 × 4 with row stride 5: two full strides and one row.
        assert_eq!(gemm_span(3, 4, 5, 1, 0), Some(14));
        // Batched: 2 more matrices 100 elements apart.
        assert_eq!(gemm_span(3, 4, 5, 3, 100), Some(214));
        assert_eq!(gemm_span(0, 4, 5, 3, 100), Some(0));
        assert_eq!(gemm_span(3, 4, 5, 2, -1), None);
    }

    #[test]
    fn halves_are_their_bits() {
        assert_eq!(Half::from_bits(&[0x3c00, 1]), &[Half(0x3c00), Half(1)]);
    }
}
