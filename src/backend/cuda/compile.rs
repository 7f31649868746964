//! The kernel sources (`kernels/*.cu`, embedded) and their compilation by
//! NVRTC for one GPU architecture, into a CUBIN that the driver loads.
//!
//! NVRTC is loaded at run time (cudarc's dynamic loading looks for
//! `libnvrtc.so.13` by name, on the loader's search path). Where it is not
//! on that path, point `EBB_NVRTC_DIR` at the folder holding it: the library
//! is then opened from there first, and cudarc finds it already loaded by
//! its soname. `EBB_CUDA_INCLUDE`, when set, is passed as an include path
//! (the kernels themselves need no CUDA header).
//!
//! The constants the kernels share with the host code (`backend::KERNEL_CONSTANTS`)
//! reach them as defines (`defines`), here and in the kernels' emulation check.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use cudarc::nvrtc::sys;

/// The header every kernel file includes.
pub const COMMON_HEADER: (&str, &str) = ("common.cuh", include_str!("../../../kernels/common.cuh"));

/// `-DNAME=value` for each constant the kernels share with the host code
/// (`backend::KERNEL_CONSTANTS`): the flags NVRTC gets here and the C++
/// compiler gets in the emulation check (tests/cuda.rs), so both see the
/// backends' values. `kernels/common.cuh` stops the compile without them.
pub fn defines() -> Vec<String> {
    crate::backend::KERNEL_CONSTANTS.iter().map(|(name, value)| format!("-D{name}={value}")).collect()
}

/// One kernel file and the kernels (`extern "C" __global__`) it defines.
#[derive(Clone, Copy, Debug)]
pub struct KernelFile {
    pub name: &'static str,
    pub source: &'static str,
    pub kernels: &'static [&'static str],
}

/// Every kernel file, one per op family.
pub const FILES: &[KernelFile] = &[
    KernelFile {
        name: "encoder.cu",
        source: include_str!("../../../kernels/encoder.cu"),
        kernels: &[
            "encoder_forward",
            "encoder_backward_wte",
            "encoder_backward_wpe",
            "soft_prompt_forward",
            "soft_prompt_backward",
        ],
    },
    KernelFile {
        name: "layernorm.cu",
        source: include_str!("../../../kernels/layernorm.cu"),
        kernels: &["layernorm_forward", "layernorm_backward", "layernorm_backward_partials"],
    },
    KernelFile { name: "matmul.cu", source: include_str!("../../../kernels/matmul.cu"), kernels: &["matmul"] },
    KernelFile {
        name: "reduce.cu",
        source: include_str!("../../../kernels/reduce.cu"),
        kernels: &["column_partials", "sum_partials", "sum_squares"],
    },
    KernelFile {
        name: "attention.cu",
        source: include_str!("../../../kernels/attention.cu"),
        kernels: &[
            "attention_forward_scores",
            "attention_forward_softmax",
            "attention_forward_values",
            "attention_backward_dprobs",
            "attention_backward_dscores",
            "attention_backward_dqkv",
        ],
    },
    KernelFile {
        name: "activation.cu",
        source: include_str!("../../../kernels/activation.cu"),
        kernels: &["activation_forward", "activation_backward"],
    },
    KernelFile {
        name: "dropout.cu",
        source: include_str!("../../../kernels/dropout.cu"),
        kernels: &["residual_forward", "dropout_backward"],
    },
    KernelFile {
        name: "crossentropy.cu",
        source: include_str!("../../../kernels/crossentropy.cu"),
        kernels: &["crossentropy_forward", "crossentropy_backward"],
    },
    KernelFile { name: "adamw.cu", source: include_str!("../../../kernels/adamw.cu"), kernels: &["adamw_update"] },
];

/// One kernel file compiled for one architecture.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub file: &'static str,
    pub arch: String,
    /// The CUBIN: machine code for `arch`, ready for the driver.
    pub cubin: Vec<u8>,
    /// NVRTC's log, with ptxas's resource report per kernel (registers,
    /// shared memory, spills).
    pub log: String,
}

/// Makes NVRTC loadable, or says why it is not. Safe to call many times.
pub fn load_nvrtc() -> Result<(), String> {
    static PRELOADED: OnceLock<Result<(), String>> = OnceLock::new();
    PRELOADED.get_or_init(preload_from_env).clone()?;
    // SAFETY: only tries to open the shared library.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err("NVRTC (libnvrtc.so.13) not found: install the CUDA 13 toolkit or the pip package nvidia-cuda-nvrtc, and put its lib folder in EBB_NVRTC_DIR or LD_LIBRARY_PATH".to_string())
    }
}

/// Opens `libnvrtc-builtins*` and `libnvrtc.so.13` from `EBB_NVRTC_DIR`,
/// when set, and keeps them open for the life of the process.
fn preload_from_env() -> Result<(), String> {
    let Some(dir) = std::env::var_os("EBB_NVRTC_DIR") else { return Ok(()) };
    let dir = PathBuf::from(dir);
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("EBB_NVRTC_DIR={}: {e}", dir.display()))?;
    let mut names: Vec<String> =
        entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let builtins = names.iter().filter(|n| n.starts_with("libnvrtc-builtins.so"));
    let main = names.iter().filter(|n| n.starts_with("libnvrtc.so"));
    let mut opened_main = false;
    for name in builtins.chain(main) {
        let path = dir.join(name);
        let c_path =
            CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| format!("{}: bad path", path.display()))?;
        // SAFETY: dlopen of a library by path; the handle is never closed.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns a thread-local message or null.
            let why = unsafe { libc::dlerror() };
            let why = if why.is_null() {
                "unknown error".to_string()
            } else {
                unsafe { CStr::from_ptr(why) }.to_string_lossy().into_owned()
            };
            return Err(format!("EBB_NVRTC_DIR: cannot open {}: {why}", path.display()));
        }
        opened_main |= name.starts_with("libnvrtc.so");
    }
    if !opened_main {
        return Err(format!("EBB_NVRTC_DIR={}: no libnvrtc.so* there", dir.display()));
    }
    Ok(())
}

/// NVRTC's version, (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32), String> {
    load_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-parameters.
    check(unsafe { sys::nvrtcVersion(&mut major, &mut minor) }, "nvrtcVersion")?;
    Ok((major, minor))
}

fn check(r: sys::nvrtcResult, what: &str) -> Result<(), String> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS {
        return Ok(());
    }
    // SAFETY: returns a static string.
    let msg = unsafe { CStr::from_ptr(sys::nvrtcGetErrorString(r)) }.to_string_lossy();
    Err(format!("{what}: {msg}"))
}

/// The include folder for NVRTC: `EBB_CUDA_INCLUDE`, else `../include`
/// next to `EBB_NVRTC_DIR` when that exists (the pip packages' layout).
fn include_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("EBB_CUDA_INCLUDE") {
        return Some(PathBuf::from(dir));
    }
    let dir = PathBuf::from(std::env::var_os("EBB_NVRTC_DIR")?).join("../include");
    dir.is_dir().then_some(dir)
}

/// Whether `arch` names a real architecture, like `sm_90`.
fn valid_arch(arch: &str) -> bool {
    arch.strip_prefix("sm_").is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// Compiles one kernel file for `arch` (e.g. `sm_90`): NVRTC to PTX, then
/// ptxas to a CUBIN, with ptxas's resource report in the log.
pub fn compile(file: &KernelFile, arch: &str) -> Result<Compiled, String> {
    load_nvrtc()?;
    if !valid_arch(arch) {
        return Err(format!("architecture {arch:?}: expected a real one such as sm_80 or sm_90"));
    }
    let mut options =
        vec![format!("--gpu-architecture={arch}"), "--std=c++17".to_string(), "--ptxas-options=-v".to_string()];
    options.extend(defines());
    if let Some(dir) = include_dir() {
        options.push(format!("--include-path={}", dir.display()));
    }
    let cstr = |s: &str| CString::new(s).map_err(|_| format!("{}: contains a NUL byte", file.name));
    let src = cstr(file.source)?;
    let name = cstr(file.name)?;
    let header_src = cstr(COMMON_HEADER.1)?;
    let header_name = cstr(COMMON_HEADER.0)?;
    let options: Vec<CString> = options.iter().map(|o| cstr(o)).collect::<Result<_, _>>()?;
    let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    let headers = [header_src.as_ptr()];
    let include_names = [header_name.as_ptr()];

    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer is to a NUL-terminated string alive until the program is destroyed below.
    check(
        unsafe {
            sys::nvrtcCreateProgram(&mut prog, src.as_ptr(), name.as_ptr(), 1, headers.as_ptr(), include_names.as_ptr())
        },
        file.name,
    )?;
    let result = (|| {
        // SAFETY: `prog` is a live program; the options outlive the call.
        let compiled = unsafe { sys::nvrtcCompileProgram(prog, option_ptrs.len() as c_int, option_ptrs.as_ptr()) };
        let log = program_log(prog)?;
        if compiled != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(format!(
                "{} for {arch}: {}\n{log}",
                file.name,
                check(compiled, "nvrtcCompileProgram").unwrap_err()
            ));
        }
        let mut size = 0usize;
        // SAFETY: out-parameter, then a buffer of that size.
        check(unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }, "nvrtcGetCUBINSize")?;
        if size == 0 {
            return Err(format!("{} for {arch}: NVRTC produced no CUBIN", file.name));
        }
        let mut cubin = vec![0u8; size];
        check(unsafe { sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char) }, "nvrtcGetCUBIN")?;
        Ok(Compiled { file: file.name, arch: arch.to_string(), cubin, log })
    })();
    // SAFETY: destroys the program created above, once.
    unsafe { sys::nvrtcDestroyProgram(&mut prog) };
    result
}

fn program_log(prog: sys::nvrtcProgram) -> Result<String, String> {
    let mut size = 0usize;
    // SAFETY: out-parameter, then a buffer of that size.
    check(unsafe { sys::nvrtcGetProgramLogSize(prog, &mut size) }, "nvrtcGetProgramLogSize")?;
    let mut buf = vec![0u8; size.max(1)];
    check(unsafe { sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr() as *mut c_char) }, "nvrtcGetProgramLog")?;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Every kernel file compiled for `arch`, in `FILES` order.
pub fn compile_all(arch: &str) -> Result<Vec<Compiled>, String> {
    FILES.iter().map(|f| compile(f, arch)).collect()
}

/// `compile_all(arch)`, done once per process and architecture.
pub fn compiled_once(arch: &str) -> Result<Vec<Compiled>, String> {
    static CACHE: OnceLock<Mutex<HashMap<String, Vec<Compiled>>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = cache.get(arch) {
        return Ok(c.clone());
    }
    let all = compile_all(arch)?;
    cache.insert(arch.to_string(), all.clone());
    Ok(all)
}

/// ptxas's report for one kernel, parsed from a compile log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelResources {
    pub kernel: String,
    pub registers: u32,
    pub shared_bytes: u32,
    pub stack_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
}

/// The kernels ptxas reported on in `log`, in log order.
pub fn resources(log: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    let number_before = |line: &str, unit: &str| -> Option<u32> {
        let head = &line[..line.find(unit)?];
        head.split(|c: char| !c.is_ascii_digit()).rfind(|s| !s.is_empty())?.parse().ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default();
            out.push(KernelResources { kernel: name.to_string(), ..Default::default() });
        } else if let Some(k) = out.last_mut() {
            if line.contains("bytes stack frame") {
                k.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
                k.spill_store_bytes = number_before(line, "bytes spill stores").unwrap_or(0);
                k.spill_load_bytes = number_before(line, "bytes spill loads").unwrap_or(0);
            } else if line.contains("Used") && line.contains("registers") {
                k.registers = number_before(line, "registers").unwrap_or(0);
                k.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shared_constant_is_a_define_the_kernels_demand() {
        let defines = defines();
        let guard = COMMON_HEADER.1.split("#error").next().unwrap_or_default();
        for (name, value) in crate::backend::KERNEL_CONSTANTS {
            assert!(defines.contains(&format!("-D{name}={value}")), "{name} is not passed to NVRTC");
            assert!(
                guard.contains(&format!("defined({name})")),
                "common.cuh does not refuse to compile without {name}"
            );
        }
        assert_eq!(defines.len(), crate::backend::KERNEL_CONSTANTS.len());
    }
}
