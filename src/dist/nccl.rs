//! NCCL, loaded at run time: the entry points data-parallel training calls, with every failure a
//! Rust error that names this rank and NCCL's own explanation.
//!
//! The library is opened here rather than through cudarc's NCCL module because cudarc looks for
//! `libnccl.so` and versioned names NCCL does not ship, not `libnccl.so.2` (the name the NCCL
//! packages install), and panics when none is found; this loader gives a clean error instead.
//! The types and values follow NCCL's `nccl.h` (the same as cudarc's `nccl::sys`).

use anyhow::{anyhow, bail, Result};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

pub type RawComm = *mut c_void;
type Stream = *mut c_void;
/// `ncclResult_t`: 0 success, 7 in progress.
type NcclResult = c_int;
const SUCCESS: NcclResult = 0;
const IN_PROGRESS: NcclResult = 7;
/// `ncclFloat32`, `ncclFloat64`, `ncclBfloat16` and `ncclSum`.
pub const FLOAT32: c_int = 7;
pub const FLOAT64: c_int = 8;
pub const BFLOAT16: c_int = 9;
pub const SUM: c_int = 0;

/// `ncclUniqueId`: 128 opaque bytes rank 0 makes and hands to the others.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId(pub [c_char; 128]);

/// The library names tried, the packaged soname first.
pub const LIBRARY_NAMES: [&str; 2] = ["libnccl.so.2", "libnccl.so"];

#[allow(non_snake_case)]
pub struct Api {
    _lib: libloading::Library,
    pub ncclGetUniqueId: unsafe extern "C" fn(*mut UniqueId) -> NcclResult,
    pub ncclCommInitRank: unsafe extern "C" fn(*mut RawComm, c_int, UniqueId, c_int) -> NcclResult,
    pub ncclCommAbort: unsafe extern "C" fn(RawComm) -> NcclResult,
    pub ncclCommGetAsyncError: unsafe extern "C" fn(RawComm, *mut NcclResult) -> NcclResult,
    pub ncclGetErrorString: unsafe extern "C" fn(NcclResult) -> *const c_char,
    pub ncclGetLastError: unsafe extern "C" fn(RawComm) -> *const c_char,
    pub ncclGroupStart: unsafe extern "C" fn() -> NcclResult,
    pub ncclGroupEnd: unsafe extern "C" fn() -> NcclResult,
    pub ncclAllReduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, RawComm, Stream) -> NcclResult,
    pub ncclReduceScatter: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, RawComm, Stream) -> NcclResult,
    pub ncclAllGather: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, RawComm, Stream) -> NcclResult,
}

/// The loaded library, or why it could not be loaded (one line).
pub fn api() -> Result<&'static Api> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(|e| anyhow!("{e}"))
}

fn load() -> std::result::Result<Api, String> {
    // SAFETY: loading NCCL runs its initialisers, which have no preconditions.
    let lib = LIBRARY_NAMES.iter().find_map(|name| unsafe { libloading::Library::new(*name) }.ok()).ok_or_else(|| {
        "NCCL (libnccl.so.2) not found: multi-GPU training needs it (install NCCL or add its directory to LD_LIBRARY_PATH)".to_string()
    })?;
    macro_rules! sym {
        ($name:ident) => {
            // SAFETY: the type is the one nccl.h declares for this entry point.
            *unsafe { lib.get(concat!(stringify!($name), "\0").as_bytes()) }
                .map_err(|e| format!("the NCCL library has no `{}` ({e}): it is older than NCCL 2.13", stringify!($name)))?
        };
    }
    Ok(Api {
        ncclGetUniqueId: sym!(ncclGetUniqueId),
        ncclCommInitRank: sym!(ncclCommInitRank),
        ncclCommAbort: sym!(ncclCommAbort),
        ncclCommGetAsyncError: sym!(ncclCommGetAsyncError),
        ncclGetErrorString: sym!(ncclGetErrorString),
        ncclGetLastError: sym!(ncclGetLastError),
        ncclGroupStart: sym!(ncclGroupStart),
        ncclGroupEnd: sym!(ncclGroupEnd),
        ncclAllReduce: sym!(ncclAllReduce),
        ncclReduceScatter: sym!(ncclReduceScatter),
        ncclAllGather: sym!(ncclAllGather),
        _lib: lib,
    })
}

fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: NCCL returns NUL-terminated strings it owns for the process's lifetime.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().trim().to_string()
}

/// A new unique id (rank 0 makes it and sends it to the others).
pub fn unique_id() -> Result<UniqueId> {
    let api = api()?;
    let mut id = UniqueId([0; 128]);
    // SAFETY: `id` is a valid ncclUniqueId to write.
    let r = unsafe { (api.ncclGetUniqueId)(&mut id) };
    if r != SUCCESS {
        bail!("ncclGetUniqueId failed: {}", text(unsafe { (api.ncclGetErrorString)(r) }));
    }
    Ok(id)
}

/// One rank's NCCL communicator. Dropping it aborts the communicator (what NCCL asks for when a
/// peer may be gone; a finished run has nothing in flight).
pub struct Comm {
    api: &'static Api,
    raw: RawComm,
    pub rank: usize,
    pub world: usize,
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a time (`&mut self` or a
// single owner here).
unsafe impl Send for Comm {}

impl Comm {
    /// `ncclCommInitRank`: blocks until every rank has joined. The caller has made the rank's
    /// CUDA context current.
    pub fn init(rank: usize, world: usize, id: UniqueId) -> Result<Comm> {
        let api = api()?;
        let mut raw: RawComm = std::ptr::null_mut();
        // SAFETY: `raw` receives the communicator; the id is the one rank 0 made.
        let r = unsafe { (api.ncclCommInitRank)(&mut raw, world as c_int, id, rank as c_int) };
        if r != SUCCESS {
            bail!(
                "rank {rank}: NCCL initialisation (ncclCommInitRank, {world} ranks) failed: {}",
                text(unsafe { (api.ncclGetErrorString)(r) })
            );
        }
        Ok(Comm { api, raw, rank, world })
    }

    pub fn raw(&self) -> RawComm {
        self.raw
    }

    pub fn api(&self) -> &'static Api {
        self.api
    }

    /// Turns a call's result into an error naming this rank, the call and NCCL's explanation
    /// (`ncclGetLastError` names a dead peer).
    pub fn check(&self, what: &str, r: NcclResult) -> Result<()> {
        if r == SUCCESS || r == IN_PROGRESS {
            return Ok(());
        }
        Err(self.error(what, r))
    }

    fn error(&self, what: &str, r: NcclResult) -> anyhow::Error {
        // SAFETY: plain queries on a live communicator.
        let (kind, last) = unsafe { (text((self.api.ncclGetErrorString)(r)), text((self.api.ncclGetLastError)(self.raw))) };
        let last = if last.is_empty() { String::new() } else { format!(" ({last})") };
        anyhow!("rank {}: NCCL {what} failed: {kind}{last}", self.rank)
    }

    /// `ncclCommGetAsyncError` after a synchronisation: a failure of a collective already run
    /// (a peer that died, a network error).
    pub fn async_error(&self, what: &str) -> Result<()> {
        let mut state: NcclResult = SUCCESS;
        // SAFETY: `state` is a valid out-pointer.
        let r = unsafe { (self.api.ncclCommGetAsyncError)(self.raw, &mut state) };
        self.check("ncclCommGetAsyncError", r)?;
        if state != SUCCESS && state != IN_PROGRESS {
            return Err(self.error(what, state));
        }
        Ok(())
    }

    /// Runs `calls` as one NCCL group (`ncclGroupStart`/`ncclGroupEnd`: one launch for many
    /// buffers); the group is closed even when a call fails.
    pub fn group(&self, calls: impl FnOnce() -> Result<()>) -> Result<()> {
        // SAFETY: the group calls take no arguments.
        self.check("ncclGroupStart", unsafe { (self.api.ncclGroupStart)() })?;
        let inner = calls();
        let end = self.check("ncclGroupEnd", unsafe { (self.api.ncclGroupEnd)() });
        inner.and(end)
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        // SAFETY: the communicator is live and not used again.
        unsafe { (self.api.ncclCommAbort)(self.raw) };
    }
}

/// The 128 bytes of an id as hex (the control channel is text).
pub fn id_to_hex(id: &UniqueId) -> String {
    id.0.iter().map(|&b| format!("{:02x}", b as u8)).collect()
}

pub fn id_from_hex(s: &str) -> Result<UniqueId> {
    if s.len() != 256 || !s.is_ascii() {
        bail!("the NCCL id from rank 0 is not 128 bytes of hex");
    }
    let mut id = UniqueId([0; 128]);
    for (i, b) in id.0.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| anyhow!("the NCCL id from rank 0 is not hex"))? as c_char;
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_survive_hex() {
        let mut id = UniqueId([0; 128]);
        for (i, b) in id.0.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37) as c_char;
        }
        let back = id_from_hex(&id_to_hex(&id)).unwrap();
        assert_eq!(back.0, id.0);
        assert!(id_from_hex("00").is_err());
    }
}
