//! CUDA launchers of the custom ops (feature `cuda`).
//!
//! The kernels live in `crates/dmae-core/kernels/*.cu`; `build.rs` compiles each file to PTX in
//! `OUT_DIR`, embedded here with `include_str!` and loaded once per device through candle's
//! `get_or_load_custom_func` (module names are prefixed `dmae_` so they cannot collide with candle's).
//!
//! Conventions shared with the kernels (see `kernels/common.cuh`): every size, index, offset and
//! stride argument is a `u64`, every scalar float an `f32`, and every pointer already points at the
//! operand's first element (the launcher slices the storage at the layout's offset). Float kernels
//! exist per dtype (`_f32`, `_bf16`, `_f16`), compute in f32 and store in the input dtype; pure copies
//! exist per element size (`_u8`, `_u16`, `_u32`, `_u64`), whatever the dtype.

use candle_core::cuda::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig, ValidAsZeroBits,
};
use candle_core::cuda::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, Result, Shape, Storage, Tensor};
use half::{bf16, f16};

mod ptx {
    pub const LAYER_NORM: &str = include_str!(concat!(env!("OUT_DIR"), "/layer_norm.ptx"));
    pub const SOFTMAX: &str = include_str!(concat!(env!("OUT_DIR"), "/softmax.ptx"));
    pub const GELU: &str = include_str!(concat!(env!("OUT_DIR"), "/gelu.ptx"));
    pub const ATTENTION: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
    pub const TOKENS: &str = include_str!(concat!(env!("OUT_DIR"), "/tokens.ptx"));
    pub const PATCH: &str = include_str!(concat!(env!("OUT_DIR"), "/patch.ptx"));
    pub const ADAMW: &str = include_str!(concat!(env!("OUT_DIR"), "/adamw.ptx"));
}

/// One PTX module: the name it is cached under on the device, and its text.
struct Module(&'static str, &'static str);

const LAYER_NORM: Module = Module("dmae_layer_norm", ptx::LAYER_NORM);
const SOFTMAX: Module = Module("dmae_softmax", ptx::SOFTMAX);
const GELU: Module = Module("dmae_gelu", ptx::GELU);
const ATTENTION: Module = Module("dmae_attention", ptx::ATTENTION);
const TOKENS: Module = Module("dmae_tokens", ptx::TOKENS);
const PATCH: Module = Module("dmae_patch", ptx::PATCH);
const ADAMW: Module = Module("dmae_adamw", ptx::ADAMW);

/// Warps per block of the attention kernels (`WARPS` in attention.cu).
const ATTN_WARPS: u32 = 4;
/// Largest head dim the attention kernels take (`MAXD` in attention.cu).
const ATTN_MAXD: usize = 256;
/// Threads per block of the element-wise (grid-stride) kernels.
const EW_BLOCK: u32 = 256;
/// Cap on the grid of grid-stride and row-loop kernels (they loop over the rest).
const MAX_GRID: usize = 1 << 20;

/// A float dtype the kernels are instantiated for.
pub(crate) trait Float: CudaDType + DeviceRepr + ValidAsZeroBits + Copy + 'static {
    /// Kernel-name suffix.
    const NAME: &'static str;
}

impl Float for f32 {
    const NAME: &'static str = "f32";
}
impl Float for bf16 {
    const NAME: &'static str = "bf16";
}
impl Float for f16 {
    const NAME: &'static str = "f16";
}

/// Runs `$f::<T>(args)` for the float dtype `$dtype`, or fails naming the op and dtype.
macro_rules! dispatch_float {
    ($op:expr, $dtype:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $dtype {
            candle_core::DType::F32 => $f::<f32>($($arg),*),
            candle_core::DType::BF16 => $f::<half::bf16>($($arg),*),
            candle_core::DType::F16 => $f::<half::f16>($($arg),*),
            other => candle_core::bail!("{}: unsupported dtype {:?} on CUDA (f32, bf16 or f16)", $op, other),
        }
    };
}

/// Runs `$f::<T>(args)` for any dtype a pure copy kernel handles (those move raw bits, so the kernel
/// is picked by element size, see [`bits`]).
macro_rules! dispatch_copy {
    ($op:expr, $dtype:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $dtype {
            candle_core::DType::U8 => $f::<u8>($($arg),*),
            candle_core::DType::U32 => $f::<u32>($($arg),*),
            candle_core::DType::I64 => $f::<i64>($($arg),*),
            candle_core::DType::BF16 => $f::<half::bf16>($($arg),*),
            candle_core::DType::F16 => $f::<half::f16>($($arg),*),
            candle_core::DType::F32 => $f::<f32>($($arg),*),
            candle_core::DType::F64 => $f::<f64>($($arg),*),
            other => candle_core::bail!("{}: unsupported dtype {:?} on CUDA", $op, other),
        }
    };
}

/// Kernel-name suffix of the raw-bit copy kernels for elements of type `T`.
fn bits<T>() -> &'static str {
    match std::mem::size_of::<T>() {
        1 => "u8",
        2 => "u16",
        4 => "u32",
        _ => "u64",
    }
}

fn load(dev: &CudaDevice, m: &Module, name: &str) -> Result<CudaFunction> {
    Ok(dev
        .get_or_load_custom_func(name, m.0, m.1)?
        .into_cuda_function())
}

/// An uninitialised device buffer of `n` elements (at least one: CUDA rejects empty allocations).
fn alloc<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every caller's kernel writes all `n` elements before they are read.
    unsafe { dev.alloc::<T>(n.max(1)) }
}

fn zeros<T: DeviceRepr + ValidAsZeroBits>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    dev.alloc_zeros::<T>(n.max(1))
}

/// `n` elements of `s` from `off`, as `T` (fails naming `op` if the storage holds another dtype).
fn view<'a, T: CudaDType>(
    s: &'a CudaStorage,
    off: usize,
    n: usize,
    op: &str,
) -> Result<CudaView<'a, T>> {
    let c = s.as_cuda_slice::<T>()?;
    if off + n > c.len() {
        candle_core::bail!(
            "{op}: internal error: {n} elements from offset {off} exceed a buffer of {}",
            c.len()
        );
    }
    Ok(c.slice(off..off + n))
}

/// Launch configuration of a grid-stride kernel over `n` elements.
fn cfg_elems(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(EW_BLOCK as usize).clamp(1, MAX_GRID);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (EW_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row (rows beyond the grid cap are looped over), a multiple of 32 threads up to 256.
fn cfg_rows(rows: usize, cols: usize) -> LaunchConfig {
    let threads = cols.next_multiple_of(32).clamp(32, 256);
    LaunchConfig {
        grid_dim: (rows.clamp(1, MAX_GRID) as u32, 1, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Wraps kernel output as a tensor outside the autograd graph (used for gradients).
pub(crate) fn tensor(s: CudaStorage, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_storage(Storage::Cuda(s), shape, BackpropOp::none(), false)
}

fn wrap<T: CudaDType>(s: CudaSlice<T>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(s, dev.clone())
}

// ---------------------------------------------------------------------------------------------
// Layer norm, softmax, GELU

mod layer_norm;
pub(crate) use layer_norm::{layer_norm_bwd, layer_norm_fwd};

mod softmax;
pub(crate) use softmax::{softmax_bwd, softmax_fwd};

mod gelu;
pub(crate) use gelu::{gelu_bwd, gelu_fwd};

// ---------------------------------------------------------------------------------------------
// Attention

mod attention;
pub(crate) use attention::{attention_bwd, attention_fwd};

// ---------------------------------------------------------------------------------------------
// Tokens, patches, AdamW

mod tokens;
pub(crate) use tokens::{gather_tokens, scatter_add_tokens, scatter_tokens, zero_rows};

mod patch;
pub(crate) use patch::patchify;

mod adamw;
pub(crate) use adamw::{
    adamw_step, moments_from_tensors, moments_to_tensors, moments_zeros, CudaMoments,
};
