//! Finding and loading the ONNX Runtime shared library: once per process, never downloaded.
//!
//! Search order (the first that applies wins):
//! 1. `score.ort_library` from the configuration (must exist);
//! 2. `$ORT_DYLIB_PATH` when set and not empty (must exist);
//! 3. `.ort/lib/libonnxruntime.so*` under the current directory or any of its ancestors (the
//!    repository root when run from a sub-folder), then next to this crate's source tree
//!    (`CARGO_MANIFEST_DIR/../.ort/lib`), which is where `scripts/setup` puts it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::{info, warn};

use super::ScoreError;

/// The fix printed with every "library not found" error.
pub const SETUP_HINT: &str = "run scripts/setup (it puts ONNX Runtime in .ort/lib/), or set score.ort_library or ORT_DYLIB_PATH";

/// The loaded ONNX Runtime: its environment (ort allows one per process) and where it came from.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) env: ort::environment::Environment,
    /// The library file that was loaded.
    pub library: PathBuf,
    /// ONNX Runtime's version, e.g. `1.31.1`.
    pub version: String,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("library", &self.library).field("version", &self.version).finish()
    }
}

/// ort loads one library and builds one environment per process; later callers share them.
static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);

/// Where the library is, without loading it. `configured` is `score.ort_library` (None = empty).
pub fn find_ort_library(configured: Option<&Path>) -> Result<PathBuf, ScoreError> {
    let env_path = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()).map(PathBuf::from);
    let cwd = std::env::current_dir().ok();
    find_ort_library_in(configured, env_path.as_deref(), cwd.as_deref())
}

/// [`find_ort_library`] with its inputs explicit, for tests.
pub fn find_ort_library_in(configured: Option<&Path>, env_path: Option<&Path>, cwd: Option<&Path>) -> Result<PathBuf, ScoreError> {
    // An explicit path is taken as given: silently searching elsewhere would hide a typo.
    if let Some(p) = configured {
        return if p.is_file() { Ok(p.to_path_buf()) } else { Err(missing(vec![p.to_path_buf()], "score.ort_library")) };
    }
    if let Some(p) = env_path {
        return if p.is_file() { Ok(p.to_path_buf()) } else { Err(missing(vec![p.to_path_buf()], "ORT_DYLIB_PATH")) };
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(cwd) = cwd {
        dirs.extend(cwd.ancestors().map(|a| a.join(".ort").join("lib")));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(".ort").join("lib"));
    for dir in &dirs {
        if let Some(lib) = library_in(dir) {
            return Ok(lib);
        }
    }
    Err(missing(dirs.into_iter().map(|d| d.join("libonnxruntime.so")).collect(), "the default locations"))
}

fn missing(tried: Vec<PathBuf>, source: &'static str) -> ScoreError {
    ScoreError::MissingLibrary { source_name: source, tried }
}

/// `libonnxruntime.so` in `dir`, else the highest-versioned `libonnxruntime.so.X.Y.Z`.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let plain = dir.join("libonnxruntime.so");
    if plain.is_file() {
        return Some(plain);
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so.")))
        .collect();
    versioned.sort();
    versioned.pop()
}

/// Load ONNX Runtime (first call) or return the one already loaded.
pub fn runtime(configured: Option<&Path>) -> Result<Runtime, ScoreError> {
    // Resolve first, even when a runtime is loaded: a configured path that does not exist is an
    // error whatever happened earlier in the process.
    let library = find_ort_library(configured)?;
    let mut slot = RUNTIME.lock().map_err(|_| ScoreError::Poisoned)?;
    if let Some(rt) = slot.as_ref() {
        if library != rt.library {
            warn!(wanted = %library.display(), loaded = %rt.library.display(), "ONNX Runtime is already loaded from another file; keeping it");
        }
        return Ok(rt.clone());
    }
    let builder = ort::init_from(&library).map_err(|e| ScoreError::LoadLibrary { path: library.clone(), message: e.to_string() })?;
    let env = builder
        .with_name("lensnet")
        .with_telemetry(false)
        .build()
        .map_err(|e| ScoreError::LoadLibrary { path: library.clone(), message: e.to_string() })?;
    let version = version_from_build_info(ort::info()).unwrap_or_else(|| version_from_file_name(&library));
    info!(library = %library.display(), version = %version, "ONNX Runtime loaded");
    let rt = Runtime { env, library, version };
    *slot = Some(rt.clone());
    Ok(rt)
}

/// `1.31.1` from ONNX Runtime's build string (`ORT Build Info: git-branch=rel-1.31.1, ...`).
fn version_from_build_info(info: &str) -> Option<String> {
    let branch = info.split([',', ' ']).find_map(|w| w.strip_prefix("git-branch="))?;
    let v = branch.strip_prefix("rel-").unwrap_or(branch);
    v.chars().next().filter(char::is_ascii_digit).map(|_| v.to_string())
}

/// `1.31.1` from `libonnxruntime.so.1.31.1`; `unknown` when the name carries no version.
fn version_from_file_name(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libonnxruntime.so."))
        .map(str::to_string)
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_path_that_does_not_exist_is_a_clear_error() {
        let bad = Path::new("/nonexistent/lensnet/libonnxruntime.so");
        let err = find_ort_library_in(Some(bad), None, None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/lensnet/libonnxruntime.so"), "{msg}");
        assert!(msg.contains("scripts/setup"), "{msg}");
        assert!(msg.contains("score.ort_library"), "{msg}");
        assert!(!err.is_retryable());
        // Loading goes through the same check, so it fails the same way instead of panicking.
        let err = runtime(Some(bad)).unwrap_err();
        assert!(matches!(err, ScoreError::MissingLibrary { .. }), "{err}");
    }

    #[test]
    fn env_path_that_does_not_exist_names_the_variable() {
        let err = find_ort_library_in(None, Some(Path::new("/nope/libonnxruntime.so.1")), None).unwrap_err();
        assert!(err.to_string().contains("ORT_DYLIB_PATH"), "{err}");
    }

    #[test]
    fn versioned_library_is_found_in_an_ancestor_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = tmp.path().join(".ort/lib");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("libonnxruntime.so.1.30.0"), b"").unwrap();
        std::fs::write(lib.join("libonnxruntime.so.1.31.1"), b"").unwrap();
        std::fs::write(lib.join("libonnxruntime_providers_shared.so"), b"").unwrap();
        let sub = tmp.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        let found = find_ort_library_in(None, None, Some(&sub)).unwrap();
        assert_eq!(found, lib.join("libonnxruntime.so.1.31.1"));
    }

    #[test]
    fn versions_are_read_from_build_info_and_file_names() {
        let info = "ORT Build Info: git-branch=rel-1.31.1, git-commit-id=abc, build type=Release";
        assert_eq!(version_from_build_info(info).as_deref(), Some("1.31.1"));
        assert_eq!(version_from_build_info("ORT Build Info: git-branch=main, x").as_deref(), None);
        assert_eq!(version_from_file_name(Path::new("/x/libonnxruntime.so.1.31.1")), "1.31.1");
        assert_eq!(version_from_file_name(Path::new("/x/libonnxruntime.so")), "unknown");
    }
}
