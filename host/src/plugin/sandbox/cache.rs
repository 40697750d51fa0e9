//! The compilation cache: a component's machine code, kept on disk so a
//! restart or a reload of bytes already compiled skips Cranelift (seconds
//! for a 13 MB JavaScript component, milliseconds from the cache).
//!
//! An entry is named by the SHA-256 of the component's bytes and a hash of
//! everything that shapes the code (wasmtime's own compatibility hash of
//! the engine's settings, the tq-host version), so a changed component,
//! limit or binary never meets an old entry. Loading machine code from disk
//! runs it, so an entry is used only if:
//! - its directory and file belong to this user and nobody else can write
//!   them, and every directory above belongs to this user or root and is
//!   not writable by others unless sticky (as OpenSSH checks its keys'
//!   paths); the directory and the file are opened without following
//!   symbolic links, checked through their open descriptors, and read from
//!   them (no window between check and read);
//! - its checksum (SHA-256 of the code, in the file's header) matches, so a
//!   truncated or altered file is caught;
//! - wasmtime accepts it (it checks its own header and the engine's
//!   settings again).
//!
//! Any entry that fails is logged, ignored, and replaced by a fresh compile.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};
use wasmtime::component::Component;
use wasmtime::Engine;

/// The first bytes of every entry.
const MAGIC: &[u8; 8] = b"tqcwasm1";

/// Entries kept; past it the least recently used go. A JavaScript or
/// Python component's code is 10-60 MB, so this bounds the directory to a
/// few hundred MB whatever is reloaded.
const MAX_ENTRIES: usize = 16;

/// Where compiled code goes by default: `$TQ_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/tq-host`, else `$HOME/.cache/tq-host`; `None` if none
/// is set.
pub fn default_cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("TQ_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("tq-host")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("tq-host")))
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compiled {
    /// Read from the cache.
    Cached,
    /// Compiled now (and stored, if the cache is writable).
    Fresh,
}

/// The component for `bytes` (whose SHA-256 in hex is `sha256`): from the
/// cache in `dir` if a sound entry is there, else compiled and stored.
///
/// # Errors
/// The component does not compile (cache problems are only logged).
pub(crate) fn load_or_compile(
    engine: &Engine,
    bytes: &[u8],
    sha256: &str,
    dir: Option<&Path>,
) -> wasmtime::Result<(Component, Compiled)> {
    let Some(dir) = dir else {
        return Ok((Component::new(engine, bytes)?, Compiled::Fresh));
    };
    let entry = dir.join(format!("{sha256}-{}.cwasm", engine_key(engine)));
    match read_entry(dir, &entry) {
        Ok(Some(code)) => {
            // SAFETY: wasmtime runs what `deserialize` is given. The entry
            // was written by this user into a directory only they can
            // write, and its checksum matches the code; wasmtime checks
            // its own header and that the engine's settings match.
            match unsafe { Component::deserialize(engine, &code) } {
                Ok(c) => {
                    // Recently used: evicted last.
                    if let Ok(f) = std::fs::File::options().write(true).open(&entry) {
                        let _ = f.set_modified(std::time::SystemTime::now());
                    }
                    debug!(entry = %entry.display(), "compiled component from the cache");
                    return Ok((c, Compiled::Cached));
                }
                // The component does not fit this sandbox's limits: compiling
                // again would only say so after seconds.
                Err(e) if is_limit_error(&e) => return Err(e),
                Err(e) => {
                    warn!(entry = %entry.display(), error = %e, "cache entry refused by wasmtime; compiling again")
                }
            }
        }
        Ok(None) => {}
        Err(why) => warn!(entry = %entry.display(), %why, "cache entry ignored; compiling again"),
    }
    let code = engine.precompile_component(bytes)?;
    // SAFETY: `code` was produced by this engine a moment ago.
    let component = unsafe { Component::deserialize(engine, &code)? };
    match write_entry(dir, &entry, &code) {
        Ok(()) => {
            info!(entry = %entry.display(), "compiled component stored in the cache");
            evict(dir);
        }
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot store the compiled component; the next start compiles again")
        }
    }
    Ok((component, Compiled::Fresh))
}

/// Whether wasmtime refused a component for the pooling allocator's limits.
fn is_limit_error(e: &wasmtime::Error) -> bool {
    let text = format!("{e:#}");
    text.contains("pooling allocator")
        || text.contains("exceeds the limit")
        || text.contains("exceeds the per-instance limit")
}

/// What shapes compiled code besides the component: the engine's settings
/// (wasmtime's compatibility hash) and this binary's version.
fn engine_key(engine: &Engine) -> String {
    // A fixed-key SipHash: the same settings give the same key in every
    // run of this binary (and a new binary its own keys anyway).
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x7471_6361_6368_6501, 0x636f_6d70_696c_6564);
    engine.precompile_compatibility_hash().hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The code of a sound entry, `None` if there is none, or why it is not
/// sound.
fn read_entry(dir: &Path, entry: &Path) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read;
    let name = entry.file_name().ok_or("no file name")?;
    // The directory, without following a link, checked through its fd.
    let d = match std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
    {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open the directory: {e}")),
    };
    private(dir, &d.metadata().map_err(|e| e.to_string())?, "directory")?;
    ancestors_safe(dir)?;
    // The entry, opened relative to that directory, without following a
    // link, checked and read through the same descriptor.
    let cname = std::ffi::CString::new(name.as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: `d` is an open directory and `cname` a NUL-terminated name;
    // the returned descriptor is owned by the File made from it.
    let fd = unsafe {
        libc::openat(
            std::os::fd::AsRawFd::as_raw_fd(&d),
            cname.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            std::io::ErrorKind::NotFound => Ok(None),
            _ => Err(format!("cannot open it: {e}")),
        };
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let m = f.metadata().map_err(|e| e.to_string())?;
    if !m.file_type().is_file() {
        return Err("not a regular file".into());
    }
    private(entry, &m, "file")?;
    let mut data = Vec::with_capacity(m.len() as usize);
    f.read_to_end(&mut data)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let (head, code) = data.split_at_checked(MAGIC.len() + 32).ok_or("truncated")?;
    if &head[..MAGIC.len()] != MAGIC {
        return Err("not a tq-host cache entry".into());
    }
    if head[MAGIC.len()..] != boring::sha::sha256(code) {
        return Err("its checksum does not match its content (altered or truncated)".into());
    }
    Ok(Some(code.to_vec()))
}

/// Every directory above `dir` must belong to this user or root, and not be
/// writable by others unless sticky (where others cannot replace what is
/// ours): otherwise someone else could swap the cache directory.
fn ancestors_safe(dir: &Path) -> Result<(), String> {
    let abs = std::path::absolute(dir).map_err(|e| e.to_string())?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    for a in abs.ancestors().skip(1) {
        let m = std::fs::metadata(a).map_err(|e| format!("{}: {e}", a.display()))?;
        let sticky = m.permissions().mode() & 0o1000 != 0;
        if (m.uid() != me && m.uid() != 0) || (m.permissions().mode() & 0o022 != 0 && !sticky) {
            return Err(format!(
                "{} is owned or writable by another user, who could replace the cache directory",
                a.display()
            ));
        }
    }
    Ok(())
}

/// Refuses what another user owns or may write.
fn private(path: &Path, m: &std::fs::Metadata, what: &str) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me {
        return Err(format!(
            "the {what} {} belongs to another user",
            path.display()
        ));
    }
    if m.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "the {what} {} is writable by others",
            path.display()
        ));
    }
    Ok(())
}

/// Removes the least recently used entries past [`MAX_ENTRIES`].
fn evict(dir: &Path) {
    let Ok(list) = std::fs::read_dir(dir) else {
        return;
    };
    let paths: Vec<PathBuf> = list.filter_map(Result::ok).map(|e| e.path()).collect();
    // Temporary files a killed writer left behind (an hour old: no write
    // takes that long).
    for p in paths
        .iter()
        .filter(|p| p.to_string_lossy().contains(".cwasm.tmp-"))
    {
        let old = std::fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(3600));
        if old {
            let _ = std::fs::remove_file(p);
        }
    }
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = paths
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    if entries.len() <= MAX_ENTRIES {
        return;
    }
    entries.sort();
    for (_, p) in &entries[..entries.len() - MAX_ENTRIES] {
        debug!(entry = %p.display(), "evicting a cache entry");
        let _ = std::fs::remove_file(p);
    }
}

/// Writes an entry atomically (a temporary file renamed into place), the
/// directory made private first.
fn write_entry(dir: &Path, entry: &Path, code: &[u8]) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let m = std::fs::metadata(dir)?;
    if let Err(why) = private(dir, &m, "directory") {
        return Err(std::io::Error::other(why));
    }
    let mut random = [0u8; 8];
    boring::rand::rand_bytes(&mut random).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(
        ".tmp-{}",
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let result = (|| {
        f.write_all(MAGIC)?;
        f.write_all(&boring::sha::sha256(code))?;
        f.write_all(code)?;
        f.sync_all()?;
        std::fs::rename(&tmp, entry)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let mut c = wasmtime::Config::new();
        c.wasm_component_model(true);
        Engine::new(&c).unwrap()
    }

    /// The smallest component: no imports, no exports.
    const EMPTY: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn a_second_load_comes_from_the_cache_and_a_bad_entry_is_never_loaded() {
        let mut r = [0u8; 6];
        boring::rand::rand_bytes(&mut r).unwrap();
        let name: String = r.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("tq-cache-test-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        let e = engine();
        let sha = "00".repeat(32);
        let (_, how) = load_or_compile(&e, EMPTY, &sha, Some(&dir)).unwrap();
        assert_eq!(how, Compiled::Fresh);
        let (_, how) = load_or_compile(&e, EMPTY, &sha, Some(&dir)).unwrap();
        assert_eq!(how, Compiled::Cached);

        // Altered code: the checksum catches it; the entry is rewritten.
        let entry = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .unwrap();
        let mut data = std::fs::read(&entry).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        std::fs::write(&entry, &data).unwrap();
        assert!(read_entry(&dir, &entry).unwrap_err().contains("checksum"));
        let (_, how) = load_or_compile(&e, EMPTY, &sha, Some(&dir)).unwrap();
        assert_eq!(how, Compiled::Fresh);

        // Writable by others: refused, whatever it holds.
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(read_entry(&dir, &entry)
            .unwrap_err()
            .contains("writable by others"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
