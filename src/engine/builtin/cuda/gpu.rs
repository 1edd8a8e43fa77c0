//! The GPU of one rank, fenced: context and stream, device buffers, the NVRTC-compiled kernel
//! registry, cuBLAS GEMMs and the NCCL communicator. Every raw CUDA/cuBLAS/NCCL call of the cuda
//! engine lives in this file; the model code above it only sees `Gpu`, `Buf` and `Dtype`.
//!
//! One stream per rank and event tracking off: all work is ordered on that stream, which also makes
//! it capturable into a CUDA graph (cudarc's per-buffer events would be recorded inside the capture).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::sys as blas_sys;
use cudarc::driver::{sys as drv_sys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use cudarc::nccl::sys as nccl_sys;

use super::CudaError;

/// The element type of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F16,
    Bf16,
}

impl Dtype {
    pub fn suffix(self) -> &'static str {
        match self {
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }
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

/// Element type of a GEMM operand or result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum El {
    T(Dtype),
    F32,
}

impl El {
    fn blas(self) -> blas_sys::cudaDataType {
        match self {
            El::T(d) => d.blas(),
            El::F32 => blas_sys::cudaDataType::CUDA_R_32F,
        }
    }
}

/// A device allocation with its raw address (taken once; event tracking is off).
pub struct Buf {
    _slice: CudaSlice<u8>,
    pub ptr: u64,
    pub bytes: usize,
}

impl Buf {
    /// The address `bytes` into the buffer.
    pub fn at(&self, bytes: usize) -> u64 {
        debug_assert!(bytes <= self.bytes);
        self.ptr + bytes as u64
    }
}

/// A kernel argument: every kind travels as one 8-byte slot; cuLaunchKernel copies as many bytes
/// as the kernel's parameter has from the slot's start (little-endian x86-64 / aarch64), so a 4-byte
/// int or float sits in the low half.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    F32(f32),
    U64(u64),
    I64(i64),
}

impl Arg {
    fn slot(self) -> u64 {
        match self {
            Arg::Ptr(p) | Arg::U64(p) => p,
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
    _blas_workspace: Option<Buf>,
    kernels: HashMap<String, CudaFunction>,
    pub allocated: usize,
    pub arch: String,
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

fn drv(what: &str) -> impl Fn(cudarc::driver::DriverError) -> CudaError + '_ {
    move |e| CudaError::Driver(format!("{what}: {e}"))
}

fn blas_ok(what: &str, s: blas_sys::cublasStatus_t) -> Result<(), CudaError> {
    if s == blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Blas(format!("{what}: {s:?}")))
    }
}

impl Gpu {
    /// Opens device `ordinal`, compiles the kernel sources for its architecture.
    pub fn open(ordinal: usize, modules: &[Module], dtype: Dtype) -> Result<Gpu, CudaError> {
        check_libraries()?;
        let ctx = CudaContext::new(ordinal).map_err(drv("cuCtxCreate"))?;
        // SAFETY: this engine uses exactly one stream, so there is no cross-stream ordering for
        // cudarc's events to manage, and no buffer is freed while work on it is pending (the engine
        // synchronizes before dropping buffers).
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
        let mut gpu = Gpu { ctx, stream, blas, _blas_workspace: None, kernels: HashMap::new(), allocated: 0, arch };
        // A workspace of our own so cuBLAS never allocates inside a graph capture.
        let ws = gpu.alloc(32 << 20)?;
        // SAFETY: the workspace buffer lives as long as the handle (both owned by Gpu).
        unsafe { blas_ok("cublasSetWorkspace", blas_sys::cublasSetWorkspace_v2(gpu.blas, ws.ptr as *mut c_void, ws.bytes))? };
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
                options: vec![format!("--gpu-architecture={}", self.arch.replace("sm_", "compute_")), "--std=c++17".into()],
                include_paths: include.clone(),
                name: Some(format!("{}.cu", m.name)),
                ..Default::default()
            };
            let source = format!("{}\n#line 1 \"{}.cu\"\n{}", super::COMMON, m.name, m.source);
            let ptx = cudarc::nvrtc::compile_ptx_with_opts(source, opts)
                .map_err(|e| CudaError::Compile(format!("{}.cu for {}: {e}", m.name, self.arch)))?;
            let module = self.ctx.load_module(ptx).map_err(drv("cuModuleLoadData"))?;
            for &(base, typed) in m.kernels {
                let name = if typed { format!("{base}_{}", dtype.suffix()) } else { base.to_string() };
                let func = module.load_function(&name).map_err(|e| CudaError::Compile(format!("{}.cu has no kernel `{name}`: {e}", m.name)))?;
                self.kernels.insert(base.to_string(), func);
            }
        }
        Ok(())
    }

    pub fn alloc(&mut self, bytes: usize) -> Result<Buf, CudaError> {
        let bytes = bytes.max(256);
        let slice = self.stream.alloc_zeros::<u8>(bytes).map_err(|e| CudaError::OutOfMemory(format!("{bytes} bytes: {e}")))?;
        let ptr = {
            let (ptr, _sync) = slice.device_ptr(&self.stream);
            ptr
        };
        self.allocated += bytes;
        Ok(Buf { _slice: slice, ptr, bytes })
    }

    pub fn upload<T: cudarc::driver::DeviceRepr>(&mut self, host: &[T]) -> Result<Buf, CudaError> {
        let buf = self.alloc(std::mem::size_of_val(host))?;
        self.write(&buf, 0, host)?;
        Ok(buf)
    }

    /// Host → device copy into `buf` at byte offset `at` (synchronous with respect to the host data).
    pub fn write<T>(&self, buf: &Buf, at: usize, host: &[T]) -> Result<(), CudaError> {
        let bytes = std::mem::size_of_val(host);
        if at + bytes > buf.bytes {
            return Err(CudaError::Internal(format!("write of {bytes} bytes at {at} past a {}-byte buffer", buf.bytes)));
        }
        // SAFETY: bounds checked above; the host slice is read before the call returns (the stream is
        // synchronized right after, so the host memory may be freed afterwards).
        unsafe {
            drv_sys::cuMemcpyHtoDAsync_v2(buf.at(at), host.as_ptr() as *const c_void, bytes, self.stream.cu_stream())
                .result()
                .map_err(drv("cuMemcpyHtoDAsync"))?;
        }
        self.sync()
    }

    /// Device → host copy (waits for the stream).
    pub fn read<T: Copy + Default>(&self, ptr: u64, n: usize) -> Result<Vec<T>, CudaError> {
        let mut host = vec![T::default(); n];
        // SAFETY: `host` has room for n elements; the copy completes before sync() returns.
        unsafe {
            drv_sys::cuMemcpyDtoHAsync_v2(host.as_mut_ptr() as *mut c_void, ptr, n * std::mem::size_of::<T>(), self.stream.cu_stream())
                .result()
                .map_err(drv("cuMemcpyDtoHAsync"))?;
        }
        self.sync()?;
        Ok(host)
    }

    /// Device → host copy into a preallocated slice (waits for the stream; no allocation).
    pub fn read_into<T: Copy>(&self, ptr: u64, host: &mut [T]) -> Result<(), CudaError> {
        // SAFETY: `host` has room for host.len() elements; the copy completes before sync() returns.
        unsafe {
            drv_sys::cuMemcpyDtoHAsync_v2(host.as_mut_ptr() as *mut c_void, ptr, std::mem::size_of_val(host), self.stream.cu_stream())
                .result()
                .map_err(drv("cuMemcpyDtoHAsync"))?;
        }
        self.sync()
    }

    /// Device → device copy on the stream (asynchronous).
    pub fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<(), CudaError> {
        // SAFETY: callers pass addresses inside live buffers of at least `bytes`.
        unsafe {
            drv_sys::cuMemcpyDtoDAsync_v2(dst, src, bytes, self.stream.cu_stream()).result().map_err(drv("cuMemcpyDtoDAsync"))
        }
    }

    pub fn sync(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(drv("cuStreamSynchronize"))
    }

    /// Launches kernel `name` (its base name, without the dtype suffix) on the stream.
    pub fn launch(&self, name: &str, grid: (u32, u32, u32), block: u32, shared: u32, args: &[Arg]) -> Result<(), CudaError> {
        let func = self.kernels.get(name).ok_or_else(|| CudaError::Internal(format!("no kernel `{name}` in the registry")))?;
        let slots: Vec<u64> = args.iter().map(|a| a.slot()).collect();
        let mut b = self.stream.launch_builder(func);
        for s in &slots {
            b.arg(s);
        }
        if shared > 48 * 1024 {
            // Above 48 KiB of dynamic shared memory a kernel must opt in (once is enough; the call
            // is cheap and not a stream operation, so it is allowed while a graph is captured).
            func.set_attribute(cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, shared as i32)
                .map_err(drv("cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)"))?;
        }
        let cfg = LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: shared };
        // SAFETY: the argument list matches the kernel's signature in kernels/*.cu (one slot per
        // parameter, see Arg), every pointer addresses a live buffer of the size the kernel reads.
        unsafe { b.launch(cfg) }.map_err(drv(name))?;
        Ok(())
    }

    /// Row-major C (m × n) = alpha · A (m × k, row stride lda) · Bᵀ, B being (n × k) with row stride
    /// ldb — a Hugging Face (out, in) weight — plus beta · C; C has row stride ldc.
    /// In cuBLAS's column-major terms: Cᵀ = op_T(B') · A' with B' = B viewed (k × n).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_nt(&self, m: usize, n: usize, k: usize, a: (u64, El, usize), b: (u64, El, usize), c: (u64, El, usize), alpha: f32, batch: Option<(usize, i64, i64, i64)>) -> Result<(), CudaError> {
        self.gemm(blas_sys::cublasOperation_t::CUBLAS_OP_T, m, n, k, a, b, c, alpha, batch)
    }

    /// Row-major C (m × n) = alpha · A (m × k) · B (k × n), B with row stride ldb.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_nn(&self, m: usize, n: usize, k: usize, a: (u64, El, usize), b: (u64, El, usize), c: (u64, El, usize), alpha: f32, batch: Option<(usize, i64, i64, i64)>) -> Result<(), CudaError> {
        self.gemm(blas_sys::cublasOperation_t::CUBLAS_OP_N, m, n, k, a, b, c, alpha, batch)
    }

    /// `batch`: (count, stride_a, stride_b, stride_c) in elements.
    #[allow(clippy::too_many_arguments)]
    fn gemm(&self, op_b: blas_sys::cublasOperation_t, m: usize, n: usize, k: usize, a: (u64, El, usize), b: (u64, El, usize), c: (u64, El, usize), alpha: f32, batch: Option<(usize, i64, i64, i64)>) -> Result<(), CudaError> {
        let beta = 0.0f32;
        let (ap, at, lda) = a;
        let (bp, bt, ldb) = b;
        let (cp, ct, ldc) = c;
        let n_ = blas_sys::cublasOperation_t::CUBLAS_OP_N;
        let compute = blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let algo = blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP;
        // Row-major C = A·op(B)  ⇔  column-major Cᵀ = op(B)ᵀ'·Aᵀ: cuBLAS's "A" is our B, its "B" our A.
        // SAFETY: pointers address live device buffers sized for these shapes (the model code
        // allocates them from the same dimensions); alpha/beta are host scalars (default pointer mode).
        let status = unsafe {
            match batch {
                None => blas_sys::cublasGemmEx(
                    self.blas, op_b, n_, n as i32, m as i32, k as i32,
                    &alpha as *const f32 as *const c_void,
                    bp as *const c_void, bt.blas(), ldb as i32,
                    ap as *const c_void, at.blas(), lda as i32,
                    &beta as *const f32 as *const c_void,
                    cp as *mut c_void, ct.blas(), ldc as i32,
                    compute, algo,
                ),
                Some((count, sa, sb, sc)) => blas_sys::cublasGemmStridedBatchedEx(
                    self.blas, op_b, n_, n as i32, m as i32, k as i32,
                    &alpha as *const f32 as *const c_void,
                    bp as *const c_void, bt.blas(), ldb as i32, sb,
                    ap as *const c_void, at.blas(), lda as i32, sa,
                    &beta as *const f32 as *const c_void,
                    cp as *mut c_void, ct.blas(), ldc as i32, sc,
                    count as i32, compute, algo,
                ),
            }
        };
        blas_ok("cublasGemmEx", status)
    }

    /// A timing event (CU_EVENT_DEFAULT).
    pub fn event(&self) -> Result<cudarc::driver::CudaEvent, CudaError> {
        self.ctx.new_event(Some(drv_sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(drv("cuEventCreate"))
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

/// One .cu source of kernels/ and the kernels it must define: (base name, has `_f16`/`_bf16` variants).
pub struct Module {
    pub name: &'static str,
    pub source: &'static str,
    pub kernels: &'static [(&'static str, bool)],
}

/// NCCL on this rank's stream, owned (destroyed on Drop).
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
        unsafe { cudarc::nccl::result::comm_init_rank(&mut comm, world as i32, nccl_sys::ncclUniqueId { internal }, rank as i32) }
            .map_err(|e| CudaError::Nccl(format!("ncclCommInitRank (rank {rank} of {world}): {e:?}")))?;
        let after = gpu.mem_info().map(|(free, _)| free).unwrap_or(0);
        Ok(Nccl { comm, stream: gpu.stream.clone(), world, bytes: before.saturating_sub(after) })
    }

    /// In-place sum over ranks of `count` elements of `dtype` at `ptr`.
    pub fn all_reduce(&self, ptr: u64, count: usize, dtype: Dtype) -> Result<(), CudaError> {
        if self.world == 1 {
            return Ok(());
        }
        // SAFETY: ptr addresses `count` elements on this rank's device; the stream is the engine's.
        unsafe {
            cudarc::nccl::result::all_reduce(ptr as *const c_void, ptr as *mut c_void, count, dtype.nccl(), nccl_sys::ncclRedOp_t::ncclSum, self.comm, self.stream.cu_stream() as _)
        }
        .map(|_| ())
        .map_err(|e| CudaError::Nccl(format!("ncclAllReduce: {e:?}")))
    }

    /// Gathers `bytes` bytes from every rank into `dst` (rank-major).
    pub fn all_gather_bytes(&self, src: u64, dst: u64, bytes: usize) -> Result<(), CudaError> {
        // SAFETY: src holds `bytes`, dst world × bytes, both on this device.
        unsafe {
            cudarc::nccl::result::all_gather(src as *const c_void, dst as *mut c_void, bytes, nccl_sys::ncclDataType_t::ncclUint8, self.comm, self.stream.cu_stream() as _)
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
        assert_eq!(Arg::Ptr(0xdead_beef_0000).slot(), 0xdead_beef_0000);
    }
}
